"""Where an erasure's time goes:  python -m fmn bench profile

    python -m fmn bench profile --arch sd15 --random-weights [--method fmn] [--steps 8] [--out profile.txt]

One erasure of a few training steps, with our recipe on the model `bench speed` builds, runs
under `torch.profiler` (CPU, and the GPU's kernels on CUDA) after an unprofiled warm-up
erasure. Two tables: the erasure's phases (the loop's `record_function` names: references,
loss, preserve, backward, optimizer), and the operators that took the most time. Where a phase's
CPU time is far above its GPU time, the GPU waits on Python and kernel launches, not on arithmetic.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ..erase import METHODS, make_patch
from ..models import pick_device
from ..patch import detach
from .measure import device_name
from .speed import bench_pipeline, recipe_method

__all__ = ["add_arguments", "run"]


def add_arguments(parser) -> None:
    parser.add_argument("--arch", choices=["sd15", "tiny"], help="model size (default: sd15 on CUDA, else tiny)")
    parser.add_argument("--random-weights", action="store_true", help="required: the model is built from its config")
    parser.add_argument("--method", default="fmn", choices=[m for m, cls in METHODS.items() if cls.trains])
    parser.add_argument("--steps", type=int, default=8, help="training steps of the profiled erasure")
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--rows", type=int, default=25, help="operators listed")
    parser.add_argument("--out", help="also write the report to this text file")


def _phases(events, on_gpu: bool) -> str:
    """The loop's phases: calls, CPU (wall) time and, on CUDA, the GPU time of the kernels they launched."""
    lines = [f"{'phase':<20}{'calls':>7}{'CPU ms':>11}" + (f"{'GPU ms':>11}" if on_gpu else "")]
    for e in sorted((e for e in events if e.key.startswith("erase.")), key=lambda e: -e.cpu_time_total):
        gpu = f"{e.device_time_total / 1000:>11.1f}" if on_gpu else ""
        lines.append(f"{e.key:<20}{e.count:>7}{e.cpu_time_total / 1000:>11.1f}" + gpu)
    return "\n".join(lines)


def run(args) -> str:
    if not args.random_weights:
        raise ValueError("--random-weights is required: the profile runs on a model built from its config.")
    device = pick_device(args.device)[0]
    arch = args.arch or ("sd15" if device.type == "cuda" else "tiny")
    method = recipe_method(args.method, "ours", args.concept, args.steps)  # checks the steps before a model is built
    pipe = bench_pipeline(arch, "ours", device)
    make_patch(pipe, recipe_method(args.method, "ours", args.concept, 2), "warm-up")  # kernels, allocator
    detach(pipe, "warm-up")
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        make_patch(pipe, method, "profiled")
        if on_gpu:
            torch.cuda.synchronize()
    detach(pipe, "profiled")
    events = prof.key_averages()
    sort = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    report = "\n\n".join([
        f"# Profile: {args.method} erasing {args.concept!r}, {args.steps} steps, arch {arch}, "
        f"{str(pipe.unet.dtype).removeprefix('torch.')}; {device_name(device)}; torch {torch.__version__}",
        _phases(events, on_gpu),
        events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=60),
    ])
    print(report, file=sys.stdout)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return report
