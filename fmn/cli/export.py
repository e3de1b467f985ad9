"""python -m fmn export: patches, stacked, out to other tools (a LoRA, a merged model)."""

from __future__ import annotations

from pathlib import Path

from ..export import FORMATS
from .options import add_model_options, load_patches, open_studio

HELP = "write patches, stacked, as a LoRA for diffusers, ComfyUI or A1111, or a merged model"


def add_arguments(parser) -> None:
    parser.add_argument("patch", nargs="+", help="the patch file(s) to export")
    parser.add_argument("--to", required=True, help="; ".join(f"{k}: {f.description}" for k, f in FORMATS.items()))
    add_model_options(parser, model_help="the model the patches were made on (default: embedded)", device=False)
    parser.add_argument("--out", required=True, help="a .safetensors file, or a new folder for --to merged")


def run(args) -> None:
    """Writes the export; prints its path. The format is checked before the model loads; export runs on the CPU."""
    if args.to not in FORMATS:
        raise ValueError(f"--to {args.to}: use one of {', '.join(FORMATS)}.")
    studio = open_studio(args, device="cpu")
    print(studio.export(load_patches(studio, args.patch), args.to, Path(args.out)))
