"""Command line: python -m fmn generate | heatmap | erase | bench ...

    python -m fmn generate --prompt "a red circle on grass" --seed 0 --out img.png [--patch p.safetensors]
    python -m fmn heatmap --prompt "a red circle on grass" --words circle grass --out maps.png
    python -m fmn heatmap --prompt "a red circle" --words circle --patch p.safetensors --compare --out maps.png
        --json maps.json
    python -m fmn collateral --patch p.safetensors [--concepts a,b,c] --out chart.png --json collateral.json
    python -m fmn erase --concept circle --method fmn [--images DIR] [--adversarial] --out circle.safetensors
        [--figure story.png]
    python -m fmn erase --concept circle --concept Mimo --separate --out patches/ [--workers 2] [--address ray://head:10001]
    python -m fmn export circle.safetensors [more.safetensors] --to diffusers-lora|kohya|merged|single-file --out PATH
    python -m fmn attack --concept circle --patch circle.safetensors [--images DIR] [--attack-seeds 3] --out grid.png
    python -m fmn bench quality [--split report|tune] [--quick] [--workers 2] [--address ray://head:10001]
    python -m fmn bench kept [--methods text-map] [--concepts night,Vellor]
    python -m fmn bench speed --arch sd15 --random-weights [--json speed.json]
    python -m fmn bench profile --arch sd15 --random-weights [--method fmn] [--steps 8]
    python -m fmn bench erase-speed [--methods text-map,uce] | click [--concept Zubrik]
    python -m fmn bench generate-speed | heatmap-overhead
    python -m fmn bench load [--sessions 20] [--seconds 300]

Every command takes --model (default: the embedded shapes-world model). Bad input exits
with status 2 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from .cli import build_parser


def _parser() -> argparse.ArgumentParser:
    """Every command's parser (fmn/cli/, one module a command)."""
    return build_parser("python -m fmn", __doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns its exit status. Bad input (and a model that cannot be loaded) raises ValueError
    in the command: it ends as one line on stderr, `error: <why>`, and status 2, never a traceback."""
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
