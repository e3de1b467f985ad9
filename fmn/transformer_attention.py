"""Per-word heatmaps from the joint attention of diffusion transformers (SD3, FLUX).

In an MMDiT block (Esser et al. 2024, "Scaling Rectified Flow Transformers", arXiv 2403.03206) text and
image tokens attend jointly: there is no cross-attention layer to read. A word's map here is the
image-query -> text-key part of the joint softmax, averaged over heads and over the joint blocks (SD3's,
FLUX's double-stream ones; FLUX's single-stream blocks are not read), summed over steps as they run: DAAM's
recipe (`fmn.attention`) on joint attention, as attention-map-diffusers reads SD3 and FLUX.

The text sequence is several encoders' tokens one after another: SD3's is CLIP's 77 positions (both CLIP
encoders' states side by side) then T5's, FLUX's is T5's alone. A word is one of CLIP's words (the same
words as on a UNet); its map is the mean of its tokens' maps in every encoder of the sequence, a token
belonging to the word whose characters it covers.

`JointAttentionTracer` wraps a block's own processor: it computes the probabilities from the block's
queries and keys, then lets the wrapped processor compute the output, so a traced image is the same image.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import DiffusionPipeline
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

from .attention import Sink, Trace, hooked, word_spans
from .diffusion import text_segments

__all__ = ["JointAttentionTracer", "JointTrace", "image_to_text", "install_joint", "joint_trace"]

def _encoded(tokenizer, prompt: str, length: int) -> tuple[list[str], list[tuple[int, int]]]:
    """The prompt's tokens as the pipeline pads them, and each token's characters in the prompt ((0, 0): special)."""
    enc = tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_offsets_mapping=True)
    return tokenizer.convert_ids_to_tokens(enc.input_ids), enc.offset_mapping


def _norm(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


@torch.no_grad()
def image_to_text(attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                  image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The joint softmax's image-query rows at the text keys, mean over heads: (B, pixels, text).

    The queries and keys are the block's own (projections, q/k norms, FLUX's rotary positions over
    [text, image]); the softmax runs over every key, text and image, as the block's attention does."""
    n_text = encoder_hidden_states.shape[1]

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (attn.heads, -1))  # (B, tokens, heads, head_dim)

    query = _norm(attn.norm_q, heads(attn.to_q(hidden_states)))  # (B, pixels, heads, d)
    key = torch.cat([_norm(attn.norm_added_k, heads(attn.add_k_proj(encoder_hidden_states))),
                     _norm(attn.norm_k, heads(attn.to_k(hidden_states)))], dim=1)  # (B, text + pixels, heads, d)
    if image_rotary_emb is not None:  # FLUX: positions over [text, image]
        cos, sin = image_rotary_emb
        query = apply_rotary_emb(query, (cos[n_text:], sin[n_text:]), sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    probs = 0
    for h in range(query.shape[2]):  # one head's (B, pixels, text + pixels) scores at a time
        scores = query[:, :, h].float() @ key[:, :, h].float().transpose(1, 2) * query.shape[-1] ** -0.5
        probs = probs + scores.softmax(-1)[..., :n_text]
    return probs / query.shape[2]


class JointAttentionTracer:
    """A joint block's own processor, plus `sink(name, probs, attn)` with `image_to_text`'s probabilities.
    The output is the wrapped processor's, so images are unchanged."""

    def __init__(self, name: str, original, sink: Sink):
        self.name, self.original, self.sink = name, original, sink

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None, **kwargs):
        # image_rotary_emb is named: diffusers passes a processor only the arguments its signature names
        if encoder_hidden_states is not None:
            self.sink(self.name, image_to_text(attn, hidden_states, encoder_hidden_states, image_rotary_emb), attn)
        if image_rotary_emb is not None:
            kwargs["image_rotary_emb"] = image_rotary_emb
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


@contextmanager
def install_joint(transformer: nn.Module, sink: Sink) -> Iterator[None]:
    """Route every joint attention (one with text-side projections, ``add_k_proj``) of `transformer` through
    `sink`; restore the original processors on exit."""
    original = transformer.attn_processors  # {"<layer>.processor": processor}
    modules = dict(transformer.named_modules())
    joint = {key for key in original
             if getattr(modules[key.removesuffix(".processor")], "add_k_proj", None) is not None}
    transformer.set_attn_processor({
        key: JointAttentionTracer(key.removesuffix(".processor"), proc, sink) if key in joint else proc
        for key, proc in original.items()
    })
    try:
        yield
    finally:
        transformer.set_attn_processor(original)


class JointTrace(Trace):
    """DAAM heatmaps from joint attention, read as a `Trace`: its token axis is the whole text sequence
    (`tokens` lists every position, special and padding ones too), a word's map the mean of its tokens'
    in every encoder. Build it with `fmn.attention.trace`."""

    def __init__(self, pipe: DiffusionPipeline, prompt: str | list[str], step_range: tuple[int, int] | None = None,
                 map_size: int | tuple[int, int] | None = None):
        super().__init__(pipe, prompt, step_range, None, map_size)
        layout = text_segments(pipe)
        self._tokens = [[t for tok, _, n in layout for t in _encoded(tok, p, n)[0]] for p in self.prompts]

    def _on_transformer_call(self, transformer: nn.Module, args, kwargs) -> None:
        """Transformer forward pre-hook: one call per denoising step. The image tokens' grid: FLUX's from the
        packed latents' positions (``img_ids``), SD3's from the latents and the patch size."""
        if kwargs.get("img_ids") is not None:
            ids = kwargs["img_ids"]  # (pixels, 3): (0, row, column)
            self._step((int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1))
        else:
            latents = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # (B, C, h, w)
            patch = transformer.config.patch_size
            self._step((latents.shape[-2] // patch, latents.shape[-1] // patch))

    def __call__(self, name: str, probs: torch.Tensor, attn: nn.Module) -> None:
        """The sink: fold one joint block's image-to-text attention, (B, pixels, text), into the running sum."""
        if not self._capturing:
            return
        if probs.shape[-1] != len(self._tokens[0]):
            raise ValueError(f"the pipeline's joint attention read {probs.shape[-1]} text tokens, the trace laid out "
                             f"{len(self._tokens[0])}: call the pipeline with its default max_sequence_length")
        self._add(self._conditional(probs), *self._latent_hw)

    def _word_spans(self) -> list[tuple[str, list[int]]]:
        """(word, positions in the text sequence): CLIP's words, each with every token of every encoder of the
        sequence whose characters fall in the word (special and padding tokens in none)."""
        offsets = [o for tok, _, n in text_segments(self.pipe) for o in _encoded(tok, self.prompt, n)[1]]
        clip = self.pipe.tokenizer
        words = clip(self.prompt, add_special_tokens=False, truncation=True, max_length=clip.model_max_length - 2,
                     return_offsets_mapping=True)
        spans = []
        for word, span in word_spans(clip, clip.convert_ids_to_tokens(words.input_ids)):
            start, end = words.offset_mapping[span[0]][0], words.offset_mapping[span[-1]][1]
            spans.append((word, [i for i, (a, b) in enumerate(offsets) if a < end and b > start]))
        return spans


@contextmanager
def joint_trace(pipe: DiffusionPipeline, prompt: str | list[str], step_range: tuple[int, int] | None = None,
                resolutions: set[int] | None = None,
                map_size: int | tuple[int, int] | None = None) -> Iterator[JointTrace]:
    """`fmn.attention.trace` on SD3 or FLUX (the same arguments; the blocks all run at one resolution)."""
    if resolutions is not None:
        raise ValueError(f"resolutions={resolutions}: a transformer's joint blocks all run at one resolution "
                         "(the latent's patches); leave it out")
    tc = JointTrace(pipe, prompt, step_range, map_size)
    with hooked(pipe.transformer, tc, tc._on_transformer_call, install_joint):
        yield tc
