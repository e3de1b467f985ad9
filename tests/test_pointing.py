"""The heatmaps point at the right place: DAAM's pointing game on the embedded model.

Plain-background prompts make the object mask exact: every pixel that differs clearly from
the rendered plain background (light grey) belongs to the object, and so does background
enclosed by it (a ring's hole lies inside the ring's outline, as in a segmentation mask).
A prompt scores if the peak of its shape word's heatmap (upsampled to the image) falls
inside that mask.
"""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fmn.attention import trace
from fmn.generate import GenerationSettings, generate

PLAIN = np.array([225, 225, 225])
POINTING_SPEC = 0.80  # the target
PROMPTS = [f"a {colour} {shape}" for colour, shape in itertools.product(
    ["red", "blue", "green", "purple"], ["circle", "square", "triangle", "star", "heart", "ring"])]


def object_mask(image) -> np.ndarray:
    """(64, 64): the object's pixels and the background they enclose."""
    rgb = np.asarray(image).astype(int)
    background = np.abs(rgb - PLAIN).sum(-1) <= 60
    outside = np.zeros_like(background)
    outside[[0, -1], :], outside[:, [0, -1]] = background[[0, -1], :], background[:, [0, -1]]
    while True:  # flood the background in from the border; what it cannot reach is enclosed
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= background
        if (grown == outside).all():
            return ~outside
        outside = grown


def test_object_mask_fills_a_rings_hole():
    image = np.full((64, 64, 3), PLAIN, dtype=np.uint8)
    yy, xx = np.mgrid[:64, :64]
    radius = np.hypot(yy - 32, xx - 32)
    image[(radius > 8) & (radius < 14)] = (220, 40, 40)
    mask = object_mask(image)
    assert mask[32, 32] and mask[32, 20] and not mask[2, 2] and not mask[32, 50]


@pytest.mark.slow  # 24 traced generations
def test_object_word_heatmap_peaks_inside_the_object(embedded):
    hits = []
    for seed, prompt in enumerate(PROMPTS):  # 24 prompts
        with trace(embedded, prompt) as tc:
            image = generate(embedded, GenerationSettings(prompt, seed=seed))[0]
        heat = F.interpolate(tc.word_map(prompt.split()[-1])[None, None], size=image.size[::-1], mode="bilinear")[0, 0]
        y, x = np.unravel_index(int(torch.argmax(heat)), heat.shape)
        mask = object_mask(image)
        if mask.sum() > 0:  # a generation with no object cannot be pointed at
            hits.append(bool(mask[y, x]))
    assert len(hits) >= 20
    print(f"pointing game {np.mean(hits):.0%} ({sum(hits)} of {len(hits)})")  # README's figure (pytest -s)
    assert np.mean(hits) >= POINTING_SPEC, f"pointing game {np.mean(hits):.0%} over {len(hits)} prompts"
