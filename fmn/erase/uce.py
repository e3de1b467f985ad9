"""Unified Concept Editing (UCE), Gandikota et al. 2024, arXiv 2308.14761: a closed-form edit.

Each cross-attention key/value projection W gets the W' that maps the concept's text
embeddings c_i to what W gives the guide's embeddings c*_i, keeps preserved concepts c_j,
and stays near W (weight lambda). As in the released code, the c_i are the embeddings from
the concept's last token to the end of the prompt: in CLIP's causal text encoder the end
token and the padding after it carry the concept too, and left alone they bring it back.
    W' = [lam W + sum_i (W c*_i) c_i^T + sum_j (W c_j) c_j^T] [lam I + sum_i c_i c_i^T + sum_j c_j c_j^T]^-1
The change W' - W = W (C* - C) C^T M^-1 has rank len(C), so it is stored exactly as LoRA
factors B = W (C* - C), A = C^T M^-1: the same patch format as the trained methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline

from ..diffusion import encode
from .method import ErasureMethod, MethodConfig, register

__all__ = ["UCEConfig", "UCE"]


@dataclass
class UCEConfig(MethodConfig):
    lam: float = 0.5  # paper: lambda about 0.5


@register
class UCE(ErasureMethod):
    name = "uce"
    Config = UCEConfig
    trains = False

    def _embeddings(self, pipe: StableDiffusionPipeline, word: str, guide: str | None = None) -> torch.Tensor:
        """(L, D): the word's prompt embeddings from its last token on, or the guide prompt's at the aligned rows."""
        last = {text: len(pipe.tokenizer(text, truncation=True).input_ids) - 2 for text in (word, guide or "")}
        length = pipe.tokenizer.model_max_length - max(last.values())
        text = word if guide is None else guide
        return encode(pipe, [text])[0, last[text]:last[text] + length].float()

    @torch.no_grad()
    def solve(self, pipe: StableDiffusionPipeline) -> tuple[dict[str, torch.Tensor], dict]:
        """The patch tensors and the LoRA config of the edit, keyed as in a patch file."""
        cfg = self.config
        c = torch.cat([self._embeddings(pipe, word) for word in self.concepts])  # (k, D)
        c_star = torch.cat([self._embeddings(pipe, word, guide=cfg.guide) for word in self.concepts])  # (k, D)
        kept = torch.cat([self._embeddings(pipe, word) for word in cfg.preserve] or [c[:0]])
        m = cfg.lam * torch.eye(c.shape[1], device=c.device) + c.T @ c + kept.T @ kept  # (D, D)
        a = torch.linalg.solve(m, c.T).T  # (k, D) = C^T M^-1 (M is symmetric)
        tensors, modules = {}, []
        for name, module in pipe.unet.named_modules():
            if name.endswith(("attn2.to_k", "attn2.to_v")):
                w = module.weight.float()  # (out, D)
                tensors[f"unet.{name}.lora_A.weight"] = a.clone()
                tensors[f"unet.{name}.lora_B.weight"] = w @ (c_star - c).T  # (out, k)
                modules.append(name)
        rank = a.shape[0]
        return tensors, {"unet": {"r": rank, "lora_alpha": rank, "target_modules": sorted(modules)}}
