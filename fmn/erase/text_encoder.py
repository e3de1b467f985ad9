"""Few-shot unlearning of the text encoder, Fuchi & Takagi 2024, arXiv 2405.07288.

Only the text encoder changes. Gradient *ascent* on the ordinary denoising loss of a few
images of the concept, prompted by the concept inside random templates, pushes the text
encoder to stop describing it: ``loss = -|| eps_theta(z_t, t, E_phi(prompt)) - eps ||^2``.
The released configuration trains the feed-forward layers of every block and the last
block's self-attention; image latents are computed once.

With a guide concept (``guide``, concept correction), the references are images of the guide and
the same loss is descended instead: the text encoder learns to make the concept's prompts mean the guide.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline

from ..diffusion import denoise, encode, noisy, reference_latents
from ..inversion import text_encoder_components
from .layers import layer_names
from .method import ErasureMethod, TrainingConfig, register

__all__ = ["TextEncoderConfig", "TextEncoderUnlearning"]

TEMPLATES = ("a photo of a {}", "a picture of {}", "an image of {}", "a painting in the style of {}", "{}")


@dataclass
class TextEncoderConfig(TrainingConfig):
    steps: int = 60  # paper: about 5 epochs over 4 images at batch 2; ours, tuned on the embedded model
    lr: float = 3e-3  # paper: 1e-5 (Adam) on full weights; a rank-4 LoRA needs a far larger step
    preserve_weight: float = 30.0  # ours: gradient ascent is unbounded, so the term that holds it back weighs more
    batch: int = 2  # paper
    references: int = 4  # paper: about 4 images
    reference_steps: int = 25


@dataclass
class References:
    latents: torch.Tensor  # (N, 4, h, w)
    concept: torch.Tensor  # (N,) index into the concepts


@register
class TextEncoderUnlearning(ErasureMethod):
    name = "text-encoder"
    Config = TextEncoderConfig

    def __init__(self, concepts: list[str], config: TextEncoderConfig, images: torch.Tensor | None = None):
        if images is not None and config.guide:
            raise ValueError("text-encoder, replacing a concept, learns from images of the replacement that it "
                             "draws itself; leave the uploads out, or erase without a replacement.")
        super().__init__(concepts, config, images)

    def targets(self, pipe: StableDiffusionPipeline) -> dict[str, list[str]]:
        """Every MLP and the last layer's self-attention, of each text encoder (SDXL: both)."""
        targets = {}
        for component in text_encoder_components(pipe):
            names = layer_names(getattr(pipe, component), (torch.nn.Linear,))
            last = max(int(n.split("layers.")[1].split(".")[0]) for n in names if "layers." in n)
            targets[component] = [n for n in names
                                  if n.endswith(("mlp.fc1", "mlp.fc2")) or f"layers.{last}.self_attn." in n]
        return targets

    def references(self, pipe: StableDiffusionPipeline, generator: torch.Generator) -> References:
        cfg = self.config
        prompts = [TEMPLATES[0].format(cfg.guide or c) for c in self.concepts]
        latents = reference_latents(pipe, prompts, cfg.references, cfg.reference_steps, generator, self.images)
        concept = (torch.zeros(len(latents), dtype=torch.long) if self.images is not None
                   else torch.arange(len(prompts)).repeat_interleave(cfg.references))
        return References(latents, concept)

    def loss(self, pipe: StableDiffusionPipeline, refs: References, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(refs.latents), (self.config.batch,), generator=generator)
        templates = torch.randint(0, len(TEMPLATES), (len(idx),), generator=generator)
        prompts = [TEMPLATES[k].format(self.concepts[int(refs.concept[i])]) for k, i in zip(templates, idx)]
        zt, noise, t = noisy(pipe, refs.latents[idx], generator)
        pred = denoise(pipe, zt, t, encode(pipe, prompts))
        # descend toward the guide's images, or ascend away from the concept's
        sign = 1.0 if self.config.guide else -1.0
        return sign * torch.nn.functional.mse_loss(pred.float(), noise.float())
