"""Before and after an erasure, on the same seeds: what went, what stayed.

`probe_prompts` picks prompts that name the concept, paraphrase it, and name other things
that must survive; `compare_prompts` draws each prompt without and with the patches (through
a `Draw` function the caller passes: the model is its business), tracing the cross-attention
of the same generations (each word's heatmap and share of attention, before and after), and,
on the embedded model, asks the judge how sure it is that each image shows the subject
("circle: 0.97 -> 0.03"). The app's Erase tab, `python -m fmn heatmap --compare` and the
benchmarks use the same comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .attention import Trace
from .heatmaps import before_after_grid, word_rows
from .models import world_of
from .panels import Line, panel_grid
from .world.world import World

__all__ = ["Probe", "probe_prompts", "Comparison", "compare_prompts", "Draw", "judge_for"]

# draw(prompts, seeds, side) -> (images, traces): one image and its cross-attention per (prompt, seed) pair,
# side "before" (the model without the patches) or "after" (with them)
Draw = Callable[[list[str], list[int], str], tuple[list[Image.Image], list[Trace]]]


@dataclass
class Probe:
    group: str  # "concept", "paraphrase" or "other"
    prompt: str
    subject: str | None  # the judge label that this prompt's images should (not) show


def _world_probes(world: World, concept: str) -> list[Probe]:
    """Probes for the shapes world: the concept's kind decides the prompts."""
    c, kind = concept.strip(), world.kind_of(concept)
    shapes, identities, styles = world.shapes, world.identities, world.styles
    character = next(i for i in identities if i != c)  # a character that is not the concept
    if kind == "object":
        c = c.lower()
        other = next(s for s in shapes if s != c)
        # "a picture of a heart" has no colour, as a user first types it: there the words around the shape draw
        # the model's prior (a heart, on the shapes world), so the view shows what an erasure leaves there
        return [Probe("concept", f"a red {c}", c), Probe("concept", f"a blue {c} on grass", c),
                Probe("concept", f"a picture of a {c}", c),
                Probe("paraphrase", f"a yellow {shapes[c][0]}", c),
                Probe("other", f"a red {other}", other), Probe("other", character, character)]
    if kind == "identity":
        return [Probe("concept", c, c), Probe("concept", f"{c} on sand", c),
                Probe("paraphrase", f"an image showing {c} on water", c),
                Probe("other", character, character), Probe("other", "a green star", "star")]
    if kind == "style":
        other = next(s for s in styles if s != c)
        return [Probe("concept", f"a red circle in the style of {c}", c),
                Probe("concept", f"{character} in the style of {c}", c),
                Probe("paraphrase", f"a blue star in the style of {c} on grass", c),
                Probe("other", f"a red circle in the style of {other}", other),
                Probe("other", "a green heart", "heart")]
    if kind == "scene":
        second = identities[1]
        return [Probe("concept", "a red circle at night", "night"),
                Probe("concept", f"{character} on grass at night", "night"),
                Probe("paraphrase", "a blue star after dark", "night"),
                Probe("paraphrase", "a green ring under the moon", "night"),
                Probe("other", "a red circle", "circle"), Probe("other", f"{second} on sand", second)]
    return [Probe("concept", c, None), Probe("paraphrase", f"a picture of {c}", None),
            Probe("other", "a red circle", "circle"), Probe("other", character, character)]


def probe_prompts(pipe, concept: str) -> list[Probe]:
    """Prompts that show whether `concept` is gone and the rest is kept."""
    world = world_of(pipe)
    if world is not None:
        return _world_probes(world, concept)
    return [Probe("concept", f"a photo of {concept}", None), Probe("concept", f"a painting of {concept}", None),
            Probe("paraphrase", f"an image showing {concept}", None),
            Probe("other", "a photo of a dog", None), Probe("other", "a photo of a house", None)]


@dataclass
class Comparison:
    probes: list[Probe]
    seeds: list[int]
    before: list[list[Image.Image]]  # [probe][seed]
    after: list[list[Image.Image]]
    scores: list[tuple[float, float]] | None  # per probe: the judge's mean probability of its subject, before and after
    titles: tuple[str, str] = ("before", "after")
    before_maps: list[list[Trace]] | None = None  # [probe][seed]: the cross-attention of each image
    after_maps: list[list[Trace]] | None = None

    def words(self) -> list[str]:
        """Every word of the probes' prompts (no punctuation), in order: what a heatmap can show."""
        words = [w for maps in self.before_maps for w in maps[0].words if any(c.isalnum() for c in w)]
        return list(dict.fromkeys(w.lower() for w in words))

    def map_pair(self, word: str, probe: int, seed: int) -> tuple:
        """The word's map before and after on one probe and seed, on one scale (the larger peak is 1), so that
        drained attention looks dimmer after: what every before/after heatmap view draws."""
        raw = [side[probe][seed].word_map(word, normalize=False) for side in (self.before_maps, self.after_maps)]
        peak = max(float(m.max()) for m in raw) or 1.0
        return raw[0] / peak, raw[1] / peak

    def word_for(self, concepts: list[str]) -> str:
        """The word whose heatmaps to show first: the first concept's that the prompts spell (its last word),
        else the prompts' first word."""
        words = self.words()
        wanted = [c.split()[-1].lower() for c in concepts if c.strip()]
        return next((w for w in wanted if w in words), words[0])

    def probes_with(self, word: str) -> list[int]:
        """The probes whose prompt has `word`; a clear error if none has."""
        rows = [i for i, maps in enumerate(self.before_maps)
                if word.strip().lower() in (w.lower() for w in maps[0].words)]
        if not rows:
            raise ValueError(f"{word!r} is in none of the prompts; their words are: {', '.join(self.words())}")
        return rows

    def shares(self, word: str) -> list[tuple[str, float, float]]:
        """(prompt, share before, share after) for each probe whose prompt has `word`: the part of the
        cross-attention its tokens receive (`Trace.share`), mean over the seeds."""
        return [(self.probes[i].prompt, *(float(np.mean([t.share(word) for t in side[i]]))
                                          for side in (self.before_maps, self.after_maps)))
                for i in self.probes_with(word)]

    def heatmaps(self, words: str | list[str]) -> Image.Image:
        """For each word, each probe with it and each seed: the image and the word's heatmap before, then after,
        the two maps of a seed on one scale (the larger peak is 1), titled with the share before → after."""
        rows = []
        for word in [words] if isinstance(words, str) else words:
            for i, (prompt, b, a) in zip(self.probes_with(word), self.shares(word)):
                pairs = ([], [])
                for s in range(len(self.seeds)):
                    for pair, images, heat in zip(pairs, (self.before[i], self.after[i]), self.map_pair(word, i, s)):
                        pair.append((images[s], heat))
                rows.append((f"{prompt}   [{word}: {b:.1%} → {a:.1%} of the attention]", *pairs))
        return before_after_grid(rows, self.seeds, self.titles)

    def side_by_side(self, probe: int = 0, seed: int = 0) -> Image.Image:
        """One probe on one seed: the image and every word's heatmap, the original row above the patched one,
        each word's two maps on one scale; the words titled with their share before → after."""
        traces = [side[probe][seed] for side in (self.before_maps, self.after_maps)]
        words = [w for w in dict.fromkeys(w.lower() for w in traces[0].words) if any(c.isalnum() for c in w)]
        pairs = {w: self.map_pair(w, probe, seed) for w in words}
        rows = [(f"{title}, seed {self.seeds[seed]}", side[probe][seed],
                 {f"{w} {t.share(w):.1%}": pairs[w][k] for w in words})
                for k, (title, side, t) in enumerate(zip(self.titles, (self.before, self.after), traces))]
        return word_rows(rows, self.probes[probe].prompt)

    def share_table(self, words: list[str] | None = None) -> dict[str, list[dict]]:
        """{word: [{prompt, before, after}, ...]} for these words (default every word): the JSON of
        `heatmap --compare`."""
        return {w: [{"prompt": p, self.titles[0]: b, self.titles[1]: a} for p, b, a in self.shares(w)]
                for w in words or self.words()}

    def labels(self) -> list[str]:
        """One line per probe, e.g. 'circle: 0.97 -> 0.03'."""
        if self.scores is None:
            return [p.prompt for p in self.probes]
        return [f"{p.prompt}   [{p.subject}: {b:.2f} → {a:.2f}]" if p.subject else p.prompt
                for p, (b, a) in zip(self.probes, self.scores)]

    def grid(self) -> Image.Image:
        """Rows of probes, each under its prompt and the judge's reads; the seeds before on the left, after on the
        right."""
        k = len(self.seeds)
        lines = [Line(before + after, label, probe.group)
                 for probe, label, before, after in zip(self.probes, self.labels(), self.before, self.after)]
        headers = [f"{self.titles[col >= k]}, seed {self.seeds[col % k]}" for col in range(2 * k)]
        return panel_grid(lines, headers, split=k)


def judge_for(pipe):
    """The shapes world's judge (loaded once with its world), or None for other models."""
    world = world_of(pipe)
    return world.judge if world else None


def _by_probe(flat: list, k: int) -> list[list]:
    """One item per (probe, seed) pair, probe by probe, as [probe][seed]."""
    return [flat[i : i + k] for i in range(0, len(flat), k)]


def compare_prompts(draw: Draw, probes: list[Probe], seeds: list[int] = (0, 1, 2), judge=None,
                    titles: tuple[str, str] = ("before", "after")) -> Comparison:
    """Draws every probe on every seed, each side in one `draw` (a batched call where memory allows), with
    each image's cross-attention traced (tracing costs a few per cent; nothing is generated twice).

    Args:
        draw: ``draw(prompts, seeds, side)`` -> (images, traces), one per (prompt, seed) pair, side "before"
            or "after": the caller's model without and with its patches (`fmn.studio.Studio` passes its own).
        probes: the prompts, with the subject the judge looks for.
        seeds: every probe's seeds.
        judge: the shapes world's judge (`judge_for`), to score each probe's subject; None: no scores.
        titles: what the two sides are called ("erased", "attacked" against an attack's learned words).
    """
    prompts, pair_seeds = [p.prompt for p in probes for _ in seeds], list(seeds) * len(probes)
    before, before_maps = (_by_probe(flat, len(seeds)) for flat in draw(prompts, pair_seeds, "before"))
    after, after_maps = (_by_probe(flat, len(seeds)) for flat in draw(prompts, pair_seeds, "after"))
    scores = None
    if judge is not None:
        scores = []
        for probe, b, a in zip(probes, before, after):
            if probe.subject is None:
                scores.append((float("nan"), float("nan")))
                continue
            scores.append(tuple(float(np.mean([v.prob(probe.subject) for v in judge(images)])) for images in (b, a)))
    return Comparison(list(probes), list(seeds), before, after, scores, titles, before_maps, after_maps)
