"""Erased Stable Diffusion (ESD), Gandikota et al. 2023, arXiv 2303.07345.

The edited model, prompted with the concept, learns to predict what the original model
predicts when guided *away* from it: target = eps*(z,t,"") - eta * (eps*(z,t,c) - eps*(z,t,"")).
With a guide concept g (concept correction, ``guide``), g takes the empty prompt's place, so the
concept is steered away from itself and toward g: target = eps*(z,t,g) - eta * (eps*(z,t,c) - eps*(z,t,g)).
ESD-x trains the cross-attention (attn2) only, for concepts tied to a word (styles, names);
ESD-u trains everything else, for concepts that must go whatever the wording.

Faster than the paper's recipe, same objective: the frozen model samples a batch of
trajectories once, and both of its predictions at every step are cached; training then
draws (latent, step) pairs from the cache, so no frozen forward runs during training.
``cache_trajectories=False`` is the paper's way, kept as the speed benchmark's baseline:
every step the frozen model samples a fresh trajectory to a random step and predicts there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from .common import attn2_modules, encode, unet_modules_except_attn2
from .loop import frozen

__all__ = ["ESDConfig", "ESD"]


@dataclass
class ESDConfig:
    variant: str = "x"  # "x": attn2 only; "u": everything but attn2
    eta: float = 2.0  # negative guidance (paper: 1.0; later releases: 2.0)
    steps: int = 400  # paper: 1000 at batch 1; ours: 400 at batch 4 on cached latents
    lr: float = 5e-3  # paper: 1e-5 on full weights; a rank-4 LoRA needs a far larger step (tuned on the embedded model)
    rank: int = 4
    batch: int = 4
    trajectories: int = 8  # ours: sampled once by the frozen model, reused by every step
    guide: str = ""  # steer toward this concept instead of away to nothing ("": the paper's empty prompt)
    cache_trajectories: bool = True  # False: the paper's fresh trajectory per step (many frozen forwards)
    sample_steps: int = 50  # paper: 50 DDIM steps
    guidance: float = 3.0  # paper: guidance of about 3 while sampling the trajectories
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    preserve: list[str] = field(default_factory=list)  # concepts to keep (default: the world's other names)
    preserve_weight: float = 1.0  # ours: the preservation term's weight (0: none, as in the paper)
    seed: int = 0


@dataclass
class Trajectories:
    """Every step of the frozen model's trajectories: (N, ...) tensors, N = concepts x trajectories x steps."""

    latents: torch.Tensor  # (N, 4, h, w)
    timesteps: torch.Tensor  # (N,)
    eps_guide: torch.Tensor  # (N, 4, h, w) at the empty prompt, or the guide concept
    eps_concept: torch.Tensor  # (N, 4, h, w)
    concept: torch.Tensor  # (N,) index into `embeddings`
    embeddings: torch.Tensor  # (concepts, 77, D)


@dataclass
class Live:
    """No cache (the paper's recipe): what each step needs to sample afresh with the frozen model."""

    unedited: StableDiffusionPipeline  # a frozen copy, or the pipeline itself (its adapter is switched off)
    scheduler: DDIMScheduler
    embeddings: torch.Tensor  # (concepts, 77, D)
    guide: torch.Tensor  # (1, 77, D): the empty prompt, or the guide concept


class ESD:
    def __init__(self, concepts: list[str], config: ESDConfig):
        self.concepts, self.config = concepts, config
        self.name = f"esd-{config.variant}"

    def targets(self, pipe: StableDiffusionPipeline) -> dict[str, list[str]]:
        pick = attn2_modules if self.config.variant == "x" else unet_modules_except_attn2
        return {"unet": pick(pipe.unet)}

    def _noise(self, unet, n: int, generator: torch.Generator, scheduler: DDIMScheduler) -> torch.Tensor:
        side = unet.config.sample_size
        z = torch.randn((n, unet.config.in_channels, side, side), generator=generator)
        return z.to(unet.device, unet.dtype) * scheduler.init_noise_sigma

    def _trajectory(self, unet, scheduler: DDIMScheduler, z: torch.Tensor, guide: torch.Tensor, cond: torch.Tensor):
        """Yields (t, z, eps_guide, eps_concept) at every step of the DDIM sampling from z, guided
        toward the concept and away from the guide (the empty prompt: ordinary classifier-free guidance)."""
        text = torch.cat([guide.expand(len(z), -1, -1), cond[None].expand(len(z), -1, -1)])
        for t in scheduler.timesteps:
            eps_g, eps_c = unet(torch.cat([z, z]), t, text).sample.chunk(2)
            yield t, z, eps_g, eps_c
            z = scheduler.step(eps_g + self.config.guidance * (eps_c - eps_g), t, z).prev_sample

    def references(self, pipe: StableDiffusionPipeline, generator: torch.Generator) -> Trajectories | Live:
        cfg, unet = self.config, pipe.unet
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(cfg.sample_steps)
        concepts = encode(pipe, self.concepts)  # (C, 77, D)
        guide = encode(pipe, [cfg.guide])  # (1, 77, D)
        if not cfg.cache_trajectories:
            return Live(pipe, scheduler, concepts, guide)
        rows = {k: [] for k in ("latents", "timesteps", "eps_guide", "eps_concept", "concept")}
        for i, cond in enumerate(concepts):
            z = self._noise(unet, cfg.trajectories, generator, scheduler)
            for t, z, eps_g, eps_c in self._trajectory(unet, scheduler, z, guide, cond):
                for key, value in (("latents", z), ("eps_guide", eps_g), ("eps_concept", eps_c)):
                    rows[key].append(value)
                rows["timesteps"].append(t.repeat(len(z)))
                rows["concept"].append(torch.full((len(z),), i))
        return Trajectories(**{k: torch.cat(v) for k, v in rows.items()}, embeddings=concepts)

    def _cached(self, refs: Trajectories, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(0, len(refs.latents), (self.config.batch,), generator=generator)
        return (refs.latents[idx], refs.timesteps[idx], refs.eps_guide[idx], refs.eps_concept[idx],
                refs.embeddings[refs.concept[idx]])

    @torch.no_grad()
    def _fresh(self, refs: Live, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """The frozen model samples `batch` new trajectories of one concept to a random step."""
        which = int(torch.randint(0, len(refs.embeddings), (1,), generator=generator))
        stop = int(torch.randint(0, self.config.sample_steps, (1,), generator=generator))
        with frozen(refs.unedited) as unedited:
            z = self._noise(unedited.unet, self.config.batch, generator, refs.scheduler)
            steps = self._trajectory(unedited.unet, refs.scheduler, z, refs.guide, refs.embeddings[which])
            for i, (t, z, eps_g, eps_c) in enumerate(steps):
                if i == stop:
                    break
        return z, t.repeat(len(z)), eps_g, eps_c, refs.embeddings[which].expand(len(z), -1, -1)

    def loss(self, pipe: StableDiffusionPipeline, refs: Trajectories | Live, generator: torch.Generator) -> torch.Tensor:
        draw = self._cached if self.config.cache_trajectories else self._fresh
        latents, timesteps, eps_g, eps_c, text = draw(refs, generator)
        target = eps_g - self.config.eta * (eps_c - eps_g)
        pred = pipe.unet(latents, timesteps.to(pipe.device), text).sample
        return torch.nn.functional.mse_loss(pred.float(), target.float())
