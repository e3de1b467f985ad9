"""Times loading the embedded model and generating one 64x64 image (25 steps, guidance on).

    python -m fmn bench generate-speed [--model PATH] [--runs 5]

Spec target: <= 3 s per image on 2 CPU cores. Prints the device, the thread count and the median.
"""

from __future__ import annotations

import statistics
import time

from ..generate import GenerationSettings, generate
from ..models import load_pipeline
from .measure import device_name

__all__ = ["add_arguments", "run", "TARGET_S"]

TARGET_S = 3.0


def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--prompt", default="a red circle on grass")
    parser.add_argument("--runs", type=int, default=5)


def run(args) -> float:
    """Prints the timings; returns the median seconds per image."""
    start = time.perf_counter()
    pipe = load_pipeline(args.model)
    load_s = time.perf_counter() - start
    settings = GenerationSettings(args.prompt, steps=25, guidance=5.0)
    generate(pipe, settings)  # warm-up
    times = []
    for seed in range(args.runs):
        start = time.perf_counter()
        generate(pipe, GenerationSettings(args.prompt, seed=seed, steps=25, guidance=5.0))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"device: {device_name(pipe.device)}, dtype {pipe.unet.dtype}")
    print(f"load: {load_s:.2f} s; generate (25 steps, guidance 5): median {median:.2f} s over {args.runs} runs "
          f"(min {min(times):.2f}, max {max(times):.2f}); target <= {TARGET_S} s: "
          f"{'met' if median <= TARGET_S else 'NOT met'}")
    return median
