"""python -m fmn bench <name>: runs fmn.bench.<name> (each benchmark a module with add_arguments and run)."""

from __future__ import annotations

from importlib import import_module

HELP = "benchmarks"
BENCHMARKS = {  # name: help; python -m fmn bench <name> runs fmn.bench.<name>.run(args)
    "quality": "erasure quality on the embedded model, judged: UA, IRA, CRA, leak, attack",
    "seeds": "settings compared on their means over several erasure seeds, from bench quality's tables",
    "world-free": "erasing circle on a model without world.json over erasure seeds: what it keeps (issue #37's check)",
    "kept": "what an erasure takes from the prompts it keeps: per kept image broken, the parts it lost",
    "speed": "seconds and memory of an erasure: the published recipe against ours",
    "profile": "where one erasure's time goes (torch.profiler): its phases and top operators",
    "erase-speed": "the app's Erase click for every method, before/after shown (the default's target <= 12 s, 2 cores)",
    "click": "the Erase click as a person sees it: the real app in headless Chromium, against erase-speed's click",
    "generate-speed": "seconds per image of the embedded model (target <= 3 s on 2 cores)",
    "heatmap-overhead": "generation with and without the heatmap trace (target <= 30 % slower)",
    "load": "many gradio_client sessions on one app.py server: requests served, errors, isolation, memory",
    "judge": "the judge audited on the model's own images: against a pixel check and hand labels, flips under patches",
}


def _benchmark(name: str):
    """The benchmark's module, fmn.bench.<name with underscores>."""
    return import_module(f"..bench.{name.replace('-', '_')}", __package__)


def add_arguments(parser) -> None:
    benchmarks = parser.add_subparsers(dest="bench", required=True)
    for name, help_ in BENCHMARKS.items():
        _benchmark(name).add_arguments(benchmarks.add_parser(name, help=help_))


def run(args) -> None:
    _benchmark(args.bench).run(args)
