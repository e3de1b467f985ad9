"""python -m fmn.recipe train | check: the embedded model's recipe and its quality gate."""

import argparse
from dataclasses import fields

from .check import run_check
from .train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fmn.recipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (or resume training) the embedded model and its judge")
    for f in fields(TrainConfig):
        t.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    c = sub.add_parser("check", help="generate from held-out prompts and judge them")
    c.add_argument("--model", default="assets/fmn-shapes")
    c.add_argument("--judge", default="assets/fmn-shapes-judge")
    c.add_argument("--n", type=int, default=240)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--grid", default="check-grid.png")
    args = parser.parse_args()
    if args.command == "train":
        train(TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)}))
    else:
        run_check(args.model, args.judge, args.n, args.seed, args.grid)


if __name__ == "__main__":
    main()
