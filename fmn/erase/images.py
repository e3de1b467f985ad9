"""Uploaded images of a concept: checked, then cropped and resized to the model's size.

Every way an upload can be wrong gets a message that names the file: not an image, a
damaged file, too large or too many. No images at all is not an error: it means none,
and the methods draw their own references with the unedited model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["load_concept_images", "MAX_IMAGES", "MAX_SIDE"]

MAX_IMAGES = 20
MAX_SIDE = 4096
SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def _one(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:  # reads the header only: the size is known before decoding
            if max(image.size) > MAX_SIDE:
                raise ValueError(f"{path.name} is {image.size[0]}x{image.size[1]} pixels; "
                                 f"the limit is {MAX_SIDE} a side.")
            image = image.convert("RGB")
    except Image.DecompressionBombError as err:  # so many pixels that PIL will not even open it
        raise ValueError(f"{path.name} is too large; the limit is {MAX_SIDE} pixels a side.") from err
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path.name} is not a readable image ({type(err).__name__}).") from err
    side = min(image.size)  # centre square, then the model's size
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    return np.asarray(image)


def load_concept_images(paths: list[str | Path] | str | Path, size: int) -> torch.Tensor | None:
    """Images from files (or every image in a folder) as a (N, 3, size, size) tensor in [-1, 1];
    None when there are none, so that an empty upload or folder means "no images"."""
    if isinstance(paths, (str, Path)) and Path(paths).is_dir():
        paths = sorted(p for p in Path(paths).iterdir() if p.suffix.lower() in SUFFIXES)
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        return None
    if len(paths) > MAX_IMAGES:
        raise ValueError(f"{len(paths)} images; the limit is {MAX_IMAGES}.")
    for p in paths:
        if not p.is_file():
            raise ValueError(f"{p}: no such file.")
    pixels = np.stack([_one(p, size) for p in paths])  # (N, size, size, 3)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
