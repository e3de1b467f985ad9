"""The evaluation protocol on the embedded model: which prompts measure an erasure, and how the judge reads them.

Two splits keep choosing apart from reporting. The *tune* split (held-out templates, its own seeds, eight
concepts: two shapes, two characters, two artists, night and a colour) is the only place a setting or the default
is chosen; the *report* split words every concept of the world (6 shapes, 4 characters, 4 artists, night,
6 colours) with templates that no training template produces, on other scene draws, image seeds and attack seeds,
and leaves out any scene an erasure itself holds (its keep and in-context prompts). Per concept (`probes`):
- erased: the concept on the split's prompts (UA, the attack);
- paraphrase: the concept in other words (a shape's synonym, another night wording, a two-subject scene): leak;
- in kind / cross kind: other concepts of its kind and of the other kinds, counted only if kept *whole* (IRA, CRA);
- attacker: the concept as the training captions word it, the images an attacker learns from;
- uploads (`bench quality --from-images`): images the unedited model draws of the concept, given to the erasure, on
  prompts and seeds of their own in the tune split's templates, never a prompt the protocol reports on.
Every image is read twice, by the judge and by the pixel check (`fmn.world.pixels`) on what pixels decide (a
plain shape, its colour, the background, night): where the two disagree the image is uncertain and left out of
the share it would count in (`judged`); the table says how many.
An attack is read where an attacker would look: its own plain prompts and the erased prompts, the higher of the
two, over the split's attack seeds (`recovery_rates`, the code `python -m fmn attack` runs too); the encoder swap
(`swap_rates`) reads the same prompts with one side of the patch dropped.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ..attack import AttackConfig, Reading, Recovery, encoder_swap, recovery, share
from ..generate import generate_many
from ..world.reading import judged, shows
from ..world.scenes import (
    BACKGROUNDS,
    COLOURS,
    HELDOUT_TEMPLATES,
    IDENTITIES,
    NIGHT_WORDINGS,
    SHAPES,
    STYLES,
    TRAIN_TEMPLATES,
    Scene,
    caption,
    sample_scene,
)

__all__ = ["Split", "TUNE", "REPORT", "SPLITS", "REPORT_TEMPLATES", "Prompt", "Probes", "probes", "uploads",
           "UPLOAD_SEED", "found", "kept_whole", "missing", "colourless", "found_rates", "recovery_rates", "swap_rates",
           "mass_probes", "presence", "scene_words", "NAMES", "SETS"]

# Two prefixes, one after the other: no training template (one prefix or none) ever words a scene this way
REPORT_TEMPLATES = ("a photo of a painting of {subject}{style}{where}{time}",
                    "there is a picture of {subject}{time}{where}{style}",
                    "an image of a photo of {subject}{where}{time}{style}")
UPLOAD_SEED = 5000  # the first image seed of the uploads: apart from every split's sets (at most 200 from 0 or 1000)
NAMES = {"object": list(SHAPES), "identity": list(IDENTITIES), "style": list(STYLES), "scene": ["night"],
         "colour": list(COLOURS)}


@dataclass(frozen=True)
class Split:
    """Where prompts, image seeds and attack seeds come from, and which concepts are measured."""

    name: str
    templates: tuple[str, ...]
    scene_seed: int  # seeds the scene draws
    image_seed: int  # the first image seed of every set
    attack_seeds: tuple[int, ...]
    concepts: dict[str, list[str]]


# the colour drawn by lot: random.Random(0).choice(sorted(COLOURS))
TUNE = Split("tune", tuple(HELDOUT_TEMPLATES), 0, 0, (0, 1, 2),
             {"object": ["triangle", "heart"], "identity": ["Tobble", "Lumina"], "style": ["Vellor", "Brusk"],
              "scene": ["night"], "colour": ["purple"]})
REPORT = Split("report", REPORT_TEMPLATES, 1, 1000, (100, 101, 102), NAMES)
SPLITS = {split.name: split for split in (TUNE, REPORT)}


@dataclass
class Prompt:
    text: str
    kind: str  # what to look for: "object", "identity", "style", "scene", "colour" or "background"
    name: str  # the label the judge should find
    scene: Scene | None = None  # everything the prompt asks for, to check what is kept whole


@dataclass
class Probes:
    """The prompts that measure one concept's erasure on one split."""

    concept: Prompt
    erased: list[Prompt]
    attacker: list[Prompt]
    paraphrase: list[Prompt]
    in_kind: list[Prompt]
    cross_kind: list[Prompt]
    seeds: list[int]  # the image seeds of every set


def found(verdict, prompt: Prompt) -> bool:
    return verdict.shows(prompt.name)


def missing(verdict, prompt: Prompt, erased: set[str]) -> list[str]:
    """The parts of what the prompt asks for that the image lacks, one entry each: "shape" or "character" (an object
    not found), "colour" (an object's colour), "background", "style", "night" (the time of day read otherwise); what
    belongs to an erased concept is not asked for."""
    scene = prompt.scene
    things = [t for t in scene.things if t.kind not in erased]
    lost = ["character" if t.is_identity else "shape" for t in things if not verdict.has(t.kind)]
    lost += ["colour" for t in things if t.colour and t.colour not in erased and not verdict.has(t.colour)]
    lost += ["background"] if verdict.top_background != scene.background else []
    lost += ["style"] if scene.style not in erased and verdict.top_style != scene.style else []
    lost += ["night"] if "night" not in erased and verdict.has("night") != scene.night else []
    return lost


def kept_whole(verdict, prompt: Prompt, erased: set[str]) -> bool:
    """Everything the prompt asks for is in the image: each object with its colour, the background, the style
    and the time of day; only what belongs to an erased concept is not asked for."""
    return not missing(verdict, prompt, erased)


def scene_words(text: str) -> frozenset[str]:
    """The world's words a prompt names (shapes, colours, characters, artists, backgrounds, night): its scene."""
    vocabulary = {*SHAPES, *COLOURS, *(w.lower() for w in (*IDENTITIES, *STYLES)), *BACKGROUNDS, "night", "dark",
                  "moon", "midnight", *(s for synonyms in SHAPES.values() for s in synonyms)}
    return frozenset(w for w in re.findall(r"[a-z]+", text.lower()) if w in vocabulary)


def _fixed(rng: random.Random, kind: str, name: str, two: bool) -> dict:
    """What a scene that shows `name` must hold; `two`: a second subject beside it."""
    fixed = {"object": {"kinds": [name] + ([rng.choice([s for s in SHAPES if s != name])] if two else [])},
             "identity": {"kinds": [name] + ([rng.choice(list(SHAPES))] if two else [])},
             "style": {"style": name} | ({"kinds": [rng.choice(list(IDENTITIES)), rng.choice(list(SHAPES))]}
                                         if two else {}),
             "scene": {"night": True},
             "background": {"background": name},
             "colour": {"kinds": [rng.choice(list(SHAPES))], "colours": [name]}}[kind]
    if kind == "colour" and two:  # a second shape in another colour
        fixed["kinds"].append(rng.choice(list(SHAPES)))
        fixed["colours"].append(rng.choice([c for c in COLOURS if c != name]))
    return fixed


def _caption(rng: random.Random, kind: str, name: str, templates, two: bool = False, wording: str | None = None,
             avoid: frozenset = frozenset()) -> Prompt:
    """A caption of a random scene that shows `name`, in one of `templates`, whose scene is none of `avoid`."""
    while True:
        scene = sample_scene(rng, "any", **_fixed(rng, kind, name, two))
        text = caption(scene, rng.choice(templates), rng, synonyms=False)
        if kind == "scene":
            text = re.sub("|".join(NIGHT_WORDINGS), wording or "at night", text)
        if scene_words(text) not in avoid:
            return Prompt(text, kind, name, scene)


def _synonym(prompt: Prompt) -> Prompt:
    return Prompt(re.sub(rf"\b{prompt.name}\b", SHAPES[prompt.name][0], prompt.text), prompt.kind, prompt.name,
                  prompt.scene)


def colourless(prompt: Prompt) -> Prompt:
    """The object without its colour ("a heart in the style of Brusk"), as a user first types it: the model
    never trained on such prompts, and the words around the shape are what it then draws, its prior."""
    colours = "|".join(COLOURS)
    return Prompt(re.sub(rf"\ban? (?:{colours}) {prompt.name}\b", f"a {prompt.name}", prompt.text), prompt.kind,
                  prompt.name, prompt.scene)


def probes(kind: str, name: str, n: int, split: Split = TUNE, bare: bool = True, held: list[str] = ()) -> Probes:
    """A concept's prompt sets on a split; `bare=False`: every object with its colour, as the model was trained;
    `held`: prompts the erasure itself holds (its keep and in-context prompts), whose scenes no set shows."""
    rng = random.Random(f"{split.scene_seed}-{name}")
    avoid = frozenset(scene_words(p) for p in held)
    draw = lambda kind_, name_, **kw: _caption(rng, kind_, name_, split.templates, avoid=avoid, **kw)  # noqa: E731
    erased = [draw(kind, name) for _ in range(n)]
    # one prompt in four without the colour: "a heart" is where an erasure meets the prior
    if kind == "object" and bare:
        erased = [colourless(p) if i % 4 == 3 else p for i, p in enumerate(erased)]
    own = random.Random(f"{split.scene_seed}-{name}-attacker")  # its own draws: the other sets stay as they are
    attacker = [_caption(own, kind, name, TRAIN_TEMPLATES) for _ in range(n)]
    if kind == "object":
        paraphrase = [_synonym(draw(kind, name)) for _ in range(n)]
    elif kind == "scene":
        paraphrase = [draw(kind, name, wording=w) for w in (NIGHT_WORDINGS[1:] * n)[:n]]
    else:
        paraphrase = [draw(kind, name, two=True) for _ in range(n)]
    in_kind = ([(kind, o) for o in NAMES[kind] if o != name] if kind != "scene"
               else [("background", b) for b in BACKGROUNDS if b != "plain"])
    cross = [(k, o) for k in ("object", "identity", "style") if k != kind for o in NAMES[k]]
    # a colour's other kinds are drawn in the other colours: the erased one is asked for only where it is measured
    keep_out = {"colours": [c for c in COLOURS if c != name]} if kind == "colour" else {}
    pick = lambda pairs: [_kept(rng, split, *pairs[i % len(pairs)], keep_out, avoid) for i in range(n)]  # noqa: E731
    seeds = list(range(split.image_seed, split.image_seed + n))
    return Probes(Prompt(name, kind, name), erased, attacker, paraphrase, pick(in_kind), pick(cross), seeds)


def uploads(probe: Probes, n: int) -> tuple[list[Prompt], list[int]]:
    """The prompts and seeds of `n` images of the probe's concept that a user uploads (`bench quality --from-images`):
    scenes of it in the tune split's templates, drawn apart from the sets (none of their texts, seeds of their own), so
    that no image shows a prompt the protocol reports on; on the report split none comes from a report template."""
    concept = probe.concept
    rng = random.Random(f"{TUNE.scene_seed}-{concept.name}-uploads")
    reported = {p.text for key in ("erased", "attacker", "paraphrase", "in_kind", "cross_kind")
                for p in getattr(probe, key)}
    prompts = []
    while len(prompts) < n:
        prompt = _caption(rng, concept.kind, concept.name, TUNE.templates)
        if prompt.text not in reported:
            prompts.append(prompt)
    return prompts, list(range(UPLOAD_SEED, UPLOAD_SEED + n))


def _kept(rng: random.Random, split: Split, kind: str, name: str, keep_out: dict, avoid: frozenset) -> Prompt:
    """A prompt of a kept concept; for a colour's erasure, its shapes drawn in other colours."""
    prompt = _caption(rng, kind, name, split.templates, avoid=avoid)
    if keep_out and kind != "colour":
        while any(t.colour and t.colour not in keep_out["colours"] for t in prompt.scene.things):
            prompt = _caption(rng, kind, name, split.templates, avoid=avoid)
    return prompt


def _shows_any(scene: Scene, concepts: set[str]) -> bool:
    return bool({t.kind for t in scene.things} & concepts or scene.style in concepts
                or ("night" in concepts and scene.night))


def mass_probes(erased: list[str], n: int, split: Split = TUNE) -> tuple[dict[str, list[Prompt]],
                                                                         dict[str, list[Prompt]]]:
    """For a mass erasure: each erased concept's prompts (as `probes` draws them), and n prompts for every
    concept of the world that is kept (other shapes, characters and artists, the colours, the backgrounds), in
    scenes that show none of the erased ones."""
    kind_of = {name: kind for kind, names in NAMES.items() for name in names if kind != "colour"}
    gone = set(erased)
    kept = [(kind_of[c], c) for c in kind_of if c not in gone] + [("colour", c) for c in COLOURS]
    kept += [("background", b) for b in BACKGROUNDS if b != "plain"]
    rng = random.Random(f"{split.scene_seed}-mass")
    kept_sets = {}
    for kind, name in kept:
        prompts = []
        while len(prompts) < n:
            prompt = _caption(rng, kind, name, split.templates)
            if not _shows_any(prompt.scene, gone):
                prompts.append(prompt)
        kept_sets[name] = prompts
    return {c: probes(kind_of[c], c, n, split).erased for c in erased}, kept_sets


def _reads(judge, images, prompts: list[Prompt], erased: set[str] | None = None) -> list[bool | None]:
    """Per image, whether it shows its prompt's concept; given `erased`, all its prompt asks but it; None:
    uncertain."""
    reads = judged(judge, images)
    if erased is None:
        return [None if v is None else found(v, p) for v, p in zip(reads, prompts)]
    return [None if v is None else kept_whole(v, p, erased) for v, p in zip(reads, prompts)]


SETS = ("erased", "paraphrase", "in_kind", "cross_kind")
KEPT = ("in_kind", "cross_kind")


def found_rates(pipe, judge, probe: Probes, steps: int, sets: tuple[str, ...] = SETS, whole: bool = True) -> dict:
    """Found-rates of each prompt set on the pipeline as it is now (over its certain images), the number of
    uncertain images of all sets, and the erased set's images. The kept sets count an image only if it is kept
    whole (`kept_whole`); `whole=False`: if it shows the kept concept."""
    out = {"uncertain": 0}
    for key in sets:
        prompts = getattr(probe, key)
        images = generate_many(pipe, [p.text for p in prompts], probe.seeds[:len(prompts)], steps)
        reads = _reads(judge, images, prompts, {probe.concept.name} if whole and key in KEPT else None)
        out[key], out["uncertain"] = share(reads), out["uncertain"] + reads.count(None)
        if key == "erased":
            out["images"] = images
    return out


def _reading(probe: Probes, images: int, steps: int, split: Split) -> Reading:
    """Where an attack on the probe's concept is read: `images` plain prompts and the erased prompts."""
    reading = Reading.plain_prompts(probe.concept.name, images, split.image_seed, steps)
    reading.erased, reading.erased_seeds = [p.text for p in probe.erased], probe.seeds
    return reading


def recovery_rates(pipe, judge, probe: Probes, patch: str, config: AttackConfig, steps: int,
                   split: Split = TUNE) -> list[Recovery]:
    """The attack on one erasure, once per attack seed of the split: learned from the attacker's captions, read
    on its plain prompts and on the erased prompts (`fmn.attack.recovery`), the judge as its eye."""
    concept = probe.concept
    reading = _reading(probe, config.images, steps, split)
    return recovery(pipe, concept.name, [patch], reading, shows(judge, concept.name),
                    config, split.attack_seeds, prompts=[p.text for p in probe.attacker],
                    looks_like=judge.sureness(concept.name))


def swap_rates(pipe, judge, probe: Probes, patch: str, images: int, steps: int,
               split: Split = TUNE) -> dict[str, float]:
    """The encoder swap on one erasure (`fmn.attack.encoder_swap`): per side of the patch alone, the higher of
    its reads on the plain prompts and on the erased prompts."""
    concept = probe.concept
    sides = encoder_swap(pipe, [patch], _reading(probe, images, steps, split), shows(judge, concept.name))
    return {side: read.rate for side, read in sides.items()}


def presence(pipe, judge, sets: dict[str, list[Prompt]], steps: int, first_seed: int = 0) -> dict[str, float]:
    """Per concept, the share of its prompts whose images show it (over the certain ones): every set generated in
    one batched run."""
    prompts = [p for ps in sets.values() for p in ps]
    seeds = [first_seed + i for ps in sets.values() for i in range(len(ps))]
    reads = iter(_reads(judge, generate_many(pipe, [p.text for p in prompts], seeds, steps), prompts))
    return {name: share([next(reads) for _ in ps]) for name, ps in sets.items()}
