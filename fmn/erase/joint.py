"""What the text side of a diffusion transformer's joint attention reads: the closed forms' rows on SD3 and FLUX.

On a UNet every cross-attention key/value projection reads the same rows, the text encoders' states, so one set of
rows serves every edited layer (`uce.py`). In an MMDiT (SD3's joint blocks, FLUX's double-stream ones) the text
tokens form a stream of their own: block l's text-side key and value projections (``add_k_proj``, ``add_v_proj``)
read that stream as block l received it, normalised and modulated by the step. So each block's rows are its own
input, captured while the transformer denoises the prompt (ours: the mean over the first `STEPS` steps of a
generation from fixed noise, on the unedited model), and the closed form is solved block by block.
"""

from __future__ import annotations

import torch
from torch import nn

from ..generate import native_size
from .layers import layer_names

__all__ = ["joint_projections", "joint_inputs", "STEPS", "SIDE"]

STEPS = 2  # ours: denoising steps whose inputs are averaged (the text stream changes little between them)
SIDE = 256  # ours: the image side (at most the native one) drawn while they are captured; small: they are text


def joint_projections(transformer: nn.Module) -> list[str]:
    """The text-side key and value projections of every joint attention, in block order."""
    return [n for n in layer_names(transformer, (nn.Linear,)) if n.endswith(("attn.add_k_proj", "attn.add_v_proj"))]


@torch.no_grad()
def joint_inputs(pipe, prompts: list[str]) -> torch.Tensor:
    """What each joint block's text-side projections read for the prompts, the blocks side by side:
    (B, text positions, blocks * D) in float32, block i's input in columns i*D to (i+1)*D."""
    keys = [n for n in joint_projections(pipe.transformer) if n.endswith("add_k_proj")]  # add_v_proj reads the same
    modules = dict(pipe.transformer.named_modules())
    sums = dict.fromkeys(keys, 0)

    def capture(name: str):
        def hook(module, args):
            sums[name] = sums[name] + args[0][-len(prompts):].float()  # under CFG the batch is [uncond, cond]
        return hook

    handles = [modules[name].register_forward_pre_hook(capture(name)) for name in keys]
    side = min(native_size(pipe), SIDE)
    try:
        pipe(prompts, num_inference_steps=STEPS, height=side, width=side, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat([sums[name] / STEPS for name in keys], dim=-1)
