"""Erased Stable Diffusion (ESD), Gandikota et al. 2023, arXiv 2303.07345.

The edited model, prompted with the concept, learns to predict what the original model
predicts when guided *away* from it: target = eps*(z,t,"") - eta * (eps*(z,t,c) - eps*(z,t,"")).
ESD-x trains the cross-attention (attn2) only, for concepts tied to a word (styles, names);
ESD-u trains everything else, for concepts that must go whatever the wording.

Faster than the paper's recipe, same objective: the frozen model samples a batch of
trajectories once, and both of its predictions at every step are cached; training then
draws (latent, step) pairs from the cache, so no frozen forward runs during training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from .common import attn2_modules, encode, unet_modules_except_attn2

__all__ = ["ESDConfig", "ESD"]


@dataclass
class ESDConfig:
    variant: str = "x"  # "x": attn2 only; "u": everything but attn2
    eta: float = 1.0  # negative guidance (paper: 1.0; later releases: 2.0)
    steps: int = 200  # paper: 1000 at batch 1; ours: 200 at batch 4 on cached latents
    lr: float = 1e-3  # paper: 1e-5 on full weights; a rank-4 LoRA needs a larger step
    rank: int = 4
    batch: int = 4
    trajectories: int = 8  # ours: sampled once by the frozen model, reused by every step
    sample_steps: int = 50  # paper: 50 DDIM steps
    guidance: float = 3.0  # paper: guidance of about 3 while sampling the trajectories
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0


@dataclass
class Trajectories:
    """Every step of the frozen model's trajectories: (N, ...) tensors, N = concepts x trajectories x steps."""

    latents: torch.Tensor  # (N, 4, h, w)
    timesteps: torch.Tensor  # (N,)
    eps_uncond: torch.Tensor  # (N, 4, h, w)
    eps_concept: torch.Tensor  # (N, 4, h, w)
    concept: torch.Tensor  # (N,) index into `embeddings`
    embeddings: torch.Tensor  # (concepts, 77, D)


class ESD:
    def __init__(self, concepts: list[str], config: ESDConfig):
        self.concepts, self.config = concepts, config
        self.name = f"esd-{config.variant}"

    def targets(self, pipe: StableDiffusionPipeline) -> dict[str, list[str]]:
        pick = attn2_modules if self.config.variant == "x" else unet_modules_except_attn2
        return {"unet": pick(pipe.unet)}

    def references(self, pipe: StableDiffusionPipeline, generator: torch.Generator) -> Trajectories:
        cfg, unet = self.config, pipe.unet
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(cfg.sample_steps)
        concepts = encode(pipe, self.concepts)  # (C, 77, D)
        empty = encode(pipe, [""])  # (1, 77, D)
        side = unet.config.sample_size
        rows = {k: [] for k in ("latents", "timesteps", "eps_uncond", "eps_concept", "concept")}
        for i, cond in enumerate(concepts):
            z = torch.randn((cfg.trajectories, unet.config.in_channels, side, side), generator=generator)
            z = z.to(pipe.device, unet.dtype) * scheduler.init_noise_sigma
            text = torch.cat([empty.expand(len(z), -1, -1), cond[None].expand(len(z), -1, -1)])
            for t in scheduler.timesteps:
                eps_u, eps_c = unet(torch.cat([z, z]), t, text).sample.chunk(2)
                for key, value in (("latents", z), ("eps_uncond", eps_u), ("eps_concept", eps_c)):
                    rows[key].append(value)
                rows["timesteps"].append(t.repeat(len(z)))
                rows["concept"].append(torch.full((len(z),), i))
                z = scheduler.step(eps_u + cfg.guidance * (eps_c - eps_u), t, z).prev_sample
        return Trajectories(**{k: torch.cat(v) for k, v in rows.items()}, embeddings=concepts)

    def loss(self, pipe: StableDiffusionPipeline, refs: Trajectories, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(refs.latents), (self.config.batch,), generator=generator)
        target = refs.eps_uncond[idx] - self.config.eta * (refs.eps_concept[idx] - refs.eps_uncond[idx])
        pred = pipe.unet(refs.latents[idx], refs.timesteps[idx].to(pipe.device), refs.embeddings[refs.concept[idx]]).sample
        return torch.nn.functional.mse_loss(pred.float(), target.float())
