"""Erased Stable Diffusion (ESD), Gandikota et al. 2023, arXiv 2303.07345.

The edited model, prompted with the concept, learns to predict what the original model
predicts when guided *away* from it: target = eps*(z,t,"") - eta * (eps*(z,t,c) - eps*(z,t,"")).
With a guide concept g (concept correction, ``guide``), g takes the empty prompt's place, so the
concept is steered away from itself and toward g: target = eps*(z,t,g) - eta * (eps*(z,t,c) - eps*(z,t,g)).
Two registered methods share the objective and differ in the layers they train: ESD-x the
cross-attention (attn2) only, for concepts tied to a word (styles, names); ESD-u everything
else, for concepts that must go whatever the wording.

Faster than the paper's recipe, same objective: the frozen model samples a batch of
trajectories once, and both of its predictions at every step are cached; training then
draws (latent, step) pairs from the cache, so no frozen forward runs during training.
(The paper samples a fresh trajectory every step; `fmn.bench.speed` measures that recipe.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from ..diffusion import Text, denoise, encode
from .layers import attn2_modules, unet_modules_except_attn2
from .method import ErasureMethod, TrainingConfig, register

__all__ = ["ESDConfig", "ESD", "ESDX", "ESDU"]


@dataclass
class ESDConfig(TrainingConfig):
    steps: int = 400  # paper: 1000 at batch 1; ours: 400 at batch 4 on cached latents
    lr: float = 5e-3  # paper: 1e-5 on full weights; a rank-4 LoRA needs a far larger step (tuned on the embedded model)
    eta: float = 2.0  # negative guidance (paper: 1.0; later releases: 2.0)
    batch: int = 4
    trajectories: int = 8  # ours: sampled once by the frozen model, reused by every step
    sample_steps: int = 50  # paper: 50 DDIM steps
    guidance: float = 3.0  # paper: guidance of about 3 while sampling the trajectories


@dataclass
class Trajectories:
    """Every step of the frozen model's trajectories: (N, ...) tensors, N = concepts x trajectories x steps."""

    latents: torch.Tensor  # (N, 4, h, w)
    timesteps: torch.Tensor  # (N,)
    eps_guide: torch.Tensor  # (N, 4, h, w) at the empty prompt, or the guide concept
    eps_concept: torch.Tensor  # (N, 4, h, w)
    concept: torch.Tensor  # (N,) index into the concepts


class ESD(ErasureMethod):
    """The objective both variants train; a subclass names the layers (`layers`)."""

    Config = ESDConfig

    @staticmethod
    def layers(unet) -> list[str]:
        raise NotImplementedError

    def targets(self, pipe: StableDiffusionPipeline) -> dict[str, list[str]]:
        return {"unet": self.layers(pipe.unet)}

    def scheduler(self, pipe: StableDiffusionPipeline) -> DDIMScheduler:
        """The sampler of the frozen model's trajectories."""
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(self.config.sample_steps)
        return scheduler

    def noise(self, unet, n: int, generator: torch.Generator, scheduler: DDIMScheduler) -> torch.Tensor:
        side = unet.config.sample_size
        z = torch.randn((n, unet.config.in_channels, side, side), generator=generator)
        return z.to(unet.device, unet.dtype) * scheduler.init_noise_sigma

    def trajectory(self, pipe: StableDiffusionPipeline, scheduler: DDIMScheduler, z: torch.Tensor, guide: Text,
                   cond: Text):
        """Yields (t, z, eps_guide, eps_concept) at every step of the DDIM sampling from z, guided toward the
        concept (one prompt) and away from the guide (the empty prompt: ordinary classifier-free guidance)."""
        text = Text.cat([guide.expand(len(z)), cond.expand(len(z))])
        for t in scheduler.timesteps:
            eps_g, eps_c = denoise(pipe, torch.cat([z, z]), t, text).chunk(2)
            yield t, z, eps_g, eps_c
            z = scheduler.step(eps_g + self.config.guidance * (eps_c - eps_g), t, z).prev_sample

    def references(self, pipe: StableDiffusionPipeline, generator: torch.Generator) -> Trajectories:
        cfg, scheduler = self.config, self.scheduler(pipe)
        concepts = encode(pipe, self.concepts)  # C prompts
        guide = encode(pipe, [cfg.guide])
        rows = {k: [] for k in ("latents", "timesteps", "eps_guide", "eps_concept", "concept")}
        for i in range(len(concepts)):
            z = self.noise(pipe.unet, cfg.trajectories, generator, scheduler)
            for t, z, eps_g, eps_c in self.trajectory(pipe, scheduler, z, guide, concepts[i:i + 1]):
                for key, value in (("latents", z), ("eps_guide", eps_g), ("eps_concept", eps_c)):
                    rows[key].append(value)
                rows["timesteps"].append(t.repeat(len(z)))
                rows["concept"].append(torch.full((len(z),), i))
        return Trajectories(**{k: torch.cat(v) for k, v in rows.items()})

    def draw(self, refs: Trajectories, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """One batch of (latents, steps, frozen eps at the guide, frozen eps at the concept, concept indices)."""
        idx = torch.randint(0, len(refs.latents), (self.config.batch,), generator=generator)
        return refs.latents[idx], refs.timesteps[idx], refs.eps_guide[idx], refs.eps_concept[idx], refs.concept[idx]

    def loss(self, pipe: StableDiffusionPipeline, refs, generator: torch.Generator) -> torch.Tensor:
        latents, timesteps, eps_g, eps_c, concept = self.draw(refs, generator)
        target = eps_g - self.config.eta * (eps_c - eps_g)
        text = encode(pipe, [self.concepts[i] for i in concept])  # read every step, so that adversarial words reach it
        pred = denoise(pipe, latents, timesteps.to(pipe.device), text)
        return torch.nn.functional.mse_loss(pred.float(), target.float())


@register
class ESDX(ESD):
    name = "esd-x"
    layers = staticmethod(attn2_modules)


@register
class ESDU(ESD):
    name = "esd-u"
    layers = staticmethod(unet_modules_except_attn2)
