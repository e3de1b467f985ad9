"""What several commands share: their option groups (the model, the generation settings, --patch), the studio and
generation they open from those options, the checks that refuse bad input before work starts, and how they write.
Argparse's own argument groups are not used: they would split the commands' --help into sections."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..generate import GenerationSettings

if TYPE_CHECKING:
    from ..studio import Studio

MODEL_HELP = "diffusers folder, .safetensors file or hub id (default: embedded)"
CONFIG_HELP = "for a .safetensors model: its diffusers folder or hub id (SD3, FLUX: every part but the transformer)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def add_model_options(parser, model_help: str = MODEL_HELP, config_help: str = CONFIG_HELP,
                      device_help: str | None = None, device: bool = True) -> None:
    """--model, --config and (unless the command always runs on the CPU) --device."""
    parser.add_argument("--model", default=None, help=model_help)
    parser.add_argument("--config", default=None, help=config_help)
    if device:
        parser.add_argument("--device", default=None, help=device_help)


def add_patch_option(parser, help: str, required: bool = False) -> None:
    """--patch, repeatable: the erasure patches a command applies or examines."""
    parser.add_argument("--patch", action="append", required=required, default=None if required else [], help=help)


def add_generation_options(parser) -> None:
    """The options generate and heatmap share: what to draw, the model, the image file and the patches."""
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    add_model_options(parser, config_help="for a .safetensors file: the diffusers folder or hub id of its architecture",
                      device_help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    add_patch_option(parser, "an erasure patch to apply (repeatable)")


def open_studio(args, device: str | None = None) -> Studio:
    """The model the options name, on --device or on `device` where the command fixes it."""
    from ..studio import Studio  # heavy: imported only once the arguments are parsed, so that --help is instant

    return Studio(args.model, device=device or args.device, config=args.config)


def load_patches(studio: Studio, paths: list[str]) -> list[str]:
    """The patch files loaded into the studio; their ids, in order."""
    return [studio.load_patch(path) for path in paths]


def open_generation(args) -> tuple[Studio, GenerationSettings, list[str], Path]:
    """What generate and heatmap start from: the settings and the image file's type checked before the model
    loads, then the model, the patches, the settings' warnings (on stderr) and the image's folder made."""
    settings = GenerationSettings(args.prompt, args.negative_prompt, args.seed, args.steps, args.guidance,
                                  args.width, args.height)
    out = Path(args.out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"--out {out}: use a .png, .jpg or .webp file name.")
    studio = open_studio(args)
    patches = load_patches(studio, args.patch)
    for warning in studio.warnings(settings):
        print(f"warning: {warning}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    return studio, settings, patches, out


def concept_images(studio: Studio, folder: str | None):
    """The concept's images from a folder (or file), at the model's size; None when none are given or found."""
    from ..erase.images import load_concept_images
    from ..generate import native_size

    return load_concept_images(folder, native_size(studio.pipe)) if folder else None


def require_png(flag: str, path: str | Path, written_as: str) -> None:
    """Refuses a file name that is not a PNG's, saying what is written there; the message shows `path` as given."""
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"{flag} {path}: {written_as} (name.png).")


def require_count(flag: str, count: int, most: int) -> None:
    """Refuses a count outside 1 to `most`."""
    if not 1 <= count <= most:
        raise ValueError(f"{flag} {count}: use 1 to {most}.")


@contextmanager
def progress_line():
    """Yields a function that rewrites one stderr line; the line is ended on the way out, so that an error (a NaN
    loss) gets a line of its own."""
    try:
        yield lambda text: print(f"\r{text}", end="", file=sys.stderr, flush=True)
    finally:
        print(file=sys.stderr)


def output_path(path: str | Path) -> Path:
    """The path, its folder made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | Path, data: dict) -> None:
    """Writes the numbers beside a figure, and names the file on stdout."""
    path = output_path(path)
    path.write_text(json.dumps(data, indent=1))
    print(path)
