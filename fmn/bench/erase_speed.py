"""Times one erasure on the CPU as the app's Erase tab runs it, the before/after comparison included.

    python -m fmn bench erase-speed [--method text-encoder] [--concept circle] [--model PATH]

Spec target: <= 60 s from clicking Erase to the before/after grid, on 2 CPU cores; the views
added to it (each probe's traced heatmaps, the concept word's before/after grid) <= 30 % of the
click without them, measured against the same images drawn plainly. The model
is loaded once when the app starts, so its load time is printed but not counted. Prints the
CPU, the core and thread counts, and the load average at the start, since other work on the
machine slows every number down.
"""

from __future__ import annotations

import os
import time

import torch

from ..erase import DEFAULT_METHOD, METHODS
from ..evaluate import probe_prompts
from ..generate import GenerationSettings, generate_many
from ..patch import active
from ..studio import Studio
from .measure import device_name

__all__ = ["add_arguments", "run", "TARGET_S"]

TARGET_S = 60.0
VIEWS_TARGET = 0.30
SEEDS = (0, 1, 2)  # the comparison's seeds


def add_arguments(parser) -> None:
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS))
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--model", default=None, help="default: the embedded model")


def run(args) -> float:
    """Prints the timings; returns the seconds from click to before/after."""
    busy = os.getloadavg()[0]
    start = time.perf_counter()
    studio = Studio(args.model, device="cpu")
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    patch_id = studio.erase([args.concept], args.method)
    erase_s = time.perf_counter() - start
    probes = probe_prompts(studio.pipe, args.concept)
    start = time.perf_counter()
    texts, seeds = [p.prompt for p in probes for _ in SEEDS], [s for _ in probes for s in SEEDS]
    for patches in ((), [patch_id]):  # the same images, batched as the comparison is, untraced: the click without views
        with active(studio.pipe, patches):
            generate_many(studio.pipe, texts, seeds, GenerationSettings("").steps)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    result = studio.compare(args.concept, [patch_id])
    result.heatmaps(result.word_for([args.concept]))
    compare_s = time.perf_counter() - start
    total = erase_s + compare_s
    views = (compare_s - plain_s) / (erase_s + plain_s)
    images = 2 * len(result.probes) * len(result.seeds)
    print(f"device: {device_name(torch.device('cpu'))}; load average {busy:.1f} at the start")
    print(f"{args.method} erasure of {args.concept!r}, default settings, on {studio.source}")
    print(f"load: {load_s:.1f} s (once, when the app starts: not counted)")
    print(f"erase: {erase_s:.1f} s; before/after ({images} images): {compare_s:.1f} s")
    print(f"total: {total:.1f} s; target <= {TARGET_S:.0f} s on 2 CPU cores: "
          f"{'met' if total <= TARGET_S else 'NOT met'}")
    print(f"views (traced heatmaps, the word's before/after grid): {compare_s - plain_s:+.1f} s against the same "
          f"{images} images drawn plainly in {plain_s:.1f} s: {views:+.0%} on the click; target <= {VIEWS_TARGET:.0%}: "
          f"{'met' if views <= VIEWS_TARGET else 'NOT met'}")
    return total
