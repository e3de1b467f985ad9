"""What a shapes-world model knows, read once from its world.json when the model loads.

The runtime's single view of the world: its vocabulary (to refuse words the model never
saw), the kind of each concept (to pick probe prompts), the concepts to keep while one is
erased, and the judge that reads its images. Models without a world.json have no `World`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

__all__ = ["World"]

# Words of the training captions that are neither vocabulary nor template ("a red circle and Mimo in the style of ...")
GLUE = "an and in the style of on"


@dataclass
class World:
    folder: Path  # the model's folder; its judge lives beside it, in "<folder>-judge"
    shapes: dict[str, list[str]]  # shape -> synonyms
    colours: list[str]
    styles: list[str]  # artists
    identities: list[str]  # characters
    backgrounds: list[str]
    night_wordings: list[str]
    train_templates: list[str]
    heldout_templates: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, folder: str | Path) -> "World | None":
        """The world of the model in `folder`, or None if it has no world.json."""
        path = Path(folder) / "world.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(Path(folder), data["shapes"], data["colours"], list(data["styles"]), list(data["identities"]),
                   data["backgrounds"], data["night_wordings"], data["train_templates"], data.get("heldout_templates", []))

    @cached_property
    def known_words(self) -> frozenset[str]:
        """Every lower-case word the training captions used."""
        texts = [*self.train_templates, *self.night_wordings, *self.colours, *self.backgrounds, *self.styles,
                 *self.identities, *self.shapes, *(s for synonyms in self.shapes.values() for s in synonyms), GLUE]
        return frozenset(w for text in texts for w in re.findall(r"[a-z]+", text.lower()))

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` the model never saw in training, in order."""
        return [w for w in re.findall(r"[^\W\d_]+", text.lower()) if w not in self.known_words]

    def kind_of(self, concept: str) -> str | None:
        """"object", "identity", "style" or "scene" (night in any wording); None for anything else."""
        c = concept.strip()
        if c.lower() in self.shapes:
            return "object"
        if c in self.identities:
            return "identity"
        if c in self.styles:
            return "style"
        if c.lower() in ("night", *self.night_wordings):
            return "scene"
        return None

    def wordings(self, concept: str) -> list[str]:
        """Every wording of a global concept, so that it is erased as one: "night" (or any of its
        wordings) gives "night" and each night wording; any other concept is its own only wording."""
        if self.kind_of(concept) == "scene":
            return ["night", *self.night_wordings]
        return [concept]

    def preserve_for(self, erased: list[str]) -> list[str]:
        """The concepts to keep while `erased` goes: every other shape, character and artist."""
        gone = {c.strip().lower() for c in erased}
        return [n for n in (*self.shapes, *self.identities, *self.styles) if n.lower() not in gone]

    def captions(self, n: int, erased: list[str] = (), showing: str | None = None, seed: int = 0) -> list[str]:
        """n captions of random scenes, worded with the training templates, that show none of `erased`
        and, where given, each show `showing` (a shape, character, artist, or night in any wording): the
        prompts a closed-form edit keeps (`keep_prompts`) and erases the concept in (`in_context`)."""
        gone = {c.strip().lower() for c in erased}
        kind = self.kind_of(showing) if showing else None
        rng = random.Random(f"{seed}-{showing}-{sorted(gone)}")
        things = [f"{colour} {shape}" for shape in self.shapes for colour in self.colours] + list(self.identities)
        things = [t for t in things if not gone & set(t.lower().split())]
        styles = [s for s in self.styles if s.lower() not in gone]
        backgrounds = [b for b in self.backgrounds if b != "plain"]
        night = not gone & {"night", *self.night_wordings}
        prompts = []
        for _ in range(n):
            subject = rng.sample(things, rng.choice([1, 1, 2]))
            if kind == "object":
                subject[0] = f"{rng.choice(self.colours)} {showing}"
            elif kind == "identity":
                subject[0] = showing
            style = rng.choice(styles) if styles and rng.random() < 0.6 else None
            time = rng.choice(self.night_wordings) if (night and rng.random() < 0.25) or kind == "scene" else None
            prompts.append(rng.choice(self.train_templates).format(
                subject=" and ".join(t if t in self.identities else f"{'an' if t[0] in 'aeiou' else 'a'} {t}" for t in subject),
                where=f" on {rng.choice(backgrounds)}" if rng.random() < 0.75 else "",
                style=f" in the style of {showing if kind == 'style' else style}" if kind == "style" or style else "",
                time=f" {time}" if time else ""))
        return prompts

    def keep_prompts(self, erased: list[str], n: int = 40) -> list[str]:
        """What an edit must leave as it is, each word in the context that shapes its embedding."""
        return self.captions(n, erased)

    def in_context(self, concept: str, n: int = 10, without: list[str] = ()) -> list[str]:
        """Prompts that show the concept among other things, none of `without` (the concepts erased with it)
        but the concept itself; none for a concept of no known kind."""
        return self.captions(n, erased=without, showing=concept) if self.kind_of(concept) else []

    @cached_property
    def judge(self):
        """The judge that reads this world's images (loaded on first use), or None if none ships beside it."""
        from .judge import Judge

        folder = self.folder.parent / f"{self.folder.name}-judge"
        return Judge.load(folder) if folder.is_dir() else None
