"""CLIP's quick GELU, ``x * sigmoid(1.702 x)``, trained in four passes over its input instead of nine.

Written as transformers writes it, autograd keeps three products, a sigmoid and their backward: on text-map's steps
(64 prompts of 77 tokens through an MLP four times the encoder's width) that elementwise work costs about as much as
the encoder's matrix products. The same function is ``silu(1.702 x) / 1.702``, whose derivative is ``silu'(1.702 x)``:
one scaling, one fused SiLU and an in-place scaling forward, one fused SiLU backward. The outputs and gradients are
the same up to float rounding.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers.activations import QuickGELUActivation

from .swapped_forward import swapped_forward

__all__ = ["fused_quick_gelu"]

SLOPE = 1.702  # the constant of transformers' QuickGELUActivation


class _QuickGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        scaled = x * SLOPE
        ctx.save_for_backward(scaled)
        return F.silu(scaled).mul_(1 / SLOPE)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (scaled,) = ctx.saved_tensors
        return torch.ops.aten.silu_backward(grad, scaled)


def _fused_forward(self: QuickGELUActivation, x: torch.Tensor) -> torch.Tensor:
    """Fused where a backward pass follows; transformers' own path elsewhere, so that an image another caller draws
    between two training steps is the same to the bit as outside them."""
    return _QuickGelu.apply(x) if x.requires_grad else type(self).forward(self, x)


def fused_quick_gelu(modules):
    """Inside the block every quick GELU of `modules` computes through `_QuickGelu`."""
    return swapped_forward(modules, QuickGELUActivation, _fused_forward)
