"""The judge: a small CNN that says what a shapes-world image shows.

It knows the truth of the world, so "the concept is gone and everything else is still
there" becomes a number. Heads: which subjects appear (6 shapes + 4 identities,
multi-label), which shape colours appear (multi-label), the artist style, the
background, and night. Trained on renders and their VAE reconstructions (recipe/train.py), then on the
model's own images where the pixel check (pixels.py) reads them (recipe/judge.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from .scenes import BACKGROUNDS, COLOURS, IDENTITIES, SHAPES, STYLES, Scene

__all__ = ["Judge", "Verdict", "SUBJECTS", "STYLE_CLASSES", "scene_targets"]

SUBJECTS = list(SHAPES) + list(IDENTITIES)
COLOUR_NAMES = list(COLOURS)
STYLE_CLASSES = ["plain"] + list(STYLES)
BACKGROUND_CLASSES = list(BACKGROUNDS)


def scene_targets(scene: Scene) -> dict[str, torch.Tensor]:
    """The judge's training targets for one scene."""
    subjects = torch.zeros(len(SUBJECTS))
    colours = torch.zeros(len(COLOUR_NAMES))
    for thing in scene.things:
        subjects[SUBJECTS.index(thing.kind)] = 1
        if thing.colour:
            colours[COLOUR_NAMES.index(thing.colour)] = 1
    return {
        "subjects": subjects,
        "colours": colours,
        "style": torch.tensor(STYLE_CLASSES.index(scene.style)),
        "background": torch.tensor(BACKGROUND_CLASSES.index(scene.background)),
        "night": torch.tensor(float(scene.night)),
    }


@dataclass
class Verdict:
    """What the judge sees in one image: a probability per label."""

    subjects: dict[str, float]
    colours: dict[str, float]
    style: dict[str, float]
    background: dict[str, float]
    night: float

    def has(self, label: str, threshold: float = 0.5) -> bool:
        """True if the image shows this subject, colour, style, background or "night"."""
        return self.prob(label) >= threshold

    def shows(self, label: str) -> bool:
        """Whether the image shows `label` as a prompt asks for it: a style or background as the one the image
        is in (the likeliest), anything else as present."""
        if label in self.style:
            return self.top_style == label
        if label in self.background:
            return self.top_background == label
        return self.has(label)

    def prob(self, label: str) -> float:
        if label == "night" or label in NIGHT_ALIASES:
            return self.night
        for table in (self.subjects, self.colours, self.style, self.background):
            if label in table:
                return table[label]
        raise KeyError(f"the judge knows no label {label!r}")

    @property
    def top_style(self) -> str:
        return max(self.style, key=self.style.get)

    @property
    def top_background(self) -> str:
        return max(self.background, key=self.background.get)


NIGHT_ALIASES = {"night", "at night"}


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class JudgeNet(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(3, w, 2), _block(w, 2 * w, 1),  # 32x32
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1),  # 16x16
            _block(4 * w, 4 * w, 2),  # 8x8
        )
        n_out = len(SUBJECTS) + len(COLOUR_NAMES) + len(STYLE_CLASSES) + len(BACKGROUND_CLASSES) + 1
        self.head = nn.Linear(8 * w, n_out)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, 64, 64) in [-1, 1] -> logits per head."""
        f = self.features(x)  # (B, 4w, 8, 8)
        f = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)  # (B, 8w)
        out = self.head(f).split([len(SUBJECTS), len(COLOUR_NAMES), len(STYLE_CLASSES), len(BACKGROUND_CLASSES), 1], 1)
        return dict(zip(["subjects", "colours", "style", "background", "night"], out))

    def loss(self, x: torch.Tensor, targets: dict[str, torch.Tensor],
             known: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The heads' losses summed; ``known`` (head -> (B,) 0/1) leaves out the heads an image has no label for
        (a model image the pixel check could not read wholly), each head averaged over the images that have one."""
        out = self(x)
        per_image = {
            "subjects": _bce(out["subjects"], targets["subjects"]).mean(1) * len(SUBJECTS),
            "colours": _bce(out["colours"], targets["colours"]).mean(1) * len(COLOUR_NAMES),
            "style": nn.functional.cross_entropy(out["style"], targets["style"], reduction="none"),
            "background": nn.functional.cross_entropy(out["background"], targets["background"], reduction="none"),
            "night": _bce(out["night"][:, 0], targets["night"]),
        }
        if known is None:
            return sum(loss.mean() for loss in per_image.values())
        return sum((loss * known[head]).sum() / known[head].sum().clamp(min=1) for head, loss in per_image.items())


def _bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")


def to_tensor(images: list[Image.Image] | np.ndarray) -> torch.Tensor:
    """PIL images or a uint8 (B, H, W, 3) array -> (B, 3, 64, 64) float in [-1, 1]."""
    if not isinstance(images, np.ndarray):
        images = np.stack([np.asarray(im.convert("RGB").resize((64, 64), Image.BILINEAR)) for im in images])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


class Judge:
    """Loads the judge's weights and labels images."""

    def __init__(self, net: JudgeNet):
        self.net = net.eval()

    @classmethod
    def load(cls, folder: str | Path) -> "Judge":
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        net = JudgeNet(width=config["width"])
        net.load_state_dict(load_file(folder / "model.safetensors"))
        return cls(net.float())

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        width = self.net.features[0][0].out_channels
        (folder / "config.json").write_text(json.dumps({"width": width, "labels": {
            "subjects": SUBJECTS, "colours": COLOUR_NAMES, "style": STYLE_CLASSES, "background": BACKGROUND_CLASSES}}))
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, folder / "model.safetensors")

    @property
    def fingerprint(self) -> str:
        """A hash of the weights: a benchmark's stored reads are only valid for the judge that made them."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.net.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.float().numpy().tobytes())
        return digest.hexdigest()[:16]

    def knows(self, label: str) -> bool:
        return label in NIGHT_ALIASES or label in {*SUBJECTS, *COLOUR_NAMES, *STYLE_CLASSES, *BACKGROUND_CLASSES}

    def sureness(self, label: str):
        """How surely images show `label`, on average: the attacker's eye on the shapes world."""
        return lambda images: float(np.mean([v.prob(label) for v in self(images)]))

    @torch.no_grad()
    def __call__(self, images: list[Image.Image] | np.ndarray, batch_size: int = 256) -> list[Verdict]:
        x = to_tensor(images)
        verdicts = []
        for chunk in x.split(batch_size):
            out = self.net(chunk)
            subj, col = out["subjects"].sigmoid(), out["colours"].sigmoid()
            sty, bg = out["style"].softmax(1), out["background"].softmax(1)
            night = out["night"][:, 0].sigmoid()
            for i in range(len(chunk)):
                verdicts.append(Verdict(
                    subjects=dict(zip(SUBJECTS, subj[i].tolist())),
                    colours=dict(zip(COLOUR_NAMES, col[i].tolist())),
                    style=dict(zip(STYLE_CLASSES, sty[i].tolist())),
                    background=dict(zip(BACKGROUND_CLASSES, bg[i].tolist())),
                    night=float(night[i]),
                ))
        return verdicts
