"""Per-word heatmaps from the joint attention of diffusion transformers (SD3, FLUX).

In an MMDiT block (Esser et al. 2024, "Scaling Rectified Flow Transformers", arXiv 2403.03206) text and
image tokens attend jointly: there is no cross-attention layer to read. A word's map here is the
image-query -> text-key part of the joint softmax, averaged over heads and over the blocks (SD3's joint blocks;
FLUX's double-stream blocks, then its single-stream ones, whose one sequence is [text, image] through one set of
projections), summed over steps as they run: DAAM's recipe (`fmn.attention`) on joint attention, as
attention-map-diffusers reads SD3 and FLUX.

The text sequence is several encoders' tokens one after another: SD3's is CLIP's 77 positions (both CLIP
encoders' states side by side) then T5's, FLUX's is T5's alone. A word is one of CLIP's words (the same
words as on a UNet); its map is the mean of its tokens' maps in every encoder of the sequence, a token
belonging to the word whose characters it covers.

`JointAttentionTracer` (and `SingleStreamTracer`, FLUX's single-stream blocks) wraps a block's own processor: it
computes the probabilities from the block's queries and keys, then lets the wrapped processor compute the output,
so a traced image is the same image.
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

__all__ = ["JointAttentionTracer", "JointTrace", "SingleStreamTracer", "image_to_text", "install_joint", "joint_trace",
           "single_stream_image_to_text"]

def _encoded(tokenizer, prompt: str, length: int) -> tuple[list[str], list[tuple[int, int]]]:
    """The prompt's tokens as the pipeline pads them, and each token's characters in the prompt ((0, 0): special)."""
    enc = tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_offsets_mapping=True)
    return tokenizer.convert_ids_to_tokens(enc.input_ids), enc.offset_mapping


def _norm(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


def _heads(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(-1, (attn.heads, -1))  # (B, tokens, heads, head_dim)


def _text_columns(query: torch.Tensor, key: torch.Tensor, n_text: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) over every key, kept at the first `n_text` keys (the text), mean over heads:
    (B, queries, text). One head's (B, queries, keys) scores at a time."""
    probs = 0
    for h in range(query.shape[2]):
        scores = query[:, :, h].float() @ key[:, :, h].float().transpose(1, 2) * query.shape[-1] ** -0.5
        probs = probs + scores.softmax(-1)[..., :n_text]
    return probs / query.shape[2]


@torch.no_grad()
def image_to_text(attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                  image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """A joint block's softmax at the image-query rows and the text keys, mean over heads: (B, pixels, text).

    The queries and keys are the block's own (projections, q/k norms, FLUX's rotary positions over
    [text, image]); the softmax runs over every key, text and image, as the block's attention does."""
    n_text = encoder_hidden_states.shape[1]
    query = _norm(attn.norm_q, _heads(attn, attn.to_q(hidden_states)))  # (B, pixels, heads, d)
    key = torch.cat([_norm(attn.norm_added_k, _heads(attn, attn.add_k_proj(encoder_hidden_states))),
                     _norm(attn.norm_k, _heads(attn, attn.to_k(hidden_states)))], dim=1)  # (B, text + pixels, heads, d)
    if image_rotary_emb is not None:  # FLUX: positions over [text, image]
        cos, sin = image_rotary_emb
        query = apply_rotary_emb(query, (cos[n_text:], sin[n_text:]), sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    return _text_columns(query, key, n_text)


@torch.no_grad()
def single_stream_image_to_text(attn: nn.Module, hidden_states: torch.Tensor, n_text: int,
                                image_rotary_emb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """A FLUX single-stream block's softmax at the image-query rows and the text keys, mean over heads:
    (B, pixels, text). `hidden_states` is the block's one sequence, [text, image], `n_text` long on the text side;
    queries and keys come from the same projections, q/k norms and rotary positions over the whole sequence."""
    query = apply_rotary_emb(attn.norm_q(_heads(attn, attn.to_q(hidden_states))), image_rotary_emb,
                             sequence_dim=1)  # (B, text + pixels, heads, d)
    key = apply_rotary_emb(attn.norm_k(_heads(attn, attn.to_k(hidden_states))), image_rotary_emb, sequence_dim=1)
    return _text_columns(query[:, n_text:], key, n_text)


class JointAttentionTracer:
    """A joint block's own processor, plus `sink(name, probs, attn)` with `image_to_text`'s probabilities.
    The output is the wrapped processor's, so images are unchanged."""

    def __init__(self, name: str, original, sink: Sink):
        self.name, self.original, self.sink = name, original, sink

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None, **kwargs):
        # image_rotary_emb is named: diffusers passes a processor only the arguments its signature names
        self.sink(self.name, self.image_to_text(attn, hidden_states, encoder_hidden_states, image_rotary_emb), attn)
        if image_rotary_emb is not None:
            kwargs["image_rotary_emb"] = image_rotary_emb
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

    def image_to_text(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                      image_rotary_emb) -> torch.Tensor:
        return image_to_text(attn, hidden_states, encoder_hidden_states, image_rotary_emb)


class _TextLength:
    """A forward pre-hook on the transformer: the length of its call's text sequence, where the image tokens
    begin in a single-stream block's [text, image] sequence (the block's attention is handed only the sequence)."""

    n: int = 0

    def __call__(self, transformer: nn.Module, args, kwargs) -> None:
        self.n = kwargs["encoder_hidden_states"].shape[1]  # (B, text, width)


class SingleStreamTracer(JointAttentionTracer):
    """A FLUX single-stream block's own processor, plus the sink with `single_stream_image_to_text`'s
    probabilities; the text's length is that of the transformer's current call."""

    def __init__(self, name: str, original, sink: Sink, text_length: _TextLength):
        super().__init__(name, original, sink)
        self.text_length = text_length

    def image_to_text(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                      image_rotary_emb) -> torch.Tensor:
        return single_stream_image_to_text(attn, hidden_states, self.text_length.n, image_rotary_emb)


def _tracer(key: str, proc, modules: dict[str, nn.Module], sink: Sink, text_length: _TextLength):
    """The tracer for processor `key`: joint attentions (with text-side projections, ``add_k_proj``) and FLUX's
    single-stream blocks' are wrapped, any other processor is kept as it is."""
    name = key.removesuffix(".processor")
    if getattr(modules[name], "add_k_proj", None) is not None:
        return JointAttentionTracer(name, proc, sink)
    if name.startswith("single_transformer_blocks."):
        return SingleStreamTracer(name, proc, sink, text_length)
    return proc


@contextmanager
def install_joint(transformer: nn.Module, sink: Sink) -> Iterator[None]:
    """Route every joint attention of `transformer` (SD3's joint blocks, FLUX's double- and single-stream blocks)
    through `sink`; restore the original processors on exit."""
    original = transformer.attn_processors  # {"<layer>.processor": processor}
    modules, text_length = dict(transformer.named_modules()), _TextLength()
    transformer.set_attn_processor({key: _tracer(key, proc, modules, sink, text_length)
                                    for key, proc in original.items()})
    hook = transformer.register_forward_pre_hook(text_length, with_kwargs=True)
    try:
        yield
    finally:
        hook.remove()
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
        """The sink: fold one block's image-to-text attention, (B, pixels, text), into the running sum."""
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
