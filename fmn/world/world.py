"""What a shapes-world model knows, read once from its world.json when the model loads.

The runtime's single view of the world: its vocabulary (to refuse words the model never
saw), the kind of each concept (to pick probe prompts) and the judge that reads its images.
It serves the judge and the benchmark only: an erasure finds what to keep on the model
itself (`fmn.erase.keep`), as on a model without one. Models without a world.json have no `World`.
"""

from __future__ import annotations

import json
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
                   data["backgrounds"], data["night_wordings"], data["train_templates"],
                   data.get("heldout_templates", []))

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

    @cached_property
    def judge(self):
        """The judge that reads this world's images (loaded on first use), or None if none ships beside it."""
        from .judge import Judge

        folder = self.folder.parent / f"{self.folder.name}-judge"
        return Judge.load(folder) if folder.is_dir() else None
