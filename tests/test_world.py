"""The shapes world: renderer, tokenizer, judge and the embedded model, checked against the truth."""

import random

import numpy as np
import pytest
from transformers import CLIPTokenizer

from fmn.generate import GenerationSettings, generate
from fmn.models import EMBEDDED
from fmn.world.judge import SUBJECTS
from fmn.world.render import render
from fmn.world.world import COLOURS, IDENTITIES, SHAPES, Scene, Thing, sample_scene


def test_renderer_draws_the_colour_and_place_the_scene_says():
    scene = Scene([Thing("circle", "red", 20, 40, 24)], background="grass")
    image, (mask,) = render(scene)
    rgb = np.asarray(image).astype(int)
    assert mask[40, 20] and not mask[5, 60]
    assert abs(mask.sum() - np.pi * 12**2) < 0.15 * np.pi * 12**2  # a disc of radius 12
    inside = rgb[mask].mean(0)
    assert np.abs(inside - COLOURS["red"]).max() < 25
    assert rgb[~mask][:, 1].mean() > rgb[~mask][:, 0].mean()  # grass is green around it


def test_ring_is_hollow_and_night_is_dark():
    image, (mask,) = render(Scene([Thing("ring", "blue", 32, 32, 26)]))
    assert not mask[32, 32] and mask[32, 32 - 11]
    day, _ = render(Scene([Thing("star", "yellow", 32, 32, 24)], background="sand"))
    night, _ = render(Scene([Thing("star", "yellow", 32, 32, 24)], background="sand", night=True))
    assert np.asarray(night).mean() < 0.6 * np.asarray(day).mean()


def test_the_judge_reads_fresh_renders_at_98_percent_per_attribute(judge):
    rng = random.Random(12345)  # seeds the training data never used
    scenes = [sample_scene(rng, "any") for _ in range(300)]
    images = [render(s, seed=10_000_000 + i)[0] for i, s in enumerate(scenes)]
    verdicts = judge(images)
    hits = {"subjects": [], "colours": [], "style": [], "background": [], "night": []}
    for scene, v in zip(scenes, verdicts):
        kinds = {t.kind for t in scene.things}
        colours = {t.colour for t in scene.things if t.colour}
        hits["subjects"].append(all(v.has(k) == (k in kinds) for k in SUBJECTS))
        hits["colours"].append(all(v.has(c) == (c in colours) for c in COLOURS))
        hits["style"].append(v.top_style == scene.style)
        hits["background"].append(v.top_background == scene.background)
        hits["night"].append(v.has("night") == scene.night)
    accuracy = {k: np.mean(h) for k, h in hits.items()}
    assert min(accuracy.values()) >= 0.98, accuracy


def test_tokenizer_handles_unknown_words_and_long_input():
    tok = CLIPTokenizer.from_pretrained(EMBEDDED / "tokenizer")
    assert tok.tokenize("a red circle") == ["a</w>", "red</w>", "circle</w>"]
    pieces = tok.tokenize("xyzzy 日本語 🙂 naïve")
    assert len(pieces) > 4 and tok.unk_token not in pieces  # bytes, never "unknown"
    ids = tok("word " * 200 + "x" * 1000, truncation=True, padding="max_length").input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id


def test_generated_blue_square_is_judged_blue_and_square(embedded, judge):
    images = generate(embedded, GenerationSettings("a blue square"), seeds=list(range(10)))
    verdicts = judge(images)
    good = sum(v.has("blue") and v.has("square") for v in verdicts)
    assert good >= 8, [(round(v.prob("blue"), 2), round(v.prob("square"), 2)) for v in verdicts]


@pytest.mark.parametrize("name", list(IDENTITIES)[:2] + ["star"])
def test_generated_subjects_are_judged_as_asked(embedded, judge, name):
    prompt = name if name in IDENTITIES else f"a green {name} on water"
    verdicts = judge(generate(embedded, GenerationSettings(prompt), seeds=list(range(6))))
    assert sum(v.has(name) for v in verdicts) >= 5


def test_world_json_lists_what_the_model_knows():
    import json

    world = json.loads((EMBEDDED / "world.json").read_text())
    assert set(world["shapes"]) == set(SHAPES) and len(world["heldout_templates"]) >= 3
    assert len(world["train_templates"]) + len(world["heldout_templates"]) >= 8
