"""python -m fmn generate: the prompt drawn on one seed or several, with or without patches."""

from __future__ import annotations

from .options import add_generation_options, open_generation, require_count

HELP = "generate images with seeds"


def add_arguments(parser) -> None:
    add_generation_options(parser)
    parser.add_argument("--num-images", type=int, default=1, help="seeds seed, seed+1, ...")


def run(args) -> None:
    """Writes one image to --out, or several as <name>-<seed>.<ext>; prints each file's path."""
    studio, settings, patches, out = open_generation(args)
    require_count("--num-images", args.num_images, 16)
    seeds = [args.seed + i for i in range(args.num_images)]
    images = studio.generate(settings, seeds, patches=patches)
    paths = [out] if len(images) == 1 else [out.with_stem(f"{out.stem}-{seed}") for seed in seeds]
    for image, path in zip(images, paths):
        image.save(path)
        print(path)
