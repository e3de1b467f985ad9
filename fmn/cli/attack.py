"""python -m fmn attack: concept inversion against patches, the attack a user tries after an erasure."""

from __future__ import annotations

from pathlib import Path

from ..erase.method import MAX_STEPS
from ..generate import GenerationSettings
from .options import (
    add_model_options,
    add_patch_option,
    concept_images,
    load_patches,
    open_studio,
    output_path,
    progress_line,
    require_count,
    require_png,
)

HELP = "concept inversion against a patch: can a learned word bring the concept back?"


def add_arguments(parser) -> None:
    parser.add_argument("--concept", required=True, help="the erased concept to bring back")
    add_patch_option(parser, "the erasure patch(es) to attack (repeatable)", required=True)
    parser.add_argument("--images",
                        help="a folder of 1-20 images of the concept (default: the unedited model draws them)")
    parser.add_argument("--prompt", help="what the attacked images show (default: 'a picture of <concept>')")
    parser.add_argument("--num-images", type=int, default=8, help="seeds seed, seed+1, ...")
    parser.add_argument("--steps", type=int, default=150, help="the attack's inversion steps")
    parser.add_argument("--seed", type=int, default=0)
    add_model_options(parser)
    parser.add_argument("--out", required=True,
                        help="PNG file name; the attacked images are written as <name>-<seed>.png")


def run(args) -> None:
    """Learns words against the patches, then draws the prompt on N seeds, erased and attacked; writes the attacked
    images and prints, where the model has a judge, how often the concept came back."""
    out = Path(args.out)
    require_png("--out", out, "the attacked images are written as PNG files")
    studio = open_studio(args)
    require_count("--num-images", args.num_images, 64)
    require_count("--steps", args.steps, MAX_STEPS)
    patches = load_patches(studio, args.patch)
    images = concept_images(studio, args.images)
    with progress_line() as show:
        learned = studio.attack(args.concept, patches, images,
                                lambda step, total, loss: show(f"attack step {step}/{total}  loss {loss:.4f}"),
                                steps=args.steps, seed=args.seed)
    settings = GenerationSettings(args.prompt or f"a picture of {args.concept}")
    seeds = [args.seed + i for i in range(args.num_images)]
    erased = studio.generate(settings, seeds, patches=patches)
    attacked = studio.generate(settings, seeds, patches=patches, learned=learned)
    out = output_path(out)
    for seed, image in zip(seeds, attacked):
        image.save(out.with_stem(f"{out.stem}-{seed}"))
    print(_judged(studio, args.concept, erased, attacked))
    print(out.with_stem(f"{out.stem}-{seeds[0]}"), "...")


def _judged(studio, concept: str, erased: list, attacked: list) -> str:
    """How often the model's judge finds the concept, erased and attacked; a model without one is looked at."""
    from ..evaluate import judge_for

    judge = judge_for(studio.pipe)
    if judge is None or not judge.knows(concept):
        return "no judge for this model: look at the images"
    found = [sum(verdict.has(concept) for verdict in judge(images)) for images in (erased, attacked)]
    seeds = len(erased)
    return (f"{concept!r} found by the judge: erased {found[0]}/{seeds}, "
            f"attacked {found[1]}/{seeds} (came back on {found[1] / seeds:.0%})")
