"""python -m fmn heatmap: where each word of the prompt attends, on one model or before and after patches."""

from __future__ import annotations

from .options import add_generation_options, open_generation, require_count, write_json

HELP = "per-word cross-attention heatmaps"


def add_arguments(parser) -> None:
    add_generation_options(parser)
    parser.add_argument("--words", nargs="*", help="words to show (default: every word)")
    parser.add_argument("--step-range", type=int, nargs=2, metavar=("START", "END"))
    parser.add_argument("--resolutions", type=int, nargs="*", help="latent sides of the layers to use, e.g. 8 4")
    parser.add_argument("--compare", action="store_true",
                        help="rows: the original model, then with the patches, on the same seeds")
    parser.add_argument("--num-images", type=int, default=3, help="--compare: seeds seed, seed+1, ...")
    parser.add_argument("--json", help="--compare: write each word's share of the attention, before and after")


def run(args) -> None:
    """Writes the image with its words' heatmaps (the patches applied), or with --compare the before/after rows."""
    studio, settings, patches, out = open_generation(args)
    if args.json and not args.compare:
        raise ValueError("--json writes the attention shares of --compare: add --compare and a --patch.")
    if args.compare:
        _compare(args, studio, settings, patches)
        return
    result = studio.inspect(settings, args.words, args.step_range, _layer_sides(args), patches=patches)
    result.grid.save(out)
    print(out)


def _compare(args, studio, settings, patches: list[str]) -> None:
    """The prompt on N seeds, original and patched, with the words' heatmaps on one scale; their attention shares."""
    if not patches:
        raise ValueError("--compare needs a --patch to compare the original model with.")
    require_count("--num-images", args.num_images, 8)
    seeds = [args.seed + i for i in range(args.num_images)]
    step_range = tuple(args.step_range) if args.step_range else None
    result = studio.compare_prompt(settings, patches, seeds, step_range, _layer_sides(args))
    words = args.words or result.words()
    result.heatmaps(words).save(args.out)
    print(args.out)
    shares = {word: {"before": row["before"], "after": row["after"]}
              for word, (row,) in result.share_table(words).items()}
    for word, share in shares.items():
        print(f"{word}: {share['before']:.2%} of the attention -> {share['after']:.2%}")
    if args.json:
        write_json(args.json, {"prompt": settings.prompt, "seeds": seeds, "patches": args.patch, "shares": shares})


def _layer_sides(args) -> set[int] | None:
    """--resolutions as the set of latent sides whose layers count; None: every layer."""
    return set(args.resolutions) if args.resolutions else None
