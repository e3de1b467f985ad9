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
The trajectories and the cache come before the adapter exists (`loop.py`): the frozen predictions are the
pipeline's own, with no second copy of the model.

Given images of the (first) concept, the word they show is learned by textual inversion on the unedited model
(`learned_word.py`) and erased as one more concept: its own trajectories and predictions, its prompt read with the
learned embeddings in the name's place, in training too.

On SD3 and FLUX (flow matching) the same objective reads the transformer's velocity as the noise it implies
(`fmn.diffusion.as_noise`), the trajectories are Euler steps of the velocity (`fmn.diffusion.sampler`), guided as
on a UNet (on FLUX on top of its distilled guidance), and ESD-x trains each joint block's text-side key and value
projections (``add_k_proj``, ``add_v_proj``; FLUX: its double-stream blocks'), the layers UCE edits there. They are
the analogue of cross-attention's keys and values: the weights that carry the text, and only the text, to a joint
block's image tokens. The joint attention's other projections (``to_q``, ``to_k``, ``to_v``, ``to_out``) are
shared with the image tokens' self-attention, so training them is ESD-u's side; the text-side query and output
(``add_q_proj``, ``to_add_out``) only feed the next block's text stream; FLUX's single-stream blocks share every
weight between text and image. ESD-u erases UNet models only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline

from ..diffusion import Text, as_noise, denoise, encode, latent_noise, prediction, sampler
from ..inversion import Inverted, inverted
from ..models import is_transformer
from .joint import joint_projections
from .layers import attn2_modules, unet_modules_except_attn2
from .learned_word import LearnedWordConfig, invert_images
from .method import ErasureMethod, TrainingConfig, register

__all__ = ["ESDConfig", "ESD", "ESDX", "ESDU"]


@dataclass
class ESDConfig(TrainingConfig, LearnedWordConfig):
    steps: int = 400  # paper: 1000 at batch 1; ours: 400 at batch 4 on cached latents
    lr: float = 5e-3  # paper: 1e-5 on full weights; a rank-4 LoRA needs a far larger step (tuned on the embedded model)
    eta: float = 2.0  # negative guidance (paper: 1.0; later releases: 2.0)
    batch: int = 4
    trajectories: int = 8  # ours: sampled once by the frozen model, reused by every step
    sample_steps: int = 50  # paper: 50 DDIM steps
    guidance: float = 3.0  # paper: guidance of about 3 while sampling the trajectories

    def check(self) -> None:
        TrainingConfig.check(self)
        LearnedWordConfig.check(self)


@dataclass
class Trajectories:
    """Every step of the frozen model's trajectories: (N, ...) tensors, N = concepts x trajectories x steps."""

    latents: torch.Tensor  # (N, c, h, w)
    timesteps: torch.Tensor  # (N,)
    eps_guide: torch.Tensor  # (N, c, h, w) at the empty prompt, or the guide concept
    eps_concept: torch.Tensor  # (N, c, h, w)
    concept: torch.Tensor  # (N,) index into the concepts; one past the last: the word learned from the images
    learned: Inverted | None = None  # that word's embeddings (the first concept's tokens), if images were given


class ESD(ErasureMethod):
    """The objective both variants train; a subclass names the layers (`targets`)."""

    Config = ESDConfig

    @property
    def learns_new_words(self) -> bool:
        return self.images is not None  # the word is learned from the images

    def texts(self, pipe: StableDiffusionPipeline, concept: torch.Tensor, learned: Inverted | None) -> Text:
        """The prompts of the concept indices as the model reads them now: each concept's name, and past the last
        concept, the first one's name read with the `learned` embeddings (one prompt, encoded once)."""
        names = [self.concepts[int(i) % len(self.concepts)] for i in concept]
        text = encode(pipe, names)
        is_word = (concept == len(self.concepts)).to(text.states.device)
        if learned is None or not is_word.any():
            return text
        with inverted(pipe, learned):
            word = encode(pipe, self.concepts[:1])

        def pick(by_name: torch.Tensor, by_word: torch.Tensor) -> torch.Tensor:
            return torch.where(is_word.view(-1, *[1] * (by_name.dim() - 1)), by_word, by_name)

        return Text(pick(text.states, word.states), None if text.pooled is None else pick(text.pooled, word.pooled))

    def trajectory(self, pipe: StableDiffusionPipeline, z: torch.Tensor, guide: Text, cond: Text):
        """Yields (t, z, eps_guide, eps_concept) at every step of the sampling from z, guided toward the concept
        (one prompt) and away from the guide (the empty prompt: ordinary classifier-free guidance). On flow
        matching its first step, pure noise (s = 1), is sampled but not yielded: there every prediction reads as the
        latent itself (`as_noise`), so the loss would be 0 whatever the model did."""
        scheduler = sampler(pipe, self.config.sample_steps)  # its own: a flow-matching sampler counts its steps
        text = Text.cat([guide.expand(len(z)), cond.expand(len(z))])
        for t in scheduler.timesteps:
            both, steps = torch.cat([z, z]), t.expand(2 * len(z)).to(z.device)
            predicted = prediction(pipe, both, steps, text)  # (2B, c, h, w): at the guide, then at the concept
            eps_g, eps_c = as_noise(pipe, both, steps, predicted).chunk(2)
            if not (is_transformer(pipe) and int(t) == pipe.scheduler.config.num_train_timesteps):
                yield t, z, eps_g, eps_c
            out_g, out_c = predicted.chunk(2)
            z = scheduler.step(out_g + self.config.guidance * (out_c - out_g), t, z).prev_sample

    def references(self, pipe: StableDiffusionPipeline, generator: torch.Generator) -> Trajectories:
        cfg = self.config
        learned = None if self.images is None else invert_images(pipe, self.concepts[0], self.images, cfg, cfg.seed)
        indices = torch.arange(len(self.concepts) + (learned is not None))
        concepts = self.texts(pipe, indices, learned)  # C prompts, and the learned word's
        guide = encode(pipe, [cfg.guide])
        rows = {k: [] for k in ("latents", "timesteps", "eps_guide", "eps_concept", "concept")}
        for i in range(len(concepts)):
            z = latent_noise(pipe, cfg.trajectories, generator)
            for t, z, eps_g, eps_c in self.trajectory(pipe, z, guide, concepts[i:i + 1]):
                for key, value in (("latents", z), ("eps_guide", eps_g), ("eps_concept", eps_c)):
                    rows[key].append(value)
                rows["timesteps"].append(t.repeat(len(z)))
                rows["concept"].append(torch.full((len(z),), i))
        return Trajectories(**{k: torch.cat(v) for k, v in rows.items()}, learned=learned)

    def draw(self, refs: Trajectories, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """One batch of (latents, steps, frozen eps at the guide, frozen eps at the concept, concept indices)."""
        idx = torch.randint(0, len(refs.latents), (self.config.batch,), generator=generator)
        return refs.latents[idx], refs.timesteps[idx], refs.eps_guide[idx], refs.eps_concept[idx], refs.concept[idx]

    def loss(self, pipe: StableDiffusionPipeline, refs, generator: torch.Generator) -> torch.Tensor:
        latents, timesteps, eps_g, eps_c, concept = self.draw(refs, generator)
        target = eps_g - self.config.eta * (eps_c - eps_g)
        text = self.texts(pipe, concept, refs.learned)  # read every step, so that adversarial words reach it
        pred = denoise(pipe, latents, timesteps.to(pipe.device), text)
        return torch.nn.functional.mse_loss(pred.float(), target.float())


@register
class ESDX(ESD):
    name = "esd-x"
    on_transformers = True  # the joint blocks' text-side keys and values (module docstring)

    def targets(self, pipe: StableDiffusionPipeline) -> dict[str, list[str]]:
        """What the image reads the text through: a UNet's cross-attention (attn2), SD3's and FLUX's joint blocks'
        text-side key and value projections."""
        if is_transformer(pipe):
            return {"transformer": joint_projections(pipe.transformer)}
        return {"unet": attn2_modules(pipe.unet)}


@register
class ESDU(ESD):
    name = "esd-u"

    def targets(self, pipe: StableDiffusionPipeline) -> dict[str, list[str]]:
        return {"unet": unet_modules_except_attn2(pipe.unet)}
