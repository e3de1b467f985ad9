"""Erasure patches: an erasure's changed weights as LoRA factors in one small safetensors file.

Forget-Me-Not proposes shipping an erasure as a lightweight patch that can be combined
with others (Zhang et al. 2023, arXiv 2303.17591). Every method here produces the same
kind of patch: LoRA factors for some linear layers of the UNet (SD3's or FLUX's transformer) and/or the text encoder,
held by peft adapters, plus metadata (method, concepts, settings, the base model's
fingerprint, the format version). On a pipeline, each patch is a named adapter: applying,
stacking, switching off (the frozen reference for training) and removing are adapter
operations, never a second copy of the model.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils.peft_utils import (
    delete_adapter_layers,
    recurse_remove_peft_layers,
    set_adapter_layers,
    set_weights_and_activate_adapters,
)
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .files import written
from .models import is_transformer

__all__ = ["Patch", "PatchError", "NotAPatch", "components", "read_safetensors", "fingerprint", "adapter_name",
           "attach", "activate", "active", "frozen", "detach", "new_adapter", "adapter_tensors",
           "FORMAT", "VERSION"]

FORMAT = "fmn-patch"
VERSION = 1
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")  # SDXL's second; SD3's T5
MAX_PATCH_BYTES = 512 * 2**20


class PatchError(ValueError):
    """A patch cannot be read or does not fit this model; the message says why."""


class NotAPatch(PatchError):
    """A readable safetensors file without the patch format tag: perhaps a LoRA made elsewhere
    (`fmn.export.import_lora`)."""


def fingerprint(pipe: StableDiffusionPipeline) -> str:
    """A short id of the base model: its configs and a few weight statistics, equal across dtypes and devices."""
    denoiser = pipe.transformer if is_transformer(pipe) else pipe.unet
    ends = ((denoiser.context_embedder, denoiser.proj_out) if is_transformer(pipe)
            else (denoiser.conv_in, denoiser.conv_out))  # where the denoiser reads and writes
    probes = [*(layer.weight for layer in ends), pipe.text_encoder.get_input_embeddings().weight]
    stats = [round(float(t.detach().float().contiguous().abs().mean()), 4) for t in probes]  # any memory format
    text_config = {k: v for k, v in pipe.text_encoder.config.to_diff_dict().items()
                   if k not in ("dtype", "torch_dtype")}
    blob = json.dumps([dict(denoiser.config), text_config, stats], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Patch:
    """LoRA factors keyed ``"<component>.<module>.lora_A.weight"`` plus what made them."""

    tensors: dict[str, torch.Tensor]
    method: str
    concepts: list[str]
    base: str  # fingerprint() of the model it was made on
    lora: dict[str, dict]  # component -> {"r": ..., "lora_alpha": ..., "target_modules": [...]}
    settings: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.method}:{'+'.join(self.concepts)}"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        meta = {"format": FORMAT, "version": str(VERSION), "method": self.method, "base": self.base,
                "concepts": json.dumps(self.concepts), "lora": json.dumps(self.lora),
                "settings": json.dumps(self.settings)}
        with written(path) as staged:
            save_file({k: v.detach().to("cpu", torch.float16).contiguous() for k, v in self.tensors.items()}, staged,
                      metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Patch":
        """Reads and validates a patch file; raises PatchError with the reason (NotAPatch: a safetensors file
        without the patch format tag)."""
        path = Path(path)
        meta, tensors = read_safetensors(path)
        if meta.get("format") != FORMAT:
            raise NotAPatch(f"{path.name} is not a Forget-Me-Not Studio patch (no '{FORMAT}' format tag).")
        if meta.get("version") != str(VERSION):
            raise PatchError(f"{path.name} has patch format version {meta.get('version')}; "
                             f"this version reads {VERSION}.")
        try:
            return cls(tensors, meta["method"], json.loads(meta["concepts"]), meta["base"],
                       json.loads(meta["lora"]), json.loads(meta.get("settings", "{}")))
        except (KeyError, json.JSONDecodeError) as err:
            raise PatchError(f"{path.name} has damaged metadata ({err}).") from err


def read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """A patch-sized .safetensors file's header and tensors; PatchError if it is not one."""
    if path.suffix != ".safetensors":
        raise PatchError(f"{path.name}: a patch is a .safetensors file "
                         "(other formats are pickles, which can run code).")
    if not path.is_file():
        raise PatchError(f"{path}: no such patch file.")
    if path.stat().st_size > MAX_PATCH_BYTES:
        raise PatchError(f"{path.name} is {path.stat().st_size >> 20} MiB: too large for a patch.")
    try:
        with safe_open(path, "pt") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise PatchError(f"{path.name} is not a readable safetensors file ({err}).") from err


def _component(pipe: StableDiffusionPipeline, name: str) -> torch.nn.Module:
    if name not in COMPONENTS:
        raise PatchError(f"a patch may change {COMPONENTS}, not {name!r}")
    if getattr(pipe, name, None) is None:
        raise PatchError(f"this patch changes a {name}, which this model does not have "
                         "(a patch for another kind of model).")
    return getattr(pipe, name)


def components(pipe: StableDiffusionPipeline) -> list[str]:
    """The parts of this pipeline a patch may change."""
    return [c for c in COMPONENTS if getattr(pipe, c, None) is not None]


def new_adapter(pipe: StableDiffusionPipeline, name: str, component: str, target_modules: list[str],
                rank: int = 4, alpha: float | None = None) -> dict:
    """Adds a trainable, zero-initialised LoRA adapter; returns its config for `Patch.lora`."""
    config = {"r": rank, "lora_alpha": alpha or rank, "target_modules": sorted(target_modules)}
    inject_adapter_in_model(LoraConfig(**config), _component(pipe, component), adapter_name=name)
    return config


def adapter_tensors(pipe: StableDiffusionPipeline, name: str, components: list[str]) -> dict[str, torch.Tensor]:
    """The adapter's LoRA factors, keyed as in a patch file."""
    return {f"{c}.{k}": v for c in components
            for k, v in get_peft_model_state_dict(_component(pipe, c), adapter_name=name).items()}


def adapter_name(label: str) -> str:
    """A label (method and concepts, a file's name) as an adapter name: anything but letters, digits and
    ':+-' made '_', since peft's adapter names cannot hold a '.' ("Dr. Who", "style.v2.safetensors")."""
    return re.sub(r"[^\w:+-]+", "_", label)


def attach(pipe: StableDiffusionPipeline, patch: Patch, name: str) -> None:
    """Adds a patch to the pipeline as adapter `name`, inactive until `activate`.

    Raises PatchError, leaving the pipeline untouched, if the patch was made for another model.
    """
    if patch.base != fingerprint(pipe):
        raise PatchError(f"this patch ({patch.name}) was made for another model (fingerprint {patch.base}, "
                         f"this one is {fingerprint(pipe)}); it cannot be applied here.")
    for component, config in patch.lora.items():
        module = _component(pipe, component)
        prefix = f"{component}."
        state = {k[len(prefix):]: v for k, v in patch.tensors.items() if k.startswith(prefix)}
        inject_adapter_in_model(LoraConfig(**config), module, adapter_name=name)
        result = set_peft_model_state_dict(module, state, adapter_name=name)
        if getattr(result, "unexpected_keys", None):
            detach(pipe, name)
            raise PatchError(f"this patch ({patch.name}) holds weights for layers this model does not have.")
    activate(pipe, [])


def activate(pipe: StableDiffusionPipeline, names: list[str], parts: tuple[str, ...] | None = None) -> None:
    """Makes exactly these patches active (none: the base model, bit for bit); given `parts` (components), only
    their part of the patches: a LoRA loaded with one of its strengths at 0."""
    for component in components(pipe):
        module = _component(pipe, component)
        present = getattr(module, "peft_config", {})
        if not present:
            continue
        wanted = [n for n in names if n in present and (parts is None or component in parts)]
        if wanted:
            set_adapter_layers(module, enabled=True)
            set_weights_and_activate_adapters(module, wanted, [1.0] * len(wanted))
        else:
            set_adapter_layers(module, enabled=False)


@contextmanager
def active(pipe: StableDiffusionPipeline, names: list[str], parts: tuple[str, ...] | None = None):
    """Inside the block exactly these patches (their `parts` only, if given) are active; after it, none."""
    activate(pipe, list(names), parts)
    try:
        yield pipe
    finally:
        activate(pipe, [])


@contextmanager
def frozen(pipe: StableDiffusionPipeline):
    """Inside the block the pipeline is the original model: its active patches are switched off.
    This is every method's frozen reference, so no second copy of the model is ever held."""
    active = [_component(pipe, c) for c in components(pipe)]
    active = [m for m in active
              if any(isinstance(layer, BaseTunerLayer) and not layer.disable_adapters for layer in m.modules())]
    for module in active:
        set_adapter_layers(module, enabled=False)
    try:
        yield pipe
    finally:
        for module in active:
            set_adapter_layers(module, enabled=True)


def detach(pipe: StableDiffusionPipeline, name: str) -> None:
    """Removes patch `name` from the pipeline entirely."""
    for component in components(pipe):
        module = _component(pipe, component)
        if name in getattr(module, "peft_config", {}):
            delete_adapter_layers(module, name)  # for a LoRA diffusers loaded (`fmn.export`), the config goes too
            remaining = getattr(module, "peft_config", {})
            remaining.pop(name, None)
            if not remaining:  # the last one: unwrap the LoRA layers, the model is as loaded
                recurse_remove_peft_layers(module)
                if hasattr(module, "peft_config"):
                    del module.peft_config
