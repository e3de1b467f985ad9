"""Unified Concept Editing (UCE), Gandikota et al. 2024, arXiv 2308.14761: a closed-form edit.

Each cross-attention key/value projection W gets the W' that maps the concept's text
embeddings c_i to what W gives the guide's embeddings c*_i, keeps preserved concepts c_j,
and stays near W (weight lambda):
    W' = [lam W + sum_i (W c*_i) c_i^T + sum_j (W c_j) c_j^T] [lam I + sum_i c_i c_i^T + sum_j c_j c_j^T]^-1
The change W' - W = W (C* - C) C^T M^-1 has rank len(C), so it is stored exactly as LoRA
factors B = W (C* - C), A = C^T M^-1: the same patch format as the trained methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import StableDiffusionPipeline

from .common import encode
from .forget_me_not import concept_positions

__all__ = ["UCEConfig", "UCE"]


@dataclass
class UCEConfig:
    lam: float = 0.5  # paper: lambda about 0.5
    guide: str = ""  # what the concept should look like instead ("" = nothing; or a replacement concept)
    preserve: list[str] = field(default_factory=list)  # concepts whose outputs must not change
    seed: int = 0


class UCE:
    name = "uce"

    def __init__(self, concepts: list[str], config: UCEConfig):
        self.concepts, self.config = concepts, config

    def _token_embeddings(self, pipe: StableDiffusionPipeline, words: list[str], guide: str | None = None) -> torch.Tensor:
        """(k, D): each word's token embeddings in its own prompt, or the guide prompt's at the same positions."""
        rows = []
        for word in words:
            positions = concept_positions(pipe.tokenizer, word, word)
            source = encode(pipe, [word if guide is None else guide])[0]  # (77, D)
            rows.append(source[positions])
        return torch.cat(rows).float()

    @torch.no_grad()
    def solve(self, pipe: StableDiffusionPipeline) -> tuple[dict[str, torch.Tensor], dict]:
        """The patch tensors and the LoRA config of the edit, keyed as in a patch file."""
        cfg = self.config
        c = self._token_embeddings(pipe, self.concepts)  # (k, D)
        c_star = self._token_embeddings(pipe, self.concepts, guide=cfg.guide)  # (k, D)
        kept = self._token_embeddings(pipe, cfg.preserve) if cfg.preserve else c.new_zeros(0, c.shape[1])
        m = cfg.lam * torch.eye(c.shape[1]) + c.T @ c + kept.T @ kept  # (D, D)
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
