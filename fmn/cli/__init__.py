"""The command line, one module a command (as fmn/bench/ holds one a benchmark): each has HELP (its line in
`python -m fmn --help`), add_arguments(parser) and run(args), which raises ValueError on bad input;
fmn/__main__.py turns that into one line and status 2. Options and checks several commands share: options.py."""

from __future__ import annotations

import argparse

from . import attack, bench, collateral, erase, export, generate, heatmap

COMMANDS = {  # python -m fmn <name> runs <module>.run(args); in the order --help lists them
    "generate": generate,
    "heatmap": heatmap,
    "erase": erase,
    "attack": attack,
    "collateral": collateral,
    "export": export,
    "bench": bench,
}


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """Every command's parser, with its run function as the parsed arguments' `func`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        subparser = commands.add_parser(name, help=command.HELP)
        command.add_arguments(subparser)
        subparser.set_defaults(func=command.run)
    return parser
