"""Heatmap overlays and word grids for `fmn.attention.trace` maps, DAAM-style (Tang et al. 2023, arXiv 2210.04885).

The before/after grid is laid out by `panels.panel_grid`; a word grid uses a private matplotlib `Figure` on the
Agg canvas, never pyplot's global state, so it is safe in servers and threads.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from .panels import Line, panel_grid

__all__ = ["overlay", "word_grid", "word_rows", "before_after_grid", "to_image"]


def overlay(image: Image.Image, heatmap: torch.Tensor, cmap: str = "jet", alpha: float = 0.5) -> Image.Image:
    """Blend a colour-mapped heatmap over `image`; returns an RGB image of the image's size.

    Args:
        image: the generated image.
        heatmap: (h, w) values in [0, 1] (a trace's normalised map), bilinearly upsampled to the image.
        cmap: a matplotlib colormap name.
        alpha: the heatmap's weight in the blend.
    """
    heat = torch.as_tensor(heatmap, dtype=torch.float32).detach().cpu()[None, None]  # (1, 1, h, w)
    heat = F.interpolate(heat, size=(image.height, image.width), mode="bilinear", align_corners=False)[0, 0]
    colours = matplotlib.colormaps[cmap](heat.clamp(0, 1).numpy())[..., :3]  # (H, W, 3) in [0, 1]
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    blend = (1 - alpha) * base + alpha * colours
    return Image.fromarray(np.round(blend * 255).astype(np.uint8))


def word_grid(image: Image.Image, maps: dict[str, torch.Tensor], title: str | None = None,
              cmap: str = "jet") -> Image.Image:
    """One row: the image, then its overlay for each word titled with the word, and one shared colour bar."""
    return word_rows([("image", image, maps)], title, cmap)


def word_rows(rows: list[tuple[str, Image.Image, dict[str, torch.Tensor]]], title: str | None = None,
              cmap: str = "jet") -> Image.Image:
    """One row per (name, image, {word: heatmap}): the image titled with the name, then each word's overlay.
    Rows of the same words compare (the original model above the patched one) when their maps share a scale."""
    n = max(len(maps) for _, _, maps in rows) + 1
    fig = Figure(figsize=(2 * n + 0.6, 2.2 * len(rows) + 0.2), dpi=100)
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (name, image, maps) in enumerate(rows):
        panels = [(name, image)] + [(word, overlay(image, heat, cmap)) for word, heat in maps.items()]
        for c in range(n):
            axes[r, c].axis("off")
            if c < len(panels):
                axes[r, c].imshow(panels[c][1])
                axes[r, c].set_title(panels[c][0])
    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=axes.ravel().tolist(), fraction=0.02, pad=0.02)
    if title is not None:
        fig.suptitle(title)
    return to_image(fig)


def to_image(fig: Figure) -> Image.Image:
    """Renders a private matplotlib figure to an RGB image."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def before_after_grid(rows: list[tuple[str, list, list]], seeds: list[int],
                      titles: tuple[str, str] = ("before", "after"), cmap: str = "jet") -> Image.Image:
    """One line per prompt and seed, four panels wide (the image and the word's heatmap before, then after), so
    that the maps stay large enough to read however many seeds there are.

    Args:
        rows: (label, before, after) per prompt; before and after hold one (image, heatmap) per seed,
            the two heatmaps of a seed on one scale (so that drained attention looks dimmer after).
        seeds: the seeds, for the line titles.
        titles: what the two sides are called.
    """
    lines = [Line([image_b, overlay(image_b, heat_b, cmap), image_a, overlay(image_a, heat_a, cmap)],
                  label if s == 0 else "", f"seed {seed}")
             for label, before, after in rows
             for s, (seed, ((image_b, heat_b), (image_a, heat_a))) in enumerate(zip(seeds, zip(before, after)))]
    return panel_grid(lines, [titles[0], "map", titles[1], "map"], split=2, cmap=cmap)
