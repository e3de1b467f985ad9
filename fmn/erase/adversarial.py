"""Adversarial erasure: the words an attacker would learn are erased too (Receler, AdvUnlearn 2024).

Concept inversion (`fmn.attack`) brings an erased concept back by learning new input embeddings
for its words against the erased model. In adversarial mode the shared loop plays that attacker
while it trains: every `attack_every` steps it learns such words against the patch as it is
(a few inversion steps, each time from the last words, on images of the concept the unedited
model drew), and every training step then computes the method's loss twice, with the concept's
own words and with the learned ones, so the patch learns to erase both. The preservation term
is unchanged. The methods read the concept's words through the text encoder at every step, so
the learned words reach each of them.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch
from diffusers import StableDiffusionPipeline

from ..diffusion import reference_latents
from ..inversion import TEMPLATES, InversionConfig, Inverted, invert, inverted

__all__ = ["Adversary"]

IMAGE_STEPS = 25  # denoising steps of the concept's images


class Adversary:
    """Words that bring each concept back, relearned against the patch every few steps."""

    def __init__(self, pipe: StableDiffusionPipeline, concepts: list[str], generator: torch.Generator,
                 images: torch.Tensor | None = None):
        """Draws the concept's images with the model as it is now (call it with no patch active);
        the user's `images` of the first concept are used instead where given."""
        self.latents = [reference_latents(pipe, [t.format(c) for t in TEMPLATES], 1, IMAGE_STEPS, generator,
                                          images if i == 0 else None) for i, c in enumerate(concepts)]
        self.concepts = concepts
        self.learned: list[Inverted | None] = [None] * len(concepts)

    def learn(self, pipe: StableDiffusionPipeline, steps: int, lr: float, seed: int) -> None:
        """A few inversion steps per concept against the pipeline as it is (the patch active)."""
        for i, (concept, latents) in enumerate(zip(self.concepts, self.latents)):
            self.learned[i] = invert(pipe, concept, latents, InversionConfig(steps, lr, 4, seed), start=self.learned[i])

    @contextmanager
    def words(self, pipe: StableDiffusionPipeline) -> Iterator[None]:
        """Inside the block the concepts' words read the learned embeddings."""
        with ExitStack() as stack:
            for learned in self.learned:
                if learned is not None:
                    stack.enter_context(inverted(pipe, learned))
            yield
