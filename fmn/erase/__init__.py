"""Concept erasure: one loop (`loop.py`), one module per method, one patch format (`fmn.patch`).

    patch = erase(pipe, ["circle"], "esd-x", steps=200)   # attached to pipe, inactive
    activate(pipe, [patch.name])                          # generate without circles

A new method is one module with a class that declares what it is (`method.py`) and one
import line below; `erase` finds it by name and never asks which one it is.
"""

from __future__ import annotations

from dataclasses import asdict, fields, replace

from diffusers import StableDiffusionPipeline

from ..models import is_transformer, world_of
from ..patch import Patch, adapter_name, attach, detach, fingerprint
from ..world.world import World

# each registers its methods, in this order: isort must leave the line as it is
from . import forget_me_not, esd, text_encoder, uce, text_map  # noqa: F401, I001  # isort: skip
from .keep import KeepSet, keep_set
from .loop import ErasureCancelled, ErasureError, Progress, train_patch
from .method import METHODS, ErasureMethod, closed_forms

__all__ = ["erase", "make_method", "make_patch", "split_concepts", "METHODS", "DEFAULT_METHOD", "ErasureError",
           "keep_set", "KeepSet", "ErasureCancelled", "Progress", "closed_forms", "methods_for"]

# the best overall in bench quality (benchmarks/results/README.md); the CLI's, the app's, the API's
DEFAULT_METHOD = "text-map"
MAX_CONCEPT_CHARS = 100
MAX_CONCEPTS = 20  # one patch: the embedded world has 21 concepts to name (shapes, characters, artists, colours, night)


def split_concepts(text: str | list[str]) -> list[str]:
    """The concepts named in a comma-separated text (or a list), stripped, empty ones dropped."""
    parts = text.split(",") if isinstance(text, str) else [p for item in text for p in (item or "").split(",")]
    return [p.strip() for p in parts if p.strip()]


def methods_for(pipe: StableDiffusionPipeline) -> list[str]:
    """The methods that erase this model, by name: on SD3 and FLUX only those declaring `on_transformers` (the app
    offers no other)."""
    return [name for name, cls in METHODS.items() if cls.on_transformers or not is_transformer(pipe)]


def make_method(method: str, concepts: list[str] | str, images=None, replace_with: str | None = None,
                held: KeepSet | None = None, **overrides) -> ErasureMethod:
    """The method with its settings, each given one overriding its default; raises ValueError on bad values.

    ``images``: (N, 3, H, W) in [-1, 1] of the (first) concept, for any method;
    ``replace_with``: a concept to steer toward instead of nothing (every method's ``guide``; a closed
    form then maps onto it, with no ``push`` past it unless given);
    ``held``: what the erasure holds (`keep.keep_set`, found on the model): its words become the
    method's ``preserve``, its prompts the ``keep_prompts`` and ``in_context`` of the methods that read
    whole prompts, unless given. Without it nothing in particular is held.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    cls, concepts = METHODS[method], split_concepts(concepts)
    _check_concepts(concepts)
    known = {f.name for f in fields(cls.Config)}
    if "adversarial" in overrides and "adversarial" not in known:
        trained = ", ".join(n for n, c in METHODS.items() if c.trains)
        raise ValueError(f"{method} is a closed form: adversarial mode is for the trained methods ({trained}); "
                         "rece is the robust closed form.")
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"{method} has no setting {', '.join(sorted(unknown))}; it has {', '.join(sorted(known))}.")
    guide = (replace_with or "").strip()
    if guide:
        overrides["guide"] = guide
        if "push" in known:
            overrides.setdefault("push", 0.0)  # a replacement lands on its guide, not past it
            overrides.setdefault("push_after", 0.0)
    held = held or KeepSet()
    overrides.setdefault("preserve", held.words)
    for name, value in (("keep_prompts", held.prompts), ("in_context", held.in_context)):
        if name in known:
            overrides.setdefault(name, value)
    if "prior" in known and "prior" not in overrides:  # what the words around a concept draw anyway
        overrides["prior"] = cls.default_prior(concepts)
    config = cls.Config(**overrides)
    config.check()
    return cls(concepts, config, images)


def _check_concepts(concepts: list[str]) -> None:
    """Refuses an empty list, too many concepts, one named twice or one too long."""
    if not concepts:
        raise ValueError("The concept is empty: name what to erase, e.g. 'circle' or 'Mimo'.")
    if len(concepts) > MAX_CONCEPTS:
        raise ValueError(f"{len(concepts)} concepts at once; the limit is {MAX_CONCEPTS} in one patch "
                         "(erase the rest into another patch and stack them).")
    seen = {}
    for c in concepts:
        if c.lower() in seen:
            raise ValueError(f"{c!r} is named twice ({seen[c.lower()]!r} before): name each concept once.")
        seen[c.lower()] = c
        if len(c) > MAX_CONCEPT_CHARS:
            raise ValueError(f"A concept of {len(c)} characters; the limit is {MAX_CONCEPT_CHARS}.")


def _check_known(world: World | None, words: list[str]) -> None:
    """Refuses words the embedded model never saw: erasing one would train on noise and return a
    patch that removes nothing. Other models have no list of what they know, so nothing is refused."""
    unknown = sorted({w for text in words for w in world.unknown_words(text)}) if world else []
    if unknown:
        raise ValueError(f"The model never saw {', '.join(unknown)}: it can only erase what its world has "
                         "(shapes, colours, characters, artists, backgrounds, night).")


def solve_patch(pipe: StableDiffusionPipeline, method: ErasureMethod, name: str, on_progress=None,
                cancelled=None) -> Patch:
    """A closed-form method's patch, attached like a trained one (one step, nothing to cancel)."""
    tensors, lora = method.solve(pipe)
    patch = Patch(tensors, method.name, method.concepts, fingerprint(pipe), lora, asdict(method.config))
    attach(pipe, patch, name)
    if on_progress:
        on_progress(Progress(1, 1, 0.0, 0.0))
    return patch


def make_patch(pipe: StableDiffusionPipeline, method: ErasureMethod, name: str, on_progress=None,
               cancelled=None) -> Patch:
    """The method's patch, attached to the pipeline (inactive) as adapter `name`: trained by the
    shared loop, or solved in closed form, as the method declares."""
    if is_transformer(pipe) and not method.on_transformers:
        raise ValueError(f"{method.name} erases UNet models (SD 1.x/2.x, SDXL); on SD3 and FLUX use "
                         f"{', '.join(methods_for(pipe))}.")
    if is_transformer(pipe) and getattr(method.config, "keep_attention", 0):
        raise ValueError(f"keep_attention {method.config.keep_attention} holds the kept words' cross-attention maps, "
                         "which SD3 and FLUX do not have: use 0 there.")
    run = train_patch if method.trains else solve_patch
    detach(pipe, name)  # a patch attached under the same name is replaced, not trained further
    patch = run(pipe, method, name, on_progress, cancelled)
    side = getattr(method.config, "unet_edit", "")  # text-map's closed form beside (text_map.py)
    return _stacked(pipe, patch, _side_edit(method, side), name) if side else patch


def _side_edit(method: ErasureMethod, side: str) -> ErasureMethod:
    """The closed form `side` on the method's concepts: it holds what the method holds, as hard (`keep_weight`),
    sends the concept's rows where the method sends them, and keeps those rows as they are (what the method's own
    edit gives)."""
    cfg = method.config
    held = KeepSet(cfg.preserve, cfg.keep_prompts, cfg.in_context)
    return make_method(side, method.concepts, replace_with=cfg.guide or None, held=held, seed=cfg.seed,
                       push=cfg.push, push_after=cfg.push_after, prior=cfg.prior, keep_weight=cfg.keep_weight,
                       keep_targets=True)


def _stacked(pipe: StableDiffusionPipeline, patch: Patch, side: ErasureMethod, name: str) -> Patch:
    """The patch with a closed form's edit of another component added, one file and one adapter: dropping either
    side (an encoder swap) leaves the other's erasure."""
    tensors, lora = side.solve(pipe)  # on the unedited model: the patch is attached, inactive
    if set(lora) & set(patch.lora):
        raise ValueError(f"{side.name} edits {', '.join(lora)}, which {patch.method} changes already.")
    stacked = replace(patch, tensors=patch.tensors | tensors, lora=patch.lora | lora)
    detach(pipe, name)
    attach(pipe, stacked, name)
    return stacked


def erase(pipe: StableDiffusionPipeline, concepts: list[str] | str, method: str = DEFAULT_METHOD, images=None,
          replace_with: str | None = None, on_progress=None, cancelled=None, name: str | None = None,
          **overrides) -> Patch:
    """Erases the concepts, holding the model's own words nearest each one and those of the `keep` setting
    (a list, or one text with commas; `keep.py`); returns the patch, attached to the pipeline (inactive)
    as adapter `name` (default: the patch's name)."""
    names = split_concepts(concepts)
    _check_concepts(names)
    overrides["keep"] = split_concepts(overrides.get("keep") or [])
    held = keep_set(pipe, names, overrides["keep"], (replace_with or "").strip())
    instance = make_method(method, names, images, replace_with, held, **overrides)
    world = world_of(pipe)
    if not instance.learns_new_words:
        _check_known(world, [*instance.concepts, instance.config.guide])
    return make_patch(pipe, instance, name or adapter_name(f"{instance.name}:{'+'.join(instance.concepts)}"),
                      on_progress, cancelled)
