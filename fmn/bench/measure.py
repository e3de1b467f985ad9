"""Where a benchmark ran and how much memory a block of work took at its peak.

Both benchmarks (`quality`, `speed`) report through these, so their tables name the device
and count memory the same way.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

__all__ = ["device_name", "Peak"]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


class Peak:
    """Peak memory of a block. CUDA: `torch.cuda.max_memory_allocated`, every tensor on the GPU
    (weights included). Elsewhere: the process's peak resident memory (Linux VmHWM, reset at the
    start through /proc/self/clear_refs) above its resident memory at the start, so weights loaded
    before the block are not counted but a copy made inside it is. None where Linux's counters are missing."""

    def __init__(self, device: torch.device):
        self.device, self.bytes = device, None

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    @contextmanager
    def __call__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
            before = self._status("VmRSS")
        except OSError:
            before = None
        yield
        self.bytes = None if before is None else max(0, self._status("VmHWM") - before)

    @property
    def kind(self) -> str:
        return ("torch.cuda.max_memory_allocated (weights included)" if self.device.type == "cuda" else
                "peak RSS above the RSS before the erasure (VmHWM reset via /proc/self/clear_refs): "
                "weights loaded before are not counted, a copy made during the erasure is")
