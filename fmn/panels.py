"""Grids of image panels with their titles, drawn straight onto one PIL image.

The before/after grid and the word's heatmaps are redrawn on every Erase click. Laid out here, each panel is
pasted at a fixed size (`PANEL` pixels, whatever the model's resolution) and every title gets the room its text
needs, so no title squeezes the images, and the grid costs milliseconds rather than a figure with an axes per panel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["Line", "panel_grid", "PANEL"]

PANEL = 128  # each panel's side in pixels
GAP = 6  # between panels
SPLIT = 18  # between the two sides of a comparison
PAD = 8  # round the grid
TOP = 32  # above the headers: the app's image label and buttons lie over an image's top corners
FONT = 12
BAR = 14  # the colour bar's width


@dataclass
class Line:
    """One row of panels, with what it is written under (e.g. a prompt) and beside (e.g. a seed)."""

    panels: list[Image.Image]
    title: str = ""
    side: str = ""


def panel_grid(lines: list[Line], headers: list[str], split: int | None = None, cmap: str | None = None,
               panel: int = PANEL) -> Image.Image:
    """Every line's panels resized to `panel` pixels, under one header per column; a wider gap before column
    `split` (the second side of a comparison); with `cmap`, a colour bar from 0 to 1 at the right."""
    font = _font()
    text_h = font.getbbox("Ag")[3] + 4
    columns = max(len(line.panels) for line in lines)
    left = PAD + max((int(font.getlength(line.side)) + GAP for line in lines if line.side), default=0)
    xs = [left + c * (panel + GAP) + (SPLIT - GAP if split and c >= split else 0) for c in range(columns)]
    right = xs[-1] + panel + (GAP + BAR + 4 + int(font.getlength("1.0")) if cmap else 0)
    width = max(right, *(left + int(font.getlength(line.title)) for line in lines)) + PAD
    tops, y = [], TOP + text_h  # the headers, then each line: its title (if any) and its panels
    for line in lines:
        y += text_h if line.title else 0
        tops.append(y)
        y += panel + GAP
    canvas = Image.new("RGB", (width, y - GAP + PAD), "white")
    draw = ImageDraw.Draw(canvas)
    for x, header in zip(xs, headers):
        draw.text((x + panel // 2, TOP), header, fill="black", font=font, anchor="ma")
    for line, top in zip(lines, tops):
        if line.title:
            draw.text((left, top - text_h), line.title, fill="black", font=font)
        draw.text((left - GAP, top + panel // 2), line.side, fill="black", font=font, anchor="rm")
        for x, image in zip(xs, line.panels):
            canvas.paste(image.convert("RGB").resize((panel, panel), Image.Resampling.LANCZOS), (x, top))
    if cmap:
        _colour_bar(draw, font, cmap, xs[-1] + panel + GAP, tops[0], tops[-1] + panel)
    return canvas


@cache
def _font() -> ImageFont.FreeTypeFont:
    """DejaVu Sans, which matplotlib ships: it has the arrows and accents that the titles use."""
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), FONT)


def _colour_bar(draw: ImageDraw.ImageDraw, font, cmap: str, x: int, top: int, bottom: int) -> None:
    """A vertical bar of the colour map, 1 at the top and 0 at the bottom, with three ticks."""
    values = np.linspace(1, 0, bottom - top)
    colours = (matplotlib.colormaps[cmap](values)[:, :3] * 255).round().astype(np.uint8)
    for row, colour in enumerate(colours):
        draw.line([(x, top + row), (x + BAR - 1, top + row)], fill=tuple(int(c) for c in colour))
    for value in (0.0, 0.5, 1.0):
        y = top + round((1 - value) * (bottom - top - 1))
        draw.text((x + BAR + 4, y), f"{value:.1f}", fill="black", font=font, anchor="lm")
