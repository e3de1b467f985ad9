"""The one erasure loop every trained method shares: references -> training steps -> patch.

A trained method supplies three things: which layers get a LoRA adapter (``targets``), the
references it computes once with the unedited model (``references``), and the loss of one
step (``loss``). The loop owns the rest: freezing the base weights, the optimizer, a
preservation term (the patched model must still predict what the unedited one did for the
concepts in ``config.preserve``, weighted by ``config.preserve_weight``, and with
``config.keep_attention`` their words' cross-attention maps as they were), progress,
cancellation, a NaN guard that leaves the model as it was, and turning the adapter into a
`Patch`. Its phases are named for `torch.profiler` ("erase.references", "erase.loss", ...).
The unedited model is always the same pipeline with its patches switched off
(`fmn.patch.frozen`), never a second copy.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from diffusers import StableDiffusionPipeline
from torch import nn
from torch.profiler import record_function

from ..attention import install
from ..diffusion import concept_positions, denoise, encode, noisy, reference_latents
from ..patch import Patch, activate, adapter_tensors, components, detach, fingerprint, new_adapter
from .adversarial import Adversary
from .frozen_prefix import cached_prefix
from .merged_lora import merged_lora
from .method import ErasureMethod
from .quick_gelu import fused_quick_gelu

__all__ = ["Progress", "ErasureError", "ErasureCancelled", "Anchors", "train_patch"]

PRESERVE_BATCH = 2  # anchors per step: a second, small forward pass
ANCHOR_STEPS = 25  # denoising steps of the anchors' images


class ErasureError(ValueError):
    """The erasure stopped; the model is as it was before, and the message says why."""


class ErasureCancelled(ErasureError):
    """The user cancelled; the model is as it was before."""


@dataclass
class Progress:
    step: int
    total: int
    loss: float
    elapsed: float  # seconds since the erasure started, references included


@dataclass
class Anchors:
    """What the unedited model predicts for prompts that must not change, at fixed noisy latents:
    the targets of the preservation term that keeps the other concepts while one is erased.

    With `attention_weight` > 0 the term also keeps each anchor word's cross-attention maps: an
    erasure that lowers the keys of every word like the concept's (Forget-Me-Not's re-steering
    does, unchecked) would drain the kept words' attention while their images still look right."""

    prompts: list[str]
    latents: torch.Tensor  # (P, 4, h, w) noisy latents
    timesteps: torch.Tensor  # (P,)
    eps: torch.Tensor  # (P, 4, h, w) the unedited model's predictions
    words: torch.Tensor  # (P, 77): 1 at each prompt's word tokens
    maps: list[torch.Tensor] | None = None  # per attn2 layer, (P, heads, pixels): the unedited maps of the words
    attention_weight: float = 0.0

    @classmethod
    def draw(cls, pipe: StableDiffusionPipeline, words: list[str], steps: int, generator: torch.Generator,
             attention_weight: float = 0.0) -> "Anchors":
        """One image per word by the unedited model, noised to a random step, and its prediction there."""
        prompts = [f"a picture of {w}" for w in words]
        mask = torch.zeros(len(prompts), pipe.tokenizer.model_max_length, device=pipe.device)
        for row, (prompt, word) in enumerate(zip(prompts, words)):
            mask[row, concept_positions(pipe.tokenizer, prompt, word)] = 1
        zt, _, t = noisy(pipe, reference_latents(pipe, prompts, 1, steps, generator), generator)
        anchors = cls(prompts, zt, t, None, mask, attention_weight=attention_weight)
        anchors.eps, anchors.maps = anchors._predict(pipe, torch.arange(len(prompts)))
        return anchors

    def _predict(self, pipe: StableDiffusionPipeline,
                 idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The model's predictions on anchors `idx` and, if kept, its maps of their words."""
        text = encode(pipe, [self.prompts[i] for i in idx])
        if not self.attention_weight:
            return denoise(pipe, self.latents[idx], self.timesteps[idx], text), None
        maps, words = [], self.words[idx]  # (B, 77)
        sink = lambda name, probs, attn: maps.append(  # noqa: E731 (B * heads, pixels, 77) -> (B, heads, pixels)
            (probs.unflatten(0, (len(idx), attn.heads)).float() * words[:, None, None]).sum(-1))
        with install(pipe.unet, sink):
            eps = denoise(pipe, self.latents[idx], self.timesteps[idx], text)
        return eps, maps

    def loss(self, pipe: StableDiffusionPipeline, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Mean squared drift of the patched model's predictions from the unedited ones on `batch` anchors,
        plus `attention_weight` times the L2 drift of their words' maps (Forget-Me-Not's norm, held at zero change)."""
        idx = torch.randint(0, len(self.prompts), (batch,), generator=generator)
        pred, maps = self._predict(pipe, idx)
        loss = nn.functional.mse_loss(pred.float(), self.eps[idx].float())
        if maps:
            drift = sum((now - was[idx]).pow(2).sum() for now, was in zip(maps, self.maps))
            loss = loss + self.attention_weight * (drift + 1e-12).sqrt()  # finite gradient at zero drift
        return loss


def _trainable(pipe: StableDiffusionPipeline, name: str) -> list[torch.nn.Parameter]:
    params = []
    for module in (getattr(pipe, c) for c in components(pipe)):
        for key, param in module.named_parameters():
            param.requires_grad_(f".{name}." in key)
            if param.requires_grad:
                params.append(param)
    return params


def train_patch(
    pipe: StableDiffusionPipeline,
    method: ErasureMethod,
    name: str,
    on_progress: Callable[[Progress], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Patch:
    """Runs the erasure; returns the patch, left attached to the pipeline (inactive) as adapter `name`."""
    cfg = method.config
    start = time.perf_counter()
    generator = torch.Generator("cpu").manual_seed(cfg.seed)
    # 1. References from the unedited model (no patch is active outside a call)
    with torch.no_grad(), record_function("erase.references"):
        refs: Any = method.references(pipe, generator)
        keep = (Anchors.draw(pipe, cfg.preserve, ANCHOR_STEPS, generator, cfg.keep_attention)
                if cfg.preserve and cfg.preserve_weight else None)
        adversary = Adversary(pipe, method.concepts, generator, method.images) if cfg.adversarial else None
    # 2. A fresh LoRA adapter on the method's layers, the only trainable weights; peft draws their
    # initial values from the global generator, so seed it here (and only here) for reproducible patches
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        lora = {component: new_adapter(pipe, name, component, modules, cfg.rank)
                for component, modules in method.targets(pipe).items()}
    activate(pipe, [name])
    params = _trainable(pipe, name)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # 3. Training steps, each adapter layer through its merged weight, CLIP's activations fused and its blocks that
    # do not train run once per prompt (the same functions, less work)
    trained = [getattr(pipe, component) for component in lora]
    try:
        with merged_lora(trained), fused_quick_gelu(trained), cached_prefix(trained):
            for step in range(1, cfg.steps + 1):
                if adversary is not None and (step - 1) % cfg.attack_every == 0:
                    with record_function("erase.adversary"):
                        adversary.learn(pipe, cfg.attack_steps, cfg.attack_lr, cfg.seed + step)
                with record_function("erase.loss"):
                    loss = method.loss(pipe, refs, generator)
                    if adversary is not None:
                        with adversary.words(pipe):
                            loss = (loss + method.loss(pipe, refs, generator)) / 2
                if keep is not None:
                    with record_function("erase.preserve"):
                        loss = loss + cfg.preserve_weight * keep.loss(pipe, PRESERVE_BATCH, generator)
                if not torch.isfinite(loss):
                    raise ErasureError(f"the loss became {loss.item()} at step {step}: lower the learning rate "
                                       f"(now {cfg.lr:g}). The model is unchanged.")
                with record_function("erase.backward"):
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                with record_function("erase.optimizer"):
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    optimizer.step()
                if on_progress:
                    on_progress(Progress(step, cfg.steps, loss.item(), time.perf_counter() - start))
                if cancelled and cancelled():
                    raise ErasureCancelled(f"cancelled at step {step} of {cfg.steps}; the model is unchanged.")
    except BaseException:
        detach(pipe, name)
        raise
    finally:
        for param in params:
            param.requires_grad_(False)
    # 4. The patch: the adapter's factors and what made them
    activate(pipe, [])
    return Patch(adapter_tensors(pipe, name, list(lora)), method.name, method.concepts, fingerprint(pipe), lora,
                 asdict(method.config))  # as the references left it (text-map given images holds more words)
