"""Settings compared over several erasure seeds, from tables `bench quality` wrote:
    python -m fmn bench seeds --table default benchmarks/results/text-map-seed/{0,1,2}/quality-tune.json \
        --table padding_rows=8 benchmarks/results/text-map-padding-rows/8/{0,1,2}/quality-tune.json [--out FILE]

`bench quality` erases each concept once, at the erasure's own training seed (`--set seed=S`). The seed moves a
setting's reads by about as much as two settings differ by, so a choice between settings reads each one's mean over a
few seeds. Each `--table` names a setting and its tables, one per seed, all of the same split and concepts; the
settings are ranked by `bench quality`'s rule (`quality.best_overall`: UA less attack to the nearest image of 20,
then the points lost, then the time) on their means over every seed and concept, each seed's own means beside.
Nothing is drawn: it reads the tables' JSON.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from .quality import Row, best_overall

__all__ = ["add_arguments", "run", "read_tables", "markdown"]


def add_arguments(parser) -> None:
    parser.add_argument("--table", nargs="+", action="append", required=True, metavar=("LABEL", "JSON"),
                        help="a setting's label, then its tables' JSON, one per erasure seed (repeat for each setting)")
    parser.add_argument("--out", default=None, help="also write the comparison here (markdown)")


def read_tables(paths: list[str]) -> tuple[list[list[Row]], dict]:
    """Each table's erased rows, and the settings they share; refuses tables of other splits or concepts."""
    tables, first = [], None
    for path in paths:
        records = json.loads(Path(path).read_text())
        rows = [Row(**r) for r in records["rows"] if r["method"] != "unedited"]
        shape = {"split": records["settings"]["split"], "concepts": sorted(r.concept for r in rows),
                 "methods": sorted({r.method for r in rows})}
        if len(shape["methods"]) != 1:
            raise ValueError(f"{path}: rows of {', '.join(shape['methods'])}; compare one method's tables.")
        if first is not None and shape != first:
            raise ValueError(f"{path}: {shape['split']} split, concepts {', '.join(shape['concepts'])}; the first "
                             f"table has {first['split']} split, concepts {', '.join(first['concepts'])}.")
        first = shape
        tables.append(rows)
    return tables, first


def _means(rows: list[Row]) -> dict:
    return best_overall(rows)[0][1]


def markdown(settings: dict[str, list[list[Row]]], split: str) -> str:
    """The settings ranked on their means over seeds, and each seed's means."""
    pooled = [replace(row, method=label) for label, tables in settings.items() for rows in tables for row in rows]
    lines = [f"Means over the erasure seeds' tables ({split} split), ranked by `bench quality`'s rule: UA less attack "
             "(images of 20), then the points lost, then the time.", "",
             "| setting | seeds | UA | attack | UA less attack (of 20) | IRA lost | CRA lost | erase s "
             "| each seed: UA / attack / points lost in kind, across |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, m in best_overall(pooled):
        each = "; ".join(f"{s['UA']:.0%} / {s['attack']:.0%} / {100 * s['IRA_lost']:.0f}, {100 * s['CRA_lost']:.0f}"
                         for s in map(_means, settings[label]))
        lines.append(f"| {label} | {len(settings[label])} | {m['UA']:.0%} | {m['attack']:.0%} "
                     f"| {20 * (m['UA'] - m['attack']):.1f} | {100 * m['IRA_lost']:.1f} pts "
                     f"| {100 * m['CRA_lost']:.1f} pts | {m['seconds']:.1f} | {each} |")
    return "\n".join(lines) + "\n"


def run(args) -> str:
    settings, first = {}, None
    for label, *paths in args.table:
        if not paths:
            raise ValueError(f"--table {label}: name its tables' JSON after the label.")
        settings[label], shape = read_tables(paths)
        if first is None:
            first = shape
        elif (shape["split"], shape["concepts"]) != (first["split"], first["concepts"]):
            raise ValueError(f"--table {label}: its tables are not of the first setting's split and concepts.")
    table = markdown(settings, first["split"])
    if args.out:
        Path(args.out).write_text(table)
    print(table, end="", flush=True)
    return table
