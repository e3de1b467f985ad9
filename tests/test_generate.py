"""Seeded generation and input validation (tiny random model: the code path, not the pictures)."""

import numpy as np
import pytest

from fmn.generate import GenerationSettings, check_settings, generate, unknown_words
from fmn.models import load_pipeline


@pytest.fixture(scope="module")
def pipe(tiny_dirs):
    return load_pipeline(tiny_dirs["sd15"], device="cpu")


def pixels(image):
    return np.asarray(image).astype(int)


def test_same_seed_same_image_and_batches_match_single_calls(pipe):
    """The same call gives the same image to the bit; a batch gives each seed's image of a single call within one
    level: a CPU's matrix kernels may block a batch of two apart from a batch of one (an Intel Xeon: one value in
    3,072 one level apart)."""
    s = GenerationSettings("a red circle on grass", seed=7, steps=4)
    first, again = generate(pipe, s)[0], generate(pipe, s)[0]
    assert np.array_equal(pixels(first), pixels(again))
    batch = generate(pipe, s, seeds=[7, 8])
    alone = generate(pipe, GenerationSettings("a red circle on grass", seed=8, steps=4))[0]
    assert np.abs(pixels(batch[0]) - pixels(first)).max() <= 1
    assert np.abs(pixels(batch[1]) - pixels(alone)).max() <= 1
    assert np.abs(pixels(batch[1]) - pixels(first)).max() > 1


def test_progress_callback_counts_steps(pipe):
    seen = []
    generate(pipe, GenerationSettings("a star", steps=3), on_step=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("changes, message", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   "), "prompt is empty"),
    (dict(prompt="a" * 2000), "2000 characters; the limit is 1000"),
    (dict(seed=-1), "Seed -1 is out of range"),
    (dict(seed=2**32), "out of range"),
    (dict(steps=0), "Steps 0 is out of range"),
    (dict(steps=10_000), "Steps 10000 is out of range"),
    (dict(guidance=-2), "Guidance -2 is out of range"),
    (dict(width=36), "width 36 does not suit this model: use a multiple of 8"),
    (dict(height=4096), "height 4096 does not suit this model"),
])
def test_bad_settings_get_a_clear_message(pipe, changes, message):
    settings = GenerationSettings(**{"prompt": "a red circle", **changes})
    with pytest.raises(ValueError, match=message):
        check_settings(pipe, settings)


@pytest.mark.parametrize("prompt", ["xyzzy plugh", "un cercle rouge à midi ☀️ 日本語", "a" * 1000])
def test_odd_prompts_still_generate(pipe, prompt):
    image = generate(pipe, GenerationSettings(prompt, steps=2))[0]
    assert image.size == (32, 32)


def test_other_sizes(pipe):
    assert generate(pipe, GenerationSettings("a ring", steps=2, width=64, height=32))[0].size == (64, 32)


def test_unknown_words_on_the_embedded_model(embedded):
    assert unknown_words(embedded, "a red circle on grass in the style of Vellor at midnight") == []
    assert unknown_words(embedded, "a red dragon on grass") == ["dragon"]
    assert unknown_words(embedded, "a red circle") == []
