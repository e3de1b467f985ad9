"""Resumable training state in safetensors: model tensors, optimizer state and a JSON header.

Training checkpoints are written and read by this project only, but they still use
safetensors (no pickle anywhere), so the optimizer's state is flattened into named tensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, info: dict) -> None:
    """Writes tensors + optimizer state + info atomically (a crash mid-write keeps the old file)."""
    flat = {f"tensor.{k}": v.detach().contiguous().cpu() for k, v in tensors.items()}
    state = optimizer.state_dict()
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            flat[f"optim.{idx}.{key}"] = torch.as_tensor(value).contiguous().cpu()
    header = {"info": json.dumps(info), "param_groups": json.dumps(state["param_groups"])}
    tmp = path.with_suffix(".tmp")
    save_file(flat, tmp, metadata=header)
    os.replace(tmp, path)


def load_checkpoint(path: Path, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Restores the optimizer in place; returns (tensors, info)."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        header = f.metadata()
    flat = load_file(path)
    tensors = {k[len("tensor."):]: v for k, v in flat.items() if k.startswith("tensor.")}
    state: dict[int, dict] = {}
    for key, value in flat.items():
        if key.startswith("optim."):
            _, idx, slot = key.split(".", 2)
            state.setdefault(int(idx), {})[slot] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(header["param_groups"])})
    return tensors, json.loads(header["info"])
