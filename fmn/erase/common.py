"""Small helpers the erasure methods share: prompt embeddings and the layers a patch may change."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline
from torch import nn

__all__ = ["encode", "attn2_modules", "unet_modules_except_attn2", "reference_latents"]

ATTN2_LAYERS = ("to_q", "to_k", "to_v", "to_out.0")


def encode(pipe: StableDiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states for prompts, padded to the tokenizer's length: (B, 77, D)."""
    ids = pipe.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids.to(pipe.device))[0]


def attn2_modules(unet: nn.Module) -> list[str]:
    """Names of the cross-attention projections (ESD-x, Forget-Me-Not's attn2-only patch)."""
    return [n for n, m in unet.named_modules() if isinstance(m, nn.Linear) and any(n.endswith(f"attn2.{x}") for x in ATTN2_LAYERS)]


def unet_modules_except_attn2(unet: nn.Module) -> list[str]:
    """Names of every linear and convolution layer outside cross-attention (ESD-u)."""
    return [n for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and ".attn2." not in n]


def reference_latents(pipe: StableDiffusionPipeline, prompts: list[str], per_prompt: int, steps: int,
                      generator: torch.Generator, images: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled VAE latents of the concept: the user's images (N, 3, H, W) in [-1, 1] if given,
    else `per_prompt` images per prompt drawn by the unedited model. Returns (N, 4, h, w)."""
    if images is not None:
        posterior = pipe.vae.encode(images.to(pipe.device, pipe.vae.dtype)).latent_dist
        return posterior.mean * pipe.vae.config.scaling_factor
    return torch.cat([pipe(p, num_inference_steps=steps, num_images_per_prompt=per_prompt, generator=generator,
                           output_type="latent").images for p in prompts])
