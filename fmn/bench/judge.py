"""The judge, audited on the model's own images:  python -m fmn bench judge [--images N] [--steps 25] [--quick]

The judge (fmn/world/judge.py) was trained and measured on renders only, yet every quality number reads the
diffusion model's images through it. This benchmark draws one-object scenes (all shapes, colours, backgrounds,
night, some artists and characters; held-out templates) with the embedded model, unedited and under one patch
of every registered method (each erases one concept, `ERASED`), on the same prompts and seeds, and compares
the judge's reads with labels it did not make:
- shape, colour, background and night: the pixel check (fmn/world/pixels.py), which abstains when unsure;
- characters and artists: the pixel check's character and style reads (fmn/world/looks.py), which abstain more
  often, on the same images; and labels written by eye on the hand set (benchmarks/judge-labels/labels.json,
  drawn by `--write-hand-set`).
Per label: images decided, agreement, false present, false absent, images where the independent label is
uncertain; and the flip rate: over (unedited, patched) pairs, the share where the independent label did not
change but the judge's read did. Targets (the issue's): agreement >= 95 % per label, flips <= 2 %.
Writes judge.md, judge.json and judge-disagreements.png (the first disagreements, to look at) into --out.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

from ..erase import METHODS, erase
from ..generate import generate_many
from ..models import EMBEDDED, load_pipeline
from ..patch import active, detach
from ..world.judge import STYLE_CLASSES, Judge
from ..world.reading import LOOK_LABELS, LOOKS, PIXEL_LABELS, judge_labels, look_labels, pixel_labels
from ..world.scenes import BACKGROUNDS, COLOURS, HELDOUT_TEMPLATES, IDENTITIES, SHAPES, STYLES, caption, sample_scene
from .measure import device_name

__all__ = ["add_arguments", "run", "audit_prompts", "hand_prompts", "hand_labels",
           "tally", "draw_under_patches", "ERASED", "TARGETS", "HAND_SET"]

TARGETS = {"agreement": 0.95, "flips": 0.02}
# what each method erases, in METHODS order: spread over the kinds (shape, artist, scene, character, colour)
ERASED = ["circle", "Vellor", "night", "Mimo", "blue", "star", "Tobble", "heart", "Brusk"]
HAND_SET = Path(__file__).resolve().parents[2] / "benchmarks" / "judge-labels"
HAND_LABELS = [*IDENTITIES, *LOOKS.values()]
FULL = {"images": 200, "steps": 25}
QUICK = {"images": 48, "steps": 12, "methods": 2}
SEED = 0  # the prompts' rng: the same prompts every run


def audit_prompts(n: int, seed: int | str = SEED, templates: list[str] = HELDOUT_TEMPLATES) -> list[str]:
    """n one-object prompts (held-out templates unless given): 70 % plain shapes cycling through every shape,
    colour, background and night; 15 % shapes in an artist's style; 15 % characters (most of them styled)."""
    rng, prompts = random.Random(seed), []
    shapes, colours, grounds = list(SHAPES), list(COLOURS), list(BACKGROUNDS)
    for i in range(n):
        kind, style = shapes[i % 6], "plain"
        if i % 20 >= 17:
            kind, style = rng.choice(list(IDENTITIES)), rng.choice(["plain", *STYLES])
        elif i % 20 >= 14:
            style = rng.choice(list(STYLES))
        fixed = {"colours": [colours[(i // 6 + i) % 6]]} if kind in SHAPES else {}
        scene = sample_scene(rng, "any", two_objects=0, kinds=[kind], style=style, background=grounds[(i // 3) % 4],
                             night=i // 6 % 3 == 0, **fixed)
        prompts.append(caption(scene, rng.choice(templates), rng, synonyms=False))
    return prompts


def hand_prompts(seed: int = SEED) -> list[str]:
    """The hand set's 60 prompts: characters plain and styled, shapes styled, a few plain shapes."""
    rng, prompts = random.Random(f"hand-{seed}"), []
    plan = [(list(IDENTITIES)[i % 4], "plain") for i in range(24)]
    plan += [(list(IDENTITIES)[i % 4], list(STYLES)[i // 4 % 4]) for i in range(16)]
    plan += [(list(SHAPES)[i % 6], list(STYLES)[i % 4]) for i in range(12)]
    plan += [(list(SHAPES)[i % 6], "plain") for i in range(8)]
    for kind, style in plan:
        scene = sample_scene(rng, "any", two_objects=0, kinds=[kind], style=style)
        prompts.append(caption(scene, rng.choice(HELDOUT_TEMPLATES), rng, synonyms=False))
    return prompts


def hand_labels(entry: dict) -> dict[str, bool | None]:
    """A hand label as one label each; a style written "unclear" (or characters null) is uncertain."""
    seen = entry.get("characters")
    style = entry.get("style")
    labels = {name: None if seen is None else name in seen for name in IDENTITIES}
    return labels | {LOOKS[s]: None if style in (None, "unclear") else style == s for s in STYLE_CLASSES}


def tally(truth: list[dict], judged: list[dict], labels: list[str], pairs: list[tuple[int, int, str]]) -> dict:
    """Per label: decided, present, agree, false present/absent, uncertain, and pairs/flips over (before, after)
    index pairs where the independent label stayed the same; per patch: pairs and flips over every label."""
    rows, per_patch = {}, defaultdict(lambda: [0, 0])
    for label in labels:
        known = [(t[label], j[label]) for t, j in zip(truth, judged) if t[label] is not None]
        stable = [(a, b, patch) for a, b, patch in pairs
                  if truth[a][label] is not None and truth[a][label] == truth[b][label]]
        flips = [patch for a, b, patch in stable if judged[a][label] != judged[b][label]]
        for a, b, patch in stable:
            per_patch[patch][0] += 1
        for patch in flips:
            per_patch[patch][1] += 1
        rows[label] = {"decided": len(known), "present": sum(t for t, _ in known),
                       "agree": sum(t == j for t, j in known), "false_present": sum(j and not t for t, j in known),
                       "false_absent": sum(t and not j for t, j in known), "uncertain": len(truth) - len(known),
                       "pairs": len(stable), "flips": len(flips)}
    return {"labels": rows, "patches": {p: {"pairs": n, "flips": f} for p, (n, f) in per_patch.items()}}


def add_arguments(parser) -> None:
    parser.add_argument("--images", type=int, help=f"prompts, each drawn unedited and under every patch "
                        f"(default {FULL['images']}, quick {QUICK['images']})")
    parser.add_argument("--steps", type=int, help=f"denoising steps (default {FULL['steps']}, quick {QUICK['steps']})")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['images']} prompts, {QUICK['steps']} steps, the {QUICK['methods']} closed "
                        "forms only: checks the benchmark, not the judge")
    parser.add_argument("--hand-set", default=str(HAND_SET), help="folder of hand-labelled images (labels.json)")
    parser.add_argument("--write-hand-set", action="store_true",
                        help="draw the hand set's images into --hand-set (images.json; labels.json is left alone)")
    parser.add_argument("--judge", help="a judge folder to audit instead of the one beside the embedded model")
    parser.add_argument("--out", default="benchmarks/results", help="folder for judge.md, judge.json and the PNG")


def _methods(quick: bool) -> list[tuple[str, str]]:
    """(method, concept it erases) of every registered method; --quick: the closed forms (no training)."""
    pairs = list(zip(METHODS, ERASED))
    return [(m, c) for m, c in pairs if not METHODS[m].trains][:QUICK["methods"]] if quick else pairs


def draw_under_patches(pipe, prompts: list[str], steps: int, methods: list[tuple[str, str]], log,
                       unedited: bool = True) -> dict[str, list]:
    """The prompts' images (seed = index) unedited (unless not asked) and under each method's patch:
    {"unedited" | "method:concept": images}."""
    seeds = list(range(len(prompts)))
    images = {}
    if unedited:
        start = time.perf_counter()
        images["unedited"] = generate_many(pipe, prompts, seeds, steps)
        log(f"unedited: {len(prompts)} images in {time.perf_counter() - start:.0f} s")
    for method, concept in methods:
        start, name = time.perf_counter(), f"{method}:{concept}"
        erase(pipe, [concept], method, name="audit-judge")
        try:
            with active(pipe, ["audit-judge"]):
                images[name] = generate_many(pipe, prompts, seeds, steps)
        finally:
            detach(pipe, "audit-judge")
        log(f"{name}: erased and {len(prompts)} images in {time.perf_counter() - start:.0f} s")
    return images


def write_hand_set(pipe, folder: Path, steps: int, log=print) -> None:
    """Draws the hand set: each prompt unedited and under one patch (the methods in turn) into `folder`,
    with images.json (file -> prompt, seed, patch). The labels are a person's: labels.json is not touched."""
    prompts, methods = hand_prompts(), _methods(False)
    folder.mkdir(parents=True, exist_ok=True)
    index = {}
    for k, (method, concept) in enumerate(methods):
        chosen = [i for i in range(len(prompts)) if i % len(methods) == k]
        drawn = draw_under_patches(pipe, [prompts[i] for i in chosen], steps, [(method, concept)], log)
        for patch, images in drawn.items():
            for i, image in zip(chosen, images):
                name = f"{i:02d}-{patch.replace(':', '-')}.png"
                image.save(folder / name)
                index[name] = {"prompt": prompts[i], "seed": i, "patch": patch}
    (folder / "images.json").write_text(json.dumps(dict(sorted(index.items())), indent=1))
    log(f"{len(index)} images in {folder}; label them by eye in labels.json")


def _pairs(entries: list[dict]) -> list[tuple[int, int, str]]:
    """(unedited index, patched index, patch) of entries with the same prompt and seed."""
    before = {(e["prompt"], e["seed"]): i for i, e in enumerate(entries) if e["patch"] == "unedited"}
    return [(before[(e["prompt"], e["seed"])], i, e["patch"]) for i, e in enumerate(entries)
            if e["patch"] != "unedited" and (e["prompt"], e["seed"]) in before]


def _hand(judge, folder: Path) -> tuple[dict | None, int]:
    """The judge against the hand labels, and how many images they cover (None, 0 without labels.json)."""
    path = folder / "labels.json"
    if not path.is_file():
        return None, 0
    labels = json.loads(path.read_text())
    entries = [labels[name] for name in sorted(labels)]
    images = [Image.open(folder / name).convert("RGB") for name in sorted(labels)]
    judged = [judge_labels(v) for v in judge(images)]
    return tally([hand_labels(e) for e in entries], judged, HAND_LABELS, _pairs(entries)), len(entries)


def _pct(num: int, den: int) -> str:
    return "–" if not den else f"{num / den:.1%}"


def _mark(num: int, den: int, target: float, at_most: bool) -> str:
    if not den:
        return "– (none)"
    share = num / den
    return f"{share:.1%} {'✓' if (share <= target if at_most else share >= target) else '✗'}"


def _table(rows: dict) -> list[str]:
    lines = ["| label | decided | present | agreement | false present | false absent | uncertain | stable pairs "
             "| flips |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['decided']} | {r['present']} | "
                     f"{_mark(r['agree'], r['decided'], TARGETS['agreement'], False)} | {r['false_present']} "
                     f"| {r['false_absent']} | {r['uncertain']} | {r['pairs']} "
                     f"| {_mark(r['flips'], r['pairs'], TARGETS['flips'], True)} |")
    return lines


def _overall(result: dict) -> tuple[int, int]:
    return (sum(r["flips"] for r in result["labels"].values()), sum(r["pairs"] for r in result["labels"].values()))


def markdown(records: dict) -> str:
    s, pixel, hand, looks = records["settings"], records["pixel"], records["hand"], records.get("looks")
    flips, pairs = _overall(pixel)
    lines = ["# The judge, audited on the model's own images", "",
             f"Device: {records['device']}. Judge {records.get('judge', '?')}. {s['images']} prompts (one object "
             f"each, held-out templates), {s['steps']} "
             f"steps, each drawn unedited and under one patch of every method: "
             f"{', '.join(s['patches'])}; {records['drawn']} images. Targets: agreement ≥ "
             f"{TARGETS['agreement']:.0%} per label, flips ≤ {TARGETS['flips']:.0%}. Agreement: the share of the "
             "images the independent label decides where the judge reads the same; false present: the judge "
             "reads the label where the independent label says absent; uncertain: images where it abstains; "
             "flips: over (unedited, patched) pairs whose independent label did not change, the share where the "
             "judge's read did.", "",
             "## Shape, colour, background, night: against the pixel check (fmn/world/pixels.py)", "",
             *_table(pixel["labels"]), "",
             f"All labels: flips {_mark(flips, pairs, TARGETS['flips'], True)} of {pairs} stable (pair, label)s.", "",
             "| patch | stable (pair, label)s | flips |", "|---|---:|---:|",
             *[f"| {p} | {v['pairs']} | {_mark(v['flips'], v['pairs'], TARGETS['flips'], True)} |"
               for p, v in pixel["patches"].items()], ""]
    if looks is not None:
        flips, pairs = _overall(looks)
        lines += ["## Characters and artists: against the pixel check's character and style reads "
                  "(fmn/world/looks.py)", "",
                  "The same images. The reads abstain more than the shape check: a character by its colours and "
                  "two eyes, red eyes or a white belly; a style by an outline, dots, a fading glow or diagonal "
                  "stripes; \"plain\" and no character only on a plain shape.", "",
                  *_table(looks["labels"]), "",
                  f"All labels: flips {_mark(flips, pairs, TARGETS['flips'], True)} of {pairs} stable (pair, label)s.",
                  ""]
    if hand is None:
        return "\n".join(lines + ["## Characters and artists: no hand labels (benchmarks/judge-labels/labels.json)"])
    flips, pairs = _overall(hand)
    lines += [f"## Characters and artists: against labels by eye ({records['hand_images']} images of "
              "benchmarks/judge-labels)", "", *_table(hand["labels"]), "",
              f"All labels: flips {_mark(flips, pairs, TARGETS['flips'], True)} of {pairs} stable (pair, label)s.", ""]
    return "\n".join(lines)


def _sheet(images: list, notes: list[str], path: Path, cols: int = 6, tile: int = 160) -> None:
    """The images upscaled in a grid, each with its note above it (three lines of 26 characters)."""
    rows = max(1, -(-len(images) // cols))
    sheet = Image.new("RGB", (cols * tile, rows * (tile + 36)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, note) in enumerate(zip(images, notes)):
        x, y = i % cols * tile, i // cols * (tile + 36)
        sheet.paste(image.resize((tile, tile), Image.NEAREST), (x, y + 36))
        for line in range(3):
            draw.text((x + 2, y + 1 + 11 * line), note[26 * line:26 * (line + 1)], fill="black")
    sheet.save(path)


def _disagreements(images: list, names: list[str], truth: list[dict], judged: list[dict], path: Path,
                   n: int = 36) -> None:
    """The first n images where the judge and the pixel check disagree: which image, and on what
    ("circle +px -judge": the pixel check reads a circle, the judge does not)."""
    found = [(im, f"{name}: " + ", ".join(f"{k} {'+' if t[k] else '-'}px {'+' if j[k] else '-'}judge"
                                        for k in PIXEL_LABELS if t[k] is not None and t[k] != j[k]))
             for im, name, t, j in zip(images, names, truth, judged)]
    found = [(im, note) for im, note in found if "judge" in note][:n]
    _sheet([im for im, _ in found], [note for _, note in found], path)


def run(args) -> dict:
    preset = QUICK if args.quick else FULL
    n, steps = args.images or preset["images"], args.steps or preset["steps"]
    if not 1 <= n <= 2000 or not 1 <= steps <= 200:
        raise ValueError(f"--images {n} and --steps {steps}: use 1 to 2000 and 1 to 200.")
    pipe = load_pipeline(EMBEDDED)
    pipe.set_progress_bar_config(disable=True)
    judge = Judge.load(args.judge) if args.judge else pipe.world.judge
    if args.write_hand_set:
        write_hand_set(pipe, Path(args.hand_set), steps, lambda m: print(m, flush=True))
        return {}
    # 1. draw the prompts unedited and under each patch, on the same seeds
    methods = _methods(args.quick)
    drawn = draw_under_patches(pipe, audit_prompts(n), steps, methods, lambda m: print(m, flush=True))
    images = [im for ims in drawn.values() for im in ims]
    names = [f"{patch} #{i}" for patch, ims in drawn.items() for i in range(len(ims))]
    # 2. read every image twice: the judge, and the pixel check
    start = time.perf_counter()
    judged = [judge_labels(v) for v in judge(images)]
    truth = [pixel_labels(im) for im in images]
    looks = [look_labels(im) for im in images]
    print(f"judge and pixel check read {len(images)} images in {time.perf_counter() - start:.0f} s", flush=True)
    # 3. tally: per label, and over (unedited, patched) pairs of the same prompt and seed
    pairs = [(i, k * n + i, patch) for k, patch in enumerate(drawn) if k for i in range(n)]
    hand, hand_images = _hand(judge, Path(args.hand_set))
    records = {"device": device_name(pipe.device), "judge": judge.fingerprint, "drawn": len(images),
               "hand_images": hand_images,
               "settings": {"images": n, "steps": steps, "quick": args.quick, "patches": list(drawn)[1:]},
               "targets": TARGETS, "pixel": tally(truth, judged, PIXEL_LABELS, pairs),
               "looks": tally(looks, judged, LOOK_LABELS, pairs), "hand": hand}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(records)
    (out / "judge.md").write_text(table)
    (out / "judge.json").write_text(json.dumps(records, indent=1))
    _disagreements(images, names, truth, judged, out / "judge-disagreements.png")
    print(table, flush=True)
    return records
