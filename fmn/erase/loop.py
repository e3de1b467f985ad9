"""The one erasure loop every trained method shares: references -> training steps -> patch.

A method supplies three things (see `Method`): which layers get a LoRA adapter, the
references it computes once with the unedited model, and the loss of one step. The loop
owns the rest: freezing the base weights, the optimizer, a preservation term (the patched
model must still predict what the unedited one did for the concepts in ``config.preserve``,
weighted by ``config.preserve_weight``), progress, cancellation, a NaN guard that leaves the
model as it was, and turning the adapter into a `Patch`.
The frozen reference model is the same pipeline with the adapter switched off (`frozen`).
`frozen_copy=True` holds a deep copy instead, as the published code does: it exists only
so that the speed benchmark (`fmn.bench.speed`) can measure what that costs.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils.peft_utils import set_adapter_layers
from peft.tuners.tuners_utils import BaseTunerLayer

from ..patch import Patch, activate, adapter_tensors, detach, fingerprint, new_adapter
from .common import Anchors

__all__ = ["Method", "Progress", "ErasureError", "ErasureCancelled", "frozen", "train_patch"]


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


class Method(Protocol):
    name: str
    config: Any  # the method's settings dataclass: steps, lr, rank, preserve, preserve_weight, ...

    def targets(self, pipe: StableDiffusionPipeline) -> dict[str, list[str]]:
        """component ("unet" / "text_encoder") -> names of the modules that get LoRA."""

    def references(self, pipe: StableDiffusionPipeline, generator: torch.Generator) -> Any:
        """What the loss needs from the unedited model `pipe` (the pipeline before its adapter
        exists, or a frozen copy), computed once before training."""

    def loss(self, pipe: StableDiffusionPipeline, refs: Any, generator: torch.Generator) -> torch.Tensor:
        """The loss of one training step, with the adapter active."""


@contextmanager
def frozen(pipe: StableDiffusionPipeline):
    """Inside the block the pipeline is the original model: its active adapters are switched off
    (a frozen copy has none, and is left as it is)."""
    active = [m for m in (pipe.unet, pipe.text_encoder)
              if any(isinstance(layer, BaseTunerLayer) and not layer.disable_adapters for layer in m.modules())]
    for module in active:
        set_adapter_layers(module, enabled=False)
    try:
        yield pipe
    finally:
        for module in active:
            set_adapter_layers(module, enabled=True)


def _copy(pipe: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """A second model beside the pipeline: deep copies of its UNet and text encoder (the rest is shared)."""
    copy = StableDiffusionPipeline(**{**pipe.components, "unet": deepcopy(pipe.unet),
                                      "text_encoder": deepcopy(pipe.text_encoder)}, requires_safety_checker=False)
    copy.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return copy


def _trainable(pipe: StableDiffusionPipeline, name: str) -> list[torch.nn.Parameter]:
    params = []
    for module in (pipe.unet, pipe.text_encoder):
        for key, param in module.named_parameters():
            param.requires_grad_(f".{name}." in key)
            if param.requires_grad:
                params.append(param)
    return params


def train_patch(
    pipe: StableDiffusionPipeline,
    method: Method,
    concepts: list[str],
    name: str,
    on_progress: Callable[[Progress], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    frozen_copy: bool = False,
) -> Patch:
    """Runs the erasure; returns the patch, left attached to the pipeline (inactive) as adapter `name`.

    ``frozen_copy``: the unedited model is a deep copy held until the end (the published
    recipes' memory cost), not the pipeline itself.
    """
    cfg = method.config
    start = time.perf_counter()
    generator = torch.Generator("cpu").manual_seed(cfg.seed)
    # 1. References from the unedited model (a copy lives in this frame until the erasure ends)
    unedited = _copy(pipe) if frozen_copy else pipe
    with torch.no_grad():
        refs = method.references(unedited, generator)
        keep = Anchors.draw(unedited, cfg.preserve, ANCHOR_STEPS, generator) \
            if cfg.preserve and cfg.preserve_weight else None
    # 2. A fresh LoRA adapter on the method's layers, the only trainable weights; peft draws their
    # initial values from the global generator, so seed it here (and only here) for reproducible patches
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        lora = {component: new_adapter(pipe, name, component, modules, cfg.rank)
                for component, modules in method.targets(pipe).items()}
    activate(pipe, [name])
    params = _trainable(pipe, name)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # 3. Training steps
    try:
        for step in range(1, cfg.steps + 1):
            loss = method.loss(pipe, refs, generator)
            if keep is not None:
                loss = loss + cfg.preserve_weight * keep.loss(pipe, PRESERVE_BATCH, generator)
            if not torch.isfinite(loss):
                raise ErasureError(f"the loss became {loss.item()} at step {step}: lower the learning rate "
                                   f"(now {cfg.lr:g}). The model is unchanged.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
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
    return Patch(adapter_tensors(pipe, name, list(lora)), method.name, concepts, fingerprint(pipe), lora, asdict(cfg))
