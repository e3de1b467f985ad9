"""One image read twice: by the judge (judge.py) and by the pixel check (pixels.py), label by label.

Both reads are written as the same labels ("circle", "blue", "background sand", "night", "style Vellor", ...),
so they can be compared. Where the pixel check decides a label and the judge reads it otherwise, the image is
uncertain: the benchmarks and `python -m fmn attack` leave it out of what they count (`judged`).
"""

from __future__ import annotations

from .judge import STYLE_CLASSES
from .looks import read_looks
from .pixels import read
from .scenes import BACKGROUNDS, COLOURS, IDENTITIES, SHAPES

__all__ = ["GROUNDS", "LOOKS", "PIXEL_LABELS", "LOOK_LABELS", "pixel_labels", "look_labels", "judge_labels", "judged",
           "shows"]

GROUNDS = {b: f"background {b}" for b in BACKGROUNDS}  # "plain" is a background and a style: the labels say which
LOOKS = {s: f"style {s}" for s in STYLE_CLASSES}
PIXEL_LABELS = [*SHAPES, *COLOURS, *GROUNDS.values(), "night"]
LOOK_LABELS = [*IDENTITIES, *LOOKS.values()]  # read by looks.py; the audit's, not `judged`'s


def pixel_labels(image) -> dict[str, bool | None]:
    """The pixel check's read as one label each: True present, False absent, None uncertain."""
    r = read(image)

    def one_of(value, names):
        return {name: None if value is None else value == name for name in names}

    grounds = {GROUNDS[b]: known for b, known in one_of(r.background, BACKGROUNDS).items()}
    return {**one_of(r.shape, SHAPES), **one_of(r.colour, COLOURS), **grounds, "night": r.night}


def look_labels(image) -> dict[str, bool | None]:
    """The pixel check's character and style as one label each (looks.py): True, False, None uncertain."""
    r = read_looks(image)
    characters = {name: None if r.character is None else r.character == name for name in IDENTITIES}
    return characters | {LOOKS[s]: None if r.style is None else r.style == s for s in STYLE_CLASSES}


def judge_labels(verdict) -> dict[str, bool]:
    """The judge's read of every label: subjects and colours present, the likeliest style and background."""
    labels = {name: verdict.has(name) for name in [*SHAPES, *COLOURS, *IDENTITIES, "night"]}
    labels |= {GROUNDS[b]: verdict.top_background == b for b in BACKGROUNDS}
    return labels | {LOOKS[s]: verdict.top_style == s for s in STYLE_CLASSES}


def judged(judge, images) -> list:
    """The judge's verdict of each image, or None where the pixel check decides a label otherwise (uncertain)."""
    return [None if _disagree(verdict, image) else verdict for verdict, image in zip(judge(images), images)]


def _disagree(verdict, image) -> bool:
    pixels, judge_read = pixel_labels(image), judge_labels(verdict)
    return any(pixels[label] is not None and pixels[label] != judge_read[label] for label in PIXEL_LABELS)


def shows(judge, label: str):
    """Per image, whether it shows `label` as a prompt asks for it (`Verdict.shows`); None where uncertain."""
    return lambda images: [None if v is None else v.shows(label) for v in judged(judge, images)]
