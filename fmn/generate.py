"""Seeded generation: the same settings and seed give the same image on the same device.

`GenerationSettings` holds what a user sets; `check_settings` turns bad values into a
`ValueError` that names the value and the allowed range; `generate` runs one batched
pipeline call for a list of seeds (`generate_pairs`: one prompt per seed), each image with
its own CPU generator so that a seed means the same starting noise whatever the device or
the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from diffusers import FluxPipeline, StableDiffusionPipeline
from PIL import Image

from .models import is_transformer, world_of

__all__ = ["GenerationSettings", "check_settings", "generate", "generate_pairs", "generate_many", "unknown_words",
           "MAX_PROMPT_CHARS", "MAX_SEED"]

MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1
MAX_STEPS = 200
MAX_IMAGES = 16


@dataclass
class GenerationSettings:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 25
    guidance: float = 5.0  # classifier-free guidance scale; 1 turns guidance off
    width: int | None = None  # None: the model's native size
    height: int | None = None


def native_size(pipe: StableDiffusionPipeline) -> int:
    """The side the model was made for. A UNet's and SD3's transformer's configs name it in latents; FLUX's
    transformer has no size, so its VAE's config names it in pixels (1024 on FLUX.1, its pipeline's default too)."""
    if isinstance(pipe, FluxPipeline):
        return pipe.vae.config.sample_size or pipe.default_sample_size * pipe.vae_scale_factor
    side = pipe.default_sample_size if is_transformer(pipe) else pipe.unet.config.sample_size
    return side * pipe.vae_scale_factor


def size_step(pipe: StableDiffusionPipeline) -> int:
    """Image sides must be multiples of this: the VAE's and the UNet's downsampling together, or the VAE's and the
    transformer's patches (FLUX packs 2x2 latents)."""
    if is_transformer(pipe):
        return pipe.vae_scale_factor * getattr(pipe, "patch_size", 2)
    return pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


def check_settings(pipe: StableDiffusionPipeline, s: GenerationSettings) -> GenerationSettings:
    """Validates the settings for this pipeline and fills in the size; raises ValueError with a hint."""
    if not isinstance(s.prompt, str) or not s.prompt.strip():
        raise ValueError("The prompt is empty: describe what to generate, e.g. 'a red circle on grass'.")
    for name, text in (("prompt", s.prompt), ("negative prompt", s.negative_prompt or "")):
        if len(text) > MAX_PROMPT_CHARS:
            raise ValueError(f"The {name} has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}.")
    if not (0 <= int(s.seed) <= MAX_SEED) or int(s.seed) != s.seed:
        raise ValueError(f"Seed {s.seed} is out of range: use a whole number from 0 to {MAX_SEED}.")
    if not (1 <= int(s.steps) <= MAX_STEPS) or int(s.steps) != s.steps:
        raise ValueError(f"Steps {s.steps} is out of range: use 1 to {MAX_STEPS} (25 is a good default).")
    if not (0 <= s.guidance <= 30):
        raise ValueError(f"Guidance {s.guidance} is out of range: use 0 to 30 (1 turns guidance off).")
    native, step = native_size(pipe), size_step(pipe)
    width, height = s.width or native, s.height or native
    for name, side in (("width", width), ("height", height)):
        if side % step or not (step <= side <= 4 * native):
            raise ValueError(
                f"The {name} {side} does not suit this model: use a multiple of {step} "
                f"from {step} to {4 * native} (native size {native})."
            )
    return replace(s, seed=int(s.seed), steps=int(s.steps), width=int(width), height=int(height))


def unknown_words(pipe: StableDiffusionPipeline, prompt: str) -> list[str]:
    """Words of the prompt that the embedded model never saw in training ([] for other models)."""
    world = world_of(pipe)
    return world.unknown_words(prompt) if world else []


@torch.no_grad()
def generate(
    pipe: StableDiffusionPipeline,
    settings: GenerationSettings,
    seeds: list[int] | None = None,
    on_step=None,
) -> list[Image.Image]:
    """Generates one image per seed (default: settings.seed) in one batched call.

    ``on_step(step, total)`` is called after each denoising step (for progress bars).
    """
    seeds = [settings.seed] if seeds is None else seeds
    return generate_pairs(pipe, settings, [settings.prompt] * len(seeds), seeds, on_step)


@torch.no_grad()
def generate_pairs(pipe: StableDiffusionPipeline, settings: GenerationSettings, prompts: list[str], seeds: list[int],
                   on_step=None) -> list[Image.Image]:
    """One image per (prompt, seed) pair in one batched call, the settings' other values for all (their prompt
    and seed unused): each image has its own CPU generator, so a pair draws the image it draws alone."""
    if not prompts or len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts and {len(seeds)} seeds: pass one seed per prompt, at least one")
    pairs = [check_settings(pipe, replace(settings, prompt=prompt, seed=seed)) for prompt, seed in zip(prompts, seeds)]
    s = pairs[0]
    generators = [torch.Generator("cpu").manual_seed(pair.seed) for pair in pairs]

    def callback(pipe_, step, timestep, tensors):
        if on_step:
            on_step(step + 1, s.steps)
        return tensors

    return pipe(
        [pair.prompt for pair in pairs],
        negative_prompt=[s.negative_prompt] * len(pairs) if s.negative_prompt else None,
        num_inference_steps=s.steps,
        guidance_scale=s.guidance,
        width=s.width,
        height=s.height,
        generator=generators,
        callback_on_step_end=callback,
    ).images


@torch.no_grad()
def generate_many(pipe: StableDiffusionPipeline, prompts: list[str], seeds: list[int], steps: int = 25,
                  guidance: float = 5.0, batch: int = 32) -> list[Image.Image]:
    """One image per (prompt, seed) pair, in batched calls: for evaluations over many prompts."""
    images = []
    for start in range(0, len(prompts), batch):
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[start:start + batch]]
        images += pipe(prompts[start:start + batch], num_inference_steps=steps, guidance_scale=guidance,
                       generator=generators).images
    return images
