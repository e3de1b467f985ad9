"""Before and after an erasure, on the same seeds: what went, what stayed.

`probe_prompts` picks prompts that name the concept, paraphrase it, and name other things
that must survive; `compare` generates each prompt without and with the patches and, on
the embedded model, asks the judge how sure it is that each image shows the subject
("circle: 0.97 -> 0.03"). The app's Erase tab and the benchmarks use the same comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .generate import GenerationSettings
from .models import world_of
from .world.known import World

__all__ = ["Probe", "probe_prompts", "Comparison", "compare"]


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
        return [Probe("concept", f"a red {c}", c), Probe("concept", f"a blue {c} on grass", c),
                Probe("paraphrase", f"a yellow {shapes[c][0]}", c), Probe("paraphrase", f"an image showing a purple {c}", c),
                Probe("other", f"a red {other}", other), Probe("other", character, character)]
    if kind == "identity":
        return [Probe("concept", c, c), Probe("concept", f"{c} on sand", c),
                Probe("paraphrase", f"an image showing {c} on water", c),
                Probe("other", character, character), Probe("other", "a green star", "star")]
    if kind == "style":
        other = next(s for s in styles if s != c)
        return [Probe("concept", f"a red circle in the style of {c}", c), Probe("concept", f"{character} in the style of {c}", c),
                Probe("paraphrase", f"a blue star in the style of {c} on grass", c),
                Probe("other", f"a red circle in the style of {other}", other), Probe("other", "a green heart", "heart")]
    if kind == "scene":
        second = identities[1]
        return [Probe("concept", "a red circle at night", "night"), Probe("concept", f"{character} on grass at night", "night"),
                Probe("paraphrase", "a blue star after dark", "night"), Probe("paraphrase", "a green ring under the moon", "night"),
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

    def labels(self) -> list[str]:
        """One line per probe, e.g. 'circle: 0.97 -> 0.03'."""
        if self.scores is None:
            return [p.prompt for p in self.probes]
        return [f"{p.prompt}   [{p.subject}: {b:.2f} → {a:.2f}]" if p.subject else p.prompt
                for p, (b, a) in zip(self.probes, self.scores)]

    def grid(self) -> Image.Image:
        """Rows of probes; the seeds before on the left, after on the right."""
        n, k = len(self.probes), len(self.seeds)
        fig = Figure(figsize=(1.3 * 2 * k + 0.4, 1.55 * n + 0.4), dpi=100)
        axes = fig.subplots(n, 2 * k, squeeze=False)
        for row, (label, before, after) in enumerate(zip(self.labels(), self.before, self.after)):
            for col, image in enumerate(before + after):
                ax = axes[row, col]
                ax.imshow(image)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(self.titles[col >= k] + f", seed {self.seeds[col % k]}", fontsize=7)
            axes[row, 0].set_ylabel(self.probes[row].group, fontsize=7)
            axes[row, 0].text(0, -0.08, label, transform=axes[row, 0].transAxes, fontsize=7, va="top")
        fig.tight_layout(h_pad=1.2)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def judge_for(pipe):
    """The shapes world's judge (loaded once with its world), or None for other models."""
    world = world_of(pipe)
    return world.judge if world else None


def compare(studio, concept: str, patches: list[str], seeds: list[int] = (0, 1, 2), steps: int = 25,
            on_image=None, learned=None) -> Comparison:
    """Generates every probe of `concept` without and with `patches` on the same seeds.

    With `learned` (an attack's embeddings, `Studio.attack`) both sides carry the patches and
    the right side reads the concept's words through the learned embeddings.
    """
    probes = probe_prompts(studio.pipe, concept)
    before, after = [], []
    for i, probe in enumerate(probes):
        settings = GenerationSettings(probe.prompt, steps=steps)
        before.append(studio.generate(settings, list(seeds), patches=patches if learned else ()))
        after.append(studio.generate(settings, list(seeds), patches=patches, learned=learned))
        if on_image:
            on_image(i + 1, len(probes))
    judge = judge_for(studio.pipe)
    scores = None
    if judge is not None:
        scores = []
        for probe, b, a in zip(probes, before, after):
            if probe.subject is None:
                scores.append((float("nan"), float("nan")))
                continue
            scores.append(tuple(float(np.mean([v.prob(probe.subject) for v in judge(images)])) for images in (b, a)))
    titles = ("erased", "attacked") if learned else ("before", "after")
    return Comparison(probes, list(seeds), before, after, scores, titles)
