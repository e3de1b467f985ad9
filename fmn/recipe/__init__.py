"""The embedded model's training recipe: train the VAE, the judge, the text encoder and the UNet on renders of the
world, and check the result (`python -m fmn.recipe train | check`). A tool on the top floor: the app and the
erasures never import it; the world's renders and tokenizer live in `fmn.world`."""
