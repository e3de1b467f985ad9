"""What text-map reads and trains on every architecture: the text encoders' own output, as rows.

On a UNet every cross-attention layer reads the text encoders' states, so those are the rows (`diffusion.encode`).
SD3 and FLUX read two things from their encoders: the text sequence their pipeline builds (SD3: CLIP-L's and
CLIP-G's penultimate states side by side, zero-padded to T5's width, then T5's; FLUX: T5's), which the joint
attention reads, and the pooled CLIP projection (SD3: both CLIPs'; FLUX: CLIP-L's alone), which modulates every
block. There text-map reads both: the sequence, then the pooled vector as one more row, zero-padded to the
sequence's width. That row is CLIP's end token, projected, so it is mapped as the rows after the concept's token
are (`targets.py`); without it FLUX's CLIP-L, which gives nothing else, would hold the concept untouched.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..diffusion import encode, text_segments
from ..models import is_transformer
from .layers import layer_names

__all__ = ["encoder_rows", "encoder_segments", "encoder_layers"]


def encoder_rows(pipe, prompts: list[str], padding_rows: int = -1) -> torch.Tensor:
    """(B, positions, D) in float32: the text encoders' states; on SD3 and FLUX the text sequence, then the pooled
    row. Gradients flow to the encoders. `padding_rows`: on SD 1.x/2.x the first positions only (`encode`)."""
    text = encode(pipe, prompts, padding_rows)
    if not is_transformer(pipe):
        return text.states.float()
    pooled = nn.functional.pad(text.pooled, (0, text.states.shape[-1] - text.pooled.shape[-1]))  # (B, D)
    return torch.cat([text.states, pooled[:, None]], dim=1).float()


def encoder_segments(pipe) -> list[tuple[object, int, int]]:
    """(tokenizer, first position, positions) per part of `encoder_rows`: `text_segments`, and on SD3 and FLUX the
    pooled row after them, with no tokenizer."""
    segments = text_segments(pipe)
    if not is_transformer(pipe):
        return segments
    _, begin, length = segments[-1]
    return [*segments, (None, begin + length, 1)]


def encoder_layers(encoder: nn.Module, frozen_share: float = 0.0) -> list[str]:
    """Every linear layer inside the encoder's transformer blocks (CLIP's ``layers.<i>``, T5's ``block.<i>``) but
    those of its first `frozen_share` of blocks, left as they are: backward stops at the first block that trains."""
    blocks = {name: int(found[1]) for name in layer_names(encoder, (nn.Linear,))
              if (found := re.match(r"(?:.*\.layers|encoder\.block)\.(\d+)\.", name))}
    first = int(frozen_share * (max(blocks.values()) + 1)) if blocks else 0
    return [name for name, block in blocks.items() if block >= first]
