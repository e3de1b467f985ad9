"""Erasures on the embedded model, judged, each held to the spec it is named for (never to a bar taken from
its own readings). A method or concept that misses a spec has no test here: it is a ✗ in the benchmark's
table (`python -m fmn bench quality`), which reads every method on every concept.

The spec of an erasure: the concept's judged presence on its prompts (of the tune split, or of the report split
for a concept the default was never tuned on) falls from >= 90 % to <= 20 %,
while concepts of its kind and of the other kinds each lose at most 10 points. The spec of a replacement: the
replacement on >= 80 % of the concept's prompts, the concept on <= 20 %. The attack's target: <= 20 % recovered.
Every erasure runs the one path a user's checkpoint gets: what it holds is found on the model (fmn/erase/keep.py).
`pytest -s` prints each reading.
"""

from __future__ import annotations

import pytest

from fmn.attack import AttackConfig
from fmn.bench import world_free
from fmn.bench.protocol import REPORT, TUNE, found_rates, probes, recovery_rates
from fmn.bench.quality import cell_probes
from fmn.erase import DEFAULT_METHOD, erase, keep_set, make_method, make_patch
from fmn.generate import generate_many
from fmn.patch import active, detach

pytestmark = pytest.mark.slow

PROMPTS = 10  # per set: one image is 10 points
STEPS = 25  # denoising steps of every judged image
SPEC = {"before": 0.90, "after": 0.20, "in_kind": 0.10, "cross_kind": 0.10}  # presence before, after; points lost
REPLACED = {"shows": 0.80, "left": 0.20}
ATTACK = 0.20  # recovered by concept inversion
KINDS = {"triangle": "object", "square": "object", "heart": "object"}
# Each concept's split (fmn.bench.protocol): the report split's for the shapes the default was not tuned on (the
# ring is drawn on too few of its prompts to measure). Tobble is not here: erasing it, the default loses 20 points of
# the other characters on these prompts (spec 10), a miss its row of the table shows (`quality-tune.md`)
SPLIT = {"triangle": TUNE, "square": REPORT, "heart": REPORT}
SETS = ("erased", "in_kind", "cross_kind")  # the kept sets read by name (whole=False): the benchmark checks them whole


def presence(pipe, judge, concept: str, patch: str | None = None) -> dict[str, float]:
    """The concept's presence on its held-out prompts (every object with its colour) and the kept sets' presence."""
    spec = {"kind": KINDS[concept], "name": concept, "prompts": PROMPTS, "split": SPLIT[concept].name}
    probe = cell_probes(pipe, spec, bare=False)  # as the benchmark draws them: no scene the erasure holds
    with active(pipe, [patch] if patch else []):
        return found_rates(pipe, judge, probe, STEPS, SETS, whole=False)


@pytest.fixture(scope="module")
def before(embedded, judge):
    return {concept: presence(embedded, judge, concept) for concept in KINDS}


@pytest.fixture(scope="module")
def worldless(tmp_path_factory):
    """The embedded model as every user's checkpoint looks: no world.json beside it."""
    return world_free.worldless_copy(tmp_path_factory.mktemp("worldless") / "fmn-shapes")


def test_the_default_erases_circles_on_a_model_without_a_world_and_keeps_the_rest(worldless, judge):
    """Circles gone from "a red circle" (at most 1 in 8 left); every other prompt drawn as the unedited model
    draws it, within two in 8 per label; read on the images the judge and the pixel check agree on, at the erasure's
    default seed, as `python -m fmn erase` makes it (`bench world-free` reads other seeds)."""
    unedited = world_free.counts(worldless, judge)
    after = world_free.erased_counts(worldless, judge)
    print({k: f"{unedited[k]} -> {after[k]}" for k in after})
    assert unedited["a red circle", "circle"][0] >= 7 and not world_free.misses(unedited, after), (unedited, after)


ERASURES = [(DEFAULT_METHOD, "triangle"), (DEFAULT_METHOD, "square"), (DEFAULT_METHOD, "heart"), ("uce", "triangle")]


@pytest.mark.parametrize("method, concept", ERASURES)
def test_method_erases_the_concept_and_keeps_the_rest(embedded, judge, before, method, concept):
    erase(embedded, [concept], method, name="judged")
    try:
        after = presence(embedded, judge, concept, "judged")
    finally:
        detach(embedded, "judged")
    shown = before[concept]
    lost = {key: shown[key] - after[key] for key in ("in_kind", "cross_kind")}
    print(f"{method} {concept}: present {shown['erased']:.0%} -> {after['erased']:.0%}, "
          f"in kind {-lost['in_kind']:+.0%}, across kinds {-lost['cross_kind']:+.0%}")
    assert shown["erased"] >= SPEC["before"], shown  # the unedited model draws the concept: the erasure is measurable
    assert after["erased"] <= SPEC["after"] + 1e-9, after
    assert lost["in_kind"] <= SPEC["in_kind"] + 1e-9 and lost["cross_kind"] <= SPEC["cross_kind"] + 1e-9, lost


@pytest.mark.parametrize("method", ["uce"])
def test_method_replaces_the_concept_with_another(embedded, judge, method):
    """Concept correction (--replace-with): prompts that ask for a triangle get a heart."""
    prompts = [p.text for p in probes("object", "triangle", PROMPTS, bare=False).erased]
    erase(embedded, ["triangle"], method, replace_with="heart", name="judged")
    try:
        with active(embedded, ["judged"]):
            verdicts = judge(generate_many(embedded, prompts, list(range(len(prompts))), STEPS))
    finally:
        detach(embedded, "judged")
    shows, left = (sum(v.has(label) for v in verdicts) / len(verdicts) for label in ("heart", "triangle"))
    print(f"{method} triangle -> heart: heart on {shows:.0%}, triangle on {left:.0%}")
    assert shows >= REPLACED["shows"] - 1e-9 and left <= REPLACED["left"] + 1e-9, (shows, left)


def test_the_robust_closed_form_withstands_the_attack_on_night(embedded, judge):
    """Concept inversion (100 steps, 8 images, the judge as the attacker's eye, 3 attack seeds) against RECE's
    erasure of "night": recovered on at most 20 % on the mean of the seeds, each read where it comes back most
    (the attacker's plain prompts or night's held-out prompts)."""
    method = make_method("rece", ["night"], held=keep_set(embedded, ["night"]))
    make_patch(embedded, method, "judged")
    try:
        rates = [r.rate for r in recovery_rates(embedded, judge, probes("scene", "night", PROMPTS), "judged",
                                                AttackConfig(steps=100, images=8, image_steps=STEPS), STEPS)]
    finally:
        detach(embedded, "judged")
    recovered = sum(rates) / len(rates)
    print(f"rece night, attack recovery {recovered:.0%} (per attack seed: {rates})")
    assert recovered <= ATTACK + 1e-9, recovered
