"""The collateral map: what else an erasure touched.

Every concept the model knows is drawn without and with the patches on the same seeds, and
each gets three numbers, sorted by what changed most:

- presence, on the embedded model: the share of its images in which the judge sees it
  (shapes and characters as subjects, artists as the style, colours on the shape, the
  background, night), before and after;
- pixel change, on any model: the mean absolute difference of the images on the same seed,
  in [0, 1] (0: the same images; a colour shift of the whole shape reads about 0.1-0.3);
- attention, on any model: the part of the cross-attention its word receives (`Trace.share`),
  before and after.

On the embedded model the concepts come from world.json; on any other model the user lists
them and each is drawn as "a photo of <concept>". Published tools never showed this: erasing
one celebrity erased others (ESD issue #13), and ESD-x erasing "circle" turned green squares
blue-violet here, which no probe of the erased concept itself reveals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from .evaluate import Draw
from .heatmaps import to_image
from .world.world import World

__all__ = ["Effect", "Collateral", "collateral", "world_concepts", "MAX_CONCEPTS"]

MAX_CONCEPTS = 100
SEEDS = (0, 1, 2, 3)


@dataclass
class Effect:
    """One concept's images without and with the patches, on the same seeds."""

    concept: str
    kind: str  # shape, character, artist, colour, background, time of day; "concept" on other models
    prompt: str
    erased: bool  # one of the patches' concepts
    pixel_change: float  # mean |after - before| over pixels, channels and seeds, in [0, 1]
    attention_before: float  # the concept word's share of the cross-attention (`Trace.share`), mean over seeds
    attention_after: float
    presence_before: float | None = None  # the judge's share of seeds showing it; None where no judge knows the model
    presence_after: float | None = None

    @property
    def change(self) -> float:
        """What the ranking sorts by: presence lost where judged, else the pixel change."""
        return self.presence_before - self.presence_after if self.presence_before is not None else self.pixel_change


@dataclass
class Collateral:
    effects: list[Effect]  # sorted: what changed most first
    seeds: list[int]

    def table(self) -> list[dict]:
        """One row per concept (the JSON of `python -m fmn collateral`)."""
        return [asdict(e) for e in self.effects]

    def chart(self) -> Image.Image:
        """Horizontal bars, one row per concept, most changed on top, the erased in red: presence
        before (grey) and after where judged, else pixel change and the attention share before → after."""
        judged = self.effects[0].presence_before is not None
        n = len(self.effects)
        fig = Figure(figsize=(7.5, 0.26 * n + 1.2), dpi=100)
        ax = fig.subplots()
        y = np.arange(n)[::-1]
        if judged:
            ax.barh(y + 0.2, [e.presence_before for e in self.effects], 0.4, color="0.75", label="before")
            ax.barh(y - 0.2, [e.presence_after for e in self.effects], 0.4,
                    color=["tab:red" if e.erased else "tab:blue" for e in self.effects], label="after (red: erased)")
            ax.set_xlabel(f"presence: share of {len(self.seeds)} seeds where the judge sees it")
            ax.set_xlim(0, 1.0)
        else:
            ax.barh(y, [e.pixel_change for e in self.effects], 0.6,
                    color=["tab:red" if e.erased else "tab:blue" for e in self.effects],
                    label="pixel change (red: erased)")
            ax.set_xlabel(f"mean absolute pixel change on the same {len(self.seeds)} seeds (0-1)")
        ax.set_yticks(y, [f"{e.concept} ({e.kind}{', ERASED' if e.erased else ''})  attention "
                          f"{e.attention_before:.1%} → {e.attention_after:.1%}" for e in self.effects], fontsize=7)
        for label, effect in zip(ax.get_yticklabels(), self.effects):
            label.set_color("tab:red" if effect.erased else "black")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title("What else the patch changed (most changed on top)", fontsize=9)
        fig.tight_layout()
        return to_image(fig)


def _gone(world: World | None, erased: list[str]) -> set[str]:
    """The erased concepts, lower-case; any wording of night counts as "night"."""
    return {"night" if world is not None and world.kind_of(c) == "scene" else c.strip().lower() for c in erased}


def world_concepts(world: World, erased: list[str]) -> list[tuple[str, str, str]]:
    """(concept, kind, prompt) for every concept of the shapes world, each in a prompt whose other
    words are a shape and a colour not erased, so that the prompt shows the one concept's fate."""
    gone = _gone(world, erased)
    shape = next((s for s in world.shapes if s not in gone), "circle")
    colour = next((c for c in world.colours if c not in gone), "red")
    rows = [(s, "shape", f"a {colour if s != shape else next(c for c in world.colours if c != colour)} {s}")
            for s in world.shapes]
    rows += [(i, "character", i) for i in world.identities]
    rows += [(a, "artist", f"a {colour} {shape} in the style of {a}") for a in world.styles]
    rows += [(c, "colour", f"a {c} {shape}") for c in world.colours]
    rows += [(b, "background", f"a {colour} {shape} on {b}") for b in world.backgrounds if b != "plain"]
    return rows + [("night", "time of day", f"a {colour} {shape} at night")]


def _concept_list(concepts: list[str] | str | None) -> list[str]:
    if isinstance(concepts, str):
        concepts = concepts.split(",")
    names = list(dict.fromkeys(c.strip() for c in concepts or () if c.strip()))
    if concepts is not None and not names:
        raise ValueError("The concept list is empty: name the concepts to check, separated by commas, "
                         "e.g. 'dog, cat, house'.")
    if len(names) > MAX_CONCEPTS:
        raise ValueError(f"{len(names)} concepts to check; the limit is {MAX_CONCEPTS} "
                         f"(each is drawn on {len(SEEDS)} seeds twice).")
    return names


def collateral(draw: Draw, erased: list[str], world: World | None = None, concepts: list[str] | str | None = None,
               seeds: list[int] = SEEDS) -> Collateral:
    """Draws each concept without and with the patches on the same seeds, each side in one `draw` (batched
    where memory allows), and measures what changed.

    Args:
        draw: ``draw(prompts, seeds, side)`` -> (images, traces), side "before" or "after" the patches
            (`fmn.evaluate.Draw`; `fmn.studio.Studio` passes its own).
        erased: the patches' concepts, marked in the chart and kept out of the other concepts' prompts.
        world: the shapes world the model was trained on (`fmn.models.world_of`): its concepts, and its judge
            for presence; None for other models.
        concepts: the concepts to check (a list, or one comma-separated text); default: every concept of the
            embedded model's world. Required on other models.
    """
    names = _concept_list(concepts)
    gone = _gone(world, erased)
    if world is None and not names:
        raise ValueError("This model has no list of what it knows: name the concepts to check, e.g. 'dog, cat, house'.")
    known = {c.lower(): (c, kind, prompt) for c, kind, prompt in world_concepts(world, erased)} if world else {}
    rows = [known.get(c.lower(), (c, "concept", f"a photo of {c}")) for c in names] if names else list(known.values())
    prompts, pair_seeds = [prompt for _, _, prompt in rows for _ in seeds], list(seeds) * len(rows)
    before, traces_before = draw(prompts, pair_seeds, "before")
    after, traces_after = draw(prompts, pair_seeds, "after")
    judge = world.judge if world else None
    verdicts = [judge(images) for images in (before, after)] if judge is not None else None
    effects = []
    for i, (concept, kind, prompt) in enumerate(rows):
        mine = slice(i * len(seeds), (i + 1) * len(seeds))  # this concept's images, seed by seed
        word = concept.split()[-1]  # a word of the concept that the prompt spells
        pixels = np.mean([np.abs(np.asarray(b, np.float32) - np.asarray(a, np.float32)).mean() / 255
                          for b, a in zip(before[mine], after[mine])])
        shares = (float(np.mean([t.share(word) for t in traces[mine]])) for traces in (traces_before, traces_after))
        effect = Effect(concept, kind, prompt, concept.lower() in gone, float(pixels), *shares)
        if verdicts is not None and judge.knows(concept):
            effect.presence_before, effect.presence_after = (
                float(np.mean([v.has(concept) for v in side[mine]])) for side in verdicts)
        effects.append(effect)
    if judge is not None and any(e.presence_before is None for e in effects):
        for e in effects:  # one measure for every row: the judge does not know some of the listed concepts
            e.presence_before = e.presence_after = None
    effects.sort(key=lambda e: e.change, reverse=True)
    return Collateral(effects, list(seeds))
