"""Concept inversion: can a learned word bring an erased concept back? (Pham et al. 2023)

The attacker holds the erased model and a few images of the concept. Textual inversion
against the erased model (its patches active) learns new input embeddings for the concept's
words; prompts that name the concept then read those embeddings (`fmn.inversion.inverted`).
The share of such images in which the concept shows again is the recovery rate. Without
images, the unedited model (patches switched off) draws them, as an attacker with the
original model could.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline

from .erase.common import reference_latents
from .inversion import InversionConfig, Inverted, invert
from .patch import activate

__all__ = ["AttackConfig", "concept_inversion"]


@dataclass
class AttackConfig:
    steps: int = 150
    lr: float = 5e-3
    batch: int = 4
    images: int = 8  # drawn by the unedited model when the attacker brings none
    image_steps: int = 25
    seed: int = 0


def concept_inversion(pipe: StableDiffusionPipeline, concept: str, patches: list[str],
                      config: AttackConfig = AttackConfig(), images: torch.Tensor | None = None,
                      on_step=None) -> Inverted:
    """Learns embeddings for `concept`'s words against the model with `patches` active.

    ``images``: (N, 3, H, W) in [-1, 1] showing the concept. Leaves no patch active.
    """
    generator = torch.Generator("cpu").manual_seed(config.seed)
    activate(pipe, [])
    with torch.no_grad():
        latents = reference_latents(pipe, [f"a photo of {concept}"], config.images, config.image_steps, generator, images)
    activate(pipe, list(patches))
    try:
        return invert(pipe, concept, latents, InversionConfig(config.steps, config.lr, config.batch, config.seed), on_step)
    finally:
        activate(pipe, [])
