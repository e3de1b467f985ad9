"""The quality gate: generate from held-out prompts, judge, report per-attribute accuracy.

    python -m fmn.recipe check [--model assets/fmn-shapes] [--n 240] [--grid check.png]

Prompts use only held-out templates, and half of them held-out attribute combinations,
so the numbers measure generalisation, not memorised captions.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from ..generate import generate_many
from ..models import pick_device
from ..world.judge import Judge
from ..world.scenes import HELDOUT_TEMPLATES, caption, sample_scene

__all__ = ["run_check", "GATE", "heldout_prompts"]

GATE = {"shape": 0.90, "colour": 0.90, "identity": 0.85, "style": 0.80, "background": 0.90, "night": 0.85}
GUIDANCE = 5.0
STEPS = 25


def heldout_prompts(n: int, seed: int = 0):
    """n (scene, prompt) pairs from held-out templates; every other scene holds a held-out combination."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        scene = sample_scene(rng, "heldout" if i % 2 else "train")
        pairs.append((scene, caption(scene, rng.choice(HELDOUT_TEMPLATES), rng)))
    return pairs


def score(scenes, verdicts) -> dict[str, float]:
    """Per-attribute accuracy of generated images against the scenes their prompts describe."""
    hits: dict[str, list[bool]] = {k: [] for k in GATE}
    for scene, v in zip(scenes, verdicts):
        for thing in scene.things:
            hits["identity" if thing.is_identity else "shape"].append(v.has(thing.kind))
            if thing.colour:
                hits["colour"].append(v.has(thing.colour))
        if scene.style != "plain":
            hits["style"].append(v.top_style == scene.style)
        hits["background"].append(v.top_background == scene.background)
        hits["night"].append(v.has("night") == scene.night)
    return {k: sum(h) / len(h) for k, h in hits.items() if h}


@torch.no_grad()
def run_check(model: str | Path, judge_dir: str | Path, n_prompts: int = 240, seed: int = 0,
              grid_path: str | Path | None = None, batch: int = 40) -> dict[str, float]:
    """Generates n_prompts images, prints the accuracy table against the gate, returns the accuracies."""
    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32).to(pick_device()[0])
    pipe.set_progress_bar_config(disable=True)
    judge = Judge.load(judge_dir)
    pairs = heldout_prompts(n_prompts, seed)
    images = generate_many(pipe, [p for _, p in pairs], [seed * 10_000 + i for i in range(len(pairs))], STEPS,
                           GUIDANCE, batch)
    acc = score([s for s, _ in pairs], judge(images))
    print(f"{'attribute':<12}{'accuracy':>10}{'gate':>8}")
    for key, value in acc.items():
        print(f"{key:<12}{value:>10.1%}{GATE[key]:>8.0%}  {'ok' if value >= GATE[key] else 'BELOW'}")
    if grid_path:
        grid = Image.new("RGB", (8 * 64, 8 * 64), "white")
        for i, im in enumerate(images[:64]):
            grid.paste(im, ((i % 8) * 64, (i // 8) * 64))
        grid.resize((16 * 64, 16 * 64), Image.NEAREST).save(grid_path)
        Path(grid_path).with_suffix(".txt").write_text("\n".join(p for _, p in pairs[:64]) + "\n")
    return acc
