"""Forget-Me-Not attention re-steering, Zhang et al. 2023, arXiv 2303.17591.

Every cross-attention layer records its softmax maps; the loss is the L2 norm of the maps
of the concept's tokens over all layers, heads and pixels,
``L = sqrt(sum_layers sum_heads sum_pixels sum_{j in concept} A[j]^2)``, with no
preservation term. Ours adds the shared loop's: the other concepts' predictions held as they
were, and their words' attention maps too (``keep_attention``, on by default here). Unchecked,
re-steering drains every word like the concept's: erasing "circle" at ``keep_attention=0``
left "square" 5 % of its attention in "a blue square" and squares on 2 of 4 seeds; at the
defaults "square" keeps over 90 % of it and its squares (`benchmarks/fmn_settings.py`).
What it still takes with a circle are round things: Mimo's face, Lumina, Quimby's halftone dots.
``layers="keys"`` (the cross-attention keys alone) takes nothing else with a shape, but erases
no character or style: the concept then comes through the prompt's other tokens.

Each step noises one reference image of the concept at a random step and runs the UNet on a
prompt that names it. References are the user's images or, without them, images the unedited
model generates from "a photo of {concept}".

The optional first stage (``inversion_steps`` > 0) learns new input embeddings for the
concept's words from the references by textual inversion (`fmn.inversion`); training
prompts then name the concept half the time with its own embeddings and half the time
with the learned ones, so what the images show is erased as well as what the name says.

Concept correction (``guide``, the paper's identity A -> identity B): instead of toward zero,
the concept's maps are pulled toward the unedited model's maps of the guide's words (their
mean over the guide's tokens) on a prompt that names the guide, at the same noisy latent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline

from ..attention import install
from ..diffusion import Text, concept_positions, denoise, encode, noisy, reference_latents
from ..inversion import InversionConfig, invert, inverted
from ..patch import frozen
from .layers import attn2_modules, unet_modules_except_attn2
from .method import ErasureMethod, TrainingConfig, register

__all__ = ["FMNConfig", "ForgetMeNot"]

LAYERS = ("keys", "attn2", "unet")


@dataclass
class FMNConfig(TrainingConfig):
    steps: int = 100  # paper: 35 on full weights; ours, tuned on the embedded model (tests/test_erasure_judged.py)
    lr: float = 6e-3  # paper: 2e-6 on full weights; a rank-4 LoRA needs a far larger step
    weight_decay: float = 0.01  # paper
    grad_clip: float = 1.0  # paper
    preserve_weight: float = 3.0  # ours (the paper has no preservation term)
    keep_attention: float = 1.0  # ours: the kept words' maps held too, so re-steering drains the concept's alone
    # what the patch changes: "keys" (attn2.to_k), "attn2" (all four projections) or "unet" (paper's code)
    layers: str = "attn2"
    references: int = 10  # paper: 10 images of the concept
    reference_steps: int = 25  # denoising steps when the unedited model draws the references
    template: str = "a photo of {}"  # paper's default prompt for references and training
    inversion_steps: int = 0  # stage 1, off by default (official: 500 steps, batch 1)
    inversion_lr: float = 1e-3  # official

    def check(self) -> None:
        super().check()
        if self.layers not in LAYERS:
            raise ValueError(f"Layers {self.layers!r}: use one of {', '.join(LAYERS)}.")


@dataclass
class References:
    latents: torch.Tensor  # (N, 4, h, w), scaled VAE latents of the concept's images
    prompts: list[str]  # one training prompt per concept, read through the text encoder at every step
    learned: Text | None  # C prompts with the words stage 1 learned from the images, if it ran
    positions: list[list[int]]  # the concept's token positions in each prompt
    concept: torch.Tensor  # (N,) which concept each latent shows
    guide: Text | None = None  # the prompt naming the guide, if any
    guide_positions: list[int] | None = None  # the guide's token positions in it


@register
class ForgetMeNot(ErasureMethod):
    name = "fmn"
    Config = FMNConfig

    @property
    def learns_new_words(self) -> bool:
        return self.images is not None and self.config.inversion_steps > 0  # stage 1 learns the word from the images

    def targets(self, pipe: StableDiffusionPipeline) -> dict[str, list[str]]:
        """attn2 by default; "keys" re-steers through the text side alone (not how pixels query, nor what a word
        adds), the most specific and the weakest; "unet" is every layer, as the paper's code trains."""
        attn2 = attn2_modules(pipe.unet)
        layers = self.config.layers
        return {"unet": [n for n in attn2 if n.endswith(".to_k")] if layers == "keys"
                else attn2 if layers == "attn2" else unet_modules_except_attn2(pipe.unet) + attn2}

    def references(self, pipe: StableDiffusionPipeline, generator: torch.Generator) -> References:
        cfg = self.config
        prompts = [cfg.template.format(c) for c in self.concepts]
        positions = [concept_positions(pipe.tokenizer, p, c) for p, c in zip(prompts, self.concepts)]
        latents = reference_latents(pipe, prompts, cfg.references, cfg.reference_steps, generator, self.images)
        concept = (torch.zeros(len(latents), dtype=torch.long) if self.images is not None
                   else torch.arange(len(prompts)).repeat_interleave(cfg.references))
        learned_rows = None
        if cfg.inversion_steps:
            rows = []
            for i, c in enumerate(self.concepts):
                if not (concept == i).any():  # uploads show the first concept only
                    rows.append(encode(pipe, prompts[i:i + 1]))
                    continue
                with torch.enable_grad():
                    learned = invert(pipe, c, latents[concept == i],
                                     InversionConfig(cfg.inversion_steps, cfg.inversion_lr, 1, cfg.seed))
                with inverted(pipe, learned):
                    rows.append(encode(pipe, prompts[i:i + 1]))
            learned_rows = Text.cat(rows)
        refs = References(latents, prompts, learned_rows, positions, concept)
        if cfg.guide:
            prompt = cfg.template.format(cfg.guide)
            refs.guide, refs.guide_positions = (encode(pipe, [prompt]),
                                                concept_positions(pipe.tokenizer, prompt, cfg.guide))
        return refs

    @torch.no_grad()
    def _guide_maps(self, pipe: StableDiffusionPipeline, refs: References, zt: torch.Tensor,
                    t: torch.Tensor) -> list[torch.Tensor]:
        """Per attn2 layer, the unedited model's map of the guide's words: (batch * heads, pixels, 1)."""
        maps = []
        with frozen(pipe), install(pipe.unet, lambda name, probs, attn: maps.append(
                probs[..., refs.guide_positions].float().mean(-1, keepdim=True))):
            denoise(pipe, zt, t, refs.guide)
        return maps

    def loss(self, pipe: StableDiffusionPipeline, refs: References, generator: torch.Generator) -> torch.Tensor:
        i = int(torch.randint(0, len(refs.latents), (1,), generator=generator))
        which = int(refs.concept[i])
        zt, _, t = noisy(pipe, refs.latents[i:i + 1], generator)
        positions = refs.positions[which]
        # name or learned words
        variant = int(torch.randint(0, 2, (1,), generator=generator)) if refs.learned is not None else 0
        targets = self._guide_maps(pipe, refs, zt, t) if refs.guide is not None else None
        squares = []

        def sink(name, probs, attn):
            maps = probs[..., positions].float()
            squares.append((maps if targets is None else maps - targets[len(squares)]).pow(2).sum())

        text = refs.learned[which:which + 1] if variant else encode(pipe, refs.prompts[which:which + 1])
        with install(pipe.unet, sink):
            denoise(pipe, zt, t, text)
        return torch.stack(squares).sum().sqrt()
