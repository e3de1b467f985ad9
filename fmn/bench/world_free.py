"""Erasing circle from a model without world.json, as every user's checkpoint is, over several erasure seeds:
    python -m fmn bench world-free [--methods text-map] [--seeds 0,1,2] [--set KEY=VALUE] [--out DIR]

The methods find what to hold on the model itself (`erase.keep_set`), so on a copy of the embedded model without
its world.json they run as on a user's SD 1.5. Each method erases "circle" once per erasure seed (its training seed,
`seed`) with no list from the user; the world's judge, read from the embedded model beside the copy, reads 8 images
of each prompt in `PROMPTS` (seeds 0-7), unedited and erased, with the pixel check beside it, as every benchmark
reads: an image where the two disagree is uncertain and left out (`reading.judged`). Issue #37's check, on the
certain images: circle left on at most 1 in 8, and every label of every kept prompt on a share at most 2 in 8 below
the unedited model's. A single seed is a draw: the table gives each one. Writes world-free.md and world-free.json into
--out (default: print only).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import torch

from ..erase import DEFAULT_METHOD, erase
from ..generate import generate_many
from ..models import EMBEDDED, load_pipeline, world_of
from ..patch import active, detach
from ..world.reading import judged
from .erase_speed import mark, named_methods
from .measure import device_name
from .quality import add_set_argument, given_settings, method_settings

__all__ = ["add_arguments", "run", "worldless_copy", "counts", "erased_counts", "misses", "markdown", "PROMPTS"]

CONCEPT = "circle"
# each prompt and the labels the judge reads on it: the concept's, then what erasing it must keep
PROMPTS = {"a red circle": ("circle",), "a blue square": ("square", "blue"), "a green square": ("square", "green"),
           "Mimo on grass": ("Mimo",), "a yellow star on sand": ("star", "yellow"),
           "a purple heart": ("heart", "purple")}
IMAGES = 8  # image seeds 0-7 a prompt
STEPS = 25
LEFT = 1  # the concept on a share of at most LEFT in IMAGES of the certain images after the erasure
KEPT = 2  # each kept label's share at most KEPT in IMAGES below the unedited model's


def worldless_copy(folder: Path):
    """The embedded model copied into `folder` without its world.json, loaded on the CPU."""
    shutil.copytree(EMBEDDED, folder, ignore=shutil.ignore_patterns("world.json"))
    return load_pipeline(folder, device="cpu")


def counts(pipe, judge) -> dict[tuple[str, str], tuple[int, int]]:
    """{(prompt, label): (images with the label, certain images)} of each prompt's 8, under the pipeline's active
    patches."""
    prompts = list(PROMPTS)
    texts, seeds = [p for p in prompts for _ in range(IMAGES)], list(range(IMAGES)) * len(prompts)
    verdicts = judged(judge, generate_many(pipe, texts, seeds, STEPS))
    out = {}
    for i, prompt in enumerate(prompts):
        certain = [v for v in verdicts[i * IMAGES:(i + 1) * IMAGES] if v is not None]
        out |= {(prompt, label): (sum(v.has(label) for v in certain), len(certain)) for label in PROMPTS[prompt]}
    return out


def erased_counts(pipe, judge, method: str = DEFAULT_METHOD, **settings) -> dict[tuple[str, str], tuple[int, int]]:
    """`counts` under `method`'s erasure of circle (at its defaults, or `settings`), the patch removed after."""
    erase(pipe, CONCEPT, method, name="world-free", **settings)
    try:
        with active(pipe, ["world-free"]):
            return counts(pipe, judge)
    finally:
        detach(pipe, "world-free")


def misses(unedited: dict, after: dict) -> list[tuple[str, str]]:
    """The (prompt, label) cells that miss the check, on the certain images: the concept left on a share above
    LEFT in 8, a kept label on a share more than KEPT in 8 below the unedited model's; or no certain image."""
    def missed(key: tuple[str, str], found: int, certain: int) -> bool:
        if not certain or not unedited[key][1]:
            return True
        if key[1] == CONCEPT:
            return Fraction(found, certain) > Fraction(LEFT, IMAGES)
        return Fraction(found, certain) < Fraction(*unedited[key]) - Fraction(KEPT, IMAGES)

    return [key for key, (found, certain) in after.items() if missed(key, found, certain)]


def add_arguments(parser) -> None:
    parser.add_argument("--methods", default=DEFAULT_METHOD, help=f"comma separated (default: {DEFAULT_METHOD})")
    parser.add_argument("--seeds", default="0,1,2", help="erasure seeds, comma separated (default: 0,1,2)")
    parser.add_argument("--out", default=None, help="write world-free.md and .json into this folder")
    add_set_argument(parser)


def markdown(unedited: dict, rows: list[dict], settings: dict) -> str:
    """The table: the unedited row, then one row per method and erasure seed, each missed cell a ✗."""
    keys, given = list(unedited), settings["set"]
    set_text = f", set {given}" if given else ""
    lines = [f"Device: {settings['device']}. Judge {settings['judge']}. "
             f"Erasing {CONCEPT!r} on a copy of the embedded model without world.json{set_text}: of {IMAGES} images "
             f"a prompt (seeds 0-{IMAGES - 1}, {STEPS} steps), those with each label / those certain (the judge and "
             f"the pixel check agree). The check, on the certain images: {CONCEPT} on at most {LEFT} in {IMAGES}, "
             f"each kept label's share at most {KEPT} in {IMAGES} below the unedited model's. "
             "`python -m fmn bench world-free`.", "",
             "| method | erasure seed | " + " | ".join(f"{p}: {label}" for p, label in keys) + " | check |",
             "|---|---|" + "---|" * len(keys) + "---|",
             "| unedited | — | " + " | ".join("{}/{}".format(*unedited[k]) for k in keys) + " | — |"]
    for row in rows:
        missed = {tuple(k) for k in row["misses"]}
        cells = ["{}/{}".format(*row["counts"][i]) + (" ✗" if k in missed else "") for i, k in enumerate(keys)]
        lines.append(f"| {row['method']} | {row['seed']} | " + " | ".join(cells) + f" | {mark(not missed)} |")
    met = sum(not row["misses"] for row in rows)
    lines += ["", f"Met on {met} of {len(rows)} erasures."]
    return "\n".join(lines) + "\n"


def _seeds(text: str) -> list[int]:
    seeds = [s.strip() for s in text.split(",") if s.strip()]
    if not seeds or not all(s.isdigit() for s in seeds):
        raise ValueError(f"--seeds {text}: write erasure seeds as whole numbers, e.g. 0,1,2.")
    return [int(s) for s in seeds]


def run(args) -> str:
    methods, seeds = named_methods(args.methods), _seeds(args.seeds)
    given = given_settings(args.set, methods)
    judge = world_of(load_pipeline(device="cpu")).judge
    settings = {"concept": CONCEPT, "images": IMAGES, "steps": STEPS, "set": given, "seeds": seeds,
                "device": device_name(torch.device("cpu")), "judge": judge.fingerprint}
    with tempfile.TemporaryDirectory() as tmp:
        pipe = worldless_copy(Path(tmp) / "fmn-shapes")
        unedited, rows = counts(pipe, judge), []
        for method in methods:
            for seed in seeds:
                erasure = method_settings(method, None, False, given) | {"seed": seed}
                after = erased_counts(pipe, judge, method, **erasure)
                rows.append({"method": method, "seed": seed, "counts": list(after.values()),
                             "misses": misses(unedited, after)})
                print(f"{method} seed {seed}: {after}", flush=True)
    table = markdown(unedited, rows, settings)
    if args.out:
        records = {"settings": settings, "labels": [list(k) for k in unedited], "unedited": list(unedited.values()),
                   "rows": rows}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "world-free.md").write_text(table)
        (out / "world-free.json").write_text(json.dumps(records, indent=1))
    print(table, end="", flush=True)
    return table
