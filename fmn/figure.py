"""A figure for talks: one PNG that tells an erasure's story, and a GIF of the heatmap building up.

Both are laid out from what the app and the CLI already drew (a before/after `Comparison` with its
traces and a `Collateral` map): nothing is generated here. `story` shows the prompt, its images
before and after on up to 3 seeds, the concept word's heatmaps before and after (one scale per
seed), and the chart of what else changed; `build_up` makes one frame per denoising step of the
word's map summing up, before beside after, and `save_gif` writes them.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from .collateral import Collateral
from .evaluate import Comparison
from .heatmaps import overlay, to_image

__all__ = ["story", "build_up", "save_gif", "write_figure"]

SEEDS_SHOWN = 3
FRAME_SIDE = 192  # pixels of each half of a GIF frame


def _probe_with(comparison: Comparison, word: str) -> int:
    """The first probe whose prompt has the word (the concept's own prompt comes first)."""
    return comparison.probes_with(word)[0]


def story(comparison: Comparison, collateral: Collateral, word: str) -> Image.Image:
    """The prompt's images before and after, the word's heatmaps before and after, and the collateral chart."""
    probe = _probe_with(comparison, word)
    prompt, before_share, after_share = next(s for s in comparison.shares(word)
                                             if s[0] == comparison.probes[probe].prompt)
    k = min(SEEDS_SHOWN, len(comparison.seeds))
    chart = collateral.chart()
    fig = Figure(figsize=(2 * k * 1.6, 2 * 1.7 + 1.6 * 2 * k * chart.height / chart.width + 0.8), dpi=100)
    grid = fig.add_gridspec(3, 2 * k, height_ratios=[1, 1, 2 * k * chart.height / chart.width])
    for s in range(k):
        pair = comparison.map_pair(word, probe, s)
        for half, (title, images, heat) in enumerate(zip(comparison.titles, (comparison.before, comparison.after),
                                                         pair)):
            image = images[probe][s]
            for row, panel in enumerate((image, overlay(image, heat))):
                ax = fig.add_subplot(grid[row, half * k + s])
                ax.imshow(panel)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"{title}, seed {comparison.seeds[s]}", fontsize=8)
                elif s == 0:
                    ax.set_ylabel(f'"{word}" attends', fontsize=8)
    ax = fig.add_subplot(grid[2, :])
    ax.imshow(chart)
    ax.axis("off")
    fig.suptitle(f'"{prompt}": "{word}" receives {before_share:.1%} → {after_share:.1%} of the attention', fontsize=10)
    return to_image(fig)


def build_up(comparison: Comparison, word: str, seed: int = 0) -> list[Image.Image]:
    """One frame per denoising step: the word's map so far over the image, before (left) and after (right),
    on one scale (the larger final map's peak), so the erased word's map stays dark as the other one fills in."""
    probe = _probe_with(comparison, word)
    traces = [side[probe][seed] for side in (comparison.before_maps, comparison.after_maps)]
    steps = [t.build_up(word) for t in traces]
    peak = max(float(m[-1].max()) for m in steps) or 1.0
    images = [side[probe][seed].resize((FRAME_SIDE, FRAME_SIDE), Image.NEAREST)
              for side in (comparison.before, comparison.after)]
    frames = []
    for i, maps in enumerate(zip(*steps)):
        frame = Image.new("RGB", (2 * FRAME_SIDE, FRAME_SIDE + 20), "white")
        for half, (image, heat) in enumerate(zip(images, maps)):
            frame.paste(overlay(image, heat / peak), (half * FRAME_SIDE, 20))
        ImageDraw.Draw(frame).text((4, 4), f'"{word}", step {i + 1}/{len(steps[0])}: {comparison.titles[0]} | '
                                           f'{comparison.titles[1]}', fill="black")
        frames.append(frame)
    return frames


def save_gif(frames: list[Image.Image], path: str | Path, ms_per_frame: int = 150) -> Path:
    """Writes the frames as a looping GIF; the last frame stays a second."""
    path = Path(path)
    durations = [ms_per_frame] * (len(frames) - 1) + [1000]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path


def write_figure(comparison: Comparison, collateral: Collateral, word: str,
                 path: str | Path) -> tuple[Image.Image, Path]:
    """The story as a PNG at `path` and the build-up as a GIF beside it (same name, .gif); returns the story and the
    GIF's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = story(comparison, collateral, word)
    figure.save(path)
    return figure, save_gif(build_up(comparison, word), path.with_suffix(".gif"))
