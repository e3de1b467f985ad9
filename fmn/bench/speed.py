"""Speed of an erasure, the published recipe against ours:  python -m fmn bench speed

    python -m fmn bench speed --arch sd15 --random-weights [--recipe both|reference|ours]
        [--methods fmn,esd-x,esd-u,text-encoder,uce] [--steps N] [--reference-steps N] [--adversarial]
        [--concept circle | --concept a,b,c,...] [--json out.json] [--out benchmarks/results]

Speed does not depend on weight values, so the model is SD 1.5's architecture with random
weights (`fmn.tiny.sd15_pipeline`; `--arch tiny`, the default on a CPU, runs in seconds), or
SDXL base's (`--arch sdxl`, for a GPU; `--arch sdxl-tiny` on a CPU), our recipe only; or SD3-medium's
(`--arch sd3`) or FLUX.1-dev's (`--arch flux`), made on the GPU in its dtype (`sd3-tiny`, `flux-tiny` on a CPU), our
recipe and the methods that run on transformers (esd-x, uce, rece, text-map), with one image's generation timed without
and with the heatmap trace.
Each method erases one concept under both recipes in the same run, with the same number of
training steps, so the speed-up is a ratio of per-step cost plus the cost of the references:

- reference, the published code's way: fp32; a second, deep-copied frozen model held in
  memory for the frozen predictions; batch 1; diffusers' classic attention; ESD without a
  trajectory cache (each step the frozen model samples a fresh trajectory to a random step).
- ours, the project's defaults: bf16 on CUDA (fp32 on a CPU); the frozen model is the same
  model with the adapter switched off; batches; cached ESD trajectories; SDPA attention.

"Click → before/after" is what the app's Erase button costs: the erasure, then the images of
its comparison (`Studio.compare`): every probe prompt on seeds 0-2, without and with the patch.

Each trained erasure is also split into its set-up (the references, before step 1) and its mean
time per training step. The reference recipe of ESD samples a fresh trajectory every step and
takes many minutes at ESD's 400 steps on SD 1.5; `--reference-steps N` measures the reference
recipe on N steps only and projects its erasure at our steps as set-up + steps x per-step time
(marked "projected"); its before/after comparison, the same images for every method, is then left out.
Rows are written after each measurement, so a run cut short keeps what it measured.
`--adversarial` adds a row for each trained method in adversarial mode (ours only); a comma list
in `--concept` times a mass erasure: every concept in one patch.
"""

from __future__ import annotations

import gc
import itertools
import json
import sys
import tempfile
import time
from contextlib import nullcontext
from copy import deepcopy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor

from ..attention import trace
from ..diffusion import Text, encode, latent_noise
from ..erase import METHODS, make_method, make_patch
from ..erase.esd import ESD
from ..erase.method import ErasureMethod
from ..evaluate import probe_prompts
from ..generate import MAX_STEPS, GenerationSettings, generate, native_size
from ..models import is_transformer, pick_device
from ..patch import activate, detach, frozen
from ..tiny import flux_pipeline, sd3_pipeline, sd15_pipeline, sdxl_pipeline
from .measure import Peak, device_name

__all__ = ["add_arguments", "run", "TARGETS", "reference_recipe", "recipe_method", "bench_pipeline", "PaperESD"]

SEEDS = [0, 1, 2]  # the app's before/after seeds
GB = 1e9


@dataclass(frozen=True)
class Target:
    """What one H100 should reach at SD 1.5 size with our recipe."""

    erase_s: float
    memory_gb: float | None = None
    click_s: float | None = None  # erase + the before/after comparison

    def __str__(self) -> str:
        parts = [f"≤ {self.erase_s:g} s"]
        parts += [f"≤ {self.memory_gb:g} GB"] if self.memory_gb else []
        parts += [f"click ≤ {self.click_s:g} s"] if self.click_s else []
        return ", ".join(parts)

    def met(self, row: dict) -> bool:
        return (row["erase_s"] <= self.erase_s
                and (self.memory_gb is None or row["peak_memory_bytes"] <= self.memory_gb * GB)
                and (self.click_s is None or row["click_s"] <= self.click_s))


# The click target is the app's: its default method (fmn) and the closed form
ARCHS = {  # random-weight models built from configs, by --arch: made on (device, dtype)
    "sd15": lambda *_: sd15_pipeline("full"), "tiny": lambda *_: sd15_pipeline("tiny"),
    "sdxl": lambda *_: sdxl_pipeline("full"), "sdxl-tiny": lambda *_: sdxl_pipeline("tiny"),
    "sd3": lambda device, dtype: sd3_pipeline("full", device=device, dtype=dtype),
    "sd3-tiny": lambda *_: sd3_pipeline("tiny"),
    "flux": lambda device, dtype: flux_pipeline("full", device=device, dtype=dtype),
    "flux-tiny": lambda *_: flux_pipeline("tiny"),
}
TRANSFORMER_ARCHS = ("sd3", "sd3-tiny", "flux", "flux-tiny")  # SD3-medium's and FLUX.1-dev's shapes, our recipe only
TARGETS = {  # per arch, on a GPU: SD 1.5's (issue #40), FLUX.1-dev's closed forms (issue #41)
    "sd15": {"fmn": Target(10, 8, 30), "esd-x": Target(60, 10), "uce": Target(2, click_s=30)},
    "flux": {"uce": Target(2), "rece": Target(2)},
}
TRACE_OVERHEAD = {"flux": 0.20}  # the heatmap trace's cost over one image's generation, on a GPU (issue #41)


class PaperReferences(NamedTuple):
    """What the paper's ESD keeps: the frozen model and the prompts it samples from (no word learned)."""

    unedited: StableDiffusionPipeline
    concepts: Text
    guide: Text
    learned: None = None


class PaperESD:
    """ESD as the paper trains it (mixed into an ESD method): no trajectory cache; every step the
    frozen model samples `batch` fresh trajectories of one concept to a random step and predicts there."""

    def references(self, pipe: StableDiffusionPipeline, generator: torch.Generator) -> PaperReferences:
        return PaperReferences(pipe, encode(pipe, self.concepts), encode(pipe, [self.config.guide]))

    @torch.no_grad()
    def draw(self, refs: PaperReferences, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        unedited, concepts, guide = refs.unedited, refs.concepts, refs.guide
        which = int(torch.randint(0, len(concepts), (1,), generator=generator))
        stop = int(torch.randint(0, self.config.sample_steps, (1,), generator=generator))
        with frozen(unedited):
            z = latent_noise(unedited, self.config.batch, generator)
            for i, (t, z, eps_g, eps_c) in enumerate(self.trajectory(unedited, z, guide, concepts[which:which + 1])):
                if i == stop:
                    break
        return z, t.repeat(len(z)), eps_g, eps_c, torch.full((len(z),), which)


class FrozenCopy:
    """A method as the published code runs it: its references come from a deep copy of the UNet and
    text encoder, held (inside the references) until the erasure ends."""

    def __init__(self, method: ErasureMethod):
        self.method, self.name, self.config, self.concepts = method, method.name, method.config, method.concepts
        self.trains, self.learns_new_words = method.trains, method.learns_new_words

    def targets(self, pipe: StableDiffusionPipeline) -> dict[str, list[str]]:
        return self.method.targets(pipe)

    def references(self, pipe: StableDiffusionPipeline, generator: torch.Generator) -> tuple:
        copy = StableDiffusionPipeline(**{**pipe.components, "unet": deepcopy(pipe.unet),
                                          "text_encoder": deepcopy(pipe.text_encoder)}, requires_safety_checker=False)
        copy.set_progress_bar_config(disable=True)
        return copy, self.method.references(copy, generator)

    def loss(self, pipe: StableDiffusionPipeline, refs: tuple, generator: torch.Generator) -> torch.Tensor:
        return self.method.loss(pipe, refs[1], generator)


def reference_recipe(method: ErasureMethod) -> ErasureMethod:
    """The published recipe of a method: batch 1, ESD without its cache, and a frozen copy for
    a trained method (fp32 and classic attention are the pipeline's, `_pipeline`)."""
    cls = type(method)
    if isinstance(method, ESD):
        cls = type(f"Paper{cls.__name__}", (PaperESD, cls), {})
    config = replace(method.config, batch=1) if hasattr(method.config, "batch") else method.config
    paper = cls(method.concepts, config, method.images)
    return FrozenCopy(paper) if paper.trains else paper


def add_arguments(parser) -> None:
    parser.add_argument("--arch", choices=list(ARCHS), help="model size (default: sd15 on CUDA, else tiny); "
                        "sdxl, sd3 (SD3-medium), flux (FLUX.1-dev) and their -tiny run our recipe only (the published "
                        "recipes are SD 1.x code); sd3 and flux also time generation and the heatmap trace")
    parser.add_argument("--random-weights", action="store_true",
                        help="build the model from its config with random weights (required: the only mode so far)")
    parser.add_argument("--recipe", choices=["both", "reference", "ours"],
                        help="default: ours on SD3 and FLUX (no published recipe there), else both")
    parser.add_argument("--methods", help="comma-separated (default: all that run on the arch)")
    parser.add_argument("--steps", type=int, help="training steps of every trained method (default: each method's)")
    parser.add_argument("--reference-steps", type=int,
                        help="the reference recipe trains this many steps and its erasure at --steps is projected")
    parser.add_argument("--concept", default="circle", help="a concept, or a comma-separated list erased in one patch")
    parser.add_argument("--adversarial", action="store_true",
                        help="also each trained method in adversarial mode (ours; rows '<method> adversarial')")
    parser.add_argument("--probe-steps", type=int, default=25, help="steps of the before/after images (the app's: 25)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--out", default="benchmarks/results", help="folder for speed-<device>.md")


def denoiser(pipe) -> torch.nn.Module:
    """The model that denoises: SD3's and FLUX's transformer, or the UNet."""
    return pipe.transformer if is_transformer(pipe) else pipe.unet


class HeldWeights:
    """A progress callback that, at the first step, counts the bytes of the distinct weights of the
    pipeline (with its adapter) and of every model of its classes made since: any frozen copy.
    Models that other code held before are left out. Its own time is kept in `seconds`, to be
    taken out of the erasure's."""

    def __init__(self, pipe):
        models = (denoiser(pipe), pipe.text_encoder, pipe.vae)
        self.classes = {type(m) for m in models}
        own = {id(m) for m in models}
        self.before = {id(o) for o in gc.get_objects() if type(o) in self.classes} - own
        self.bytes, self.seconds = None, 0.0

    def __call__(self, progress) -> None:
        if self.bytes is not None:
            return
        start = time.perf_counter()
        seen, total = set(), 0
        for model in (o for o in gc.get_objects() if type(o) in self.classes and id(o) not in self.before):
            for t in itertools.chain(model.parameters(), model.buffers()):
                if t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel() * t.element_size()
        self.bytes, self.seconds = total, time.perf_counter() - start


class StepClock:
    """A progress callback that splits a trained erasure into its set-up (before step 1) and its mean
    seconds per training step, leaving out the time `held` spent counting weights."""

    def __init__(self, held: HeldWeights):
        self.held, self.first, self.last = held, None, None

    def __call__(self, progress) -> None:
        self.first, self.last = self.first or progress, progress

    @property
    def step_s(self) -> float | None:
        if self.first is None or self.last.step == self.first.step:
            return None
        return (self.last.elapsed - self.first.elapsed - self.held.seconds) / (self.last.step - self.first.step)

    @property
    def setup_s(self) -> float | None:
        return None if self.step_s is None else self.first.elapsed - self.step_s


def _before_after(pipe: StableDiffusionPipeline, concept: str, patch: str, steps: int) -> None:
    """The images of the app's comparison: every probe prompt on the same seeds, without and with the patch
    (the judge's scores, for the embedded model only, are left out)."""
    for probe in probe_prompts(pipe, concept.split(",")[0]):
        for active in ([], [patch]):
            activate(pipe, active)
            generate(pipe, GenerationSettings(probe.prompt, steps=steps), SEEDS)
    activate(pipe, [])


def bench_pipeline(arch: str, recipe: str, device: torch.device) -> StableDiffusionPipeline:
    dtype = torch.float32 if recipe == "reference" else pick_device(str(device))[1]
    pipe = ARCHS[arch](device, dtype).to(device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    if recipe == "reference" and not is_transformer(pipe):  # the explicit softmax of the original code, not SDPA
        for model in (pipe.unet, pipe.vae):
            model.set_attn_processor(AttnProcessor())
    pipe.set_progress_bar_config(disable=True)
    side = native_size(pipe)
    pipe("warm-up", num_inference_steps=2, height=side, width=side, output_type="latent")  # CUDA context, kernels
    return pipe


def _generation(pipe, device: torch.device, steps: int) -> dict:
    """Seconds of one image at the model's size, without and with the heatmap trace (`fmn.attention.trace`)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    settings = GenerationSettings("a photo of a circle on grass", steps=steps)

    def timed(traced: bool) -> float:
        sync()
        start = time.perf_counter()
        with trace(pipe, settings.prompt) if traced else nullcontext():
            generate(pipe, settings)
        sync()
        return time.perf_counter() - start

    return {"generate_s": timed(False), "traced_s": timed(True)}


def recipe_method(name: str, recipe: str, concept: str, steps: int | None, adversarial: bool = False) -> ErasureMethod:
    """The method at its defaults (`steps` for every trained one), as the recipe runs it."""
    overrides = {"steps": steps} if steps is not None and METHODS[name].trains else {}
    overrides |= {"adversarial": True} if adversarial else {}
    method = make_method(name, [concept], **overrides)
    return reference_recipe(method) if recipe == "reference" else method


def _measure(pipe, method: ErasureMethod, recipe: str, args, device: torch.device, click: bool = True) -> dict:
    """Erases the concept once, then (if `click`) runs the app's before/after comparison; the pipeline is left as it
    was."""
    name = f"bench:{method.name}"
    held, peak = HeldWeights(pipe), Peak(device)
    clock = StepClock(held)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    start = time.perf_counter()
    with peak():
        patch = make_patch(pipe, method, name, lambda progress: (clock(progress), held(progress)))
        sync()
    erase_s = time.perf_counter() - start - held.seconds
    click_s = None
    if click:
        _before_after(pipe, args.concept, name, args.probe_steps)
        sync()
        click_s = time.perf_counter() - start - held.seconds
    with tempfile.TemporaryDirectory() as tmp:
        patch_bytes = patch.save(Path(tmp) / "patch.safetensors").stat().st_size
    detach(pipe, name)
    config, inner = vars(method.config), getattr(method, "method", method)
    settings = ({k: config[k] for k in ("steps", "batch") if k in config}
                | {"frozen_copy": isinstance(method, FrozenCopy)})
    if isinstance(inner, ESD):
        settings["fresh_trajectories"] = isinstance(inner, PaperESD)
    label = method.name + (" adversarial" if getattr(method.config, "adversarial", False) else "")
    return {"recipe": recipe, "method": label, "dtype": str(denoiser(pipe).dtype).removeprefix("torch."),
            "steps": config.get("steps"), "settings": settings, "erase_s": erase_s, "click_s": click_s,
            "setup_s": clock.setup_s, "step_s": clock.step_s,
            "peak_memory_bytes": peak.bytes, "memory_kind": peak.kind, "weights_held_bytes": held.bytes,
            "patch_bytes": patch_bytes}


def _size(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _verdict(row: dict, met: bool) -> str:
    """A target's verdict: met or missed on a GPU run, n/a on any other device."""
    return ("met" if met else "missed") if row["device_type"] == "cuda" else f"n/a (a {row['device_type']} run)"


def _target(row: dict) -> str:
    """The method's target at the row's arch, and its verdict."""
    target = TARGETS.get(row["arch"], {}).get(row["method"])
    if target is None or row["recipe"] != "ours":
        return "—"
    return f"{target}: {_verdict(row, target.met(row))}"


def _trace_overhead(row: dict) -> str:
    """The trace's cost over the plain generation, and its target at the row's arch with its verdict."""
    overhead, bound = row["traced_s"] / row["generate_s"] - 1, TRACE_OVERHEAD.get(row["arch"])
    if bound is None:
        return f"{100 * overhead:+.0f} %"
    return f"{100 * overhead:+.0f} %; target ≤ {100 * bound:.0f} %: {_verdict(row, overhead <= bound)}"


def markdown(rows: list[dict]) -> str:
    first = rows[0]
    steps = ", ".join(f"{r['method']} {r['steps']}" for r in rows if r["recipe"] == rows[0]["recipe"] and r["steps"])
    projected = any(r.get("projected_erase_s") for r in rows)
    lines = [
        "# Erasure speed: the published recipe (reference) against ours", "",
        f"- device: {first['device']}; torch {first['torch']}; arch {first['arch']} (random weights); "
        f"concept {first['concept']!r}",
        f"- training steps, the same in both recipes: {steps or 'none (closed form only)'}" if not projected else
        f"- training steps: {steps}; the reference recipe ran the steps of its rows, and its erasure at these "
        "steps is projected as set-up + steps x per step",
        f"- peak memory: {first['memory_kind']}",
        "- weights held: distinct bytes of every live model while training (pipeline, adapter, any frozen copy)",
        f"- click → before/after: the erasure, then the app's comparison (each probe prompt, seeds 0-2, "
        f"{first['probe_steps']} steps, before and after)",
        "- set-up: the references before step 1; per step: the mean of the training steps after the first",
        *([f"- generation: one image at the model's size, {first['probe_steps']} steps: {first['generate_s']:.2f} s; "
           f"with the heatmap trace {first['traced_s']:.2f} s ({_trace_overhead(first)})"]
          if "generate_s" in first else []),
        "", "| method | recipe | dtype | steps | set-up (s) | per step (ms) | erase (s) | click → before/after (s) "
        "| peak memory | weights held | patch | speed-up (reference/ours) | target (GPU, this arch) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    number = lambda x, fmt: "—" if x is None else format(x, fmt)  # noqa: E731
    for r in rows:
        erase = f"{r['erase_s']:.2f}"
        if r.get("projected_erase_s"):
            erase += f" → {r['projected_erase_s']:.1f} projected at {r['projected_steps']} steps"
        speedup = (f"{r['speedup']:.2f}×" + (" (projected)" if r.get("speedup_projected") else "")
                   if r.get("speedup") else "—")
        lines.append(f"| {r['method']} | {r['recipe']} | {r['dtype']} | {r['steps'] or '—'} "
                     f"| {number(r['setup_s'], '.2f')} "
                     f"| {number(r['step_s'] and r['step_s'] * 1000, '.1f')} | {erase} | {number(r['click_s'], '.2f')} "
                     f"| {_size(r['peak_memory_bytes'])} | {_size(r['weights_held_bytes'])} "
                     f"| {_size(r['patch_bytes'])} | {speedup} | {r['target']} |")
    return "\n".join(lines) + "\n"


def _compare(rows: list[dict]) -> None:
    """Fills in each row's speed-up (the reference's erasure, projected where it ran fewer steps, over ours) and
    target."""
    for r in rows:
        ours = next((x for x in rows if x["method"] == r["method"] and x["recipe"] == "ours"), None)
        if r["recipe"] == "reference" and ours and ours["steps"] and r["steps"] != ours["steps"] and r["step_s"]:
            r["projected_steps"] = ours["steps"]
            r["projected_erase_s"] = r["setup_s"] + ours["steps"] * r["step_s"]
    for r in rows:
        ref = next((x for x in rows if x["method"] == r["method"] and x["recipe"] == "reference"), None)
        r["speedup"] = ((ref.get("projected_erase_s") or ref["erase_s"]) / r["erase_s"]
                        if r["recipe"] == "ours" and ref else None)
        r["speedup_projected"] = bool(r["speedup"] and ref.get("projected_erase_s"))
        r["target"] = _target(r)


def run(args) -> list[dict]:
    """Measures every (recipe, method), ours first; after each row prints it and rewrites <out>/speed-<device>.md and
    --json."""
    if not args.random_weights:
        raise ValueError("--random-weights is required: only random-weight models are benchmarked so far "
                         "(speed does not depend on weight values).")
    device = pick_device(args.device)[0]
    arch = args.arch or ("sd15" if device.type == "cuda" else "tiny")
    transformer = arch in TRANSFORMER_ARCHS
    usable = [n for n, cls in METHODS.items() if cls.on_transformers or not transformer]
    methods = [m.strip() for m in (args.methods or ",".join(usable)).split(",") if m.strip()]
    unusable = [m for m in methods if m in METHODS and m not in usable]
    if unusable:
        raise ValueError(f"--methods {','.join(unusable)}: not on --arch {arch}; use {','.join(usable)}.")
    recipe = args.recipe or ("ours" if transformer else "both")
    recipes = ["ours", "reference"] if recipe == "both" else [recipe]
    if (arch.startswith("sdxl") or transformer) and "reference" in recipes:
        raise ValueError(f"--arch {arch}: the published recipes are SD 1.x code; use --recipe ours.")
    steps = {"ours": args.steps, "reference": args.reference_steps or args.steps}
    if not 1 <= args.probe_steps <= MAX_STEPS:
        raise ValueError(f"--probe-steps {args.probe_steps}: use 1 to {MAX_STEPS}.")
    for method in methods:  # bad names or steps fail here, before a model is built
        for recipe in recipes:
            recipe_method(method, recipe, args.concept, steps[recipe])
    common = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__, "arch": arch,
              "concept": args.concept, "probe_steps": args.probe_steps}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for recipe in recipes:  # one pipeline at a time, so that each peak is its own
        pipe = bench_pipeline(arch, recipe, device)
        if transformer and recipe == "ours":
            common |= _generation(pipe, device, args.probe_steps)
        click = recipe == "ours" or not args.reference_steps
        modes = [False, True] if args.adversarial and recipe == "ours" else [False]
        for method, adversarial in itertools.product(methods, modes):
            if adversarial and not METHODS[method].trains:
                continue
            row = _measure(pipe, recipe_method(method, recipe, args.concept, steps[recipe], adversarial), recipe, args,
                           device, click)
            rows.append({**common, **row})
            print(f"{recipe} {row['method']}: erase {row['erase_s']:.2f} s", file=sys.stderr, flush=True)
            _compare(rows)
            (out / f"speed-{device.type}.md").write_text(markdown(rows))
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=2))
        del pipe
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(markdown(rows))
    return rows
