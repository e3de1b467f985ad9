"""Many concepts, one patch each, on one or many workers:

    python -m fmn erase --concept circle --concept Mimo --concept night --separate --out patches/ [--workers 2]

writes patches/circle.safetensors, patches/Mimo.safetensors, ... Each concept is a job of `fmn.sweep`
(here, or as Ray tasks); a patch already in the folder for the same method and settings is kept, so that
a list interrupted half way runs only the concepts still missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from functools import partial
from pathlib import Path

from ..models import EMBEDDED, load_pipeline
from ..patch import Patch, PatchError, detach
from ..sweep import Job, sweep
from ..world.world import World
from . import _check_known, erase, make_method, split_concepts

__all__ = ["erase_separately", "file_name"]

HELD = ("preserve", "keep_prompts", "in_context")  # found on the model by each worker's erasure (keep.py)


def file_name(concept: str) -> str:
    """The patch's file name: the concept's letters and digits, nothing that leaves the folder."""
    stem = re.sub(r"[^\w.-]+", "-", concept, flags=re.ASCII).strip("-.")
    return f"{stem or 'concept'}.safetensors"


class PatchFolder:
    """`fmn.sweep`'s store for patches: one file per concept, kept if its method and every setting are the job's."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def load(self, job: Job) -> Patch | None:
        path = self.folder / job.key
        if not path.is_file():
            return None
        try:
            patch = Patch.load(path)
        except PatchError:
            return None  # damaged (an interrupted copy): made again
        settings, config = json.loads(json.dumps(patch.settings)), job.spec["config"]
        same = (patch.method == job.spec["method"] and patch.concepts[:1] == [job.spec["concept"]]
                and {k: settings.get(k) for k in config} == config)
        return patch if same else None

    def save(self, job: Job, patch: Patch) -> None:
        patch.save(self.folder / job.key)


def _config(method: str, concept: str, replace_with: str | None, overrides: dict) -> dict:
    """Every setting the concept's erasure will run with (defaults included, as its patch records them) but what
    it finds on the model to hold (`HELD`, unless given): a patch kept from an earlier run counts only if it was
    made with all the same."""
    config = asdict(make_method(method, [concept], None, replace_with, **overrides).config)
    return json.loads(json.dumps({k: v for k, v in config.items() if k not in HELD or k in overrides}))


def _erase_one(pipe, spec: dict) -> Patch:
    """One concept's patch, its tensors on the CPU, the adapter gone from the worker's model."""
    name = f"separate-{spec['concept']}"
    patch = erase(pipe, [spec["concept"]], spec["method"], None, spec["replace_with"], name=name, **spec["overrides"])
    detach(pipe, name)
    patch.tensors = {k: v.detach().cpu() for k, v in patch.tensors.items()}
    return patch


def erase_separately(concepts: list[str], method: str, out: str | Path, model: str | None = None,
                     config: str | None = None, device: str | None = None, replace_with: str | None = None,
                     workers: int = 1, address: str | None = None, log=print, **overrides) -> list[Path]:
    """Erases each concept into its own patch in folder `out`; returns the patch files in the concepts' order.
    Bad input (an empty or duplicate concept, a bad setting, a word the embedded model never saw) is refused
    before any worker starts."""
    concepts = split_concepts(concepts)
    overrides["keep"] = split_concepts(overrides.get("keep") or [])
    instance = make_method(method, concepts, replace_with=replace_with, **overrides)  # empty, duplicate, bad settings
    world = World.load(model or EMBEDDED) if model is None or Path(model).is_dir() else None
    if world and not instance.learns_new_words:
        _check_known(world, [*concepts, replace_with or ""])
    names = [file_name(c) for c in concepts]
    clash = {n for n in names if names.count(n) > 1}
    if clash:
        raise ValueError(f"Two concepts would share the file {sorted(clash)[0]}: name them apart.")
    out = Path(out)
    if out.suffix == ".safetensors":
        raise ValueError(f"--out {out}: with --separate, --out is a folder (one patch per concept).")
    jobs = [Job(name, {"concept": c, "method": method, "replace_with": replace_with, "overrides": overrides,
                       "config": _config(method, c, replace_with, overrides)})
            for c, name in zip(concepts, names)]
    sweep(jobs, partial(load_pipeline, model, device=device, config=config), _erase_one, PatchFolder(out), workers,
          address, log, describe=lambda patch: f"{patch.method} patch, {len(patch.tensors)} tensors")
    return [out / name for name in names]

