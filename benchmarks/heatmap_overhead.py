"""Times generation with and without `fmn.attention.trace` (DAAM capture); spec target: overhead <= 30 %.

Usage, from the repository root:
    python -m benchmarks.heatmap_overhead                          # tiny random pipeline
    python -m benchmarks.heatmap_overhead --model PATH --steps 50  # a diffusers SD folder
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import StableDiffusionPipeline

from fmn.attention import trace
from fmn.tiny import tiny_pipeline

TARGET = 0.30  # spec: capturing heatmaps may slow generation by at most 30 %


def seconds(fn, device: torch.device) -> float:
    """Wall time of fn(), waiting for queued GPU work on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="diffusers StableDiffusionPipeline folder (default: tiny random pipeline)")
    parser.add_argument("--prompt", default="a red circle next to a blue square")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per image")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each; the median is reported")
    parser.add_argument("--threads", type=int, help="CPU threads (1 gives steadier timings on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.model is None:
        pipe = tiny_pipeline("sd15")
    else:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)

    def plain():
        pipe(args.prompt, num_inference_steps=args.steps, generator=torch.Generator(device).manual_seed(0))

    def traced():
        with trace(pipe, args.prompt):
            plain()

    plain(), traced()  # warm-up
    times = {"plain": [], "trace": []}
    for _ in range(args.runs):  # interleaved, so drifting machine load hits both alike
        times["plain"].append(seconds(plain, device))
        times["trace"].append(seconds(traced, device))
    plain_s, trace_s = statistics.median(times["plain"]), statistics.median(times["trace"])
    overhead = trace_s / plain_s - 1

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device:   {name}")
    print(f"model:    {args.model or 'tiny_pipeline(sd15)'}, {args.steps} steps, median of {args.runs} runs")
    print(f"plain:    {plain_s * 1000:.1f} ms")
    print(f"trace:    {trace_s * 1000:.1f} ms")
    print(f"overhead: {overhead:+.1%} (target <= {TARGET:.0%}: {'met' if overhead <= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
