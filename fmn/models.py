"""Loading a Stable Diffusion 1.x / 2.x, SDXL, SD3 or FLUX pipeline from wherever the user has one.

One entry point, `load_pipeline`, takes the embedded shapes-world model (the default),
a local diffusers folder, a single ``.safetensors`` checkpoint (SD 1.x/2.x and SDXL whole; SD3 and FLUX: the
transformer, the other parts from a diffusers config), or a Hugging Face hub id,
and returns a ready `StableDiffusionPipeline` (or `StableDiffusionXLPipeline`, `StableDiffusion3Pipeline`,
`FluxPipeline`) on the best device. Only safetensors are read: pickle files (``.ckpt``, ``.bin``, ``.pt``) can run
code when loaded.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from diffusers import (
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.loaders.single_file_utils import fetch_diffusers_config, load_single_file_checkpoint
from safetensors import SafetensorError, safe_open

from .world.world import World

__all__ = ["EMBEDDED", "ModelLoadError", "is_sdxl", "load_pipeline", "pick_device", "world_of"]

EMBEDDED = Path(__file__).resolve().parent.parent / "assets" / "fmn-shapes"
SUPPORTED = {cls.__name__: cls for cls in (StableDiffusionPipeline, StableDiffusionXLPipeline,
                                          StableDiffusion3Pipeline, FluxPipeline)}
SUPPORTED_NAMES = "Stable Diffusion 1.x, 2.x, SDXL, SD3 and FLUX"
TRANSFORMERS = {StableDiffusion3Pipeline: SD3Transformer2DModel, FluxPipeline: FluxTransformer2DModel}
SDXL_PREFIX = "conditioner.embedders.1."  # only SDXL's single-file checkpoints hold a second text encoder here
DIFFUSION_MODEL = "model.diffusion_model."  # an all-in-one file's denoiser; a transformer file alone has no prefix
# the blocks only this architecture's transformer holds in the original layout -> its pipeline
TRANSFORMER_FILES = {"joint_blocks.": StableDiffusion3Pipeline, "double_blocks.": FluxPipeline}

class ModelLoadError(ValueError):
    """The model cannot be loaded; the message says why and what to do."""


def pick_device(device: str | None = None, dtype: torch.dtype | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA -> bf16 (fp16 where bf16 is missing), Apple MPS -> fp16, else CPU fp32; either can be overridden."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float16 if device.type == "mps" else torch.float32
    return device, dtype


def is_sdxl(pipe) -> bool:
    """SDXL: two text encoders, the second's pooled output and the image size as added conditioning."""
    return isinstance(pipe, StableDiffusionXLPipeline)


def is_transformer(pipe) -> bool:
    """SD3 and FLUX: a transformer whose joint attention reads the text tokens, where SD 1.x/2.x/SDXL have a UNet."""
    return getattr(pipe, "transformer", None) is not None


def _pipeline_class(name: str, where: str) -> type:
    if name not in SUPPORTED:
        raise ModelLoadError(f"{where} holds a {name}: not supported yet ({SUPPORTED_NAMES} only).")
    return SUPPORTED[name]


def _check_folder(folder: Path) -> type:
    """The folder's pipeline class, once it is known to be one we load from safetensors."""
    index = folder / "model_index.json"
    if not index.exists():
        raise ModelLoadError(f"{folder} is not a diffusers folder: it has no model_index.json.")
    cls = _pipeline_class(json.loads(index.read_text()).get("_class_name", "?"), str(folder))
    denoiser = "transformer" if cls in (StableDiffusion3Pipeline, FluxPipeline) else "unet"
    if not any(folder.glob(f"{denoiser}/*.safetensors")):
        raise ModelLoadError(f"{folder} has no safetensors weights in {denoiser}/; only safetensors are loaded "
                             "(pickle files can run code).")
    return cls


def _check_single_file(path: Path) -> type:
    """The checkpoint's pipeline class, read from its keys (SD3's and FLUX's transformer bare or under
    ``model.diffusion_model.``)."""
    if path.suffix != ".safetensors":
        raise ModelLoadError(
            f"{path.name}: only .safetensors checkpoints are loaded. Other weight files (.ckpt, .bin, .pt) "
            "are pickles, which can run code when opened: convert it to safetensors first."
        )
    try:
        with safe_open(path, "pt") as f:
            keys = set(f.keys())
    except (SafetensorError, OSError) as err:
        raise ModelLoadError(f"{path.name} is not a readable safetensors file ({err}).") from err
    for prefix, cls in TRANSFORMER_FILES.items():
        if any(k.removeprefix(DIFFUSION_MODEL).startswith(prefix) for k in keys):
            return cls
    return StableDiffusionXLPipeline if any(k.startswith(SDXL_PREFIX) for k in keys) else StableDiffusionPipeline


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection to the hub, so that an offline machine fails in seconds, not after retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_hub(repo_id: str, **kw) -> StableDiffusionPipeline:
    try:
        config = StableDiffusionPipeline.load_config(repo_id, local_files_only=True)  # model_index.json: any pipeline
        kw["local_files_only"] = True
    except (OSError, ValueError):  # not in the local cache
        hint = (f"Download it where there is network (`hf download {repo_id}`) and copy the cache, "
                "or pass a local diffusers folder or a .safetensors file.")
        if not _hub_reachable():
            raise ModelLoadError(f"{repo_id!r} is not in the local Hugging Face cache and the hub cannot be reached. "
                                 f"{hint}")
        try:
            config = StableDiffusionPipeline.load_config(repo_id)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"{repo_id!r} could not be fetched from the Hugging Face hub ({err}). {hint}") from err
    cls = _pipeline_class(config.get("_class_name", "?"), repo_id)
    return cls.from_pretrained(repo_id, use_safetensors=True, **_extra(cls), **kw)


def _extra(cls: type) -> dict:
    """SD 1.x/2.x pipelines come with a safety checker, off here (the app shows what the model draws); SDXL has none."""
    return dict(safety_checker=None, requires_safety_checker=False) if cls is StableDiffusionPipeline else {}


def _load_whole_file(cls: type, path: Path, config: str | None, **kw) -> StableDiffusionPipeline:
    """SD 1.x/2.x or SDXL: every part's weights from the file, the configs from `config` (default: the hub id
    diffusers names for the file's architecture)."""
    return cls.from_single_file(path, config=config, **_extra(cls), **kw)


def _load_transformer_file(cls: type, path: Path, config: str | None, **kw) -> StableDiffusionPipeline:
    """SD3 or FLUX: the transformer from the file (FLUX's are shipped alone; an all-in-one file's other parts are
    not read), every other part and the configs from `config` (default: the hub id diffusers names for the file)."""
    checkpoint = load_single_file_checkpoint(path)  # read once: for the default config and the transformer
    config = config or fetch_diffusers_config(checkpoint)["pretrained_model_name_or_path"]
    transformer = TRANSFORMERS[cls].from_single_file(checkpoint, config=config, subfolder="transformer", **kw)
    return cls.from_pretrained(config, transformer=transformer, use_safetensors=True, **kw)


def _load_single_file(cls: type, path: Path, config: str | None, **kw) -> StableDiffusionPipeline:
    """A single file holds weights only; the configs come from `config` or the hub's cache."""
    offline = not (config and Path(config).is_dir()) and not _hub_reachable()
    load = _load_transformer_file if cls in TRANSFORMERS else _load_whole_file
    try:
        return load(cls, path, config, local_files_only=offline, **kw)
    except (OSError, ValueError) as err:
        if not offline:
            raise
        raise ModelLoadError(
            f"{path.name} holds weights only, and the configs that describe it are neither cached nor reachable "
            "offline. Pass the diffusers folder (or a cached hub id) of the same architecture as its config "
            "(--config <diffusers folder> in the command line)."
        ) from err


def load_pipeline(
    source: str | Path | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    config: str | None = None,
) -> StableDiffusionPipeline:
    """Loads an SD 1.x/2.x, SDXL, SD3 or FLUX pipeline.

    Args:
        source: None or "" for the embedded model; a diffusers folder; a ``.safetensors``
            single-file checkpoint of SD 1.x/2.x or SDXL, or of SD3's or FLUX's transformer (``config`` names the
            diffusers folder or hub id whose configs describe it, and for SD3 and FLUX gives the other parts);
            or a hub id such as ``"stable-diffusion-v1-5/stable-diffusion-v1-5"``.
        device, dtype: override `pick_device`'s choice.
    Raises:
        ModelLoadError: the source is missing, unsupported, not safetensors or unreachable.
    """
    device, dtype = pick_device(device, dtype)
    source = str(source).strip() if source else str(EMBEDDED)
    path = Path(source).expanduser()
    kw = dict(torch_dtype=dtype)
    try:
        if path.is_dir():
            cls = _check_folder(path)
            pipe = cls.from_pretrained(path, use_safetensors=True, **_extra(cls), **kw)
        elif path.is_file():
            pipe = _load_single_file(_check_single_file(path), path, config, **kw)
        elif path.suffix or source.startswith((".", "/", "~")) or source.count("/") != 1:
            raise ModelLoadError(f"{source}: no such file or folder (and not a hub id of the form owner/name).")
        else:
            pipe = _load_hub(source, **kw)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        raise ModelLoadError(f"could not load {source}: {err}") from err
    pipe.set_progress_bar_config(disable=True)
    pipe.world = World.load(path) if path.is_dir() else None  # read once, answered from memory
    pipe = pipe.to(device)
    if pipe.device.type == "cpu" and not is_transformer(pipe):
        # oneDNN's convolutions run faster on channels-last weights: the UNet draws and trains faster on 2 cores, the
        # same images within one level (the VAE stays as it is: there a batch and single calls would differ)
        pipe.unet.to(memory_format=torch.channels_last)
    return pipe


def world_of(pipe: StableDiffusionPipeline) -> World | None:
    """The shapes world the model was trained on (loaded with it), or None for other models."""
    return getattr(pipe, "world", None)
