"""What an erasure takes from the prompts it should keep:
    python -m fmn bench kept [--methods text-map] [--concepts night,Vellor] [--split report|tune] [--quick]
                             [--set KEY=VALUE]

`bench quality`'s IRA and CRA count a kept prompt only where its image shows everything the prompt asks for
(`protocol.kept_whole`), so they say how much is lost, not what. This benchmark draws the same in-kind and
cross-kind prompts on the same seeds, unedited and under each method's erasure at its defaults (or at --set's
settings, into an --out of their own), and for every image kept whole before and not after (*broken*) names the
parts it lost (`protocol.missing`): a shape, a character, a colour, the background, the style, the time of day.
One image can lose several. *Fixed* counts the other way round. An image that the judge and the pixel check read
apart (uncertain) before or after is neither: it counts as uncertain. The kept shares are over the certain images
of each side, as `bench quality` reads them.
Each (concept, method) is a cell kept in <out>/kept[-tune]-cells, so a rerun after an interruption runs only the
missing ones; a run of some concepts shares them with a run of all. A concept's unedited images are drawn once a
run, for all its methods' cells. Writes kept.md and kept.json into --out
(kept-tune.* on the tune split, kept-quick.* with --quick; a run of some concepts names them: kept-night.*).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..attack import share
from ..erase import DEFAULT_METHOD, METHODS, erase
from ..generate import generate_many
from ..models import pick_device
from ..patch import active, detach
from ..sweep import Job, Store, sweep
from ..world.reading import judged
from .measure import device_name
from .protocol import SPLITS, kept_whole, missing
from .quality import (
    FULL,
    QUICK,
    add_set_argument,
    cell_probes,
    given_settings,
    judge_fingerprint,
    method_settings,
    open_model,
    run_concepts,
    subset_suffix,
)

__all__ = ["add_arguments", "run", "losses", "PARTS"]

PARTS = ("shape", "character", "colour", "background", "style", "night")
SETS = ("in_kind", "cross_kind")


def add_arguments(parser) -> None:
    parser.add_argument("--methods", default=DEFAULT_METHOD, help=f"comma separated (default: {DEFAULT_METHOD})")
    parser.add_argument("--concepts", default="", help="comma separated (default: every concept of the split)")
    parser.add_argument("--split", choices=sorted(SPLITS), default="report")
    parser.add_argument("--quick", action="store_true", help="one concept a kind of the tune split, 4 prompts a "
                        "set, 12 denoising steps, shorter training: checks the benchmark, not the methods")
    add_set_argument(parser)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--render", default=None, metavar="JSON", help="write the table of an earlier run again")


def losses(before: list, after: list, prompts: list, erased: set[str]) -> dict:
    """One set's reads before and after (verdicts, None where uncertain): the shares kept whole over each side's
    certain images, the images broken and fixed, those uncertain on either side, and the parts the broken ones lost."""
    kept = lambda reads: [None if v is None else kept_whole(v, p, erased) for v, p in zip(reads, prompts)]  # noqa: E731
    was, now = kept(before), kept(after)
    broken = [i for i, (a, b) in enumerate(zip(was, now)) if a is True and b is False]
    parts = Counter(part for i in broken for part in missing(after[i], prompts[i], erased))
    return {"kept_before": share(was), "kept_after": share(now), "broken": len(broken),
            "fixed": sum(a is False and b is True for a, b in zip(was, now)),
            "uncertain": sum(a is None or b is None for a, b in zip(was, now)),
            "parts": {part: parts[part] for part in PARTS},
            "broken_prompts": [prompts[i].text for i in broken]}


def open_model_and_reads() -> tuple:
    """The model and judge of `bench quality`, and the unedited reads drawn so far: every method's cell of a concept
    reads the same images before its erasure, drawn once."""
    return (*open_model(), {})


def cell(state, spec: dict) -> tuple[dict, list]:
    """One concept erased by one method: each kept set's `losses` (and no images, for the sweep's store)."""
    pipe, judge, unedited = state
    name, steps = spec["name"], spec["steps"]
    probe = cell_probes(pipe, spec)  # the sets of `bench quality`
    prompts = [p for key in SETS for p in getattr(probe, key)]
    texts, seeds = [p.text for p in prompts], [s for key in SETS for s in probe.seeds[:len(getattr(probe, key))]]
    drawn = (tuple(texts), tuple(seeds), steps)
    if drawn not in unedited:
        unedited[drawn] = judged(judge, generate_many(pipe, texts, seeds, steps))
    before = unedited[drawn]
    adapter = f"kept-{spec['method']}"
    erase(pipe, [name], spec["method"], name=adapter, **spec["settings"])
    try:
        with active(pipe, [adapter]):
            after = judged(judge, generate_many(pipe, texts, seeds, steps))
    finally:
        detach(pipe, adapter)
    out, first = {}, 0
    for key in SETS:
        size = len(getattr(probe, key))
        out[key] = losses(before[first:first + size], after[first:first + size], prompts[first:first + size], {name})
        first += size
    return out, []


def _jobs(args, methods: list[str], split) -> list[Job]:
    """One cell per concept of the run (`bench quality`'s --concepts rule) and method, at `bench quality`'s
    settings for it (and --set's)."""
    n, steps = (QUICK["prompts"], QUICK["steps"]) if args.quick else (FULL["prompts"], FULL["steps"])
    common = {"split": split.name, "prompts": n, "steps": steps, "judge": judge_fingerprint()}
    given = given_settings(args.set, methods)
    return [Job(f"{name}-{method}", {"kind": kind, "name": name, "method": method, **common,
                                     "settings": method_settings(method, kind, args.quick, given)})
            for kind, names in run_concepts(args, split).items() for name in names for method in methods]


def _line(label: str, key: str, r: dict, kept: bool = True) -> str:
    shares = f" {r['kept_before']:.0%} → {r['kept_after']:.0%} |" if kept else ""
    return (f"| {label} | {key.replace('_', '-')} |{shares} {r['broken']} | {r['fixed']} | {r['uncertain']} | "
            + " | ".join(str(r["parts"][p]) for p in PARTS) + " |")


def markdown(cells: list[dict], header: str) -> str:
    """Per cell and set, then per kind and method over its concepts: kept before -> after, broken, fixed, parts."""
    parts = " | ".join(PARTS)
    lines = [header, "", "Per concept: the share kept whole before and after, the images broken and fixed, and the "
             "parts the broken ones lost (an image can lose several).", "",
             f"| concept, method | set | kept: unedited → erased | broken | fixed | uncertain | {parts} |",
             "|" + "---|" * (6 + len(PARTS))]
    totals: dict[tuple, Counter] = {}
    for c in cells:
        for key in SETS:
            lines.append(_line(f"{c['name']}, {c['method']}", key, c[key]))
            total = totals.setdefault((c["kind"], c["method"], key), Counter())
            total.update({k: c[key][k] for k in ("broken", "fixed", "uncertain")} | c[key]["parts"])
    lines += ["", "Per kind: its concepts' images, summed.", "",
              f"| kind, method | set | broken | fixed | uncertain | {parts} |", "|" + "---|" * (5 + len(PARTS))]
    lines += [_line(f"{kind}, {method}", key, {**t, "parts": t}, kept=False)
              for (kind, method, key), t in totals.items()]
    return "\n".join(lines) + "\n"


def render(path: Path) -> list[dict]:
    """--render: the table of an earlier run's JSON, written again; nothing runs."""
    records = json.loads(path.read_text())
    path.with_suffix(".md").write_text(markdown(records["cells"], records["header"]))
    return records["cells"]


def _describe(result: tuple[dict, list]) -> str:
    return f"broken {result[0]['in_kind']['broken']} in kind, {result[0]['cross_kind']['broken']} across"


def _command(args, methods: list[str], split) -> str:
    concepts = f" --concepts {args.concepts}" if args.concepts else ""
    given = "".join(f" --set {pair}" for pair in args.set)
    return (f"python -m fmn bench kept{' --quick' if args.quick else f' --split {split.name}'}{concepts} "
            f"--methods {','.join(methods)}{given}")


def run(args) -> list[dict]:
    """Runs the missing cells, then writes the tables; returns the cells in order."""
    if args.render:
        return render(Path(args.render))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or not set(methods) <= set(METHODS):
        raise ValueError(f"--methods {args.methods!r}: choose from {', '.join(METHODS)}.")
    split, out = SPLITS["tune" if args.quick else args.split], Path(args.out)
    jobs = _jobs(args, methods, split)
    stem = "kept-quick" if args.quick else "kept" + ("" if split.name == "report" else f"-{split.name}")
    results = sweep(jobs, open_model_and_reads, cell, Store(out / f"{stem}-cells"), describe=_describe)
    cells = [{key: job.spec[key] for key in ("kind", "name", "method")} | results[job.key][0] for job in jobs]
    spec = jobs[0].spec
    header = (f"Device: {device_name(pick_device(None)[0])}. Split {split.name}, {spec['prompts']} prompts a set, "
              f"{spec['steps']} denoising steps, judge {spec['judge']}; `{_command(args, methods, split)}`.")
    path = out / f"{stem}{'' if args.quick else subset_suffix(run_concepts(args, split), split)}.json"
    path.write_text(json.dumps({"header": header, "cells": cells}, indent=1))
    render(path)
    return cells
