"""Erasures out of the studio, in the formats other tools load, and LoRA files in.

A patch holds peft LoRA factors (`fmn.patch`); the ways out:

- ``diffusers-lora``: the same factors under diffusers' keys (``unet.<module>.lora_A.weight``), each
  module's scale ``alpha / r`` folded into ``lora_B`` so that `pipe.load_lora_weights(path)` needs no config;
- ``kohya``: the ``lora_unet_<module>`` / ``lora_te_<module>`` layout with ``lora_down``, ``lora_up`` and
  ``alpha`` that ComfyUI and A1111 read (diffusers reads it back through its own kohya conversion); on SD3 and
  FLUX ``lora_transformer_<diffusers module>``, a layout ComfyUI's SD3 and FLUX LoRA loader maps (as it maps the
  ``transformer.<module>.lora_A``/``lora_B`` keys of ``diffusers-lora``);
- ``merged``: a diffusers folder with the factors folded into the weights (each changed layer's weight plus its
  ``B @ A``, as diffusers' `fuse_lora` folds them), every part alike: SD3's and FLUX's T5 too, which no LoRA
  loader reads, so a text-map erasure of those models leaves as a merged folder;
- ``single-file``: that merged model as one original-layout checkpoint (`fmn.single_file`; SD 1.x/2.x and SDXL).

Several patches export as one: their factors are stacked along the rank, which is exactly the sum
of their changes that applying them together gives. Every export carries the erasures' metadata
(method, concepts, settings, base fingerprint): in the safetensors header, or ``erasure.json`` in a
folder. Nothing is written half-way: each export goes to a temporary name first.

`import_lora` is the way in: any LoRA file diffusers reads (peft, old diffusers or kohya keys), and the
``lora_transformer_`` layout above, which diffusers reads for FLUX but not for SD3, becomes a patch, after a check
that its layers exist in the model with the shapes it expects.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils.state_dict_utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
)
from safetensors.torch import save_file

from .files import written
from .models import is_transformer, load_pipeline
from .patch import Patch, PatchError, activate, adapter_tensors, components, fingerprint, read_safetensors
from .single_file import save_single_file

__all__ = ["FORMATS", "Format", "formats_for", "export", "import_lora", "lora_factors", "diffusers_lora", "kohya_lora",
           "metadata"]

# SDXL's first: lora_te1_; SD3's and FLUX's transformer as ComfyUI reads it (OneTrainer's layout, diffusers' names)
KOHYA_PREFIX = {"unet": "lora_unet_", "transformer": "lora_transformer_", "text_encoder": "lora_te_",
                "text_encoder_2": "lora_te2_"}
KOHYA_NAMES = {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}  # SDXL's added
# embedding MLP: kohya names it as the original (sgm) UNet does, and diffusers' conversion reads it only so


def lora_factors(patches: list[Patch]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``"<component>.<module>"`` -> (A, B) in fp32 with ``B @ A`` the module's whole change: each patch's
    ``alpha / r`` folded into its B, several patches stacked along the rank. Text-encoder modules are named
    from ``text_model.`` as every tool knows CLIP's (recent transformers drop that level; diffusers adds it back)."""
    factors: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for patch in patches:
        for component, config in patch.lora.items():
            for key, a in patch.tensors.items():
                if not (key.startswith(f"{component}.") and key.endswith(".lora_A.weight")):
                    continue
                module = key.removesuffix(".lora_A.weight")
                name = module.removeprefix(f"{component}.")
                rank = config.get("rank_pattern", {}).get(name, config["r"])
                scale = config.get("alpha_pattern", {}).get(name, config["lora_alpha"]) / rank
                b = patch.tensors[f"{module}.lora_B.weight"].float() * scale
                if component.startswith("text_encoder") and not name.startswith("text_model."):
                    module = f"{component}.text_model.{name}"
                factors.setdefault(module, []).append((a.float(), b))
    return {m: (torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs], dim=1))
            for m, pairs in factors.items()}


def diffusers_lora(patches: list[Patch]) -> dict[str, torch.Tensor]:
    """The factors under diffusers' keys, no alphas (diffusers then takes each module's scale as 1): peft's
    ``lora_A``/``lora_B`` for the UNet; ``lora_linear_layer.down``/``.up`` for the text encoder, the layout
    diffusers reads whichever of its layers a patch changes (peft keys there are recognised only beside an
    attention projection's)."""
    state = {}
    for module, (a, b) in lora_factors(patches).items():
        down, up = (("lora_linear_layer.down", "lora_linear_layer.up") if module.startswith("text_encoder")
                    else ("lora_A", "lora_B"))
        state[f"{module}.{down}.weight"], state[f"{module}.{up}.weight"] = a, b
    return state


def kohya_lora(patches: list[Patch]) -> dict[str, torch.Tensor]:
    """kohya's layout: ``lora_unet_<module, dots as underscores>.lora_down/.lora_up/.alpha`` (alpha = rank: scale 1)."""
    state, factors = {}, lora_factors(patches)
    sdxl = any(m.startswith("text_encoder_2.") for m in factors)
    for module, (a, b) in factors.items():
        component, name = module.split(".", 1)
        name = KOHYA_NAMES.get(name, name)
        key = (("lora_te1_" if sdxl and component == "text_encoder" else KOHYA_PREFIX[component])
               + name.replace(".", "_"))
        state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = a, b
        state[f"{key}.alpha"] = torch.tensor(float(a.shape[0]))
    return state


def metadata(patches: list[Patch]) -> dict[str, str]:
    """What made the export, for the safetensors header: strings only."""
    erasures = [{"method": p.method, "concepts": p.concepts, "settings": p.settings, "base": p.base} for p in patches]
    return {"format": "pt", "fmn_erasures": json.dumps(erasures), "fmn_base": patches[0].base}


def _check(pipe: StableDiffusionPipeline, patches: list[Patch], to: str, out: Path) -> None:
    if to not in FORMATS:
        raise ValueError(f"Unknown export format {to!r}: use one of {', '.join(FORMATS)}.")
    if not patches:
        raise ValueError("Nothing to export: give at least one patch.")
    if to not in formats_for(pipe):
        raise ValueError(f"{to} writes SD 1.x/2.x and SDXL layouts; export SD3 and FLUX as "
                         f"{', '.join(formats_for(pipe))}.")
    t5 = sorted({c for p in patches for c in p.lora if type(getattr(pipe, c, None)).__name__.startswith("T5")})
    if t5 and not FORMATS[to].t5:
        raise ValueError(f"These patches change T5 ({', '.join(t5)}), which diffusers' and ComfyUI's SD3 and FLUX "
                         "LoRA loaders do not read: export them as merged (a diffusers folder), apply them with "
                         "Forget-Me-Not Studio (--patch), or export a patch of the transformer (uce, rece, esd-x).")
    base = fingerprint(pipe)
    for patch in patches:
        if patch.base != base:
            raise PatchError(f"{patch.name} was made for another model (fingerprint {patch.base}, this one is {base}): "
                             "export it with the model it was made on (--model).")
    if FORMATS[to].folder:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"{out} exists and is not an empty folder: a {to} export is written to a new folder.")
    elif out.suffix != ".safetensors":
        raise ValueError(f"{out.name}: a {to} export is one .safetensors file.")


def _layer(pipe: StableDiffusionPipeline, module: str) -> torch.nn.Module | None:
    """``"<component>.<module>"`` of the pipeline, or None; CLIP's ``text_model.`` level dropped on an encoder
    without one (T5, and CLIP as recent transformers load it)."""
    component, name = module.split(".", 1)
    model = getattr(pipe, component, None)
    if component.startswith("text_encoder") and not hasattr(model, "text_model"):
        name = name.removeprefix("text_model.")
    try:
        return model.get_submodule(name) if model is not None else None
    except AttributeError:
        return None


def _merged(pipe: StableDiffusionPipeline, patches: list[Patch], source: str,
            config: str | None) -> StableDiffusionPipeline:
    """A fresh fp32 copy of the base model on the CPU with the patches folded into its weights: W + B @ A."""
    merged = load_pipeline(source, device="cpu", dtype=torch.float32, config=config)
    with torch.no_grad():
        for module, (a, b) in lora_factors(patches).items():
            weight = _layer(merged, module).weight
            weight += (b.flatten(1) @ a.flatten(1)).view(weight.shape)  # a convolution's k x k, then 1 x 1: one kernel
    return merged


def _write_lora(convert):
    """A LoRA format's writer: the stacked factors under `convert`'s keys, in fp16, with the erasures' metadata."""
    def write(patches: list[Patch], staged: Path, source: str, merge) -> None:
        save_file({k: v.to(torch.float16).contiguous() for k, v in convert(patches).items()}, staged,
                  metadata=metadata(patches))
    return write


def _write_merged(patches: list[Patch], staged: Path, source: str, merge) -> None:
    """The merged model as a diffusers folder, with erasure.json (and the shapes world, whose vocabulary and judge
    still apply to the edited model)."""
    merge().save_pretrained(staged, safe_serialization=True)
    world = Path(source) / "world.json"
    if world.is_file():
        shutil.copy(world, staged / "world.json")
    (staged / "erasure.json").write_text(json.dumps(json.loads(metadata(patches)["fmn_erasures"]), indent=1))


def _write_single_file(patches: list[Patch], staged: Path, source: str, merge) -> None:
    save_single_file(merge(), staged, metadata(patches))


@dataclass(frozen=True)
class Format:
    """A way out, registered by name like the erasure methods: what it writes and how."""

    description: str
    folder: bool  # writes a new folder; otherwise one .safetensors file
    # (patches, where to write, the base model's source, merge: the merged model, made when called)
    write: Callable[[list[Patch], Path, str, Callable[[], StableDiffusionPipeline]], None]
    transformers: bool = True  # writes SD3 and FLUX too, not only UNet models
    t5: bool = True  # holds a change of T5 (no LoRA loader reads one)


FORMATS: dict[str, Format] = {
    "diffusers-lora": Format("a LoRA file for diffusers' load_lora_weights (.safetensors)", False,
                             _write_lora(diffusers_lora), t5=False),
    "kohya": Format("a LoRA file for ComfyUI and A1111, kohya's key layout (.safetensors)", False,
                    _write_lora(kohya_lora), t5=False),
    "merged": Format("a diffusers folder with the erasure folded into the weights", True, _write_merged),
    "single-file": Format("one original-layout checkpoint with the erasure folded in (.safetensors)", False,
                          _write_single_file, transformers=False),
}


def formats_for(pipe: StableDiffusionPipeline) -> list[str]:
    """The formats this model exports to, by name: on SD3 and FLUX only those that write their layout."""
    return [name for name, f in FORMATS.items() if f.transformers or not is_transformer(pipe)]


def export(pipe: StableDiffusionPipeline, patches: list[Patch], to: str, out: str | Path, source: str,
           config: str | None = None) -> Path:
    """Writes the patches, stacked, as `to` at `out`; `source` (and `config`) name the base model, reloaded for
    the merged formats. Raises ValueError (PatchError for a patch of another model) before writing anything."""
    out = Path(out)
    _check(pipe, patches, to, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with written(out) as staged:
        FORMATS[to].write(patches, staged, source, lambda: _merged(pipe, patches, source, config))
    return out


def _peft_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA as diffusers' `lora_state_dict` gives it, under peft keys, converted as diffusers' loaders do."""
    unet = {k: v for k, v in state.items() if not k.startswith("text_encoder")}
    text = {k: v for k, v in state.items() if k.startswith("text_encoder")}
    return (convert_unet_state_dict_to_peft(unet)
            | (convert_state_dict_to_peft(convert_state_dict_to_diffusers(text)) if text else {}))


def _misfits(pipe: StableDiffusionPipeline, state: dict[str, torch.Tensor]) -> list[str]:
    """The LoRA's layers (peft keys) that this model lacks or holds with other shapes."""
    problems = []
    for key, value in state.items():
        component, rest = key.split(".", 1)
        kohya = next((c for c, prefix in KOHYA_PREFIX.items() if component.startswith(prefix)), None)
        if (kohya or component) not in components(pipe):
            problems.append(f"its {kohya or component} layers (this kind of model has no {kohya or component})")
            continue
        if kohya:  # a kohya name that no module of the model has
            problems.append(f"{component.removeprefix(KOHYA_PREFIX[kohya])} (no such layer in the {kohya})")
            continue
        if component.startswith("text_encoder") and not hasattr(getattr(pipe, component), "text_model"):
            rest = rest.removeprefix("text_model.")
        module_name, factor = rest.split(".lora_", 1)
        module = _layer(pipe, f"{component}.{module_name}")
        module = getattr(module, "base_layer", module)  # already wrapped by another patch
        if module is None or not hasattr(module, "weight"):
            problems.append(f"{module_name} (no such layer in the {component})")
        elif factor.startswith("A") and value.shape[1] != module.weight.shape[1]:
            problems.append(f"{module_name} (takes {value.shape[1]} inputs, "
                            f"the model's layer {module.weight.shape[1]})")
        elif factor.startswith("B") and value.shape[0] != module.weight.shape[0]:
            problems.append(f"{module_name} (gives {value.shape[0]} outputs, "
                            f"the model's layer {module.weight.shape[0]})")
    return list(dict.fromkeys(problems))  # each once, not once per factor of a layer


def _transformer_kohya_to_diffusers(pipe, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``lora_transformer_<module, dots as underscores>`` keys (the ``kohya`` export of SD3 and FLUX, ComfyUI's
    layout), which diffusers' SD3 loader does not read, under diffusers' ``transformer.<module>.lora_A``/``lora_B``
    keys, each module's ``alpha / rank`` folded into its B; a name no module has is kept, for the fit check."""
    prefix = KOHYA_PREFIX["transformer"]
    modules = {n.replace(".", "_"): n for n, _ in pipe.transformer.named_modules() if n}
    out = {}
    for key, value in tensors.items():
        stem, _, factor = key.partition(".")
        module = modules.get(stem.removeprefix(prefix)) if stem.startswith(prefix) else None
        down = tensors.get(f"{stem}.lora_down.weight")
        if module is None or down is None or factor not in ("lora_down.weight", "lora_up.weight", "alpha"):
            out[key] = value  # another layout, or a layer this model lacks: the fit check names it
        elif factor == "lora_down.weight":
            out[f"transformer.{module}.lora_A.weight"] = value
        elif factor == "lora_up.weight":
            scale = float(tensors.get(f"{stem}.alpha", len(down))) / len(down)
            out[f"transformer.{module}.lora_B.weight"] = value * scale
    return out


def import_lora(pipe: StableDiffusionPipeline, path: str | Path, name: str) -> Patch:
    """Reads a LoRA file in any layout diffusers reads and attaches it to the pipeline as patch `name`
    (inactive); raises PatchError, the pipeline untouched, where the file is not a LoRA or does not fit."""
    path = Path(path)
    header, tensors = read_safetensors(path)
    converted = None
    if is_transformer(pipe) and any(k.startswith(KOHYA_PREFIX["transformer"]) for k in tensors):
        tensors = converted = _transformer_kohya_to_diffusers(pipe, tensors)
    try:
        read = type(pipe).lora_state_dict(dict(tensors))  # it pops what it converts
        state = _peft_keys(read[0] if isinstance(read, tuple) else read)  # SD 1.x/SDXL: (state, alphas); SD3: state
    except (ValueError, KeyError) as err:
        raise PatchError(f"{path.name} is not a LoRA that diffusers can read ({err}).") from err
    problems = _misfits(pipe, state)
    if problems:
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise PatchError(f"{path.name} does not fit this model: {'; '.join(problems[:5])}{more}.")
    try:
        # the file itself where diffusers reads its layout (and the alphas and adapter config in its header)
        pipe.load_lora_weights(dict(converted) if converted else str(path), adapter_name=name)
    except (ValueError, RuntimeError, KeyError) as err:
        raise PatchError(f"{path.name} could not be loaded as a LoRA ({err}).") from err
    changed = [c for c in components(pipe) if name in getattr(getattr(pipe, c), "peft_config", {})]
    lora = {}
    for c in changed:
        cfg = getattr(pipe, c).peft_config[name]
        lora[c] = {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "target_modules": sorted(cfg.target_modules),
                   "rank_pattern": dict(cfg.rank_pattern), "alpha_pattern": dict(cfg.alpha_pattern)}
    erasures = json.loads(header.get("fmn_erasures", "[]"))
    patch = Patch(adapter_tensors(pipe, name, changed),
                  method="+".join(e["method"] for e in erasures) or "lora",
                  concepts=[c for e in erasures for c in e["concepts"]] or [path.stem],
                  base=fingerprint(pipe), lora=lora,
                  settings={"imported_from": path.name, "erasures": erasures})
    activate(pipe, [])  # diffusers switched it on; a patch waits until a call names it
    return patch
