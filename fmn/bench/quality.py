"""Erasure quality on the embedded model, judged:
    python -m fmn bench quality [--split tune|report] [--quick] [--mass] [--from-images [N]]

For every method and concept of the split (`fmn.bench.protocol`: the report split, the default, measures every
concept of the world on templates no training template produces; the tune split is where settings are chosen),
20 prompts a set (one image is 5 points), the judge decides:
- UA, unlearning accuracy: share of the concept's prompts where it is no longer found (an object
  without its colour on one prompt in four, as a user first types it: "a heart");
- IRA, in-kind retain accuracy: prompts of other concepts of the same kind kept *whole*
  (for "night", the only scene concept: the backgrounds): every object with its colour,
  the background, the style and the time of day the prompt asks for, all but the erased
  concept itself; IRA lost: points below the unedited model on the same prompts and seeds;
- CRA, cross-kind retain accuracy, and CRA lost: the same for prompts of the other kinds;
- leak: the concept found through paraphrases (a shape's synonym, another night wording,
  an identity, style or colour inside a two-subject scene);
- attack: concept inversion against the erased model, once per attack seed of the split (3), from images of the
  concept the unedited model draws; each seed read on the attacker's plain prompts and on the erased prompts,
  the higher of the two (`fmn.attack.recovery`, as `python -m fmn attack` reads it); the table shows the mean
  and the range over the seeds;
- uncertain: images of the four sets where the judge and the pixel check (`fmn.world.pixels`) disagree, left
  out of the shares they would count in (`protocol.judged`); the attack's and the swap's reads leave them out too;
plus seconds to erase, peak memory (`Peak`: weights included on CUDA, growth on a CPU) and
patch size. The unedited model is measured on the same prompts and seeds, first in the
table: its row shows how often each set shows what it asks for, so every number reads against it.
Writes quality.md, quality.json, quality.png (UA against IRA and CRA) and
quality-samples.png (before and after) into --out.

`--mass` erases MASS (8 concepts of every kind, night as the one word) in one patch per
method and reports each erased concept's UA and every kept concept's presence (the other
shapes, characters, artists, the colours and backgrounds) against the unedited model:
quality-mass.md and .json.

`--from-images [N]` gives each erasure N images of the concept (8 if no N), drawn by the unedited model on prompts
and seeds the protocol does not report on (`fmn.bench.protocol.uploads`), for every method of the run: rows
'<method> from images' in quality-from-images*.md and .json. Their cells sit beside the name-only ones (the spec names
the images); the unedited cells are the same. With `--name-withheld` each erasure is given the images and the
placeholder name `PLACEHOLDER` instead of the concept's, as a user who uploads images without naming them erases: rows
'<method> from unnamed images' in quality-from-unnamed-images*.md and .json; the sets still name the concept.

Every row (and every mass run) is a cell: its own erasure, measured on its own seeds, so that the cells
run in any order, here or as Ray tasks (`--workers N`, `--address`; `fmn.sweep`), and give the same table.
Each finished cell is kept in <out>/<stem>-cells: run the same command again after an interruption and
only the missing cells run (--fresh: all of them).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..attack import AttackConfig
from ..erase import METHODS, erase, keep_set, make_method
from ..erase.images import MAX_IMAGES, concept_images
from ..erase.keep import held_settings
from ..generate import generate_many, native_size
from ..models import EMBEDDED, load_pipeline, pick_device
from ..patch import active, detach
from ..sweep import Job, Store, sweep
from ..world.world import World
from .measure import Peak, device_name
from .protocol import (
    SPLITS,
    UPLOAD_SEED,
    Probes,
    found_rates,
    mass_probes,
    presence,
    probes,
    recovery_rates,
    swap_rates,
    uploads,
)

__all__ = ["add_arguments", "run", "given_settings", "best_overall", "best_per_kind", "Row", "QUICK_CONCEPTS",
           "MASS", "TARGETS", "DEFAULT_METHODS", "run_concepts", "subset_suffix", "judge_fingerprint", "open_model",
           "method_settings", "add_set_argument", "cell_probes"]

# --quick: one concept of each kind of the tune split
QUICK_CONCEPTS = {"object": ["triangle"], "identity": ["Tobble"], "style": ["Vellor"], "scene": ["night"]}
# 2 shapes, 2 characters, 2 artists, night and one more shape: erased together by --mass, the rest of the world kept
MASS = ["triangle", "heart", "Tobble", "Lumina", "Vellor", "Brusk", "night", "star"]
# the name an erasure from unnamed images is given (--name-withheld): DreamBooth's rare identifier
PLACEHOLDER = "sks"
# IRA and CRA lost: points below the unedited model, on the same prompts and seeds
TARGETS = {"UA": (">=", 0.95), "IRA_lost": ("<=", 0.05), "CRA_lost": ("<=", 0.05), "leak": ("<=", 0.10),
           "attack": ("<=", 0.20), "swap": ("<=", 0.20)}
MASS_TARGETS = {"UA": 0.90, "kept_lost": 0.10}  # each erased concept's UA; each kept concept's points below unedited
# ESD-u is left out by default: 1.5-3 minutes an erasure on 2 CPU cores, and it erases least
# (benchmarks/results/report-methods/quality-Mimo-Vellor-blue-circle-night.md); --methods esd-u runs it
DEFAULT_METHODS = ["fmn", "esd-x", "text-encoder", "uce", "rece", "text-map"]  # esd-u: --methods
# Per kind, settings that word the concept as the papers do (FMN: "... in the style of {concept}" for styles)
KIND_SETTINGS = {"style": {"fmn": {"template": "a picture in the style of {}"}}}
# --quick checks the benchmark, not the methods: fewer training and sampling steps, so that it fits in minutes
ESD_QUICK = {"steps": 20, "sample_steps": 10, "trajectories": 2}
QUICK_SETTINGS = {"fmn": {"steps": 20, "reference_steps": 12}, "esd-x": ESD_QUICK, "esd-u": ESD_QUICK,
                  "text-encoder": {"steps": 20, "reference_steps": 12}, "text-map": {"steps": 60}}
# per set, per image, the attack's steps and images
QUICK = {"prompts": 4, "steps": 12, "attack_steps": 20, "attack_images": 4}
FULL = {"prompts": 20, "steps": 25, "attack_steps": 100, "attack_images": 8}


@dataclass
class Row:
    method: str  # "unedited" for the model before erasure
    kind: str
    concept: str
    UA: float
    IRA: float  # unedited: the share of in-kind prompts it draws whole
    CRA: float
    leak: float  # unedited: the share of paraphrases that show the concept
    attack: float | None  # the mean over the attack seeds
    IRA_lost: float | None  # points below unedited (None on the unedited row)
    CRA_lost: float | None
    seconds: float | None
    peak_mb: float | None
    patch_kb: float | None
    attack_range: tuple[float, float] | None = None  # the lowest and the highest seed's
    swap: float | None = None  # the encoder swap: the concept's presence with one side of the patch, the worse side
    uncertain: int | None = None  # images of the four sets where the judge and the pixel check disagree (left out)
    samples: list = field(default_factory=list, repr=False)  # first erased-prompt images, for the PNG


def _patch_kb(patch) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "patch.safetensors"
        patch.save(path)
        return path.stat().st_size / 1024


@contextmanager
def _erased_with(pipe, concepts: list[str], label: str, method: str, settings: dict, images=None):
    """Erases `concepts` (given `images` of the first) into an adapter of its own, removed after the block; yields
    the adapter's name, the patch, seconds and peak memory."""
    adapter = f"bench-{label}"
    peak, start = Peak(pipe.device), time.perf_counter()
    with peak():
        patch = erase(pipe, concepts, method, images, name=adapter, **settings)
    try:
        yield adapter, patch, time.perf_counter() - start, (peak.bytes / 2**20 if peak.bytes is not None else None)
    finally:
        detach(pipe, adapter)


def cell_probes(pipe, spec: dict, bare: bool = True) -> Probes:
    """A cell's prompt sets on its split, without a scene that the erasure itself holds (its keep set); `bare` as
    `protocol.probes`."""
    held = keep_set(pipe, [spec["name"]])
    return probes(spec["kind"], spec["name"], spec["prompts"], SPLITS[spec["split"]], bare,
                  held=held.prompts + held.in_context)


def concept_cell(pipe, judge, spec: dict) -> tuple[dict, list[Image.Image]]:
    """One cell of the table: the unedited model's row of a concept (label "unedited"), or one erasure's row
    (points lost are left to `assemble`, which has the unedited row). Returns the row's record and its first images."""
    kind, name, steps = spec["kind"], spec["name"], spec["steps"]
    split = SPLITS[spec["split"]]
    probe = cell_probes(pipe, spec)
    if spec["label"] == "unedited":
        base = found_rates(pipe, judge, probe, steps)
        row = Row("unedited", kind, name, 1 - base["erased"], base["in_kind"], base["cross_kind"], base["paraphrase"],
                  None, None, None, None, None, None, uncertain=base["uncertain"])
        return _record(row), base["images"][:4]
    images = _uploads(pipe, probe, spec["images"]["count"], steps) if "images" in spec else None
    erased = PLACEHOLDER if spec.get("images", {}).get("name") == "withheld" else name
    with _erased_with(pipe, [erased], spec["label"], spec["method"],
                      spec["settings"], images) as (adapter, patch, seconds, peak_mb):
        with active(pipe, [adapter]):
            after = found_rates(pipe, judge, probe, steps)
        attack = AttackConfig(**spec["attack"])
        attacks = [r.rate for r in recovery_rates(pipe, judge, probe, adapter, attack, steps, split)]
        swap = max(swap_rates(pipe, judge, probe, adapter, attack.images, steps, split).values())
    row = Row(spec["label"], kind, name, 1 - after["erased"], after["in_kind"], after["cross_kind"],
              after["paraphrase"], float(np.mean(attacks)), None, None, seconds, peak_mb, _patch_kb(patch),
              (min(attacks), max(attacks)), swap, after["uncertain"])
    return _record(row), after["images"][:4]


def _uploads(pipe, probe, n: int, steps: int):
    """The images an erasure from images is given: the unedited model's of the concept, on prompts and seeds the
    protocol does not report on (`protocol.uploads`), as uploads reach a method: (n, 3, H, W) in [-1, 1]."""
    prompts, seeds = uploads(probe, n)
    return concept_images(generate_many(pipe, [p.text for p in prompts], seeds, steps), native_size(pipe))


def assemble(cells: list[tuple[dict, list[Image.Image]]]) -> list[Row]:
    """The table's rows from its cells, in order: each erasure's points lost read against its concept's unedited row."""
    rows = [Row(**record, samples=images) for record, images in cells]
    base = {r.concept: r for r in rows if r.method == "unedited"}
    for r in rows:
        if r.method != "unedited":
            r.IRA_lost, r.CRA_lost = base[r.concept].IRA - r.IRA, base[r.concept].CRA - r.CRA
    return rows


def _record(row: Row) -> dict:
    return {f.name: getattr(row, f.name) for f in fields(Row) if f.name != "samples"}


def mass_cell(pipe, judge, spec: dict) -> tuple[dict, list]:
    """The unedited model (label "unedited"), or one run erasing every concept in one patch: each erased concept's
    presence (UA is one less it) and every kept concept's presence, with the seconds to erase and the patch's size."""
    erased, kept = mass_probes(spec["concepts"], spec["prompts"], SPLITS[spec["split"]])
    if spec["label"] == "unedited":
        return {"erased": presence(pipe, judge, erased, spec["steps"]),
                "kept": presence(pipe, judge, kept, spec["steps"])}, []
    with (_erased_with(pipe, spec["concepts"], f"mass-{spec['label']}", spec["method"],
                       spec["settings"]) as (adapter, patch, seconds, _),
          active(pipe, [adapter])):
        after = {"erased": presence(pipe, judge, erased, spec["steps"]),
                 "kept": presence(pipe, judge, kept, spec["steps"])}
    return {"method": spec["label"], "seconds": seconds, "patch_kb": _patch_kb(patch), **after}, []


def assemble_mass(concepts: list[str], base: dict, runs: list[dict]) -> dict:
    """The mass section: the unedited presence, then each run's UA, points lost per kept concept and targets met."""
    results = {"concepts": concepts, "kept": list(base["kept"]), "unedited": base, "runs": []}
    for run in runs:
        lost = {c: base["kept"][c] - run["kept"][c] for c in base["kept"]}
        run = {**run, "kept_lost": lost, "UA": {c: 1 - v for c, v in run["erased"].items()}}
        run["met"] = (min(run["UA"].values()) >= MASS_TARGETS["UA"]
                      and max(lost.values()) <= MASS_TARGETS["kept_lost"] + 1e-9)
        results["runs"].append(run)
    return results


def _describe(cell: tuple[dict, list]) -> str:
    """A finished cell, as the progress line shows it."""
    record = cell[0]
    if "kept" in record and "method" not in record:
        return "unedited"
    if "kept" in record:
        return f"lowest UA {_fmt(1 - max(record['erased'].values()))}, {record['seconds']:.1f} s"
    return _line(Row(**record))


def open_model(device: str | None = None):
    """A worker's state: the embedded model and its judge."""
    pipe = load_pipeline(EMBEDDED, device=device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, pipe.world.judge


def run_cell(state, spec: dict) -> tuple[dict, list[Image.Image]]:
    """A sweep's job (`fmn.sweep`): a cell of the table or of the mass section."""
    return (mass_cell if spec["section"] == "mass" else concept_cell)(*state, spec)


def mass_markdown(results: dict, device: str, settings: dict) -> str:
    runs, base = results["runs"], results["unedited"]
    head = "| concept | unedited | " + " | ".join(r["method"] for r in runs) + " |"
    rule = "|---|---|" + "---|" * len(runs)
    lines = [f"Device: {device}. Settings: {json.dumps(settings)}.", "",
             f"One patch per method erases {len(results['concepts'])} concepts: {', '.join(results['concepts'])}. "
             "Targets: each erased concept's UA ≥ "
             f"{MASS_TARGETS['UA']:.0%}, each kept concept within {100 * MASS_TARGETS['kept_lost']:.0f} points of "
             "unedited.", "",
             "| method | erase s | patch KB | UA, lowest | kept, most points lost | targets |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        worst = max(r["kept_lost"], key=r["kept_lost"].get)
        lines.append(f"| {r['method']} | {r['seconds']:.1f} | {r['patch_kb']:.0f} | {_fmt(min(r['UA'].values()))} "
                     f"| {_points(r['kept_lost'][worst])} ({worst}) | {'met' if r['met'] else 'missed'} |")
    lines += ["", "Erased: UA (unedited: how often it is shown)", "", head, rule]
    lines += [f"| {c} | shown {_fmt(base['erased'][c])} | " + " | ".join(_fmt(r["UA"][c]) for r in runs) + " |"
              for c in results["concepts"]]
    lines += ["", "Kept: presence (Δ points against unedited)", "", head, rule]
    lines += [f"| {c} | {_fmt(base['kept'][c])} | "
              + " | ".join(f"{_fmt(r['kept'][c])} ({_points(r['kept_lost'][c])})" for r in runs)
              + " |" for c in results["kept"]]
    return "\n".join(lines) + "\n"


def _fmt(value, spec=".0%") -> str:
    return "–" if value is None else format(value, spec)


def _points(lost: float | None) -> str:
    return "–" if lost is None else f"{round(-100 * lost):+d}"


def _line(r: Row) -> str:
    """A method's row; the unedited row says how often each set shows what it asks for."""
    if r.method == "unedited":
        return (f"| unedited (shown) | {r.kind} | {r.concept} | {_fmt(1 - r.UA)} | {_fmt(r.IRA)} | – "
                f"| {_fmt(r.CRA)} | – | {_fmt(r.leak)} | – | – | {_count(r.uncertain)} | – | – | – |")
    return (f"| {r.method} | {r.kind} | {r.concept} | {_fmt(r.UA)} | {_fmt(r.IRA)} | {_points(r.IRA_lost)} "
            f"| {_fmt(r.CRA)} | {_points(r.CRA_lost)} | {_fmt(r.leak)} | {_attack(r)} | {_fmt(r.swap)} "
            f"| {_count(r.uncertain)} | {_fmt(r.seconds, '.1f')} "
            f"| {_fmt(r.peak_mb, '.0f')} | {_fmt(r.patch_kb, '.0f')} |")


def _count(n: int | None) -> str:
    return "–" if n is None else str(n)


def _attack(r: Row) -> str:
    """The mean over the attack seeds, and their range."""
    if r.attack_range is None:
        return _fmt(r.attack)
    return f"{_fmt(r.attack)} ({r.attack_range[0]:.0%}–{r.attack_range[1]:.0%})"


HEADER = ("| method | kind | concept | UA ↑ | IRA ↑ | IRA Δ pts | CRA ↑ | CRA Δ pts | leak ↓ "
          "| attack ↓ (mean, min–max) | swap ↓ | uncertain | erase s | peak MB | patch KB |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _mean(values: list[float | None]) -> float | None:
    """The mean of the values read (a table made before a column existed has None there)."""
    read = [v for v in values if v is not None]
    return float(np.mean(read)) if read else None


def per_kind(rows: list[Row]) -> list[dict]:
    """For each kind and each method, its means over the kind's concepts and whether each meets its target."""
    out = []
    for kind in dict.fromkeys(r.kind for r in rows):
        by_method: dict[str, list[Row]] = {}
        for r in rows:
            if r.kind == kind and r.method != "unedited":
                by_method.setdefault(r.method, []).append(r)
        for method, rs in by_method.items():
            mean = {k: _mean([getattr(r, k) for r in rs]) for k in TARGETS}
            # to the nearest 1e-9: a mean of 0 and 10 points lost reads 5.000000000000004 in floats; None: not read
            met = {k: None if mean[k] is None else (mean[k] >= v - 1e-9 if op == ">=" else mean[k] <= v + 1e-9)
                   for k, (op, v) in TARGETS.items()}
            out.append({"kind": kind, "method": method, **mean, "met": met})
    return out


def best_per_kind(rows: list[Row], kinds: list[dict] | None = None) -> list[dict]:
    """For each kind, the method with the best mean of UA less the points lost over its concepts, against the
    targets (`kinds`: `per_kind(rows)`, if already read)."""
    score = lambda m: m["UA"] - m["IRA_lost"] - m["CRA_lost"]  # noqa: E731
    kinds = per_kind(rows) if kinds is None else kinds
    return [max((m for m in kinds if m["kind"] == kind), key=score) for kind in dict.fromkeys(m["kind"] for m in kinds)]


def best_overall(rows: list[Row]) -> list[tuple[str, dict]]:
    """Methods ranked as the default is chosen: mean UA less mean attack recovery first (to the nearest image
    of 20, so that noise does not decide), then the points kept (IRA and CRA lost), then the time to erase."""
    by_method: dict[str, list[Row]] = {}
    for r in rows:
        if r.method != "unedited":
            by_method.setdefault(r.method, []).append(r)
    means = {m: {k: float(np.mean([getattr(r, k) for r in rs]))
                 for k in ("UA", "attack", "IRA_lost", "CRA_lost", "seconds")}
             for m, rs in by_method.items()}
    key = lambda m: (-round(20 * (means[m]["UA"] - means[m]["attack"])), means[m]["IRA_lost"] + means[m]["CRA_lost"],  # noqa: E731
                     means[m]["seconds"])
    return [(m, means[m]) for m in sorted(means, key=key)]


def _target_cell(key: str, value: float | None, met: bool | None) -> str:
    return "–" if value is None else f"{_target_value(key, value)} {'✓' if met else '✗'}"


def _target_value(key: str, value: float) -> str:
    """A share as a percentage; points lost as points."""
    return f"{100 * value:.0f} pts" if key.endswith("_lost") else f"{value:.0%}"


def markdown(rows: list[Row], device: str, settings: dict) -> str:
    lines = [f"Device: {device}. Settings: {json.dumps(settings)}.", "",
             "Unedited rows: how often each set shows what it asks for (IRA, CRA: kept whole); "
             "Δ pts: points against the unedited row.", "", HEADER, *map(_line, rows), "",
             "Per kind, every method (mean over its concepts; the kind's best by UA less the points lost in "
             "bold), against the targets "
             + ", ".join(f"{k} {op} {_target_value(k, v)}" for k, (op, v) in TARGETS.items()) + ":", "",
             "| kind | method | " + " | ".join(TARGETS) + " |", "|---|---|" + "---|" * len(TARGETS)]
    kinds = per_kind(rows)
    best = {(b["kind"], b["method"]) for b in best_per_kind(rows, kinds)}
    for m in kinds:
        name = f"**{m['method']}**" if (m["kind"], m["method"]) in best else m["method"]
        lines.append(f"| {m['kind']} | {name} | "
                     + " | ".join(_target_cell(k, m[k], m["met"][k]) for k in TARGETS) + " |")
    lines += ["", "Overall, every concept (UA less attack first, then points lost, then time; on the tune split "
              "the first is the default's pick):", "",
              "| method | UA | attack | IRA lost | CRA lost | erase s |", "|---|---|---|---|---|---|"]
    for method, m in best_overall(rows):
        lines.append(f"| {method} | {m['UA']:.0%} | {m['attack']:.0%} | {_target_value('IRA_lost', m['IRA_lost'])} "
                     f"| {_target_value('CRA_lost', m['CRA_lost'])} | {m['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2), dpi=110)
    ax = fig.subplots()
    methods = list(dict.fromkeys(r.method for r in rows))
    for i, method in enumerate(methods):
        rs = [r for r in rows if r.method == method]
        colour = f"C{i}"
        ax.scatter([r.UA for r in rs], [r.IRA for r in rs], color=colour, marker="o", label=f"{method} IRA")
        ax.scatter([r.UA for r in rs], [r.CRA for r in rs], color=colour, marker="^", label=f"{method} CRA", alpha=0.6)
    ax.set_xlabel("UA: erased concept gone (held-out prompts)")
    ax.set_ylabel("IRA (o) / CRA (^): other concepts kept")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.axvline(TARGETS["UA"][1], color="grey", lw=0.5, ls="--")
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)


def sample_grid(rows: list[Row], path: Path) -> None:
    """One line per (method, concept): the first erased-prompt images; unedited lines come first per concept."""
    tile, label = 64, 150
    width = label + 4 * tile
    grid = Image.new("RGB", (width, tile * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for i, r in enumerate(rows):
        draw.text((4, i * tile + 24), f"{r.concept}: {r.method}", fill="black")
        for j, image in enumerate(r.samples):
            grid.paste(image.resize((tile, tile)), (label + j * tile, i * tile))
    grid.save(path)


def add_set_argument(parser) -> None:
    """--set, shared with `bench kept`: checked by `given_settings`."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every erasure of the run, its value as JSON, e.g. push_after=0 "
                        "(repeatable); METHOD.KEY=VALUE for one method of the run, e.g. text-map.frozen_share=0; give "
                        "it its own --out: its rows carry the method's name")


def add_arguments(parser) -> None:
    parser.add_argument("--split", choices=list(SPLITS),
                        help="report (default; tune with --quick): every concept of the world, on templates and "
                        "seeds no setting was chosen on; tune: where settings are chosen (8 concepts)")
    parser.add_argument("--quick", action="store_true",
                        help="one concept per kind of the tune split, fewer prompts and training steps "
                        "(≤ 10 min on 2 CPU cores)")
    parser.add_argument("--mass", action="store_true",
                        help=f"erase {len(MASS)} concepts in one patch per method ({', '.join(MASS)}); "
                        "report each one's UA and every kept concept's presence (quality-mass.md)")
    parser.add_argument("--methods",
                        help=f"comma-separated, default: {','.join(DEFAULT_METHODS)} (of {', '.join(METHODS)})")
    parser.add_argument("--from-images", type=int, nargs="?", const=8, metavar="N",
                        help="give each erasure N images of the concept (8 if no N) that the unedited model draws on "
                        "prompts and seeds the protocol does not report on; rows '<method> from images', written to "
                        "quality-from-images*.md/.json (its cells apart from the name-only ones)")
    parser.add_argument("--name-withheld", action="store_true",
                        help=f"with --from-images: each erasure is given the images and the placeholder name "
                        f"'{PLACEHOLDER}', not the concept's; rows '<method> from unnamed images', written to "
                        "quality-from-unnamed-images*.md/.json")
    parser.add_argument("--adversarial", action="store_true",
                        help="also run each trained method in adversarial mode (rows '<method> adversarial')")
    parser.add_argument("--concepts",
                        help="comma-separated subset of the run's concepts, e.g. Vellor,night (default: all)")
    add_set_argument(parser)
    parser.add_argument("--prompts", type=int,
                        help=f"prompts per set (default {FULL['prompts']}, quick {QUICK['prompts']})")
    parser.add_argument("--steps", type=int,
                        help=f"denoising steps per image (default {FULL['steps']}, quick {QUICK['steps']})")
    parser.add_argument("--attack-steps", type=int,
                        help=f"concept-inversion steps (default {FULL['attack_steps']}, quick {QUICK['attack_steps']})")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--out", default="benchmarks/results", help="folder for quality.md/.json/.png")
    parser.add_argument("--workers", type=int, default=1,
                        help="run the cells as Ray tasks on this many workers (a local Ray "
                        "unless --address; one GPU each where the cluster has GPUs); the table is the same as with 1")
    parser.add_argument("--address",
                        help="a running Ray cluster's address (e.g. ray://head:10001 or auto) to run the cells on")
    parser.add_argument("--fresh", action="store_true", help="run every cell again (default: cells finished before, "
                        "with the same settings, are read from <out>/<stem>-cells)")
    parser.add_argument("--render", metavar="JSON",
                        help="write the tables and the plot of an earlier run's JSON again (runs nothing)")


def given_settings(pairs: list[str], methods: list[str]) -> dict:
    """--set pairs as settings (a value that is not JSON is a string): KEY=VALUE for every method of the run,
    METHOD.KEY=VALUE for that one only. Checked by making each method with its own before any cell runs: an unknown
    setting or a bad value is refused as `erase` would refuse it."""
    given = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {pair}: write KEY=VALUE, e.g. push_after=0, or METHOD.KEY=VALUE.")
        method = key.rpartition(".")[0]
        if method and method not in methods:
            raise ValueError(f"--set {pair}: {method} is not among this run's methods ({', '.join(methods)}).")
        try:
            given[key] = json.loads(value)
        except ValueError:
            given[key] = value
    for m in methods:
        try:
            make_method(m, "concept", **_for_method(given, m))
        except ValueError as e:
            raise ValueError(f"--set: {e}") from None
    return given


def _for_method(given: dict, method: str) -> dict:
    """The --set settings one method erases with: those for every method, then its own (METHOD.KEY)."""
    return ({k: v for k, v in given.items() if "." not in k}
            | {k.partition(".")[2]: v for k, v in given.items() if k.startswith(method + ".")})


def method_settings(method: str, kind: str | None, quick: bool, given: dict) -> dict:
    """The settings a method erases a concept of `kind` with: the kind's (`KIND_SETTINGS`), --quick's, then --set's."""
    return (KIND_SETTINGS.get(kind, {}).get(method, {}) | (QUICK_SETTINGS.get(method, {}) if quick else {})
            | _for_method(given, method))


def _runs(args, methods: list[str], kind: str | None, given: dict) -> list[tuple[str, str, dict]]:
    """(label, method, settings) of every erasure of one concept (of `kind`; None: a mass erasure)."""
    runs, given_images = [], _images_label(args)
    for m in methods:
        tuned = method_settings(m, kind, args.quick, given)
        runs.append((m + given_images, m, tuned))
        if args.adversarial and METHODS[m].trains:
            runs.append((f"{m}{given_images} adversarial", m, tuned | {"adversarial": True}))
    return runs


def _images_label(args) -> str:
    """What the rows' erasures are given beside the method's name: "" (the concept's name), " from images" (its
    images and its name), " from unnamed images" (its images and `PLACEHOLDER`)."""
    return "" if not args.from_images else " from unnamed images" if args.name_withheld else " from images"


def judge_fingerprint() -> str:
    """The shipped judge's: cells read by another judge run again."""
    return World.load(EMBEDDED).judge.fingerprint


def concept_jobs(args, methods: list[str], concepts: dict[str, list[str]], given: dict, common: dict) -> list[Job]:
    """One cell per concept and run: its unedited row, then each method's (`_runs`). With --from-images an erasure's
    spec names its images, so that its cell is never taken for a name-only one; the unedited cell is the same."""
    images = {"images": {"count": args.from_images, "first_seed": UPLOAD_SEED}
                         | ({"name": "withheld"} if args.name_withheld else {})} if args.from_images else {}
    return [Job(f"{name}-{label.replace(' ', '-')}",
                {"section": "concept", "kind": kind, "name": name, "label": label, "method": method,
                 "settings": tuned, "defaults": _defaults(method), **common, **(images if method else {})})
            for kind, names in concepts.items() for name in names
            for label, method, tuned in [("unedited", None, {}), *_runs(args, methods, kind, given)]]


def _defaults(method: str | None) -> dict:
    """The method's default settings, in each cell's spec: a cell stored before a default changed is run again."""
    return asdict(METHODS[method].Config()) if method else {}


def _write(out: Path, stem: str, table: str, records: dict, json_path: str | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(table)
    for path in {out / f"{stem}.json", *([Path(json_path)] if json_path else [])}:
        path.write_text(json.dumps(records, indent=1))


def render(path: Path) -> list[Row]:
    """--render: the tables and the plot of an earlier run's JSON, written again; nothing runs."""
    records = json.loads(path.read_text())
    rows = [Row(**r) for r in records["rows"]]
    table = markdown(rows, records["device"], records["settings"])
    path.with_suffix(".md").write_text(table)
    plot(rows, path.with_suffix(".png"))
    print(table, flush=True)
    return rows


@dataclass
class Plan:
    """What one run of the benchmark does: its cells, where they are kept, and what its files are called."""

    settings: dict  # printed above the table and stored with its JSON
    jobs: list[Job]
    cells: Path  # the finished cells' folder, shared by the runs of any of the split's concepts
    stem: str  # of the table's files


def plan(args) -> Plan:
    """The run's settings and cells from the command line (checked before any cell runs)."""
    methods = _methods(args)
    if args.mass and (args.concepts or args.from_images):
        raise ValueError(f"--mass erases its own list ({', '.join(MASS)}), by name; leave --concepts and "
                         "--from-images out.")
    given = given_settings(args.set, methods)
    preset = QUICK if args.quick else FULL
    n, steps = args.prompts or preset["prompts"], args.steps or preset["steps"]
    if not 1 <= n <= 200 or not 1 <= steps <= 200:
        raise ValueError(f"--prompts {n} and --steps {steps}: use 1 to 200 each.")
    split = SPLITS[args.split or ("tune" if args.quick else "report")]
    concepts = run_concepts(args, split)
    settings = {"split": split.name, "quick": args.quick, "prompts": n, "steps": steps, "methods": methods,
                "adversarial": args.adversarial, "training": QUICK_SETTINGS if args.quick else "defaults"}
    settings |= ({"set": given} if given else {}) | ({"from_images": args.from_images} if args.from_images else {})
    settings |= {"name": "withheld"} if args.name_withheld else {}
    settings["judge"] = judge_fingerprint()
    # "reads": what a cell reads beside the sets; a cell stored with fewer reads runs again
    common = {"split": split.name, "prompts": n, "steps": steps,
              "reads": ["attack: plain and erased prompts", "encoder swap", "uncertain: judge and pixels disagree"],
              "model": "embedded", "held": held_settings(), "judge": settings["judge"]}
    if args.mass:
        jobs = [Job(f"mass-{label.replace(' ', '-')}", {"section": "mass", "concepts": MASS, "label": label,
                                                          "method": method, "settings": tuned,
                                                          "defaults": _defaults(method), **common})
                for label, method, tuned in [("unedited", None, {}), *_runs(args, methods, None, given)]]
        stem = "quality-mass" + ("-quick" if args.quick else "")
    else:
        attack = AttackConfig(steps=args.attack_steps or preset["attack_steps"], images=preset["attack_images"],
                              image_steps=steps)
        settings |= {"attack_steps": attack.steps, "attack_images": attack.images, "attack_seeds": split.attack_seeds}
        jobs = concept_jobs(args, methods, concepts, given, common | {"attack": asdict(attack)})
        stem = "quality-quick" if args.quick else "quality"
    stem += "" if split.name == "report" or args.quick else f"-{split.name}"
    cells = Path(args.out) / f"{stem}-cells"
    # erasures from images: a table of their own; their cells sit beside the name-only ones, the unedited shared
    stem = stem.replace("quality", "quality" + _images_label(args).replace(" ", "-"), 1)
    stem += "" if args.mass or args.quick else subset_suffix(concepts, split)
    return Plan(settings, jobs, cells, stem)


def run(args) -> list[Row] | dict:
    if args.render:
        return render(Path(args.render))
    job_plan = plan(args)
    if args.fresh:
        shutil.rmtree(job_plan.cells, ignore_errors=True)
    store = Store(job_plan.cells)
    where = (f"Ray, {args.workers} workers" + (f" at {args.address}" if args.address else " (local)")
             if args.workers > 1 or args.address else "this process")
    print(f"{len(job_plan.jobs)} cells on {where}; finished cells kept in {store.folder} (--fresh runs them all "
          "again)", flush=True)
    results = sweep(job_plan.jobs, partial(open_model, args.device), run_cell, store, args.workers, args.address,
                    lambda line: print(line, flush=True), _describe)
    cells = [results[job.key] for job in job_plan.jobs]
    write = _write_mass if args.mass else _write_concepts
    return write(cells, Path(args.out), job_plan, _device_of(args), args.json)


def _write_concepts(cells: list, out: Path, job_plan: Plan, device: str, json_path: str | None) -> list[Row]:
    """The table of concepts: markdown, JSON (with the best method per kind), the plot and the sample grid."""
    rows = assemble(cells)
    table = markdown(rows, device, job_plan.settings)
    records = {"device": device, "settings": job_plan.settings, "rows": [_record(r) for r in rows],
               "best": best_per_kind(rows)}
    _write(out, job_plan.stem, table, records, json_path)
    plot(rows, out / f"{job_plan.stem}.png")
    sample_grid(rows, out / f"{job_plan.stem}-samples.png")
    print(table, flush=True)
    return rows


def _write_mass(cells: list, out: Path, job_plan: Plan, device: str, json_path: str | None) -> dict:
    """The mass erasure's table: each erased concept's UA and every kept concept's presence."""
    results = assemble_mass(MASS, cells[0][0], [record for record, _ in cells[1:]])
    table = mass_markdown(results, device, job_plan.settings)
    _write(out, job_plan.stem, table, {"device": device, "settings": job_plan.settings, **results}, json_path)
    print(table, flush=True)
    return results


def _methods(args) -> list[str]:
    """The run's methods (--methods, default DEFAULT_METHODS)."""
    if args.name_withheld and not args.from_images:
        raise ValueError("--name-withheld: give --from-images too (the erasure then has the images alone).")
    if args.from_images is not None and not 1 <= args.from_images <= MAX_IMAGES:
        raise ValueError(f"--from-images {args.from_images}: give 1 to {MAX_IMAGES} images.")
    if not args.methods:
        return list(DEFAULT_METHODS)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method {', '.join(unknown)}: choose from {', '.join(METHODS)}.")
    return methods


def run_concepts(args, split) -> dict[str, list[str]]:
    """The run's concepts by kind: the split's (--quick: QUICK_CONCEPTS), or the --concepts among them."""
    concepts = QUICK_CONCEPTS if args.quick else split.concepts
    if not args.concepts:
        return concepts
    wanted = {c.strip() for c in args.concepts.split(",") if c.strip()}
    known = {name for names in concepts.values() for name in names}
    if not wanted <= known:
        raise ValueError(f"Unknown concept {', '.join(sorted(wanted - known))}: "
                         f"choose from {', '.join(sorted(known))}.")
    return {kind: [n for n in names if n in wanted] for kind, names in concepts.items() if set(names) & wanted}


def subset_suffix(concepts: dict[str, list[str]], split) -> str:
    """The file stem's tail for a run of some of the split's concepts: "-Tobble-triangle"; "" for all of them."""
    names = sorted(name for names in concepts.values() for name in names)
    return "" if names == sorted(n for ns in split.concepts.values() for n in ns) else "-" + "-".join(names)


def _device_of(args) -> str:
    """Where the cells ran: this machine's device, or the cluster's."""
    if args.address:
        return f"Ray cluster at {args.address}, {args.workers} workers"
    device = device_name(pick_device(args.device)[0])
    return device if args.workers == 1 else f"{device}; Ray, {args.workers} workers"
