"""Concept inversion: can a learned word bring an erased concept back? (Pham et al. 2023)

The attacker holds the erased model and a few images of the concept. Textual inversion
against the erased model (its patches active) learns new input embeddings for the concept's
words; prompts that name the concept then read those embeddings (`fmn.inversion.inverted`).
The share of such images in which the concept shows again is the recovery rate. Without
images, the unedited model (patches switched off) draws them, as an attacker with the
original model could. Given an eye (`looks_like`: how surely images show the concept; on
the embedded model, the judge), the attacker also looks at what its words draw every few
steps and keeps the best it saw, its starting words included, as a person running the
attack would: it never ends weaker than the concept's own name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from .diffusion import reference_latents
from .generate import generate_many
from .inversion import TEMPLATES, InversionConfig, Inverted, invert, inverted
from .patch import activate, active

__all__ = ["AttackConfig", "concept_inversion"]


@dataclass
class AttackConfig:
    steps: int = 150
    lr: float = 5e-3
    batch: int = 4
    images: int = 8  # drawn by the unedited model when the attacker brings none
    image_steps: int = 25
    seed: int = 0
    look_every: int = 10  # with an eye: steps between looks at what the words draw
    looks: int = 4  # images per look, on seeds apart from the images'


def concept_inversion(pipe: StableDiffusionPipeline, concept: str, patches: list[str],
                      config: AttackConfig = AttackConfig(), images: torch.Tensor | None = None,
                      on_step=None, looks_like: Callable[[list[Image.Image]], float] | None = None,
                      prompts: list[str] | None = None) -> Inverted:
    """Learns embeddings for `concept`'s words against the model with `patches` active.

    ``images``: (N, 3, H, W) in [-1, 1] showing the concept. ``looks_like(images)``: higher
    when the images show the concept more surely; with it the best words seen are kept.
    ``prompts``: how the attacker words the concept (default: TEMPLATES around its name); they
    draw the images, train the words and are what the eye looks at. Leaves no patch active.
    """
    prompts = prompts or [t.format(concept) for t in TEMPLATES]
    generator = torch.Generator("cpu").manual_seed(config.seed)
    activate(pipe, [])
    with torch.no_grad():
        per_prompt = -(-config.images // len(prompts))
        latents = reference_latents(pipe, prompts, per_prompt, config.image_steps, generator, images)[:config.images]
    looks = [prompts[i % len(prompts)] for i in range(config.looks)]
    seeds = [10_000 + config.seed + i for i in range(config.looks)]

    def score(learned: Inverted) -> float:
        with inverted(pipe, learned):
            return looks_like(generate_many(pipe, looks, seeds, config.image_steps))

    inversion = InversionConfig(config.steps, config.lr, config.batch, config.seed, config.look_every)
    with active(pipe, list(patches)):
        return invert(pipe, concept, latents, inversion, on_step, score if looks_like else None, prompts)
