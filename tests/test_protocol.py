"""The evaluation protocol's splits and its attack reading: the report split measures every concept of the world on
wordings no training template produces, on seeds no setting was chosen on, in scenes no erasure holds; the attack
is read where it comes back most, by the same code for the benchmark and `python -m fmn attack`."""

import random
import re

import numpy as np
import pytest

from fmn.attack import SIDES, AttackConfig, Reading, Recovery, encoder_swap, recovery, share
from fmn.bench.protocol import (
    NAMES,
    REPORT,
    REPORT_TEMPLATES,
    SPLITS,
    TUNE,
    UPLOAD_SEED,
    probes,
    scene_words,
    uploads,
)
from fmn.erase import erase, keep_set
from fmn.generate import generate_many
from fmn.patch import active, detach
from fmn.tiny import tiny_pipeline
from fmn.world.judge import Verdict
from fmn.world.pixels import read
from fmn.world.reading import judged
from fmn.world.render import render
from fmn.world.scenes import (
    BACKGROUNDS,
    COLOURS,
    IDENTITIES,
    NIGHT_WORDINGS,
    SHAPES,
    STYLES,
    TRAIN_TEMPLATES,
    sample_scene,
)

N = 20  # prompts a set, as the benchmark draws them


def _training_wordings() -> list[re.Pattern]:
    """Every caption a training template can produce, as one pattern per template."""
    colours, shapes = "|".join(COLOURS), "|".join(w for s in SHAPES.values() for w in s) + "|" + "|".join(SHAPES)
    thing = rf"(?:an? (?:{colours}) (?:{shapes})|{'|'.join(IDENTITIES)})"
    slots = {"subject": rf"{thing}(?: and {thing})?",
             "where": rf"(?: (?:{'|'.join(BACKGROUNDS[b] for b in BACKGROUNDS if b != 'plain')}))?",
             "style": rf"(?: in the style of (?:{'|'.join(STYLES)}))?",
             "time": rf"(?: (?:{'|'.join(NIGHT_WORDINGS)}))?"}
    return [re.compile(re.escape(t).replace(r"\{", "{").replace(r"\}", "}").format(**slots)) for t in TRAIN_TEMPLATES]


def _report_prompts(kind: str, name: str) -> list[str]:
    p = probes(kind, name, N, REPORT)
    return [q.text for q in (*p.erased, *p.paraphrase, *p.in_kind, *p.cross_kind)]


def test_the_report_split_measures_every_concept_of_the_world_with_colours_as_a_kind():
    assert REPORT.concepts == {"object": list(SHAPES), "identity": list(IDENTITIES), "style": list(STYLES),
                               "scene": ["night"], "colour": list(COLOURS)}
    assert {c for names in TUNE.concepts.values() for c in names} < {c for names in NAMES.values() for c in names}
    assert set(SPLITS) == {"tune", "report"}


def test_the_splits_share_no_template_image_seed_or_attack_seed():
    assert not set(TUNE.templates) & set(REPORT.templates)
    tune, report = probes("object", "circle", N, TUNE), probes("object", "circle", N, REPORT)
    assert not set(tune.seeds) & set(report.seeds) and not set(TUNE.attack_seeds) & set(REPORT.attack_seeds)
    assert not {q.text for q in tune.erased} & {q.text for q in report.erased}


def test_no_report_prompt_is_a_caption_a_training_template_produces():
    """The patterns do match the model's training captions (the check can fail), and never a report prompt."""
    patterns = _training_wordings()
    assert all(any(p.fullmatch(q.text) for p in patterns) for q in probes("object", "circle", N, TUNE).attacker)
    for kind, names in REPORT.concepts.items():
        for name in names:
            made = [q for q in _report_prompts(kind, name) if any(p.fullmatch(q) for p in patterns)]
            assert not made, (name, made)


@pytest.mark.parametrize("kind, name", [("object", "circle"), ("colour", "blue"), ("identity", "Mimo"),
                                        ("style", "Zaranth"), ("scene", "night")])
def test_no_report_prompt_shows_a_scene_the_erasure_holds(embedded, kind, name):
    held = keep_set(embedded, [name])
    scenes = {scene_words(p) for p in held.prompts + held.in_context}
    drawn = probes(kind, name, N, REPORT, held=held.prompts + held.in_context)
    shown = [q.text for q in (*drawn.erased, *drawn.paraphrase, *drawn.in_kind, *drawn.cross_kind)]
    assert not [q for q in shown if scene_words(q) in scenes]


def test_a_colour_is_measured_where_it_is_asked_for_and_kept_out_of_the_other_kinds():
    p = probes("colour", "blue", N, REPORT)
    assert all(q.scene.things[0].colour == "blue" for q in p.erased)
    assert all("blue" in q.text and len(q.scene.things) == 2 for q in p.paraphrase)
    assert all(q.name != "blue" and q.kind == "colour" for q in p.in_kind)
    assert not [q.text for q in (*p.in_kind, *p.cross_kind) if "blue" in q.text]


def test_an_attack_is_read_on_the_plain_prompts_and_the_erased_ones_the_higher_counting():
    assert Recovery(0.25, 0.5).rate == 0.5 and Recovery(0.75, 0.5).rate == 0.75
    assert Recovery(0.25, None).rate == 0.25 and Recovery(None, None).rate is None
    reading = Reading.plain_prompts("circle", images=6, first_seed=1000)
    assert reading.plain[:2] == ["a photo of circle", "a picture of circle"] and reading.plain_seeds[0] == 1000


def test_recovery_learns_once_per_attack_seed_and_reads_both_sets():
    pipe = tiny_pipeline()
    erase(pipe, ["circle"], "uce", name="attacked")
    try:
        reading = Reading(["a photo of circle"] * 2, [0, 1], ["a red circle on grass"] * 3, [5, 6, 7], steps=2)
        seen = []

        def shows(images):
            seen.append(len(images))
            return [i == 0 for i in range(len(images))]

        results = recovery(pipe, "circle", ["attacked"], reading, shows, AttackConfig(steps=2, images=2, image_steps=2),
                           seeds=(0, 1))
    finally:
        detach(pipe, "attacked")
    assert [r.seed for r in results] == [0, 1] and seen == [2, 3, 2, 3]
    assert all(r.plain == 0.5 and abs(r.erased - 1 / 3) < 1e-9 and r.rate == 0.5 for r in results)
    assert all(len(r.images) == 2 for r in results)


def test_the_encoder_swap_runs_each_side_of_the_patch_with_the_other_side_unedited():
    """UCE edits the UNet only: its UNet part alone draws what the patch draws; its text-encoder part alone, the
    unedited model. Text-map edits the text encoder only: the other way round."""
    pipe = tiny_pipeline()
    reading = Reading(["a photo of circle"], [3], steps=2)
    unet, text = SIDES
    for method, whole_side in (("uce", unet), ("text-map", text)):
        erase(pipe, ["circle"], method, name="swapped", **({"steps": 2} if method == "text-map" else {}))
        try:
            sides = encoder_swap(pipe, ["swapped"], reading, None)
            with active(pipe, ["swapped"]):
                (patched,) = generate_many(pipe, reading.plain, reading.plain_seeds, 2)
        finally:
            detach(pipe, "swapped")
        (unedited,) = generate_many(pipe, reading.plain, reading.plain_seeds, 2)
        assert sides[whole_side].plain is None and len(sides[whole_side].images) == 1
        other = text if whole_side == unet else unet
        assert _same(sides[whole_side].images[0], patched) and not _same(patched, unedited), method
        assert _same(sides[other].images[0], unedited), method


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def _verdict(subject: str, colour: str, background: str, night: bool) -> Verdict:
    """A judge's read that sees exactly one subject of one colour."""
    return Verdict(subjects={s: float(s == subject) for s in [*SHAPES, *IDENTITIES]},
                   colours={c: float(c == colour) for c in COLOURS}, style={"plain": 1.0},
                   background={b: float(b == background) for b in BACKGROUNDS}, night=float(night))


def test_an_image_the_judge_and_the_pixel_check_read_apart_is_uncertain():
    scene = sample_scene(random.Random(0), "any", two_objects=0, kinds=["square"], colours=["blue"], style="plain",
                         background="plain", night=False)
    image = render(scene, seed=0)[0]
    assert read(image).shape == "square" and read(image).background == "plain"  # what the pixels decide
    agreeing, other_shape = _verdict("square", "blue", "plain", False), _verdict("heart", "blue", "plain", False)
    other_ground = _verdict("square", "blue", "water", False)
    verdicts = [agreeing, other_shape, other_ground]
    reads = judged(lambda images: verdicts[:len(images)], [image] * 3)
    assert reads[0] is agreeing and reads[1] is None and reads[2] is None


def test_a_share_leaves_uncertain_reads_out():
    assert share([True, None, False, None]) == 0.5
    assert share([True, True, None]) == 1.0
    assert share([None, None]) == 0.0  # none certain: nothing is counted as shown


@pytest.mark.parametrize("split", [TUNE, REPORT], ids=lambda split: split.name)
def test_uploads_never_show_a_prompt_or_a_seed_the_protocol_reports_on(split):
    """The images an erasure from images is given (`bench quality --from-images`) show the concept, in the tune split's
    templates, on prompts and seeds of their own: none of the sets' texts, no set's or attack reading's seed."""
    report_starts = tuple(t.split("{")[0] for t in REPORT_TEMPLATES)
    for kind, names in split.concepts.items():
        for name in names:
            probe = probes(kind, name, N, split)
            prompts, seeds = uploads(probe, 8)
            reported = {p.text for key in ("erased", "attacker", "paraphrase", "in_kind", "cross_kind")
                        for p in getattr(probe, key)}
            assert len(prompts) == 8 and all(p.name == name and p.kind == kind for p in prompts)
            assert not {p.text for p in prompts} & reported, name
            assert not any(p.text.startswith(report_starts) for p in prompts), name
            assert seeds == list(range(UPLOAD_SEED, UPLOAD_SEED + 8))
            for other in SPLITS.values():  # the sets' seeds and the attack's plain reading: image_seed onwards
                assert not set(seeds) & set(range(other.image_seed, other.image_seed + 200))
    # a shape's uploads do show it: each scene holds the shape
    prompts, _ = uploads(probes("object", "triangle", N, split), 8)
    assert all("triangle" in p.text and any(t.kind == "triangle" for t in p.scene.things) for p in prompts)
