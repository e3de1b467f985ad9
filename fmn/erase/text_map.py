"""Text-map (ours): the closed forms' targets, learned by the text encoder.

UCE and RECE (`uce.py`) send a concept's text embeddings to their targets (`targets.py`) through one
linear edit of the cross-attention's keys and values. Every row of every prompt passes through that
edit, and its input is the text encoder's width (128 on the embedded model, 768 on SD 1.5): a mass
erasure asks it to move ~1,000 rows and hold ~25,000 kept ones, more than a linear map of that width
can separate. Text-map trains a LoRA on the text encoder instead, a non-linear
map that sees the whole prompt, to make the same rows (the concept's, from its token on, alone and in
context) land on the same targets while every row of the keep prompts and the preserved words stays as
it was:
    loss = mean |E'(erased prompt)[span] - targets|^2 + keep_weight * mean |E'(keep prompt) - E(keep prompt)|^2
No image is drawn and the denoiser is not touched: a step encodes prompts only.
With that room it pushes the later rows of every concept past the guide's (`default_prior`; half as far as a closed
form pushes a concept named in its `prior`, since those rows carry the rest of the prompt too), which a linear edit
cannot afford, so a prompt whose other words draw the concept anyway (the model's prior) does not bring it back.
On SD3 and FLUX the LoRA sits on every text encoder and the rows are the joint attention's text sequence and the
pooled CLIP row (`encoders.py`).
With `unet_edit`, a closed form (`uce.py`) also edits the cross-attention, held by the same words and prompts as
hard, in the same patch: the text encoder's LoRA alone, or the UNet's edit under the unedited text encoder (a LoRA
loaded with its CLIP strength at 0), still erases.
Given images of the (first) concept, it first learns the concept as they show it, a word by textual inversion,
and sends that word's rows in the same prompts to the same targets (`learned_word.py`). Inversion also puts into the
word what the images show beside the concept (their backgrounds, their style), so the words nearest the learned word
can be held beside the name's nearest (`hold_learned`, `keep.nearest_learned`).
Related: AdvUnlearn (Zhang et al. 2024) also erases in the text encoder, by adversarial training through
the UNet; here the targets come in closed form from the text space alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import ceil

import torch
from diffusers import StableDiffusionPipeline

from ..inversion import Inverted, text_encoder_components
from .encoders import encoder_layers, encoder_rows, encoder_segments
from .keep import keep_set, nearest_learned
from .learned_word import LearnedWord, LearnedWordConfig, learn_word, span_distance, span_loss
from .method import ErasureMethod, TrainingConfig, closed_forms, register
from .targets import EmbeddingTargets, Span, TargetsConfig, find

__all__ = ["TextMapConfig", "TextMap"]


@dataclass
class TextMapConfig(TrainingConfig, TargetsConfig, LearnedWordConfig):
    steps: int = 0  # 0: `passes` x the batches it takes to see every erased prompt (one concept and its contexts: 100)
    passes: int = 100  # tuned with lr on the embedded model: one concept and its 31 in-context prompts, 100 steps
    lr: float = 1e-2  # 50 passes at 2e-2 rank below on the tune split (text-map-passes-50/)
    rank: int = 8
    # the share of each text encoder's first blocks left without LoRA (backward stops at the first that trains):
    # first of 0, 0.34 and 0.67 on the tune split (text-map-frozen-share/)
    frozen_share: float = 0.34
    preserve_weight: float = 0.0  # the keep prompts and the preserved words hold what is kept, in text space
    batch: int = 32  # erased prompts a step
    keep_batch: int = 32  # keep prompts a step; at 16, erasing circle turns green squares another colour
    learned_batch: int = 8  # from images: prompts with the learned word a step, beside `batch` with the name
    push_after: float = 0.5  # half the closed forms': at 1, on every concept, styles and night lost more
    # ours: first on the tune split of 1, 4, 10 and 30, and of 1, 4 and 10 at frozen_share 0.34 (text-map-keep-weight/)
    keep_weight: float = 4.0
    # a closed form ("uce", "rece") solved beside, into the same patch: the denoiser's cross-attention erases too,
    # so a patch loaded with its text-encoder part off (an encoder swap) still erases ("": the text encoder only)
    unet_edit: str = ""
    # from images: the keep set found again with the words nearest the learned word among the held (what the
    # images show beside the concept, which the learned word carries); ours: on the tune split it keeps more but the
    # attack brings back more (text-map-hold-learned/)
    hold_learned: bool = False
    # SD 1.x/2.x: the padding rows a step reads after its longest prompt's end token; the loss holds the rows before
    # them, and a step costs their share of the encoder's positions (-1: every row, as the UNet reads them)
    padding_rows: int = -1

    def check(self) -> None:
        TrainingConfig.check(replace(self, steps=self.steps or 1))  # 0 is set when the method is made
        TargetsConfig.check(self)
        LearnedWordConfig.check(self)
        if not 0 <= self.frozen_share < 1:
            raise ValueError(f"frozen_share {self.frozen_share}: leave a share from 0 to under 1 of the blocks as "
                             "they are.")
        if self.unet_edit and self.unet_edit not in closed_forms():
            raise ValueError(f"unet_edit {self.unet_edit!r}: name a closed form ({', '.join(closed_forms())}) "
                             "or nothing.")
        if self.padding_rows < -1:
            raise ValueError(f"padding_rows {self.padding_rows}: read 0 or more padding rows, or -1 for all of them.")
        if not (self.batch >= 1 and self.keep_batch >= 1 and self.learned_batch >= 1 and 1 <= self.passes <= 1000):
            raise ValueError(f"Batches of {self.batch}, {self.keep_batch} and {self.learned_batch} prompts, "
                             f"{self.passes} passes: use 1 or more (passes at most 1000).")


@dataclass
class References:
    spans: list[Span]  # the erased prompts' rows and where they go
    keep_prompts: list[str]
    keep_states: torch.Tensor  # (K, positions, D) what the unedited text encoders give them (`encoder_rows`)
    learned: LearnedWord | None = None  # the concept as the user's images show it, if given


@register
class TextMap(EmbeddingTargets, ErasureMethod):
    name = "text-map"
    Config = TextMapConfig
    on_transformers = True  # SD3's CLIP-L, CLIP-G and T5, FLUX's CLIP-L and T5 (`encoders.py`)

    def __init__(self, concepts: list[str], config: TextMapConfig, images: torch.Tensor | None = None):
        if not config.steps:  # the words alone and the in-context prompts: each in about `passes` steps' batches
            config = replace(config,
                             steps=config.passes * ceil((len(concepts) + len(config.in_context)) / config.batch))
        super().__init__(concepts, config, images)

    @classmethod
    def default_prior(cls, concepts: list[str]) -> list[str]:
        """Every concept: a non-linear map can push the later rows of one prompt and hold another's."""
        return list(concepts)

    def targets(self, pipe: StableDiffusionPipeline) -> dict[str, list[str]]:
        """Every linear layer inside the transformer blocks of each text encoder (SDXL: both; SD3: three), but those
        of its first `frozen_share` of blocks."""
        return {c: encoder_layers(getattr(pipe, c), self.config.frozen_share) for c in text_encoder_components(pipe)}

    def reads(self, pipe: StableDiffusionPipeline, prompts: list[str]) -> torch.Tensor:
        """The text encoders' own output, where the LoRA acts (on SD3 and FLUX with the pooled row, `encoders.py`)."""
        return encoder_rows(pipe, prompts)

    def segments(self, pipe: StableDiffusionPipeline) -> list[tuple[object, int, int]]:
        return encoder_segments(pipe)

    @property
    def learns_new_words(self) -> bool:
        return self.images is not None  # the word is learned from the images

    def references(self, pipe: StableDiffusionPipeline, generator: torch.Generator) -> References:
        learned = None
        if self.images is not None:
            hold = self.hold_nearest if self.config.hold_learned else None
            learned = learn_word(pipe, self, self.images, self.config, self.config.seed, hold)
        keep = [*self.config.preserve, *self.config.keep_prompts]
        states = encoder_rows(pipe, keep) if keep else torch.zeros(0)
        return References(self.spans(pipe), keep, states, learned)

    def hold_nearest(self, pipe: StableDiffusionPipeline, word: Inverted) -> None:
        """Finds the keep set again (`keep.keep_set`) with the words nearest the learned `word` beside the user's,
        so that erasing the word leaves what the images show beside the concept (their backgrounds, their style)."""
        cfg = self.config
        gone = [*self.concepts, cfg.guide] if cfg.guide else self.concepts
        near = [w for w in nearest_learned(pipe, self.concepts[0], word.vectors[0])
                if not any(find(c, w) or find(w, c) for c in gone)]
        held = keep_set(pipe, self.concepts, [*cfg.keep, *near], cfg.guide)
        self.config = replace(cfg, preserve=held.words, keep_prompts=held.prompts, in_context=held.in_context)

    def loss(self, pipe: StableDiffusionPipeline, refs: References, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        picked = [refs.spans[i] for i in torch.randperm(len(refs.spans), generator=generator)[:cfg.batch]]
        kept = (torch.randperm(len(refs.keep_prompts), generator=generator)[:cfg.keep_batch]
                if len(refs.keep_prompts) and cfg.keep_weight else torch.zeros(0, dtype=torch.long))
        # one text-encoder pass a step: the erased prompts, then the keep prompts
        states = encoder_rows(pipe, [s.prompt for s in picked] + [refs.keep_prompts[i] for i in kept],
                              cfg.padding_rows)
        loss = span_distance(states, picked)
        if refs.learned is not None:  # the name and the learned word, weighed alike against what is kept
            loss = (loss + span_loss(pipe, refs.learned.spans, cfg.learned_batch, generator, refs.learned.inverted,
                                     cfg.padding_rows)) / 2
        if len(kept):
            held = refs.keep_states[kept, :states.shape[1]]  # as many rows as the step read
            loss = loss + cfg.keep_weight * (states[len(picked):] - held).pow(2).mean()
        return loss
