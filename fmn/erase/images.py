"""Uploaded images of a concept: checked, then cropped and resized to the model's size.

Every way an upload can be wrong gets a message that names the file: not an image, a
damaged file, too large or too many. No images at all is not an error: it means none,
and the methods draw their own references with the unedited model. Images already in memory
are cropped and resized the same way (`concept_images`), and a tensor given to the API that
no method can read is refused with what it should be (`check_images`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["load_concept_images", "concept_images", "check_images", "MAX_IMAGES", "MAX_SIDE"]

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
    return _square(image, size)


def _square(image: Image.Image, size: int) -> np.ndarray:
    """The image's centre square at the model's size, (size, size, 3) RGB."""
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC))


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    """(N, size, size, 3) pixels as (N, 3, size, size) in [-1, 1]."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def concept_images(images: list[Image.Image], size: int) -> torch.Tensor:
    """Images already in memory (a benchmark's, a caller's), cropped and resized as uploads are: (N, 3, size, size)."""
    if not 1 <= len(images) <= MAX_IMAGES:
        raise ValueError(f"{len(images)} images; give 1 to {MAX_IMAGES}.")
    return _tensor(np.stack([_square(image, size) for image in images]))


def check_images(images) -> None:
    """Refuses images given to the API that the methods cannot read: not a (N, 3, H, W) tensor of 1 to MAX_IMAGES
    images, sides a multiple of 8 (the VAE's), values outside [-1, 1] (as `load_concept_images` gives them)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: a (N, 3, H, W) tensor in [-1, 1] (fmn.erase.images.load_concept_images reads "
                         f"files into one), not {shape}.")
    if not 1 <= len(images) <= MAX_IMAGES:
        raise ValueError(f"{len(images)} images; give 1 to {MAX_IMAGES} (None: the method draws its own).")
    if images.shape[2] % 8 or images.shape[3] % 8:
        raise ValueError(f"images of {images.shape[3]}x{images.shape[2]} pixels: each side a multiple of 8.")
    if not (torch.isfinite(images).all() and images.min() >= -1 and images.max() <= 1):
        raise ValueError("images: values in [-1, 1] (pixels / 127.5 - 1), finite.")


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
    return _tensor(np.stack([_one(p, size) for p in paths]))
