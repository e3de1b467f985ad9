"""Concept erasure: one loop (`loop.py`), one module per method, one patch format (`fmn.patch`).

    patch = erase(pipe, ["circle"], "esd-x", steps=200)   # attached to pipe, inactive
    activate(pipe, [patch.name])                          # generate without circles
"""

from __future__ import annotations

from dataclasses import asdict, fields, replace

from diffusers import StableDiffusionPipeline

from ..generate import unknown_words
from ..patch import Patch, attach, fingerprint
from .common import world_preserve
from .esd import ESD, ESDConfig
from .forget_me_not import FMNConfig, ForgetMeNot
from .loop import ErasureCancelled, ErasureError, Progress, train_patch
from .text_encoder import TextEncoderConfig, TextEncoderUnlearning
from .uce import UCE, UCEConfig

__all__ = ["erase", "make_method", "METHODS", "ErasureError", "ErasureCancelled", "Progress"]

METHODS = {
    "fmn": lambda concepts, images, **kw: ForgetMeNot(concepts, FMNConfig(**kw), images),
    "esd-x": lambda concepts, images, **kw: ESD(concepts, ESDConfig(variant="x", **kw)),
    "esd-u": lambda concepts, images, **kw: ESD(concepts, ESDConfig(variant="u", **kw)),
    "text-encoder": lambda concepts, images, **kw: TextEncoderUnlearning(concepts, TextEncoderConfig(**kw), images),
    "uce": lambda concepts, images, **kw: UCE(concepts, UCEConfig(**kw)),
}
USES_IMAGES = {"fmn", "text-encoder"}
MAX_CONCEPT_CHARS = 100
MAX_CONCEPTS = 8
MAX_STEPS = 5000


def _check(concepts: list[str], method: str, overrides: dict) -> list[str]:
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    concepts = [c.strip() for c in concepts if c and c.strip()]
    if not concepts:
        raise ValueError("The concept is empty: name what to erase, e.g. 'circle' or 'Mimo'.")
    if len(concepts) > MAX_CONCEPTS:
        raise ValueError(f"{len(concepts)} concepts at once; the limit is {MAX_CONCEPTS}.")
    for c in concepts:
        if len(c) > MAX_CONCEPT_CHARS:
            raise ValueError(f"A concept of {len(c)} characters; the limit is {MAX_CONCEPT_CHARS}.")
    steps = overrides.get("steps")
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"Steps {steps} is out of range: use 1 to {MAX_STEPS}.")
    lr = overrides.get("lr")
    if lr is not None and not 0 < lr < 1:
        raise ValueError(f"Learning rate {lr} is out of range: use a positive number below 1 (e.g. 1e-3).")
    return concepts


def _check_known(pipe: StableDiffusionPipeline, words: list[str]) -> None:
    """Refuses words the embedded model never saw: erasing one would train on noise and return a
    patch that removes nothing. Other models have no list of what they know, so nothing is refused."""
    unknown = sorted({w for text in words for w in unknown_words(pipe, text)})
    if unknown:
        raise ValueError(f"The model never saw {', '.join(unknown)}: it can only erase what its world has "
                         "(shapes, colours, characters, artists, backgrounds, night).")


def make_method(method: str, concepts: list[str], images=None, replace_with: str | None = None, **overrides):
    """The method object with its default settings, some overridden; raises ValueError on bad values.

    ``images``: (N, 3, H, W) in [-1, 1] of the (first) concept, for the methods that learn from
    images; ``replace_with``: a concept to steer toward instead of nothing (every method's ``guide``).
    """
    concepts = _check(concepts, method, overrides)
    if images is not None and method not in USES_IMAGES:
        raise ValueError(f"{method} learns from the model itself and takes no images; "
                         f"upload images with {' or '.join(sorted(USES_IMAGES))}.")
    if replace_with and replace_with.strip():
        if method == "text-encoder" and images is not None:
            raise ValueError("text-encoder, replacing a concept, learns from images of the replacement that it "
                             "draws itself; leave the uploads out, or erase without a replacement.")
        overrides["guide"] = replace_with.strip()
    instance = METHODS[method](concepts, images)
    known = {f.name for f in fields(instance.config)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"{method} has no setting {', '.join(sorted(unknown))}; it has {', '.join(sorted(known))}.")
    instance.config = replace(instance.config, **overrides)
    return instance


def erase(pipe: StableDiffusionPipeline, concepts: list[str], method: str = "fmn", images=None,
          replace_with: str | None = None, on_progress=None, cancelled=None, name: str | None = None,
          **overrides) -> Patch:
    """Erases the concepts; returns the patch, attached to the pipeline (inactive) as adapter `name`
    (default: the patch's name)."""
    instance = make_method(method, concepts, images, replace_with, **overrides)
    if images is None or not getattr(instance.config, "inversion_steps", 0):  # inversion learns a new word from images
        _check_known(pipe, [*instance.concepts, replace_with or ""])
    if not instance.config.preserve:
        instance.config.preserve = world_preserve(pipe, [*instance.concepts, replace_with or ""])
    name = name or f"{instance.name}:{'+'.join(instance.concepts)}"
    if not hasattr(instance, "solve"):
        return train_patch(pipe, instance, instance.concepts, name, on_progress, cancelled)
    tensors, lora = instance.solve(pipe)  # closed form: no training loop
    patch = Patch(tensors, instance.name, instance.concepts, fingerprint(pipe), lora, asdict(instance.config))
    attach(pipe, patch, name)
    if on_progress:
        on_progress(Progress(1, 1, 0.0, 0.0))
    return patch
