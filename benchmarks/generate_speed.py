"""Times loading the embedded model and generating one 64x64 image (25 steps, guidance on).

    python -m benchmarks.generate_speed [--model PATH] [--runs 5]

Spec target: <= 3 s per image on 2 CPU cores. Prints the device, the thread count and the median.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fmn.generate import GenerationSettings, generate
from fmn.models import load_pipeline

TARGET_S = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--prompt", default="a red circle on grass")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

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
    print(f"device: {pipe.device} ({torch.get_num_threads()} CPU threads), dtype {pipe.unet.dtype}")
    print(f"load: {load_s:.2f} s; generate (25 steps, guidance 5): median {median:.2f} s over {args.runs} runs "
          f"(min {min(times):.2f}, max {max(times):.2f}); target <= {TARGET_S} s: {'met' if median <= TARGET_S else 'NOT met'}")


if __name__ == "__main__":
    main()
