"""Command line: python -m fmn generate | heatmap | erase | bench ...

    python -m fmn generate --prompt "a red circle on grass" --seed 0 --out img.png [--patch p.safetensors]
    python -m fmn heatmap --prompt "a red circle on grass" --words circle grass --out maps.png
    python -m fmn heatmap --prompt "a red circle" --words circle --patch p.safetensors --compare --out maps.png --json maps.json
    python -m fmn collateral --patch p.safetensors [--concepts a,b,c] --out chart.png --json collateral.json
    python -m fmn erase --concept circle --method fmn [--images DIR] [--adversarial] --out circle.safetensors [--figure story.png]
    python -m fmn erase --concept circle --concept Mimo --separate --out patches/ [--workers 2] [--address ray://head:10001]
    python -m fmn export circle.safetensors [more.safetensors] --to diffusers-lora|kohya|merged|single-file --out PATH
    python -m fmn attack --concept circle --patch circle.safetensors [--images DIR] --num-images 8 --out grid.png
    python -m fmn bench quality [--quick] [--json quality.json] [--workers 2] [--address ray://head:10001]
    python -m fmn bench speed --arch sd15 --random-weights [--json speed.json]
    python -m fmn bench profile --arch sd15 --random-weights [--method fmn] [--steps 8]
    python -m fmn bench erase-speed | generate-speed | heatmap-overhead
    python -m fmn bench load [--sessions 20] [--seconds 300]

Every command takes --model (default: the embedded shapes-world model). Bad input exits
with status 2 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import import_module
from pathlib import Path

from .erase import DEFAULT_METHOD, METHODS, split_concepts
from .erase.method import MAX_STEPS
from .export import FORMATS
from .generate import GenerationSettings


BENCHMARKS = {  # python -m fmn bench <name> runs fmn.bench.<name>.run(args)
    "quality": "erasure quality on the embedded model, judged: UA, IRA, CRA, leak, attack",
    "speed": "seconds and memory of an erasure: the published recipe against ours",
    "profile": "where one erasure's time goes (torch.profiler): its phases and top operators",
    "erase-speed": "one erasure as the app's Erase button runs it, before/after included (target <= 60 s on 2 cores)",
    "generate-speed": "seconds per image of the embedded model (target <= 3 s on 2 cores)",
    "heatmap-overhead": "generation with and without the heatmap trace (target <= 30 % slower)",
    "load": "many gradio_client sessions on one app.py server: requests served, errors, isolation, memory",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fmn", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("generate", "generate images with seeds"), ("heatmap", "per-word cross-attention heatmaps")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--prompt", required=True)
        p.add_argument("--negative-prompt", default="")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--steps", type=int, default=25)
        p.add_argument("--guidance", type=float, default=5.0)
        p.add_argument("--width", type=int)
        p.add_argument("--height", type=int)
        p.add_argument("--model", default=None, help="diffusers folder, .safetensors file or hub id (default: embedded)")
        p.add_argument("--config", default=None, help="for a .safetensors file: the diffusers folder or hub id of its architecture")
        p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
        p.add_argument("--out", required=True, help="PNG file to write")
    for name in ("generate", "heatmap"):
        sub.choices[name].add_argument("--patch", action="append", default=[], help="an erasure patch to apply (repeatable)")
    sub.choices["generate"].add_argument("--num-images", type=int, default=1, help="seeds seed, seed+1, ...")
    e = sub.add_parser("erase", help="erase a concept; writes a patch file")
    e.add_argument("--concept", action="append", required=True, help="what to erase (repeatable)")
    e.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS))
    e.add_argument("--images", help="a folder of 1-20 images of the concept (fmn, text-encoder)")
    e.add_argument("--replace-with", help="steer toward this concept instead of nothing (concept correction)")
    e.add_argument("--keep", help="a comma list of words to hold as they are (beside the model's own words nearest the concept)")
    e.add_argument("--steps", type=int, help="training steps (default: the method's)")
    e.add_argument("--lr", type=float, help="learning rate (default: the method's)")
    e.add_argument("--push", type=float, help="uce, rece, text-map: how far past the guide the concept's token maps "
                   "(default 2; 0: onto it, as the papers)")
    e.add_argument("--prior", help="uce, rece, text-map: a comma list of concepts the model draws when their word is missing (a "
                   "real model's 'person'; on the embedded model by default its shapes, text-map: every concept): "
                   "their later rows are pushed too")
    e.add_argument("--adversarial", action="store_true",
                   help="trained methods: also erase the words an attacker learns against the patch (slower, more robust)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--model", default=None, help="diffusers folder, .safetensors file or hub id (default: embedded)")
    e.add_argument("--config", default=None, help="for a .safetensors model: its diffusers folder or hub id")
    e.add_argument("--device", default=None)
    e.add_argument("--out", required=True, help="the patch file to write (.safetensors); with --separate, a folder")
    e.add_argument("--separate", action="store_true", help="one patch per concept, <out>/<concept>.safetensors "
                   "(patches already there for the same method and settings are kept)")
    e.add_argument("--workers", type=int, default=1, help="--separate: erase the concepts as Ray tasks on this many workers")
    e.add_argument("--address", help="--separate: a running Ray cluster's address to erase on (default: a local Ray)")
    e.add_argument("--figure", help="also write a figure for talks (PNG: before/after, heatmaps, what else changed) "
                                    "and the heatmap building up (the same name, .gif)")
    e.add_argument("--check", help="--figure on a model without a world.json: the concepts whose change to chart, comma separated")
    a = sub.add_parser("attack", help="concept inversion against a patch: can a learned word bring the concept back?")
    a.add_argument("--concept", required=True, help="the erased concept to bring back")
    a.add_argument("--patch", action="append", required=True, help="the erasure patch(es) to attack (repeatable)")
    a.add_argument("--images", help="a folder of 1-20 images of the concept (default: the unedited model draws them)")
    a.add_argument("--prompt", help="what the attacked images show (default: 'a picture of <concept>')")
    a.add_argument("--num-images", type=int, default=8, help="seeds seed, seed+1, ...")
    a.add_argument("--steps", type=int, default=150, help="the attack's inversion steps")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--model", default=None, help="diffusers folder, .safetensors file or hub id (default: embedded)")
    a.add_argument("--config", default=None, help="for a .safetensors model: its diffusers folder or hub id")
    a.add_argument("--device", default=None)
    a.add_argument("--out", required=True, help="PNG file name; the attacked images are written as <name>-<seed>.png")
    sub.choices["heatmap"].add_argument("--words", nargs="*", help="words to show (default: every word)")
    sub.choices["heatmap"].add_argument("--step-range", type=int, nargs=2, metavar=("START", "END"))
    sub.choices["heatmap"].add_argument("--resolutions", type=int, nargs="*", help="latent sides of the layers to use, e.g. 8 4")
    sub.choices["heatmap"].add_argument("--compare", action="store_true",
                                        help="rows: the original model, then with the patches, on the same seeds")
    sub.choices["heatmap"].add_argument("--num-images", type=int, default=3, help="--compare: seeds seed, seed+1, ...")
    sub.choices["heatmap"].add_argument("--json", help="--compare: write each word's share of the attention, before and after")
    c = sub.add_parser("collateral", help="what else a patch changed: every known concept drawn without and with it")
    c.add_argument("--patch", action="append", required=True, help="the patch(es) to check (repeatable)")
    c.add_argument("--concepts", help="comma-separated concepts to check (default: every concept the embedded model knows)")
    c.add_argument("--model", default=None, help="diffusers folder, .safetensors file or hub id (default: embedded)")
    c.add_argument("--config", default=None, help="for a .safetensors model: its diffusers folder or hub id")
    c.add_argument("--device", default=None)
    c.add_argument("--out", required=True, help="the chart, a PNG file")
    c.add_argument("--json", help="the numbers: per concept, presence (embedded model), pixel and attention change")
    x = sub.add_parser("export", help="write patches, stacked, as a LoRA for diffusers, ComfyUI or A1111, or a merged model")
    x.add_argument("patch", nargs="+", help="the patch file(s) to export")
    x.add_argument("--to", required=True, help="; ".join(f"{k}: {v}" for k, v in FORMATS.items()))
    x.add_argument("--model", default=None, help="the model the patches were made on (default: embedded)")
    x.add_argument("--config", default=None, help="for a .safetensors model: its diffusers folder or hub id")
    x.add_argument("--out", required=True, help="a .safetensors file, or a new folder for --to merged")
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    for name, help_ in BENCHMARKS.items():
        import_module(f".bench.{name.replace('-', '_')}", __package__).add_arguments(bench.add_parser(name, help=help_))
    return parser


def _erase(args, studio) -> None:
    from .erase.images import load_concept_images
    from .generate import native_size

    images = load_concept_images(args.images, native_size(studio.pipe)) if args.images else None
    if args.images and images is None:
        print(f"note: no images in {args.images}; the model draws its own references.", file=sys.stderr)
    overrides = {k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("push", args.push)) if v is not None}
    if args.prior is not None:
        overrides["prior"] = split_concepts(args.prior)
    if args.adversarial:
        overrides["adversarial"] = True
    overrides["keep"] = split_concepts(args.keep or "")
    held = studio.held(args.concept, overrides["keep"], args.replace_with)
    print(f"holding: {', '.join(held.words) or 'nothing in particular'}"
          + (f"; left alone as maybe the concept in other words: {', '.join(held.near)}" if held.near else ""), file=sys.stderr)

    def report(p):
        print(f"\rstep {p.step}/{p.total}  loss {p.loss:.4f}  {p.elapsed:.1f}s", end="", file=sys.stderr, flush=True)

    try:
        patch_id = studio.erase(args.concept, args.method, images, args.replace_with, report, seed=args.seed, **overrides)
    finally:
        print(file=sys.stderr)  # ends the progress line, so that an error (a NaN loss) gets a line of its own
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    studio.patches[patch_id].save(out)
    print(out)
    if args.figure:
        from .figure import write_figure

        comparison = studio.compare(args.concept, [patch_id])
        collateral = studio.collateral([patch_id], args.check)
        _, gif = write_figure(comparison, collateral, comparison.word_for(args.concept), args.figure)
        print(args.figure)
        print(gif)


def _erase_separately(args) -> None:
    from .erase.separate import erase_separately

    if args.images or args.figure:
        raise ValueError("--separate erases each concept on its own: --images and --figure are for one concept.")
    overrides = {k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("seed", args.seed)) if v is not None}
    if args.adversarial:
        overrides["adversarial"] = True
    overrides["keep"] = split_concepts(args.keep or "")
    for path in erase_separately(args.concept, args.method, args.out, args.model, args.config, args.device, args.replace_with,
                                 args.workers, args.address, lambda line: print(line, file=sys.stderr, flush=True), **overrides):
        print(path)


def _attack(args, studio) -> None:
    """Learns words against the patches, then draws the prompt on N seeds, erased and attacked;
    writes the attacked images and, where the model has a judge, how often the concept came back."""
    from .erase.images import load_concept_images
    from .evaluate import judge_for
    from .generate import native_size

    if not 1 <= args.num_images <= 64:
        raise ValueError(f"--num-images {args.num_images}: use 1 to 64.")
    if not 1 <= args.steps <= MAX_STEPS:
        raise ValueError(f"--steps {args.steps}: use 1 to {MAX_STEPS}.")
    patches = [studio.load_patch(p) for p in args.patch]
    images = load_concept_images(args.images, native_size(studio.pipe)) if args.images else None

    def report(step, total, loss):
        print(f"\rattack step {step}/{total}  loss {loss:.4f}", end="", file=sys.stderr, flush=True)

    try:
        learned = studio.attack(args.concept, patches, images, report, steps=args.steps, seed=args.seed)
    finally:
        print(file=sys.stderr)
    settings = GenerationSettings(args.prompt or f"a picture of {args.concept}")
    seeds = [args.seed + i for i in range(args.num_images)]
    erased = studio.generate(settings, seeds, patches=patches)
    attacked = studio.generate(settings, seeds, patches=patches, learned=learned)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed, image in zip(seeds, attacked):
        image.save(out.with_stem(f"{out.stem}-{seed}"))
    judge = judge_for(studio.pipe)
    if judge is not None and judge.knows(args.concept):
        found = [sum(v.has(args.concept) for v in judge(side)) for side in (erased, attacked)]
        print(f"{args.concept!r} found by the judge: erased {found[0]}/{len(seeds)}, "
              f"attacked {found[1]}/{len(seeds)} (came back on {found[1] / len(seeds):.0%})")
    else:
        print("no judge for this model: look at the images")
    print(out.with_stem(f"{out.stem}-{seeds[0]}"), "...")


def _heatmap_compare(args, studio, settings, patches) -> None:
    """The prompt on N seeds, original and patched, with the words' heatmaps on one scale; their attention shares."""
    if not patches:
        raise ValueError("--compare needs a --patch to compare the original model with.")
    if not 1 <= args.num_images <= 8:
        raise ValueError(f"--num-images {args.num_images}: use 1 to 8.")
    seeds = [args.seed + i for i in range(args.num_images)]
    step_range = tuple(args.step_range) if args.step_range else None
    result = studio.compare_prompt(settings, patches, seeds, step_range, set(args.resolutions) if args.resolutions else None)
    words = args.words or result.words()
    result.heatmaps(words).save(args.out)
    print(args.out)
    shares = result.share_table(words)
    for word, (row,) in shares.items():
        print(f"{word}: {row['before']:.2%} of the attention -> {row['after']:.2%}")
    if args.json:
        _write_json(args.json, {"prompt": settings.prompt, "seeds": seeds, "patches": args.patch,
                                "shares": {word: {"before": row["before"], "after": row["after"]} for word, (row,) in shares.items()}})


def _collateral(args, studio) -> None:
    patches = [studio.load_patch(p) for p in args.patch]

    def report(i, n):
        print(f"\rconcept {i}/{n}", end="", file=sys.stderr, flush=True)

    try:
        result = studio.collateral(patches, args.concepts, on_concept=report)
    finally:
        print(file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.chart().save(out)
    for e in result.effects[:5]:
        seen = f"presence {e.presence_before:.0%} -> {e.presence_after:.0%}, " if e.presence_before is not None else ""
        print(f"{e.concept}{' (erased)' if e.erased else ''}: {seen}pixel change {e.pixel_change:.3f}, "
              f"attention {e.attention_before:.2%} -> {e.attention_after:.2%}")
    if args.json:
        _write_json(args.json, {"patches": args.patch, "seeds": result.seeds, "concepts": result.table()})
    print(out)


def _write_json(path: str, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    print(path)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .studio import Studio  # heavy imports after argument parsing, so --help is instant

    try:
        if args.command == "bench":
            import_module(f".bench.{args.bench.replace('-', '_')}", __package__).run(args)
            return 0
        out = Path(args.out)
        if args.command == "export":
            if args.to not in FORMATS:  # before the model loads
                raise ValueError(f"--to {args.to}: use one of {', '.join(FORMATS)}.")
            studio = Studio(args.model, device="cpu", config=args.config)
            print(studio.export([studio.load_patch(p) for p in args.patch], args.to, out))
            return 0
        if args.command == "attack":
            if out.suffix.lower() != ".png":
                raise ValueError(f"--out {out}: the attacked images are written as PNG files (name.png).")
            _attack(args, Studio(args.model, device=args.device, config=args.config))
            return 0
        if args.command == "collateral":
            if out.suffix.lower() != ".png":
                raise ValueError(f"--out {out}: the chart is written as a PNG file (name.png).")
            _collateral(args, Studio(args.model, device=args.device, config=args.config))
            return 0
        if args.command == "erase" and args.separate:
            _erase_separately(args)
            return 0
        if args.command == "erase":
            if args.workers != 1 or args.address:
                raise ValueError("--workers and --address spread concepts over workers: add --separate (one patch each).")
            if out.suffix != ".safetensors":
                raise ValueError(f"--out {out}: a patch is written as a .safetensors file.")
            if args.figure and Path(args.figure).suffix.lower() != ".png":
                raise ValueError(f"--figure {args.figure}: the figure is written as a PNG file (name.png).")
            studio = Studio(args.model, device=args.device, config=args.config)
            if args.figure and studio.pipe.world is None and not args.check:
                raise ValueError("--figure on a model without a world.json needs --check 'a, b, c': the concepts to chart.")
            _erase(args, studio)
            return 0
        settings = GenerationSettings(args.prompt, args.negative_prompt, args.seed, args.steps, args.guidance,
                                      args.width, args.height)
        if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
            raise ValueError(f"--out {out}: use a .png, .jpg or .webp file name.")
        studio = Studio(args.model, device=args.device, config=args.config)
        patches = [studio.load_patch(p) for p in args.patch]
        for warning in studio.warnings(settings):
            print(f"warning: {warning}", file=sys.stderr)
        out.parent.mkdir(parents=True, exist_ok=True)
        if args.command == "generate":
            if not 1 <= args.num_images <= 16:
                raise ValueError(f"--num-images {args.num_images}: use 1 to 16.")
            images = studio.generate(settings, [args.seed + i for i in range(args.num_images)], patches=patches)
            paths = [out] if len(images) == 1 else [out.with_stem(f"{out.stem}-{args.seed + i}") for i in range(len(images))]
            for image, path in zip(images, paths):
                image.save(path)
                print(path)
        elif args.json and not args.compare:
            raise ValueError("--json writes the attention shares of --compare: add --compare and a --patch.")
        elif args.compare:
            _heatmap_compare(args, studio, settings, patches)
        else:
            result = studio.inspect(settings, args.words, args.step_range, set(args.resolutions) if args.resolutions else None,
                                    patches=patches)
            result.grid.save(out)
            print(out)
    except ValueError as err:  # bad input, a model that cannot be loaded: one clear line
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
