"""The embedded model's training recipe: render the world, build the tokenizer, train the VAE,
the judge, the text encoder and the UNet, check the result (`python -m fmn.world.recipe train | check`).
The app and the erasures never import it (they need only `fmn.world.known` and the judge);
the tiny test models (`fmn.tiny`) borrow its offline tokenizer builder."""
