"""The few diffusion operations that erasure, inversion and the attack all build on.

Prompts as the UNet reads them (`encode`, a `Text`) and where a concept's tokens sit in them
(`concept_positions`), the UNet's prediction under them (`denoise`), latents of a concept
(`reference_latents`: the user's images or the model's own) and a latent noised to a random
training step (`noisy`), written once so that every loss in `fmn.erase`, `fmn.inversion` and
`fmn.attack` reads prompts and noises the same way, on SD 1.x/2.x and on SDXL.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline

from .models import is_sdxl, is_transformer

__all__ = ["Text", "encode", "denoise", "concept_positions", "reference_latents", "noisy", "text_segments"]

# SD3's and FLUX's text sequence: the tokenizers whose tokens the joint attention reads, in order; the last is T5's
JOINT_TEXT = {"StableDiffusion3Pipeline": ("tokenizer", "tokenizer_3"), "FluxPipeline": ("tokenizer_2",)}

MAX_BATCH = 16  # images a pipeline call draws at once; the generator's stream is the same as one by one


@dataclass
class Text:
    """A batch of prompts as the denoiser reads them: the hidden states its cross-attention (SD3's, FLUX's joint
    attention) attends to, and on SDXL, SD3 and FLUX the pooled CLIP projection it also takes."""

    states: torch.Tensor  # (B, 77, D); SDXL: both encoders' penultimate states side by side; SD3, FLUX: `text_segments`
    pooled: torch.Tensor | None = None  # SDXL, SD3, FLUX: (B, P)

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, rows) -> "Text":
        return Text(self.states[rows], None if self.pooled is None else self.pooled[rows])

    def expand(self, n: int) -> "Text":
        """One prompt's rows repeated n times (a view, as `Tensor.expand`)."""
        return Text(self.states.expand(n, -1, -1), None if self.pooled is None else self.pooled.expand(n, -1))

    @staticmethod
    def cat(texts: list["Text"]) -> "Text":
        pooled = None if texts[0].pooled is None else torch.cat([t.pooled for t in texts])
        return Text(torch.cat([t.states for t in texts]), pooled)


def encode(pipe: StableDiffusionPipeline, prompts: list[str]) -> Text:
    """The prompts padded to the tokenizer's length, read by the text encoder(s) as generation reads them."""
    if is_transformer(pipe):
        return _encode_joint(pipe, prompts)
    if is_sdxl(pipe):
        states, _, pooled, _ = pipe.encode_prompt(prompts, device=pipe.device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return Text(states, pooled)
    ids = pipe.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt").input_ids
    # the encoder's own device: pipe.device looks through every component's modules, a cost on each step of a loop
    return Text(pipe.text_encoder(ids.to(pipe.text_encoder.device))[0])


def _encode_joint(pipe, prompts: list[str]) -> Text:
    """SD3's and FLUX's text sequence (`text_segments`) and pooled CLIP projection, as their pipelines build them."""
    device = pipe.text_encoder.device  # not pipe.device: see `encode`
    if type(pipe).__name__ == "FluxPipeline":
        states, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, device=device)
    else:
        states, _, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, prompt_3=None, device=device,
                                                  do_classifier_free_guidance=False)
    return Text(states, pooled)


def text_segments(pipe) -> list[tuple[object, int, int]]:
    """(tokenizer, first position, positions) per encoder of the text sequence the denoiser reads: a UNet's one CLIP
    tokenizer's 77 positions (SDXL: both encoders' states side by side, one tokenizer's positions); SD3's CLIP then
    T5, FLUX's T5 alone, T5's padded to the pipeline's default ``max_sequence_length`` as generation pads it."""
    if not is_transformer(pipe):
        return [(pipe.tokenizer, 0, pipe.tokenizer.model_max_length)]
    names = JOINT_TEXT[type(pipe).__name__]
    t5_length = inspect.signature(pipe.__call__).parameters["max_sequence_length"].default
    segments, start = [], 0
    for name in names:
        length = t5_length if name == names[-1] else getattr(pipe, name).model_max_length
        segments.append((getattr(pipe, name), start, length))
        start += length
    return segments


def denoise(pipe: StableDiffusionPipeline, latents: torch.Tensor, t: torch.Tensor, text: Text) -> torch.Tensor:
    """The UNet's prediction for noisy latents (B, 4, h, w) at steps t under the prompts. SDXL's UNet also
    takes the pooled text and the image size (original = target size, no crop), as its pipeline passes them."""
    if text.pooled is None:
        return pipe.unet(latents, t, text.states).sample
    height, width = (side * pipe.vae_scale_factor for side in latents.shape[-2:])
    size = torch.tensor([height, width, 0, 0, height, width], device=latents.device, dtype=text.pooled.dtype)
    added = {"text_embeds": text.pooled, "time_ids": size.expand(len(latents), -1)}
    return pipe.unet(latents, t, text.states, added_cond_kwargs=added).sample


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
    t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (len(latents),),
                      generator=generator).to(pipe.device)
    return pipe.scheduler.add_noise(latents, noise, t), noise, t
