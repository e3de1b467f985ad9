"""Concept inversion: can a learned word bring an erased concept back? (Pham et al. 2023)

The attacker holds the erased model and a few images of the concept. Textual inversion
against the erased model (its patches active) learns new input embeddings for the concept's
words, in every text encoder's table (SD3's and FLUX's T5 included, on its own tokens); prompts
that name the concept then read those embeddings (`fmn.inversion.inverted`).
The share of such images in which the concept shows again is the recovery rate. Without
images, the unedited model (patches switched off) draws them, as an attacker with the
original model could. Given an eye (`looks_like`: how surely images show the concept; on
the embedded model, the judge), the attacker also looks at what its words draw every few
steps and keeps the best it saw, its starting words included, as a person running the
attack would: it never ends weaker than the concept's own name.

`recovery` is the attack as it is measured (by `python -m fmn attack` and the quality benchmark alike): one
inversion per attack seed, each read where an attacker looks, on its own plain prompts (the concept alone and in
simple templates) and on the prompts the erasure was measured on; the higher of the two is the seed's recovery.

`encoder_swap` is the attack that learns nothing: the patch's UNet part run with the unedited text encoder, and
its text-encoder part alone, as a LoRA loaded with one of its two strengths at 0 (ComfyUI's strength_clip or
strength_model, a merged UNet beside the original text encoder). An edit on one side only is undone by the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from .diffusion import reference_latents
from .generate import generate_many
from .inversion import TEMPLATES, InversionConfig, Inverted, invert, inverted
from .patch import activate, active

__all__ = ["AttackConfig", "Reading", "Recovery", "concept_inversion", "recovery", "encoder_swap", "PLAIN",
           "SIDES"]

# The two sides of a patch an attacker can drop: each runs with the other side unedited (SD3's, FLUX's transformer
# is their UNet)
SIDES = {"UNet part, unedited text encoder": ("unet", "transformer"),
         "text-encoder part alone": ("text_encoder", "text_encoder_2", "text_encoder_3")}
# The attacker's plain prompts: the concept alone and in simple templates
PLAIN = TEMPLATES


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


@dataclass
class Reading:
    """Where an attack is read: the attacker's plain prompts, and the prompts the erasure was measured on."""

    plain: list[str]
    plain_seeds: list[int]
    erased: list[str] = field(default_factory=list)
    erased_seeds: list[int] = field(default_factory=list)
    steps: int = 25

    @classmethod
    def plain_prompts(cls, concept: str, images: int = 8, first_seed: int = 0, steps: int = 25) -> "Reading":
        """`images` of the concept's PLAIN prompts, in turn, on seeds from `first_seed`."""
        texts = [PLAIN[i % len(PLAIN)].format(concept) for i in range(images)]
        return cls(texts, list(range(first_seed, first_seed + images)), steps=steps)


@dataclass
class Recovery:
    """One attack (an attack seed, or a side of an encoder swap): how often the concept came back on the plain
    prompts and on the erased prompts (None where nothing judges, or no erased prompts were read), and the plain
    prompts' images."""

    plain: float | None
    erased: float | None
    images: list[Image.Image] = field(default_factory=list, repr=False)
    seed: int | None = None

    @property
    def rate(self) -> float | None:
        """The higher of the two reads: where the concept comes back most is where the attacker looks."""
        reads = [r for r in (self.plain, self.erased) if r is not None]
        return max(reads) if reads else None


def share(reads: list[bool | None]) -> float:
    """The share of True among the reads that are certain (not None); if none is, the share of True."""
    certain = [r for r in reads if r is not None]
    return float(np.mean(certain if certain else [bool(r) for r in reads]))


def _read(pipe: StableDiffusionPipeline, reading: Reading, shows, seed: int | None = None) -> Recovery:
    """The reading's images as the pipeline draws them now, and how often they show the concept."""
    rate = lambda drawn: share(shows(drawn)) if shows and drawn else None  # noqa: E731
    drawn = generate_many(pipe, reading.plain, reading.plain_seeds, reading.steps)
    again = generate_many(pipe, reading.erased, reading.erased_seeds, reading.steps) if reading.erased else []
    return Recovery(rate(drawn), rate(again), drawn, seed)


def recovery(pipe: StableDiffusionPipeline, concept: str, patches: list[str], reading: Reading,
             shows: Callable[[list[Image.Image]], list[bool | None]] | None, config: AttackConfig = AttackConfig(),
             seeds: tuple[int, ...] = (0, 1, 2), **attack) -> list[Recovery]:
    """`concept_inversion` once per seed in `seeds` (`attack`: its images, on_step, looks_like, prompts), each
    read as `reading` says. ``shows(images)``: per image, whether it shows the concept, None where that is
    uncertain (``shows`` None: nothing judges, the rates are None). Leaves no patch active."""
    results = []
    for seed in seeds:
        learned = concept_inversion(pipe, concept, patches, replace(config, seed=seed), **attack)
        with active(pipe, list(patches)), inverted(pipe, learned):
            results.append(_read(pipe, reading, shows, seed))
    return results


def encoder_swap(pipe: StableDiffusionPipeline, patches: list[str], reading: Reading,
                 shows: Callable[[list[Image.Image]], list[bool | None]] | None) -> dict[str, Recovery]:
    """Per side of SIDES, the reading with only that side of the patches on."""
    out = {}
    for side, parts in SIDES.items():
        with active(pipe, list(patches), parts):
            out[side] = _read(pipe, reading, shows)
    return out
