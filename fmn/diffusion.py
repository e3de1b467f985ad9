"""The few diffusion operations that erasure, inversion and the attack all build on.

Prompts as the UNet reads them (`encode`, a `Text`) and where a concept's tokens sit in them
(`concept_positions`), the UNet's prediction under them (`denoise`), latents of a concept
(`reference_latents`: the user's images or the model's own), a latent noised to a random
training step (`noisy`) and a sampler's start and steps (`latent_noise`, `sampler`), written once
so that every loss in `fmn.erase`, `fmn.inversion` and `fmn.attack` reads prompts and noises the
same way, on SD 1.x/2.x, SDXL, SD3 and FLUX (flow matching: the transformer's velocity read as the
noise it implies).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusionPipeline

from .generate import native_size
from .models import is_sdxl, is_transformer

__all__ = ["Text", "encode", "denoise", "prediction", "as_noise", "sampler", "latent_noise", "concept_positions",
           "reference_latents", "noisy", "text_segments"]

# SD3's and FLUX's text sequence: the tokenizers whose tokens the joint attention reads, in order; the last is T5's
JOINT_TEXT = {"StableDiffusion3Pipeline": ("tokenizer", "tokenizer_3"), "FluxPipeline": ("tokenizer_2",)}

FLUX_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale, which FLUX.1-dev's distilled guidance embeds
TOKEN_CACHE = 10_000  # prompts whose token ids `encode` keeps per tokenizer
_TOKEN_IDS: WeakKeyDictionary = WeakKeyDictionary()  # tokenizer -> (its vocabulary size, {prompt: (ids, length)})
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


def encode(pipe: StableDiffusionPipeline, prompts: list[str], padding_rows: int = -1) -> Text:
    """The prompts padded to the tokenizer's length, read by the text encoder(s) as generation reads them.
    `padding_rows` (SD 1.x/2.x, one CLIP encoder): only the rows up to the longest prompt's end token and that many
    padding rows after it; CLIP's attention is causal, so they are the whole sequence's first rows."""
    if is_transformer(pipe):
        return _encode_joint(pipe, prompts)
    if is_sdxl(pipe):
        states, _, pooled, _ = pipe.encode_prompt(prompts, device=pipe.device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return Text(states, pooled)
    ids, longest = _token_ids(pipe.tokenizer, prompts)
    if padding_rows >= 0:
        ids = ids[:, :longest + padding_rows]
    # the encoder's own device: pipe.device looks through every component's modules, a cost on each step of a loop
    return Text(pipe.text_encoder(ids.to(pipe.text_encoder.device))[0])


def _token_ids(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, int]:
    """(B, positions) token ids padded to the tokenizer's length, and the longest prompt's length with its end token.
    Each prompt is tokenized once per tokenizer and vocabulary size: a training loop encodes the same prompts step
    after step. The cache starts again past `TOKEN_CACHE` prompts."""
    size, known = _TOKEN_IDS.get(tokenizer, (None, {}))
    if size != len(tokenizer) or len(known) > TOKEN_CACHE:
        known = {}
        _TOKEN_IDS[tokenizer] = (len(tokenizer), known)
    new = [p for p in dict.fromkeys(prompts) if p not in known]
    if new:
        tokens = tokenizer(new, padding="max_length", truncation=True, return_tensors="pt")
        known.update(zip(new, zip(tokens.input_ids, tokens.attention_mask.sum(1).tolist())))
    return torch.stack([known[p][0] for p in prompts]), max(known[p][1] for p in prompts)


def _encode_joint(pipe, prompts: list[str]) -> Text:
    """SD3's and FLUX's text sequence (`text_segments`) and pooled CLIP projection, as their pipelines build them."""
    device = pipe.text_encoder.device  # not pipe.device: see `encode`
    if isinstance(pipe, FluxPipeline):
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
    """The UNet's prediction for noisy latents (B, 4, h, w) at steps t (B,) under the prompts. SD3's and FLUX's
    transformer predict a velocity, returned as the noise it implies (`as_noise`)."""
    return as_noise(pipe, latents, t, prediction(pipe, latents, t, text))


def prediction(pipe: StableDiffusionPipeline, latents: torch.Tensor, t: torch.Tensor, text: Text) -> torch.Tensor:
    """What the denoiser itself predicts for noisy latents (B, 4, h, w) at steps t (B,): what a sampler steps on
    (a UNet's noise or v, SD3's and FLUX's velocity). SDXL's UNet also takes the pooled text and the image size
    (original = target size, no crop), as its pipeline passes them."""
    if is_transformer(pipe):
        return _velocity(pipe, latents, t, text)
    if text.pooled is None:
        return pipe.unet(latents, t, text.states).sample
    height, width = (side * pipe.vae_scale_factor for side in latents.shape[-2:])
    size = torch.tensor([height, width, 0, 0, height, width], device=latents.device, dtype=text.pooled.dtype)
    added = {"text_embeds": text.pooled, "time_ids": size.expand(len(latents), -1)}
    return pipe.unet(latents, t, text.states, added_cond_kwargs=added).sample


def as_noise(pipe: StableDiffusionPipeline, latents: torch.Tensor, t: torch.Tensor,
             predicted: torch.Tensor) -> torch.Tensor:
    """The denoiser's prediction (`prediction`) read as noise. A UNet's as it is. Flow matching: x_t = (1 - s) x_0 +
    s noise at s = t / 1000, and the transformer predicts v = noise - x_0, so the noise it implies is
    x_t + (1 - s) v: every loss written on the noise reads alike on every model."""
    if not is_transformer(pipe):
        return predicted
    return latents + (1 - _sigma(pipe, t, latents)) * predicted


def _sigma(pipe, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Flow matching's noise level s = t / 1000 of each latent, (B, 1, 1, 1) in the latents' dtype."""
    return (t.float() / pipe.scheduler.config.num_train_timesteps).view(-1, 1, 1, 1).to(latents)


def _velocity(pipe, latents: torch.Tensor, t: torch.Tensor, text: Text) -> torch.Tensor:
    """SD3's and FLUX's velocity (B, c, h, w). FLUX's latents are packed 2x2 and positioned as its pipeline does,
    with its default distilled guidance."""
    if not isinstance(pipe, FluxPipeline):
        return pipe.transformer(hidden_states=latents, timestep=t, encoder_hidden_states=text.states,
                                pooled_projections=text.pooled).sample
    b, c, h, w = latents.shape
    packed = pipe._pack_latents(latents, b, c, h, w)  # (B, h/2 * w/2, 4c)
    guidance = (torch.full((b,), FLUX_GUIDANCE, device=latents.device)
                if pipe.transformer.config.guidance_embeds else None)
    velocity = pipe.transformer(
        hidden_states=packed, timestep=t.float() / pipe.scheduler.config.num_train_timesteps, guidance=guidance,
        pooled_projections=text.pooled, encoder_hidden_states=text.states,
        txt_ids=torch.zeros(text.states.shape[1], 3, device=latents.device),
        img_ids=pipe._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype)).sample
    scale = pipe.vae_scale_factor
    return pipe._unpack_latents(velocity, h * scale, w * scale, scale)  # (B, c, h, w)


def sampler(pipe: StableDiffusionPipeline, steps: int) -> DDIMScheduler | FlowMatchEulerDiscreteScheduler:
    """A fresh sampler of `steps` steps over the model's own noise schedule, apart from the pipeline's: DDIM on a
    UNet; on SD3 and FLUX flow matching's Euler steps, FLUX's resolution-dependent shift taken at its config's
    static one (3.0: FLUX.1's at about 1024 px)."""
    if is_transformer(pipe):
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, use_dynamic_shifting=False)
    else:
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    return scheduler


def latent_noise(pipe: StableDiffusionPipeline, n: int, generator: torch.Generator) -> torch.Tensor:
    """n latents of pure noise (n, c, h, w) at the model's native size, where a sampler starts (unpacked on FLUX)."""
    side = native_size(pipe) // pipe.vae_scale_factor
    z = torch.randn((n, pipe.vae.config.latent_channels, side, side), generator=generator)
    denoiser = pipe.transformer if is_transformer(pipe) else pipe.unet
    return z.to(denoiser.device, denoiser.dtype)


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
        return (posterior.mean - (pipe.vae.config.shift_factor or 0.0)) * pipe.vae.config.scaling_factor
    group = max(1, MAX_BATCH // per_prompt)  # prompts per call: one call each costs 4x on 2 CPU cores
    side = native_size(pipe)
    latents = torch.cat([pipe(prompts[i:i + group], num_inference_steps=steps, num_images_per_prompt=per_prompt,
                              height=side, width=side, generator=generator, output_type="latent").images
                         for i in range(0, len(prompts), group)])
    if isinstance(pipe, FluxPipeline):  # its pipeline hands latents back packed
        latents = pipe._unpack_latents(latents, side, side, pipe.vae_scale_factor)
    return latents


def noisy(pipe: StableDiffusionPipeline, latents: torch.Tensor, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean latents (B, 4, h, w) noised to one random training step each, as the denoising loss
    draws them: returns (noisy latents, the noise added, the steps (B,))."""
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (len(latents),),
                      generator=generator).to(pipe.device)
    if is_transformer(pipe):  # flow matching: on the straight line from the latents (t = 0) to the noise (t = 1000)
        sigma = _sigma(pipe, t, latents)
        return (1 - sigma) * latents + sigma * noise, noise, t
    return pipe.scheduler.add_noise(latents, noise, t), noise, t
