"""python -m fmn.recipe train | judge | check: the embedded model's recipe, its judge on the model's own images,
and its quality gate."""

import argparse
from dataclasses import fields

from .check import run_check
from .judge import JudgeConfig, train_judge_on_model
from .train import TrainConfig, train


def _add_fields(parser, config) -> None:
    """One option per field of the config dataclass, its default the field's."""
    for f in fields(config):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)


def _config(config, args):
    return config(**{f.name: getattr(args, f.name) for f in fields(config)})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fmn.recipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (or resume training) the embedded model and its judge")
    _add_fields(t, TrainConfig)
    j = sub.add_parser("judge", help="train the judge on the model's own images, labelled by the pixel check")
    _add_fields(j, JudgeConfig)
    c = sub.add_parser("check", help="generate from held-out prompts and judge them")
    c.add_argument("--model", default="assets/fmn-shapes")
    c.add_argument("--judge", default="assets/fmn-shapes-judge")
    c.add_argument("--n", type=int, default=240)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--grid", default="check-grid.png")
    args = parser.parse_args()
    if args.command == "train":
        train(_config(TrainConfig, args))
    elif args.command == "judge":
        train_judge_on_model(_config(JudgeConfig, args))
    else:
        run_check(args.model, args.judge, args.n, args.seed, args.grid)


if __name__ == "__main__":
    main()
