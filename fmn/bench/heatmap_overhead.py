"""Times generation with and without `fmn.attention.trace` (DAAM capture); spec target: overhead <= 30 %.

    python -m fmn bench heatmap-overhead                          # tiny random pipeline
    python -m fmn bench heatmap-overhead --model PATH --steps 50  # a diffusers SD folder
"""

from __future__ import annotations

import statistics
import time

import torch
from diffusers import StableDiffusionPipeline

from ..attention import trace
from ..tiny import tiny_pipeline
from .measure import device_name

__all__ = ["add_arguments", "run", "TARGET"]

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


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="diffusers StableDiffusionPipeline folder (default: tiny random pipeline)")
    parser.add_argument("--prompt", default="a red circle next to a blue square")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per image")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each; the median is reported")
    parser.add_argument("--threads", type=int, help="CPU threads (1 gives steadier timings on a busy machine)")


def run(args) -> float:
    """Prints the timings; returns the overhead (0.1 = 10 % slower with the trace)."""
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

    print(f"device:   {device_name(device)}")
    print(f"model:    {args.model or 'tiny_pipeline(sd15)'}, {args.steps} steps, median of {args.runs} runs")
    print(f"plain:    {plain_s * 1000:.1f} ms")
    print(f"trace:    {trace_s * 1000:.1f} ms")
    print(f"overhead: {overhead:+.1%} (target <= {TARGET:.0%}: {'met' if overhead <= TARGET else 'NOT met'})")
    return overhead
