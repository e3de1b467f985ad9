"""Small helpers the erasure methods share: prompt embeddings and the layers a patch may change."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline
from torch import nn

from ..models import world_of

__all__ = ["encode", "layer_names", "attn2_modules", "unet_modules_except_attn2", "reference_latents", "Anchors", "world_preserve"]

ATTN2_LAYERS = ("to_q", "to_k", "to_v", "to_out.0")


def encode(pipe: StableDiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states for prompts, padded to the tokenizer's length: (B, 77, D)."""
    ids = pipe.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids.to(pipe.device))[0]


def layer_names(model: nn.Module, kinds: tuple[type, ...]) -> list[str]:
    """Names of the model's layers of these kinds as the base model names them: a layer that another
    patch already wrapped (peft keeps it as ``<name>.base_layer``) is listed under its own name, and
    the patches' own factors (``<name>.lora_A.<patch>``) are left out."""
    return [n.removesuffix(".base_layer") for n, m in model.named_modules() if isinstance(m, kinds) and ".lora_" not in n]


def attn2_modules(unet: nn.Module) -> list[str]:
    """Names of the cross-attention projections (ESD-x, Forget-Me-Not's attn2-only patch)."""
    return [n for n in layer_names(unet, (nn.Linear,)) if any(n.endswith(f"attn2.{x}") for x in ATTN2_LAYERS)]


def unet_modules_except_attn2(unet: nn.Module) -> list[str]:
    """Names of every linear and convolution layer outside cross-attention (ESD-u)."""
    return [n for n in layer_names(unet, (nn.Linear, nn.Conv2d)) if ".attn2." not in n]


def reference_latents(pipe: StableDiffusionPipeline, prompts: list[str], per_prompt: int, steps: int,
                      generator: torch.Generator, images: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled VAE latents of the concept: the user's images (N, 3, H, W) in [-1, 1] if given,
    else `per_prompt` images per prompt drawn by the unedited model. Returns (N, 4, h, w)."""
    if images is not None:
        posterior = pipe.vae.encode(images.to(pipe.device, pipe.vae.dtype)).latent_dist
        return posterior.mean * pipe.vae.config.scaling_factor
    return torch.cat([pipe(p, num_inference_steps=steps, num_images_per_prompt=per_prompt, generator=generator,
                           output_type="latent").images for p in prompts])


def world_preserve(pipe: StableDiffusionPipeline, concepts: list[str]) -> list[str]:
    """The default concepts to keep: on a model with a world (the embedded one), every other shape,
    character and artist it knows; other models publish no such list, so nothing by default."""
    world = world_of(pipe)
    if world is None:
        return []
    erased = {c.lower() for c in concepts}
    names = [*world["shapes"], *world["identities"], *world["styles"]]
    return [n for n in names if n.lower() not in erased]


@dataclass
class Anchors:
    """What the unedited model predicts for prompts that must not change, at fixed noisy latents:
    the targets of the preservation term that keeps the other concepts while one is erased."""

    prompts: list[str]
    latents: torch.Tensor  # (P, 4, h, w) noisy latents
    timesteps: torch.Tensor  # (P,)
    eps: torch.Tensor  # (P, 4, h, w) the unedited model's predictions

    @classmethod
    def draw(cls, pipe: StableDiffusionPipeline, words: list[str], steps: int, generator: torch.Generator) -> "Anchors":
        """One image per word by the unedited model, noised to a random step, and its prediction there."""
        prompts = [f"a picture of {w}" for w in words]
        z0 = reference_latents(pipe, prompts, 1, steps, generator)
        noise = torch.randn(z0.shape, generator=generator).to(z0)
        t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (len(z0),), generator=generator).to(pipe.device)
        zt = pipe.scheduler.add_noise(z0, noise, t)
        return cls(prompts, zt, t, pipe.unet(zt, t, encode(pipe, prompts)).sample)

    def loss(self, pipe: StableDiffusionPipeline, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Mean squared drift of the patched model's predictions from the unedited ones on `batch` anchors."""
        idx = torch.randint(0, len(self.prompts), (batch,), generator=generator)
        pred = pipe.unet(self.latents[idx], self.timesteps[idx], encode(pipe, [self.prompts[i] for i in idx])).sample
        return nn.functional.mse_loss(pred.float(), self.eps[idx].float())
