"""Cross-attention capture for the UNet, and DAAM word heatmaps built on it.

DAAM (Tang et al. 2023, "What the DAAM: Interpreting Stable Diffusion Using Cross
Attention", arXiv 2210.04885) explains a generated image by the UNet's cross-attention
(attn2) probabilities: per prompt token, upsample every layer's map to one size, average
heads and layers, sum over denoising steps (conditional half of classifier-free guidance
only); a word's map is the mean of its sub-word tokens' maps.

Two layers here:

- `AttentionProbsProcessor` + `install(unet, sink)`: diffusers' plain attention with the
  softmax probabilities handed to a sink. Nothing is detached, so an erasure loss (e.g.
  Forget-Me-Not's attention re-steering) can backpropagate through them.
- `trace(pipe, prompt)`: a sink that folds every map into one running sum of shape
  (images, tokens, H, W) as it arrives; nothing is kept per step or per layer. A list of
  prompts, one per image, traces a batch of different prompts in one pipeline call.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from .models import is_transformer

__all__ = ["AttentionProbsProcessor", "install", "trace", "hooked", "Trace", "cross_attention_resolutions",
           "word_spans"]

# sink(layer_name, probs, attn) with probs of shape (batch * heads, pixels, tokens)
Sink = Callable[[str, torch.Tensor, Attention], None]


class AttentionProbsProcessor:
    """diffusers' `AttnProcessor`, plus a call to `sink(name, probs, attn)` with the probabilities.

    Uses the explicit softmax path (not fused SDPA) because the probabilities must exist as a
    tensor. They are passed on with their autograd graph: detach in the sink if not training.
    """

    def __init__(self, name: str, sink: Sink):
        self.name = name
        self.sink = sink

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        # extra args (the deprecated `scale`) are ignored, as in diffusers' AttnProcessor
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)  # (B, pixels, C)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        query = attn.head_to_batch_dim(query)  # (B * heads, pixels, head_dim)
        key = attn.head_to_batch_dim(key)  # (B * heads, tokens, head_dim)
        value = attn.head_to_batch_dim(value)

        attention_probs = attn.get_attention_scores(query, key, attention_mask)  # (B * heads, pixels, tokens)
        self.sink(self.name, attention_probs, attn)
        hidden_states = torch.bmm(attention_probs, value)  # (B * heads, pixels, head_dim)
        hidden_states = attn.batch_to_head_dim(hidden_states)  # (B, pixels, C)

        hidden_states = attn.to_out[0](hidden_states)  # linear proj
        hidden_states = attn.to_out[1](hidden_states)  # dropout

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def install(unet: UNet2DConditionModel, sink: Sink) -> Iterator[None]:
    """Route every cross-attention (attn2) layer of `unet` through `sink`; restore the original processors on exit.

    Self-attention (attn1) keeps its processor: its maps are (pixels x pixels), far more
    memory, and neither DAAM nor Forget-Me-Not uses them. The sink gets the layer's module
    name, e.g. ``"up_blocks.1.attentions.0.transformer_blocks.0.attn2"``.
    """
    original = unet.attn_processors  # {"<layer>.processor": processor}
    unet.set_attn_processor({
        key: AttentionProbsProcessor(key.removesuffix(".processor"), sink) if key.endswith("attn2.processor") else proc
        for key, proc in original.items()
    })
    try:
        yield
    finally:
        unet.set_attn_processor(original)


def cross_attention_resolutions(unet: UNet2DConditionModel) -> list[int]:
    """The latent-side sizes at which the UNet has attn2 layers, e.g. [4, 8] for the embedded model."""
    side = unet.config.sample_size
    n = len(unet.config.down_block_types)
    sizes = {side // 2**i for i, block in enumerate(unet.config.down_block_types) if "CrossAttn" in block}
    sizes |= {side // 2 ** (n - 1 - i) for i, block in enumerate(unet.config.up_block_types) if "CrossAttn" in block}
    if "CrossAttn" in (unet.config.mid_block_type or ""):
        sizes.add(side // 2 ** (n - 1))
    return sorted(sizes)


def _layer_hw(pixels: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) of an attention layer's map, from its pixel count and the UNet input's latent size."""
    h, w = latent_hw
    while h * w > pixels:
        h, w = -(-h // 2), -(-w // 2)  # each stride-2 downsampler rounds up
    if h * w != pixels:
        raise ValueError(f"cannot lay {pixels} attention pixels out on a {latent_hw} latent: "
                         "not a UNet downsampling of it")
    return h, w


def word_spans(tokenizer, tokens: list[str]) -> list[tuple[str, range]]:
    """(word, token indices) for each word of CLIP tokens, grouping sub-word tokens up to the one ending in `</w>`."""
    spans, start = [], 0
    for i, token in enumerate(tokens):
        if token.endswith("</w>") or i == len(tokens) - 1:
            ids = tokenizer.convert_tokens_to_ids(tokens[start : i + 1])
            spans.append((tokenizer.decode(ids), range(start, i + 1)))
            start = i + 1
    return spans


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map of a (..., H, W) stack to [0, 1]; a constant map becomes 0."""
    maps = maps - maps.amin((-2, -1), keepdim=True)
    return maps / maps.amax((-2, -1), keepdim=True).clamp_min(torch.finfo(maps.dtype).tiny)


class Trace:
    """DAAM heatmaps of one prompt, summed on the fly. Build it with `trace(pipe, prompt)`.

    Attributes:
        prompts: ``[prompt]``, or one prompt per image of the call when traced with a list.
        steps: UNet calls (denoising steps) seen so far.
        n_maps: (step, layer) maps added into `raw_maps`.

    `raw_maps` holds the plain sums; `token_maps`, `word_map` and `word_maps` scale each map
    to [0, 1] (min-max) for display, which DAAM's comparisons within one map need anyway.
    `share(word)` is the comparable number: the part of the cross-attention the word receives.

    Several images of the same prompt in one call (``num_images_per_prompt`` or a list of
    generators) are averaged: the maps describe the prompt, not one image. `image(i)` is the
    trace of the call's i-th image alone; a trace of different prompts (one per image, so that
    one pipeline call draws them all) is read only through `image(i)`, each with its own words.
    """

    def __init__(
        self,
        pipe: DiffusionPipeline,
        prompt: str | list[str],
        step_range: tuple[int, int] | None = None,
        resolutions: set[int] | None = None,
        map_size: int | tuple[int, int] | None = None,
    ):
        self.pipe = pipe
        self.prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        self.step_range = step_range
        self.resolutions = resolutions
        self.map_size = (map_size, map_size) if isinstance(map_size, int) else map_size
        fits = pipe.tokenizer.model_max_length - 2  # what fits between BOS and EOS
        self._tokens = [pipe.tokenizer.tokenize(p)[:fits] for p in self.prompts]  # per prompt
        self.steps = 0
        self.n_maps = 0
        self._sum = None  # (images, tokens, H, W), allocated at the first captured map; tokens: the longest prompt's
        self._mass = None  # (images, tokens): each token's attention probability, mean over pixels, summed over maps
        self._frames = []  # the running sum after each captured step but the last, fp16: how the maps built up
        self._framed = 0  # n_maps at the last frame
        self._latent_hw = None
        self._cfg = False
        self._capturing = False

    @property
    def prompt(self) -> str:
        """The traced prompt (pass the same string to the pipeline)."""
        return self._one()[0]

    @property
    def tokens(self) -> list[str]:
        """The prompt's tokens as the pipeline's tokenizer spells them (no BOS/EOS), e.g.
        ``["a</w>", "x", "y", "z", "z", "y</w>"]``; CLIP marks word ends with ``</w>``."""
        return self._one()[1]

    def _one(self) -> tuple[str, list[str]]:
        """The one prompt of the traced images and its tokens; a clear error for a batch of different prompts."""
        if len(set(self.prompts)) > 1:
            raise ValueError(f"a trace of {len(set(self.prompts))} different prompts has no words of its own: "
                             "read each image's with image(i)")
        return self.prompts[0], self._tokens[0]

    def _on_unet_call(self, unet, args, kwargs) -> None:
        """UNet forward pre-hook: one call per denoising step (CFG batches uncond and cond together)."""
        sample = args[0] if args else kwargs["sample"]  # (B, C, h, w)
        self._step(tuple(sample.shape[-2:]))

    def _step(self, latent_hw: tuple[int, int]) -> None:
        """A denoising step begins on a latent of this size: frame the last step's sum, decide whether to capture."""
        if self.n_maps > self._framed:  # the last step added maps: keep the sum as it stood after it
            self._frames.append(self._sum.half())
            self._framed = self.n_maps
        self._latent_hw = latent_hw
        self._cfg = getattr(self.pipe, "do_classifier_free_guidance", False)  # FLUX's distilled guidance: no CFG
        start, end = self.step_range or (0, float("inf"))
        self._capturing = start <= self.steps < end
        self.steps += 1

    def __call__(self, name: str, probs: torch.Tensor, attn: Attention) -> None:
        """The sink: fold one layer's cross-attention into the running sum."""
        if not self._capturing:
            return
        h, w = _layer_hw(probs.shape[1], self._latent_hw)
        if self.resolutions is not None and h not in self.resolutions:
            return
        n = max(len(tokens) for tokens in self._tokens)
        maps = self._conditional(probs.detach().unflatten(0, (-1, attn.heads)))  # (images, heads, pixels, 77)
        self._add(maps[..., 1 : 1 + n].mean(1, dtype=torch.float32), h, w)  # skipping BOS

    def _conditional(self, maps: torch.Tensor) -> torch.Tensor:
        """The traced images' rows of a layer's batch: its conditional half under classifier-free guidance."""
        if self._cfg:
            maps = maps[maps.shape[0] // 2 :]  # the pipeline batches [uncond, cond]: keep cond
        if len(self.prompts) > 1 and maps.shape[0] != len(self.prompts):
            raise ValueError(f"traced {len(self.prompts)} prompts, one per image, but the call draws "
                             f"{maps.shape[0]} images: pass the same list to the pipeline")
        return maps

    def _add(self, maps: torch.Tensor, h: int, w: int) -> None:
        """Fold one layer's head-averaged maps, (images, pixels, tokens) on an h x w grid, into the running sums."""
        mass = maps.mean(1)  # (images, tokens): each token's probability, mean over pixels
        maps = maps.transpose(1, 2).unflatten(2, (h, w))  # (images, tokens, h, w)
        size = self.map_size or self._latent_hw
        if (h, w) != tuple(size):
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)  # (images, tokens, H, W)
        if self._sum is None:
            self._sum, self._mass = torch.zeros_like(maps), torch.zeros_like(mass)
        self._sum += maps
        self._mass += mass
        self.n_maps += 1

    def _captured(self) -> None:
        if self._sum is None:
            raise ValueError(
                f"nothing was captured for {self.prompts[0]!r}: step_range={self.step_range} and "
                f"resolutions={self.resolutions} matched none of {self.steps} UNet calls; widen them, "
                "and call the pipeline inside the `with trace(...)` block"
            )

    @property
    def raw_maps(self) -> torch.Tensor:
        """Sum of the head-averaged maps over the captured steps and layers, mean over the images, (tokens, H, W)."""
        self._captured()
        self._one()  # different prompts' tokens do not line up
        return self._sum.mean(0)

    @property
    def n_images(self) -> int:
        self._captured()
        return self._sum.shape[0]

    def image(self, i: int) -> "Trace":
        """The trace of the i-th image of the traced call alone: that image's maps and shares, its prompt's words.
        A copy: keeping it keeps none of the other images' maps."""
        if not -self.n_images <= i < self.n_images:
            raise IndexError(f"image {i} of a trace of {self.n_images} image(s)")
        one = copy.copy(self)
        k = i if len(self.prompts) > 1 else 0  # one prompt per image, or one for all
        one.prompts, one._tokens = [self.prompts[k]], [self._tokens[k]]
        n = len(one._tokens[0])  # a shorter prompt of a batch: its own tokens, not the longest one's padding
        one._sum, one._mass = self._sum[i : i + 1, :n].clone(), self._mass[i : i + 1, :n].clone()
        one._frames = [frame[i : i + 1, :n].clone() for frame in self._frames]
        return one

    def build_up(self, word: str) -> list[torch.Tensor]:
        """The word's map (unscaled, mean over the images) after each captured step: how it built up, (H, W) each."""
        positions = self._positions(word)
        frames = [frame.float() for frame in self._frames] + ([self._sum] if self.n_maps > self._framed else [])
        return [frame.mean(0)[positions].mean(0) for frame in frames]

    @property
    def token_maps(self) -> torch.Tensor:
        """Per-token heatmaps, each scaled to [0, 1] for display, (tokens, H, W)."""
        return _normalise(self.raw_maps)

    @property
    def words(self) -> list[str]:
        """The prompt's words as the tokenizer splits them (punctuation is a word of its own)."""
        return [word for word, _ in self._word_spans()]

    def _word_spans(self) -> list[tuple[str, range]]:
        """(word, token positions) for each word of the prompt."""
        return word_spans(self.pipe.tokenizer, self.tokens)

    def _positions(self, word: str) -> list[int]:
        """The token positions of every occurrence of `word` (case-insensitive: CLIP lowercases)."""
        positions = [i for w, span in self._word_spans() if w.lower() == word.strip().lower() for i in span]
        if not positions:
            raise ValueError(f"word {word!r} is not in the prompt {self.prompt!r}; its words are {self.words}")
        return positions

    def word_map(self, word: str, normalize: bool = True) -> torch.Tensor:
        """The mean of the maps of `word`'s sub-word tokens (all its occurrences), (H, W).
        Scaled to [0, 1] unless `normalize=False`."""
        word_map = self.raw_maps[self._positions(word)].mean(0)  # (H, W)
        return _normalise(word_map) if normalize else word_map

    def share(self, word: str) -> float:
        """The part of the attention that `word`'s tokens receive, in [0, 1]: their softmax probabilities
        (on a UNet out of the 77 text tokens, BOS and padding included; on SD3 and FLUX out of every key of
        the joint attention, text and image) averaged over pixels, heads, layers, steps and images. Comparable
        across models and patches on the same prompt and seeds, unlike the min-max scaled maps: an erasure that
        drains a word's attention lowers it."""
        self._captured()
        return float(self._mass[:, self._positions(word)].sum(1).mean() / self.n_maps)

    def word_maps(self, normalize: bool = True) -> dict[str, torch.Tensor]:
        """{word: word_map(word)} for every distinct word of the prompt, in prompt order."""
        return {word: self.word_map(word, normalize) for word in dict.fromkeys(self.words)}


@contextmanager
def trace(
    pipe: DiffusionPipeline,
    prompt: str | list[str],
    *,
    step_range: tuple[int, int] | None = None,
    resolutions: set[int] | None = None,
    map_size: int | tuple[int, int] | None = None,
) -> Iterator[Trace]:
    """Capture DAAM heatmaps of `prompt` during the pipeline calls inside the block.

    Example::

        with trace(pipe, "a red circle") as tc:
            image = pipe("a red circle", generator=torch.Generator().manual_seed(0)).images[0]
        heat = tc.word_map("circle")  # (H, W) in [0, 1]

        prompts = ["a red circle", "a blue square on grass"]  # one pipeline call, each image its own words
        with trace(pipe, prompts) as tc:
            images = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).images
        heat = tc.image(1).word_map("square")

    Args:
        pipe: a Stable-Diffusion-family pipeline (UNet with attn2 layers, CLIP tokenizer); for SD3 and
            FLUX, the joint attention's image-to-text part (`fmn.transformer_attention`).
        prompt: the prompt the block passes to `pipe`; it names the tokens and words. Or a list
            of prompts, one per image of the call (``num_images_per_prompt=1``), read with `image(i)`.
        step_range: ``(start, end)``, 0-based and end-exclusive, of the denoising steps to
            sum; default all. If it selects no step, reading the maps raises `ValueError`.
        resolutions: latent-side heights of the attn2 layers to keep (e.g. ``{32, 64}`` for
            SD at 512 px, whose layers run at 64, 32, 16 and 8); default all. None on a transformer.
        map_size: ``H`` or ``(H, W)`` every layer's map is upsampled to before summing;
            default the latent size, the finest map (overlays upsample it to the image).

    Yields:
        The `Trace`; its maps are complete once the pipeline call returns.
    """
    if step_range is not None and not 0 <= step_range[0] < step_range[1]:
        raise ValueError(f"step_range={step_range} must be (start, end) with 0 <= start < end, e.g. (0, 10)")
    if is_transformer(pipe):
        from .transformer_attention import joint_trace  # it builds on this module's Trace

        with joint_trace(pipe, prompt, step_range, resolutions, map_size) as tc:
            yield tc
        return
    tc = Trace(pipe, prompt, step_range, resolutions, map_size)
    with hooked(pipe.unet, tc, tc._on_unet_call, install):
        yield tc


@contextmanager
def hooked(denoiser: torch.nn.Module, tc, on_call, install_processors) -> Iterator[None]:
    """While the block runs: `on_call` before every call of the denoiser (the trace counts its steps) and the
    tracing processors `install_processors(denoiser, tc)` puts in; both removed after, whatever happens."""
    hook = denoiser.register_forward_pre_hook(on_call, with_kwargs=True)
    try:
        with install_processors(denoiser, tc):
            yield
    finally:
        hook.remove()
