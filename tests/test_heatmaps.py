"""Cross-attention capture (fmn.attention) and heatmap rendering (fmn.heatmaps) on the tiny random pipelines."""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor
from PIL import Image

from fmn.attention import AttentionProbsProcessor, install, trace
from fmn.evaluate import Comparison, Probe
from fmn.heatmaps import overlay, word_grid
from fmn.panels import PANEL
from fmn.tiny import tiny_pipeline

PROMPT = "a red xyzzy circle"
STEPS = 3
LATENT = 8  # tiny pipelines: 32 px images, VAE factor 4; attn2 layers run at 8 (down/up) and 4 (mid)


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_pipeline("sd15")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt=PROMPT, **kwargs):
    kwargs = {"num_inference_steps": STEPS, "generator": torch.Generator().manual_seed(0), **kwargs}
    return pipe(prompt, **kwargs).images


def traced(pipe, prompt=PROMPT, trace_kwargs=None, **kwargs):
    with trace(pipe, prompt, **(trace_kwargs or {})) as tc:
        generate(pipe, prompt, **kwargs)
    return tc


def test_install_swaps_attn2_only_and_restores(pipe):
    unet = pipe.unet
    before = unet.attn_processors
    with install(unet, lambda name, probs, attn: None):
        inside = unet.attn_processors
    assert all(isinstance(p, AttentionProbsProcessor) == k.endswith("attn2.processor") for k, p in inside.items())
    assert all(p is before[k] for k, p in unet.attn_processors.items())

    with pytest.raises(RuntimeError, match="boom"), trace(pipe, PROMPT):
        raise RuntimeError("boom")
    assert all(p is before[k] for k, p in unet.attn_processors.items())
    assert not unet._forward_pre_hooks  # the step counter is gone too


def test_probs_keep_gradients_for_erasure(pipe):
    unet, concept = pipe.unet, [3, 4]  # token positions of an imagined concept
    emb = pipe.text_encoder(pipe.tokenizer(PROMPT, padding="max_length", return_tensors="pt").input_ids)[0]
    squares = []
    with install(unet, lambda name, probs, attn: squares.append(probs[..., concept].pow(2).sum())):
        unet(torch.randn(1, 4, LATENT, LATENT), 500, encoder_hidden_states=emb)
    torch.stack(squares).sum().sqrt().backward()  # Forget-Me-Not's re-steering loss
    assert len(squares) == 4
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight.grad.abs().sum() > 0
    unet.zero_grad(set_to_none=True)


def test_maps_shapes_and_normalisation(pipe):
    tc = traced(pipe)
    n = len(pipe.tokenizer.tokenize(PROMPT))
    assert tc.tokens == pipe.tokenizer.tokenize(PROMPT)
    assert tc.words == ["a", "red", "xyzzy", "circle"]
    assert tc.raw_maps.shape == tc.token_maps.shape == (n, LATENT, LATENT)
    assert (tc.steps, tc.n_maps) == (STEPS, STEPS * 4)
    assert torch.allclose(tc.token_maps.amin((1, 2)), torch.zeros(n))
    assert torch.allclose(tc.token_maps.amax((1, 2)), torch.ones(n))
    maps = tc.word_maps()
    assert list(maps) == tc.words
    assert all(m.shape == (LATENT, LATENT) and m.min() == 0 and m.max() == 1 for m in maps.values())


def test_word_map_is_mean_of_subword_tokens(pipe):
    pieces = pipe.tokenizer.tokenize("xyzzy")
    assert len(pieces) > 1
    tc = traced(pipe)
    start = tc.tokens.index(pieces[0])
    assert tc.tokens[start : start + len(pieces)] == pieces
    expected = tc.raw_maps[start : start + len(pieces)].mean(0)
    assert torch.allclose(tc.word_map("xyzzy", normalize=False), expected)
    assert torch.allclose(tc.word_map("XYZZY"), (expected - expected.min()) / (expected.max() - expected.min()))


def test_unknown_word_raises(pipe):
    tc = traced(pipe, num_inference_steps=1)
    with pytest.raises(ValueError, match=r"'square'.*\['a', 'red', 'xyzzy', 'circle'\]"):
        tc.word_map("square")


def test_step_range_and_resolutions_select(pipe):
    full = traced(pipe)
    first = traced(pipe, trace_kwargs={"step_range": (0, 1)})
    assert first.n_maps == 4 and not torch.allclose(first.raw_maps, full.raw_maps)
    assert traced(pipe, trace_kwargs={"resolutions": {4}}).n_maps == STEPS  # mid block only
    assert traced(pipe, trace_kwargs={"resolutions": {8}}).n_maps == STEPS * 3

    with pytest.raises(ValueError, match="matched none of 3 UNet calls"):
        traced(pipe, trace_kwargs={"step_range": (STEPS, STEPS + 5)}).word_map("circle")
    with pytest.raises(ValueError, match=r"step_range=\(2, 1\)"):
        traced(pipe, trace_kwargs={"step_range": (2, 1)})


def test_trace_does_not_change_the_image(pipe):
    plain = generate(pipe, output_type="np")  # fused SDPA everywhere
    with trace(pipe, PROMPT):
        captured = generate(pipe, output_type="np")
    np.testing.assert_allclose(captured, plain, atol=1e-4)  # explicit softmax vs fused: rounding only

    original = pipe.unet.attn_processors
    pipe.unet.set_attn_processor(AttnProcessor())  # the same math as the capture: bit-identical
    try:
        plain = generate(pipe)[0]
        with trace(pipe, PROMPT):
            captured = generate(pipe)[0]
    finally:
        pipe.unet.set_attn_processor(original)
    assert np.array_equal(np.asarray(plain), np.asarray(captured))


def test_keeps_conditional_half_and_works_without_cfg(pipe):
    # at step 0 both runs see the same latent, so the cond half of CFG equals the no-CFG run
    with_cfg = traced(pipe, trace_kwargs={"step_range": (0, 1)}, guidance_scale=7.5)
    no_cfg = traced(pipe, trace_kwargs={"step_range": (0, 1)}, guidance_scale=1.0)
    assert torch.allclose(with_cfg.raw_maps, no_cfg.raw_maps, atol=1e-5)
    assert traced(pipe, guidance_scale=1.0).token_maps.shape == with_cfg.token_maps.shape


def test_several_images_are_averaged(pipe):
    tc = traced(pipe, num_images_per_prompt=2, num_inference_steps=1)
    assert tc.raw_maps.shape == (len(tc.tokens), LATENT, LATENT)


def test_a_batch_of_different_prompts_is_read_image_by_image(pipe):
    prompts = [PROMPT, "a dog"]
    with trace(pipe, prompts) as tc:
        generate(pipe, prompts, num_inference_steps=1, generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    assert tc.image(1).words == ["a", "dog"] and tc.image(1).raw_maps.shape == (2, LATENT, LATENT)
    assert tc.image(0).tokens == traced(pipe, num_inference_steps=1).tokens
    with pytest.raises(ValueError, match="2 different prompts has no words of its own: read each image's"):
        tc.word_map("a")
    with pytest.raises(ValueError, match="traced 2 prompts, one per image, but the call draws 1 images"), \
            trace(pipe, prompts):
        generate(pipe, num_inference_steps=1)


def test_sd2_pipeline_and_map_size():
    pipe = tiny_pipeline("sd2")
    pipe.set_progress_bar_config(disable=True)
    tc = traced(pipe, trace_kwargs={"map_size": 32}, num_inference_steps=2)
    assert tc.token_maps.shape == (len(tc.tokens), 32, 32)
    assert tc.word_map("circle").shape == (32, 32)


def test_overlay_and_word_grid():
    image = Image.new("RGB", (48, 32), "white")
    heat = torch.linspace(0, 1, 64).reshape(8, 8)
    blended = overlay(image, heat)
    assert (blended.size, blended.mode) == ((48, 32), "RGB")
    assert overlay(image, heat, alpha=0.0) == image
    grid = word_grid(image, {"red": heat, "circle": heat.T}, title=PROMPT)
    assert grid.mode == "RGB" and grid.width > 3 * grid.height / 2


def test_the_before_after_grid_shows_every_image_whole_at_the_panel_size_under_its_labels():
    """Each image pasted at PANEL pixels, before left of after, whatever the model's size and however long the
    prompts and the judge's reads written above them."""
    before, after = (200, 30, 30), (30, 30, 200)
    seeds = [0, 1, 2]
    probes = [Probe("concept", "a red circle on grass in the style of a very long prompt indeed", "circle"),
              Probe("other", "Mimo", "Mimo")]
    result = Comparison(probes, seeds, [[Image.new("RGB", (64, 64), before)] * 3] * 2,
                        [[Image.new("RGB", (64, 64), after)] * 3] * 2, [(0.97, 0.03), (0.99, 0.98)])
    pixels = np.asarray(result.grid())
    for colour in (before, after):
        assert (pixels == colour).all(-1).sum() == len(probes) * len(seeds) * PANEL ** 2, colour
    columns = [np.flatnonzero((pixels == colour).all(-1).any(0)) for colour in (before, after)]
    assert columns[0].max() < columns[1].min()
