"""python -m fmn attack: concept inversion against patches, the attack a user tries after an erasure."""

from __future__ import annotations

from pathlib import Path

from ..attack import PLAIN, Reading
from ..erase.method import MAX_STEPS
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
    parser.add_argument("--prompt", help="what the attacked images show (default: the attacker's plain prompts, "
                        f"the concept alone and in simple templates: {', '.join(t.format('C') for t in PLAIN)})")
    parser.add_argument("--num-images", type=int, default=8, help="images read per attack, on seeds 0, 1, ...")
    parser.add_argument("--attack-seeds", type=int, default=3,
                        help="attacks, each learned from its own seed (seed, seed+1, ...); the mean and range printed")
    parser.add_argument("--steps", type=int, default=150, help="the attack's inversion steps")
    parser.add_argument("--swap", action="store_true",
                        help="the encoder swap instead (nothing learned): the patch's UNet part with the unedited "
                        "text encoder, and its text-encoder part alone, as a LoRA loaded with one strength at 0")
    parser.add_argument("--seed", type=int, default=0)
    add_model_options(parser)
    parser.add_argument("--out", required=True,
                        help="PNG file name; the first attack's images are written as <name>-<n>.png")


def run(args) -> None:
    """Attacks the patches once per attack seed (`fmn.attack.recovery`, the code the quality benchmark reads the
    attack with); writes the first attack's images and prints, where the model has a judge, how often the concept
    came back, per attack and as the mean and range."""
    out = Path(args.out)
    require_png("--out", out, "the attacked images are written as PNG files")
    studio = open_studio(args)
    require_count("--num-images", args.num_images, 64)
    require_count("--attack-seeds", args.attack_seeds, 10)
    require_count("--steps", args.steps, MAX_STEPS)
    patches = load_patches(studio, args.patch)
    images = concept_images(studio, args.images)
    if args.swap:
        return _swap(studio, args, patches, out)
    seeds = [args.seed + i for i in range(args.attack_seeds)]
    with progress_line() as show:
        results = studio.recovery(args.concept, patches, _reading(args), seeds, images,
                                  lambda step, total, loss: show(f"attack step {step}/{total}  loss {loss:.4f}"),
                                  steps=args.steps)
    out = output_path(out)
    for i, image in enumerate(results[0].images):
        image.save(out.with_stem(f"{out.stem}-{i}"))
    print(_judged(args.concept, results))
    print(out.with_stem(f"{out.stem}-0"), "...")


def _swap(studio, args, patches: list[str], out: Path) -> None:
    """Each side of the patches alone: writes its images as <name>-unet-<n>.png and <name>-text-<n>.png."""
    sides = studio.swap(args.concept, patches, _reading(args))
    out = output_path(out)
    for (side, read), tag in zip(sides.items(), ("unet", "text")):
        for i, image in enumerate(read.images):
            image.save(out.with_stem(f"{out.stem}-{tag}-{i}"))
        print(f"{side}: " + ("look at the images" if read.plain is None
                             else f"{args.concept!r} came back on {read.plain:.0%}"))
    print(out.with_stem(f"{out.stem}-unet-0"), "...")


def _reading(args) -> Reading:
    """Where the attack is read: --prompt on --num-images seeds, or the plain prompts in turn."""
    if args.prompt:
        return Reading([args.prompt] * args.num_images, list(range(args.num_images)))
    return Reading.plain_prompts(args.concept.split(",")[0].strip(), args.num_images)


def _judged(concept: str, results: list) -> str:
    """How often the concept came back, per attack and over them; a model without a judge is looked at."""
    if results[0].plain is None:
        return "no judge for this model: look at the images"
    rates = [r.plain for r in results]
    lines = [f"attack seed {r.seed}: {concept!r} came back on {r.plain:.0%}" for r in results]
    lines.append(f"{concept!r} came back on {sum(rates) / len(rates):.0%} on the mean of {len(rates)} attacks "
                 f"(lowest {min(rates):.0%}, highest {max(rates):.0%})")
    return "\n".join(lines)
