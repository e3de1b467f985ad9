"""A CLIP text encoder's first blocks that do not train, run once per prompt while a patch trains.

Text-map leaves the first `frozen_share` of the encoder's blocks as they are (`encoders.encoder_layers`) and reads
the same prompts step after step: every erased prompt each step, keep prompts drawn from a few dozen. What those
blocks give a prompt cannot change while the patch trains, so inside `cached_prefix` a training forward starts at
the first block that trains, from its input computed once per prompt (`output_hidden_states`); the blocks before it
pass that on. Only a forward a backward follows (grad on) from plain token ids, with nothing hooked on the embeddings
or their tables (a learned word, an attacker's words) and nothing there training, takes that path: an image another
caller draws between two steps runs the whole encoder as ever, to the bit. The cache holds one (positions, width)
tensor per distinct prompt and lives as long as the block.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from transformers import CLIPTextModel
from transformers.models.clip.modeling_clip import CLIPEncoderLayer, CLIPTextEmbeddings

from .swapped_forward import swapped_forward

__all__ = ["cached_prefix"]


class _PrefixCache:
    """The input of an encoder's first trained block, per prompt's token ids."""

    def __init__(self, encoder: nn.Module, frozen: int):
        self.encoder, self.frozen = encoder, frozen
        self.states: dict[bytes, torch.Tensor] = {}
        # `.cached`: this thread's forward started from the cache (per thread: another may draw an image meanwhile)
        self.forward = threading.local()

    def embed(self, embeddings: CLIPTextEmbeddings, input_ids=None, position_ids=None, inputs_embeds=None):
        """The embeddings' output, or on a training forward of plain ids the first trained block's input."""
        plain = (torch.is_grad_enabled() and input_ids is not None and position_ids is None and inputs_embeds is None
                 and not any(_hooked(module) for module in embeddings.modules())
                 and not any(param.requires_grad for param in embeddings.parameters()))
        self.forward.cached = plain
        if not plain:
            return type(embeddings).forward(embeddings, input_ids, position_ids, inputs_embeds)
        keys = [row.numpy().tobytes() for row in input_ids.cpu()]
        missing = list({key: i for i, key in enumerate(keys) if key not in self.states}.values())
        if missing:
            with torch.no_grad():
                states = self.encoder(input_ids[missing], output_hidden_states=True).hidden_states[self.frozen]
            self.states.update((keys[i], row) for i, row in zip(missing, states))
            self.forward.cached = True  # the nested forward above ran the whole encoder
        return torch.stack([self.states[key] for key in keys])

    def block(self, layer: CLIPEncoderLayer, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """A frozen block: its input passed on where the forward started from the cache, else its own output."""
        if getattr(self.forward, "cached", False):
            return hidden_states
        return type(layer).forward(layer, hidden_states, *args, **kwargs)


def _hooked(module: nn.Module) -> bool:
    """Whether a hook may change what the module gives: one run before it or after it."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _frozen_blocks(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's first blocks none of whose weights train."""
    frozen = []
    for block in encoder.encoder.layers:
        if any(param.requires_grad for param in block.parameters()):
            break
        frozen.append(block)
    return frozen


@contextmanager
def cached_prefix(modules: list[nn.Module]):
    """Inside the block each CLIP text encoder of `modules` whose first blocks do not train starts a training forward
    at the first that does, from its input computed once per prompt (`_PrefixCache`)."""
    with ExitStack() as stack:
        for module in modules:
            encoder = getattr(module, "text_model", module)  # SDXL's second encoder holds a CLIPTextModel
            frozen = _frozen_blocks(encoder) if isinstance(encoder, CLIPTextModel) else []
            if not frozen or len(frozen) == len(encoder.encoder.layers):
                continue
            cache = _PrefixCache(encoder, len(frozen))
            stack.enter_context(swapped_forward([encoder.embeddings], CLIPTextEmbeddings, cache.embed))
            stack.enter_context(swapped_forward(frozen, CLIPEncoderLayer, cache.block))
        yield
