"""python -m fmn erase: one patch that erases the concepts, or with --separate one patch per concept (on Ray if
asked); --figure adds the figure for talks."""

from __future__ import annotations

import sys
from pathlib import Path

from ..erase import DEFAULT_METHOD, METHODS, closed_forms, split_concepts
from ..erase.images import MAX_IMAGES
from .options import add_model_options, concept_images, open_studio, output_path, progress_line, require_png

HELP = "erase a concept; writes a patch file"


def add_arguments(parser) -> None:
    _add_method_options(parser)
    parser.add_argument("--seed", type=int, default=0)
    add_model_options(parser)
    parser.add_argument("--out", required=True,
                        help="the patch file to write (.safetensors); with --separate, a folder")
    parser.add_argument("--separate", action="store_true", help="one patch per concept, <out>/<concept>.safetensors "
                        "(patches already there for the same method and settings are kept)")
    parser.add_argument("--workers", type=int, default=1,
                        help="--separate: erase the concepts as Ray tasks on this many workers")
    parser.add_argument("--address",
                        help="--separate: a running Ray cluster's address to erase on (default: a local Ray)")
    parser.add_argument("--figure", help="also write a figure for talks (PNG: before/after, heatmaps, what else "
                        "changed) and the heatmap building up (the same name, .gif)")
    parser.add_argument("--check", help="--figure on a model without a world.json: the concepts whose change to "
                        "chart, comma separated")


def _add_method_options(parser) -> None:
    """What to erase, with which method, and the method's settings."""
    parser.add_argument("--concept", action="append", required=True, help="what to erase (repeatable)")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS))
    parser.add_argument("--images", help=f"a folder of 1-{MAX_IMAGES} images of the concept (every method learns "
                        "the word they show, then erases it too)")
    parser.add_argument("--replace-with", help="steer toward this concept instead of nothing (concept correction)")
    parser.add_argument("--keep", help="a comma list of words to hold as they are (beside the model's own words "
                        "nearest the concept)")
    parser.add_argument("--steps", type=int, help="training steps (default: the method's)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the method's)")
    parser.add_argument("--push", type=float, help="uce, rece, text-map: how far past the guide the concept's token "
                        "maps (default 2; 0: onto it, as the papers)")
    parser.add_argument("--keep-weight", type=float, help="uce, rece, text-map: the weight of the keep prompts' "
                        "rows against the concept's (default: text-map 4, uce and rece 1; higher keeps more of "
                        "everything else and erases less)")
    parser.add_argument("--prior", help="uce, rece, text-map: a comma list of concepts the model draws when their "
                        "word is missing (a real model's 'person'; by default none for uce and rece, every concept "
                        "for text-map): their later rows are pushed too")
    parser.add_argument("--unet-edit", choices=closed_forms(),
                        help="text-map: also edit the UNet's cross-attention with this closed form, in the same "
                        "patch, so that it erases with either part off (an encoder swap); it costs kept concepts "
                        "(docs/methods.md)")
    parser.add_argument("--frozen-share", type=float,
                        help="text-map: the share of the text encoder's first blocks left as they are (default 0.34; "
                        "at 0 colours erase more and styles come back more under the attack: docs/methods.md)")
    parser.add_argument("--padding-rows", type=int,
                        help="text-map on SD 1.x/2.x: the padding rows a step reads after its longest prompt (default: "
                        "all of them; at 8 it erases in about half the time and keeps less: docs/methods.md)")
    parser.add_argument("--hold-learned", action="store_const", const=True,
                        help="text-map with --images: also hold the words nearest the word learned from the images "
                        "(what they show beside the concept); it keeps more and the attack brings back more "
                        "(docs/methods.md)")
    parser.add_argument("--adversarial", action="store_true",
                        help="trained methods: also erase the words an attacker learns against the patch "
                        "(slower, more robust)")


def run(args) -> None:
    """Writes the patch (prints its path) and --figure's PNG and GIF; with --separate, one patch per concept."""
    if args.separate:
        _erase_separately(args)
        return
    if args.workers != 1 or args.address:
        raise ValueError("--workers and --address spread concepts over workers: add --separate (one patch each).")
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: a patch is written as a .safetensors file.")
    if args.figure:
        require_png("--figure", args.figure, "the figure is written as a PNG file")
    studio = open_studio(args)
    if args.figure and studio.pipe.world is None and not args.check:
        raise ValueError("--figure on a model without a world.json needs --check 'a, b, c': the concepts to chart.")
    patch_id = _erase(args, studio)
    out = output_path(out)
    studio.patches[patch_id].save(out)
    print(out)
    if args.figure:
        _write_figure(args, studio, patch_id)


def _settings(args, **given) -> dict:
    """The method's settings from the command line: --steps, --lr, --push, --keep-weight, --prior, --unet-edit,
    --frozen-share, --padding-rows, --hold-learned and those `given`, where set (unset: the method's default), then
    --adversarial and --keep."""
    prior = None if args.prior is None else split_concepts(args.prior)
    given = dict(steps=args.steps, lr=args.lr, push=args.push, keep_weight=args.keep_weight, prior=prior,
                 unet_edit=args.unet_edit, frozen_share=args.frozen_share, padding_rows=args.padding_rows,
                 hold_learned=args.hold_learned, **given)
    settings = {name: value for name, value in given.items() if value is not None}
    if args.adversarial:
        settings["adversarial"] = True
    settings["keep"] = split_concepts(args.keep or "")
    return settings


def _erase(args, studio) -> str:
    """Erases into one patch, saying on stderr what it holds and each step's loss; returns the patch's id."""
    images = concept_images(studio, args.images)
    if args.images and images is None:
        print(f"note: no images in {args.images}; the model draws its own references.", file=sys.stderr)
    elif images is not None:
        print(f"learning from {len(images)} images of {args.concept[0]!r}, then erasing", file=sys.stderr)
    if args.hold_learned and images is None:
        raise ValueError("--hold-learned holds the words nearest the word learned from the images: give --images, "
                         "a folder of images of the concept.")
    settings = _settings(args)
    held = studio.held(args.concept, settings["keep"], args.replace_with)
    print(f"holding: {', '.join(held.words) or 'nothing in particular'}"
          + (f"; left alone as maybe the concept in other words: {', '.join(held.near)}" if held.near else ""),
          file=sys.stderr)
    with progress_line() as show:
        patch_id = studio.erase(args.concept, args.method, images, args.replace_with,
                                lambda step: show(f"step {step.step}/{step.total}  loss {step.loss:.4f}  "
                                                  f"{step.elapsed:.1f}s"),
                                seed=args.seed, **settings)
    # text-map given images with --hold-learned also held the words nearest the word it learned from them
    more = [w for w in studio.patches[patch_id].settings.get("preserve", []) if w not in held.words]
    if more:
        print(f"held too, nearest the word learned from the images: {', '.join(more)}", file=sys.stderr)
    return patch_id


def _write_figure(args, studio, patch_id: str) -> None:
    """The figure for talks (PNG) and the heatmap building up (GIF); prints both paths."""
    from ..figure import write_figure

    comparison = studio.compare(args.concept, [patch_id])
    collateral = studio.collateral([patch_id], args.check)
    _, gif = write_figure(comparison, collateral, comparison.word_for(args.concept), args.figure)
    print(args.figure)
    print(gif)


def _erase_separately(args) -> None:
    """One patch per concept in the --out folder (on Ray with --workers or --address); prints each patch's path."""
    from ..erase.separate import erase_separately

    if args.images or args.figure:
        raise ValueError("--separate erases each concept on its own: --images and --figure are for one concept.")
    settings = _settings(args, seed=args.seed)
    for path in erase_separately(args.concept, args.method, args.out, args.model, args.config, args.device,
                                 args.replace_with, args.workers, args.address,
                                 lambda line: print(line, file=sys.stderr, flush=True), **settings):
        print(path)
