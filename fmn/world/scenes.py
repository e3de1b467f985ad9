"""The shapes world: what exists in it and how captions describe it.

Everything the embedded model knows is declared here once. `sample_scene` draws a
random scene, `caption` words it with a template, and `describe_world` writes the
whole vocabulary (with the held-out templates and combinations) to ``world.json``
so that tools can read what the model knows without importing this module.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field

__all__ = [
    "SHAPES", "COLOURS", "STYLES", "IDENTITIES", "BACKGROUNDS", "NIGHT_WORDINGS",
    "TRAIN_TEMPLATES", "HELDOUT_TEMPLATES", "HELDOUT_COLOUR_SHAPES", "HELDOUT_IDENTITY_STYLES",
    "Thing", "Scene", "sample_scene", "caption", "describe_world",
]

# shape -> synonyms; the first word is the shape's name.
SHAPES = {
    "circle": ["disc"],
    "square": ["block"],
    "triangle": ["wedge"],
    "star": ["pentagram"],
    "heart": ["love heart"],
    "ring": ["hoop"],
}
# colour -> RGB
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 50, 200),
    "orange": (250, 140, 20),
}
# invented artists -> how their style renders (see render.py)
STYLES = {
    "Vellor": "thick black outlines",
    "Quimby": "halftone dots",
    "Zaranth": "neon glow",
    "Brusk": "brush-stroke stripes",
}
# invented characters: fixed figures that only their name evokes
IDENTITIES = {
    "Mimo": "a yellow smiling face",
    "Zubrik": "a grey robot head with red eyes and an antenna",
    "Lumina": "a pink ghost with two eyes",
    "Tobble": "a navy penguin with a white belly and an orange beak",
}
# background -> the words that place a scene on it ("plain" has none)
BACKGROUNDS = {"plain": "", "grass": "on grass", "sand": "on sand", "water": "on water"}
# the scene concept that many wordings evoke (the analogue of nudity for ESD-u)
NIGHT_WORDINGS = ["at night", "after dark", "under the moon", "at midnight", "in the dark"]

# Slots: {subject} "a red circle" / "Mimo and a blue star"; {where} " on grass";
# {style} " in the style of Vellor"; {time} " at night". Slots may be empty.
TRAIN_TEMPLATES = [
    "{subject}{where}{style}{time}",
    "a picture of {subject}{where}{style}{time}",
    "a photo of {subject}{where}{time}{style}",
    "an image of {subject}{where}{style}{time}",
    "{subject}{time}{where}{style}",
    "a painting of {subject}{where}{time}{style}",
    "there is {subject}{where}{style}{time}",
]
HELDOUT_TEMPLATES = [
    "{subject}{style}{where}{time}",
    "a picture of {subject}{time}{style}{where}",
    "an image showing {subject}{where}{style}{time}",
]
# attribute combinations never shown in training, used to test generalisation
HELDOUT_COLOUR_SHAPES = [
    ("purple", "star"), ("orange", "ring"), ("green", "triangle"),
    ("blue", "heart"), ("red", "square"), ("yellow", "circle"),
]
HELDOUT_IDENTITY_STYLES = [("Mimo", "Quimby"), ("Zubrik", "Zaranth"), ("Tobble", "Vellor")]


@dataclass
class Thing:
    """One object in a scene: a coloured shape or an identity, at a place and size (pixels of a 64x64 image)."""

    kind: str  # a SHAPES key or an IDENTITIES key
    colour: str | None  # a COLOURS key for shapes; None for identities
    x: float
    y: float
    size: float

    @property
    def is_identity(self) -> bool:
        return self.kind in IDENTITIES


@dataclass
class Scene:
    things: list[Thing] = field(default_factory=list)
    style: str = "plain"  # "plain" or a STYLES key
    background: str = "plain"  # a BACKGROUNDS key
    night: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls([Thing(**t) for t in d["things"]], d["style"], d["background"], d["night"])


def _is_heldout(scene: Scene) -> bool:
    pairs = {(t.colour, t.kind) for t in scene.things}
    ids = {(t.kind, scene.style) for t in scene.things if t.is_identity}
    return bool(pairs & set(HELDOUT_COLOUR_SHAPES) or ids & set(HELDOUT_IDENTITY_STYLES))


def _place(rng: random.Random, n: int) -> list[tuple[float, float, float]]:
    """Positions and sizes for n objects that do not overlap much."""
    while True:
        spots = []
        for _ in range(n):
            size = rng.uniform(20, 28) if n == 1 else rng.uniform(17, 23)
            half = size / 2 + 2
            spots.append((rng.uniform(half, 64 - half), rng.uniform(half, 64 - half), size))
        if n == 1 or ((spots[0][0] - spots[1][0]) ** 2 + (spots[0][1] - spots[1][1]) ** 2) ** 0.5 > 24:
            return spots


def sample_scene(rng: random.Random, split: str = "train", two_objects: float = 0.3, **fixed) -> Scene:
    """A random scene; ``split`` "train" avoids held-out combinations, "heldout" requires one;
    ``two_objects`` is the share of scenes with two objects (the recipe may train on more of them).

    Keyword arguments fix parts of the scene: ``kinds=["circle"]``, ``colours=["red"]``,
    ``style=...``, ``background=...``, ``night=...``.
    """
    assert split in ("train", "heldout", "any")
    for _ in range(1000):
        kinds = fixed.get("kinds") or [
            rng.choice(list(IDENTITIES)) if rng.random() < 0.3 else rng.choice(list(SHAPES))
            for _ in range(2 if rng.random() >= 1 - two_objects else 1)
        ]
        colours = fixed.get("colours") or [None if k in IDENTITIES else rng.choice(list(COLOURS)) for k in kinds]
        things = [Thing(k, c, x, y, s) for k, c, (x, y, s) in zip(kinds, colours, _place(rng, len(kinds)))]
        scene = Scene(
            things=things,
            style=fixed.get("style") or ("plain" if rng.random() < 0.4 else rng.choice(list(STYLES))),
            background=fixed.get("background") or rng.choice(list(BACKGROUNDS)),
            night=fixed["night"] if "night" in fixed else rng.random() < 0.25,
        )
        if split == "any" or _is_heldout(scene) == (split == "heldout"):
            return scene
    raise ValueError(f"no {split} scene matches {fixed}")


def _name(thing: Thing, rng: random.Random, synonyms: bool) -> str:
    if thing.is_identity:
        return thing.kind
    word = rng.choice(SHAPES[thing.kind]) if synonyms and rng.random() < 0.25 else thing.kind
    article = "an" if thing.colour[0] in "aeiou" else "a"
    return f"{article} {thing.colour} {word}"


def caption(scene: Scene, template: str, rng: random.Random, synonyms: bool = True) -> str:
    """Words a scene with a template; synonyms of shape names and night wordings vary at random."""
    return template.format(
        subject=" and ".join(_name(t, rng, synonyms) for t in scene.things),
        where=f" {BACKGROUNDS[scene.background]}" if scene.background != "plain" else "",
        style=f" in the style of {scene.style}" if scene.style != "plain" else "",
        time=f" {rng.choice(NIGHT_WORDINGS)}" if scene.night else "",
    )


def describe_world() -> dict:
    """Everything the embedded model knows, as written to world.json."""
    return {
        "image_size": 64,
        "shapes": SHAPES,
        "colours": list(COLOURS),
        "styles": STYLES,
        "identities": IDENTITIES,
        "backgrounds": list(BACKGROUNDS),
        "night_wordings": NIGHT_WORDINGS,
        "train_templates": TRAIN_TEMPLATES,
        "heldout_templates": HELDOUT_TEMPLATES,
        "heldout_colour_shapes": HELDOUT_COLOUR_SHAPES,
        "heldout_identity_styles": HELDOUT_IDENTITY_STYLES,
    }


if __name__ == "__main__":  # pragma: no cover - a quick look at the captions
    r = random.Random(0)
    for _ in range(10):
        print(caption(sample_scene(r), r.choice(TRAIN_TEMPLATES), r))
    print(json.dumps(describe_world())[:200])
