"""python -m fmn collateral: what else a patch changed, every concept drawn without and with it."""

from __future__ import annotations

from pathlib import Path

from .options import (
    add_model_options,
    add_patch_option,
    load_patches,
    open_studio,
    output_path,
    progress_line,
    require_png,
    write_json,
)

HELP = "what else a patch changed: every known concept drawn without and with it"
SHOWN = 5  # the concepts most changed, printed; the chart and --json hold them all


def add_arguments(parser) -> None:
    add_patch_option(parser, "the patch(es) to check (repeatable)", required=True)
    parser.add_argument("--concepts",
                        help="comma-separated concepts to check (default: every concept the embedded model knows)")
    add_model_options(parser)
    parser.add_argument("--out", required=True, help="the chart, a PNG file")
    parser.add_argument("--json",
                        help="the numbers: per concept, presence (embedded model), pixel and attention change")


def run(args) -> None:
    """Writes the chart (and --json the numbers), prints the most changed concepts."""
    out = Path(args.out)
    require_png("--out", out, "the chart is written as a PNG file")
    studio = open_studio(args)
    patches = load_patches(studio, args.patch)
    with progress_line() as show:
        result = studio.collateral(patches, args.concepts,
                                   on_image=lambda done, total: show(f"image {done}/{total}"))
    out = output_path(out)
    result.chart().save(out)
    for effect in result.effects[:SHOWN]:
        print(_line(effect))
    if args.json:
        write_json(args.json, {"patches": args.patch, "seeds": result.seeds, "concepts": result.table()})
    print(out)


def _line(effect) -> str:
    """One concept's change in words: presence (where a judge sees it), pixels and attention."""
    seen = (f"presence {effect.presence_before:.0%} -> {effect.presence_after:.0%}, "
            if effect.presence_before is not None else "")
    return (f"{effect.concept}{' (erased)' if effect.erased else ''}: {seen}pixel change {effect.pixel_change:.3f}, "
            f"attention {effect.attention_before:.2%} -> {effect.attention_after:.2%}")
