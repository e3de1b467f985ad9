"""The layers a patch may change, by the names the base model gives them."""

from __future__ import annotations

from torch import nn

__all__ = ["layer_names", "attn2_modules", "unet_modules_except_attn2"]

ATTN2_LAYERS = ("to_q", "to_k", "to_v", "to_out.0")


def layer_names(model: nn.Module, kinds: tuple[type, ...]) -> list[str]:
    """Names of the model's layers of these kinds as the base model names them: a layer that another
    patch already wrapped (peft keeps it as ``<name>.base_layer``) is listed under its own name, and
    the patches' own factors (``<name>.lora_A.<patch>``) are left out."""
    return [n.removesuffix(".base_layer") for n, m in model.named_modules()
            if isinstance(m, kinds) and ".lora_" not in n]


def attn2_modules(unet: nn.Module) -> list[str]:
    """Names of the cross-attention projections (ESD-x, Forget-Me-Not's attn2-only patch)."""
    return [n for n in layer_names(unet, (nn.Linear,)) if any(n.endswith(f"attn2.{x}") for x in ATTN2_LAYERS)]


def unet_modules_except_attn2(unet: nn.Module) -> list[str]:
    """Names of every linear and convolution layer outside cross-attention (ESD-u)."""
    return [n for n in layer_names(unet, (nn.Linear, nn.Conv2d)) if ".attn2." not in n]
