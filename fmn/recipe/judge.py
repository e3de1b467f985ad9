"""The judge on the model's own images: the recipe's last stage, resumable like the others.

    python -m fmn.recipe judge [--model assets/fmn-shapes] [--out assets/fmn-shapes-judge] [--work runs/judge]

The judge first learns from renders (train.py), yet every number reads what the diffusion model draws: orange
discs with an inner ring, soft edges, tints, the blobs an erasure leaves, a pink robot. This stage draws
one-object prompts on the training templates (the audit, `bench judge`, draws held-out templates) with the model,
unedited and under a patch of every method, each erasing another concept than the audit's patches do, and the
judge goes on training on those images beside fresh renders. Their labels:
- the pixel check's (world/pixels.py) where its pixels decide; a head it leaves open is left out of the loss.
  An image it reads as one plain shape shows no character and no artist's style (it abstains on outlines,
  dots, glow, stripes and faces), so its subjects and style are known too;
- no check of pixels reads a character: on the unedited model's images of a prompt naming one character (and
  no plain shape read), that character, as asked. The model draws what is asked on most; the hand set of
  `bench judge` audits what the rest costs.
A share of the images known to show no character is hue-rotated, its colour and background heads left out: a
shape is the same shape in any colour (a character is not: Mimo is yellow, Lumina pink).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..bench.judge import audit_prompts, draw_under_patches
from ..models import load_pipeline
from ..world.judge import BACKGROUND_CLASSES, COLOUR_NAMES, STYLE_CLASSES, SUBJECTS, Judge, scene_targets, to_tensor
from ..world.pixels import PixelRead, read
from ..world.render import render
from ..world.scenes import IDENTITIES, SHAPES, TRAIN_TEMPLATES, sample_scene
from .train import train_loop

__all__ = ["JudgeConfig", "train_judge_on_model", "model_targets", "TRAINING_PATCHES"]

# (method, concept) of the patches the training images are drawn under: no pair of the audit's (bench/judge.py)
TRAINING_PATCHES = [("fmn", "square"), ("esd-x", "Zaranth"), ("esd-u", "Quimby"), ("text-encoder", "Zubrik"),
                    ("uce", "green"), ("rece", "heart"), ("text-map", "circle")]
HEADS = ["subjects", "colours", "style", "background", "night"]
CHARACTERS = slice(len(SHAPES), len(SUBJECTS))  # the characters' places among the subjects: after the shapes


@dataclass
class JudgeConfig:
    model: str = "assets/fmn-shapes"
    judge: str = "assets/fmn-shapes-judge"  # the judge to go on training from
    out: str = "assets/fmn-shapes-judge"
    work: str = "runs/judge"  # the drawn images and checkpoints, not shipped
    prompts: int = 300  # each drawn unedited and under every patch of TRAINING_PATCHES
    steps: int = 25  # denoising steps, as the benchmarks draw
    renders: int = 8_000  # renders mixed into every batch, so what the judge knew stays known
    train_steps: int = 1_500
    batch: int = 64  # half renders, half model images
    lr: float = 5e-4
    hue_share: float = 0.25
    seed: int = 0
    checkpoint_every: int = 250
    methods: int = len(TRAINING_PATCHES)  # fewer: the first ones only (a quick run)


def model_targets(r: PixelRead) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The judge's targets for a model image from the pixel check's read, and which heads they decide."""
    targets = {"subjects": torch.zeros(len(SUBJECTS)), "colours": torch.zeros(len(COLOUR_NAMES)),
               "style": torch.tensor(STYLE_CLASSES.index("plain")), "background": torch.tensor(0),
               "night": torch.tensor(float(bool(r.night)))}
    known = {"subjects": float(r.shape is not None), "colours": float(r.colour is not None),
             "style": float(r.shape is not None), "background": float(r.background is not None),
             "night": float(r.night is not None)}
    if r.shape:
        targets["subjects"][SUBJECTS.index(r.shape)] = 1
    if r.colour:
        targets["colours"][COLOUR_NAMES.index(r.colour)] = 1
    if r.background:
        targets["background"] = torch.tensor(BACKGROUND_CLASSES.index(r.background))
    return targets, known


def _prompts(cfg: JudgeConfig) -> list[str]:
    return audit_prompts(cfg.prompts, f"judge-train-{cfg.seed}", TRAIN_TEMPLATES)


def asked_character(prompt: str) -> str | None:
    """The one character a prompt names (None: none, or more than one)."""
    named = [c for c in IDENTITIES if re.search(rf"\b{c}\b", prompt)]
    return named[0] if len(named) == 1 else None


def _labels(cfg: JudgeConfig, drawn: np.ndarray) -> list[tuple[dict[str, torch.Tensor], dict[str, float]]]:
    """Each image's targets and known heads: the pixel check's; and on the unedited model's images (the first
    block) whose prompt names one character, the pixels read no plain shape: that character, as asked."""
    labels = [model_targets(read(image)) for image in drawn]
    for (targets, known), prompt in zip(labels, _prompts(cfg)):
        character = asked_character(prompt)
        if character and not known["subjects"]:
            targets["subjects"][SUBJECTS.index(character)], known["subjects"] = 1, 1.0
    return labels


def _drawn(cfg: JudgeConfig, work: Path) -> np.ndarray:
    """The model's images, uint8 (N, 64, 64, 3): drawn once, a file per patch, so a stopped run resumes; the
    unedited model's come first."""
    pipe, prompts, arrays = None, _prompts(cfg), []
    for patch in [None, *TRAINING_PATCHES[:cfg.methods]]:
        path = work / f"drawn-{'unedited' if patch is None else '-'.join(patch)}.safetensors"
        if not path.exists():
            pipe = pipe or load_pipeline(cfg.model)
            pipe.set_progress_bar_config(disable=True)
            drawn = draw_under_patches(pipe, prompts, cfg.steps, [patch] if patch else [], print, patch is None)
            images = np.stack([np.asarray(im.convert("RGB")) for im in next(iter(drawn.values()))])
            save_file({"images": torch.from_numpy(images)}, path)
        arrays.append(load_file(path)["images"].numpy())
    return np.concatenate(arrays)


def _renders(cfg: JudgeConfig, work: Path) -> tuple[np.ndarray, list[dict[str, torch.Tensor]]]:
    """Fresh renders of the world (a third with two objects) and their targets."""
    path = work / "renders.safetensors"
    rng = random.Random(f"judge-renders-{cfg.seed}")
    scenes = [sample_scene(rng, "any", two_objects=0.3) for _ in range(cfg.renders)]
    if not path.exists():
        images = np.stack([np.asarray(render(scene, seed=i)[0]) for i, scene in enumerate(scenes)])
        save_file({"images": torch.from_numpy(images)}, path)
    return load_file(path)["images"].numpy(), [scene_targets(s) for s in scenes]


def _hue_rotated(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] with their hue turned by `angles` (radians, one per image): a rotation about the
    grey axis in YIQ, which keeps each pixel's luminance."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    cos, sin = angles.cos(), angles.sin()
    turn = torch.zeros(len(x), 3, 3)
    turn[:, 0, 0], turn[:, 1, 1], turn[:, 1, 2], turn[:, 2, 1], turn[:, 2, 2] = 1, cos, -sin, sin, cos
    matrix = torch.linalg.inv(to_yiq) @ turn @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrix, x).clamp(-1, 1)


def _softened(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Renders blurred by a random amount and noised, as generated images are."""
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    amount = torch.from_numpy(rng.random(len(x))).float()[:, None, None, None]
    return x + amount * (blurred - x) + 0.03 * torch.randn_like(x)


def train_judge_on_model(cfg: JudgeConfig) -> Judge:
    """Draws (or reloads) the model's images, labels them by the pixel check and trains the judge on them and
    on renders; writes the judge to cfg.out."""
    work = Path(cfg.work)
    work.mkdir(parents=True, exist_ok=True)
    drawn = _drawn(cfg, work)
    labels = _labels(cfg, drawn)
    renders, render_targets = _renders(cfg, work)
    print(f"[judge] {len(drawn)} model images ({sum(k['subjects'] for _, k in labels):.0f} with their subjects known), "
          f"{len(renders)} renders", flush=True)
    net = Judge.load(cfg.judge).net.train()
    half = cfg.batch // 2

    def step_fn(step, rng):
        r_idx, m_idx = rng.integers(0, len(renders), half), rng.integers(0, len(drawn), half)
        x = torch.cat([_softened(to_tensor(renders[r_idx]), rng), to_tensor(drawn[m_idx])])
        targets = [render_targets[i] for i in r_idx] + [labels[i][0] for i in m_idx]
        known = [dict.fromkeys(HEADS, 1.0) for _ in r_idx] + [labels[i][1] for i in m_idx]
        characterless = torch.tensor([bool(k["subjects"]) and not t["subjects"][CHARACTERS].any()
                                      for t, k in zip(targets, known)])
        turned = torch.from_numpy(rng.random(len(x)) < cfg.hue_share) & characterless
        x = torch.where(turned[:, None, None, None], _hue_rotated(x, torch.from_numpy(rng.uniform(0.5, 5.8, len(x))
                                                                                     ).float()), x)
        weights = {h: torch.tensor([k[h] for k in known]) for h in HEADS}
        for head in ("colours", "background"):
            weights[head] = weights[head] * (~turned).float()
        return net.loss(x, {h: torch.stack([t[h] for t in targets]) for h in HEADS}, weights)

    schedule = lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.train_steps))  # noqa: E731
    for _ in train_loop("judge-on-model", cfg, work, list(net.parameters()), cfg.train_steps, cfg.lr, step_fn,
                        {"judge": net}, schedule):
        pass
    judge = Judge(net.eval())
    judge.save(cfg.out)
    print(f"[judge] written to {cfg.out}; audit it: python -m fmn bench judge --judge {cfg.out}", flush=True)
    return judge
