"""Heatmap overlays and word grids for `fmn.attention.trace` maps, DAAM-style (Tang et al. 2023, arXiv 2210.04885).

Rendering uses a private matplotlib `Figure` on the Agg canvas, never pyplot's global
state, so it is safe in servers and threads.
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

__all__ = ["overlay", "word_grid"]


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


def word_grid(image: Image.Image, maps: dict[str, torch.Tensor], title: str | None = None, cmap: str = "jet") -> Image.Image:
    """One row: the image, then its overlay for each word titled with the word, and one shared colour bar."""
    fig = Figure(figsize=(2 * (len(maps) + 1) + 0.6, 2.4), dpi=100)
    axes = np.atleast_1d(fig.subplots(1, len(maps) + 1))
    panels = [("image", image)] + [(word, overlay(image, heat, cmap)) for word, heat in maps.items()]
    for ax, (label, panel) in zip(axes, panels):
        ax.imshow(panel)
        ax.set_title(label)
        ax.axis("off")
    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=axes.tolist(), fraction=0.02, pad=0.02)
    if title is not None:
        fig.suptitle(title)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
