"""The few diffusion operations that erasure, inversion and the attack all build on.

Prompt embeddings (`encode`) and where a concept's tokens sit in them (`concept_positions`), latents of a concept (`reference_latents`: the user's images
or the model's own) and a latent noised to a random training step (`noisy`), written once
so that every loss in `fmn.erase`, `fmn.inversion` and `fmn.attack` noises the same way.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

__all__ = ["encode", "concept_positions", "reference_latents", "noisy"]

MAX_BATCH = 16  # images a pipeline call draws at once; the generator's stream is the same as one by one


def encode(pipe: StableDiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states for prompts, padded to the tokenizer's length: (B, 77, D)."""
    ids = pipe.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids.to(pipe.device))[0]


def concept_positions(tokenizer, prompt: str, concept: str) -> list[int]:
    """Token positions (BOS = 0) of the concept's tokens inside the prompt; ValueError if absent."""
    ids = tokenizer(prompt, truncation=True).input_ids
    want = tokenizer(concept, add_special_tokens=False).input_ids
    for start in range(len(ids) - len(want) + 1):
        if ids[start:start + len(want)] == want:
            return list(range(start, start + len(want)))
    raise ValueError(f"the concept {concept!r} is not a token sequence of the prompt {prompt!r}")


def reference_latents(pipe: StableDiffusionPipeline, prompts: list[str], per_prompt: int, steps: int,
                      generator: torch.Generator, images: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled VAE latents of the concept: the user's images (N, 3, H, W) in [-1, 1] if given,
    else `per_prompt` images per prompt drawn by the model as it is now. Returns (N, 4, h, w)."""
    if images is not None:
        posterior = pipe.vae.encode(images.to(pipe.device, pipe.vae.dtype)).latent_dist
        return posterior.mean * pipe.vae.config.scaling_factor
    group = max(1, MAX_BATCH // per_prompt)  # prompts per call: one call each costs 4x on 2 CPU cores
    return torch.cat([pipe(prompts[i:i + group], num_inference_steps=steps, num_images_per_prompt=per_prompt,
                           generator=generator, output_type="latent").images for i in range(0, len(prompts), group)])


def noisy(pipe: StableDiffusionPipeline, latents: torch.Tensor, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean latents (B, 4, h, w) noised to one random training step each, as the denoising loss
    draws them: returns (noisy latents, the noise added, the steps (B,))."""
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (len(latents),), generator=generator).to(pipe.device)
    return pipe.scheduler.add_noise(latents, noise, t), noise, t
