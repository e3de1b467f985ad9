"""The concept as its images show it: a word learned by textual inversion, erased beside the name.

Given a few images of the (first) concept, text-map (`text_map.py`), UCE and RECE (`uce.py`) first learn input
embeddings for the concept's tokens that make the UNet denoise those images (`fmn.inversion.invert`, Gal et al.
2022; the first stage of Forget-Me-Not, Zhang et al. 2023), on the unedited model, starting from the name's own
embeddings. Every erased prompt (the word alone and in context) is then also read with the learned embeddings in
the name's place, and those rows are sent to the same targets as the name's (text-map trains toward them, the
closed forms solve for them): the erasure covers what the images show, which a concept inversion attack (Pham et
al. 2024) would otherwise find again from the same kind of images. A name the model never saw works as the learned
word's placeholder: its prompts draw what the images show, and are erased. ESD (`esd.py`) learns the word the same
way (`invert_images`) and erases it as one more concept of its objective.

Cost: `inversion_steps` steps of the UNet's forward and backward pass on `inversion_batch` latents, once, before
the erasure; text-map then encodes `learned_batch` more prompts a training step: on the embedded model on 2 CPU
cores, its erasure from 8 images takes about 20 s where one by name takes 15 s.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline

from ..diffusion import reference_latents
from ..inversion import InversionConfig, Inverted, invert, inverted
from .encoders import encoder_rows
from .targets import EmbeddingTargets, Span, find

__all__ = ["LearnedWordConfig", "LearnedWord", "invert_images", "learn_word", "span_loss", "span_distance"]


@dataclass
class LearnedWordConfig:
    """Settings of the word learned from the user's images (used only when images are given)."""

    inversion_steps: int = 100  # ours: as the attack's inversion (fmn/attack.py, bench quality); Gal et al.: 5000
    inversion_lr: float = 5e-3  # textual inversion's usual step for one embedding (fmn/inversion.py)
    inversion_batch: int = 4  # latents a step (fmn/inversion.py)

    def check(self) -> None:
        if not (1 <= self.inversion_steps <= 1000 and 0 < self.inversion_lr < 1 and self.inversion_batch >= 1):
            raise ValueError(f"Inversion of {self.inversion_steps} steps at lr {self.inversion_lr}, batches of "
                             f"{self.inversion_batch} latents: use 1 to 1000 steps, a positive lr below 1 and "
                             "batches of 1 or more.")


@dataclass
class LearnedWord:
    """The learned embeddings of the first concept's tokens, and its erased prompts' rows read with them."""

    inverted: Inverted
    spans: list[Span]  # rows from the learned word on, and the targets the name's rows go to


def invert_images(pipe: StableDiffusionPipeline, concept: str, images: torch.Tensor, config: LearnedWordConfig,
                  seed: int = 0) -> Inverted:
    """The concept's tokens' embeddings learned from `images` (N, 3, H, W) in [-1, 1] on the pipeline as it is
    (call it with no patch active)."""
    latents = reference_latents(pipe, [], 1, 0, None, images)  # (N, 4, h, w)
    with torch.enable_grad():
        return invert(pipe, concept, latents,
                      InversionConfig(config.inversion_steps, config.inversion_lr, config.inversion_batch, seed))


def learn_word(pipe: StableDiffusionPipeline, method: EmbeddingTargets, images: torch.Tensor,
               config: LearnedWordConfig, seed: int = 0,
               hold: Callable[[StableDiffusionPipeline, Inverted], None] | None = None) -> LearnedWord:
    """Inverts `images` of the method's first concept (`invert_images`), then reads the concept's erased prompts
    with the learned word in its name's place; `hold(pipe, word)` first, if given (it may change what is held and
    the in-context prompts)."""
    concept = method.concepts[0]
    learned = invert_images(pipe, concept, images, config, seed)
    if hold is not None:
        hold(pipe, learned)
    with inverted(pipe, learned):
        spans = [s for s in method.spans(pipe) if find(concept, s.prompt)]
    return LearnedWord(learned, spans)


def span_loss(pipe: StableDiffusionPipeline, spans: list[Span], batch: int, generator: torch.Generator,
              word: Inverted | None = None, padding_rows: int = -1) -> torch.Tensor:
    """Mean squared distance of `batch` random spans' rows, as the text encoder reads them now (with the learned
    `word`, if given; the first rows only with `padding_rows`, as `encoder_rows`), from their targets."""
    picked = [spans[i] for i in torch.randperm(len(spans), generator=generator)[:batch]]
    with inverted(pipe, word) if word is not None else nullcontext():
        return span_distance(encoder_rows(pipe, [s.prompt for s in picked], padding_rows), picked)


def span_distance(states: torch.Tensor, spans: list[Span]) -> torch.Tensor:
    """Mean over the spans of each one's mean squared distance of its rows in `states` (the first len(spans)
    prompts' encodings) from its targets; where `states` holds the first positions only (`encode`'s
    `padding_rows`), of the rows there. One gather for every span: a step's loss is a few ops, not a few per span."""
    prompt = torch.cat([torch.full((len(s.positions),), i) for i, s in enumerate(spans)]).to(states.device)
    positions = torch.cat([s.positions for s in spans]).to(states.device)
    targets = torch.cat([s.targets for s in spans]).to(states)
    there = positions < states.shape[1]
    prompt, positions, targets = prompt[there], positions[there], targets[there]
    per_row = (states[prompt, positions] - targets).pow(2).mean(-1)  # (rows,)
    rows_of_span = torch.bincount(prompt, minlength=len(spans)).to(per_row)
    return (per_row / rows_of_span[prompt]).sum() / len(spans)
