"""What every erasure method declares, and the registry that finds one by its name.

A method is a class that registers itself (`@register`) and declares, as class attributes:
its ``name`` (the CLI's and the app's), its settings dataclass ``Config``, whether it runs
``on_transformers`` (SD3, FLUX), and whether it ``trains`` (the shared loop in `loop.py` runs its
``targets``/``references``/``loss``) or is a closed form (its ``solve`` returns the patch's tensors). Nothing
outside this registry asks which method it is. Every method takes images of the concept (``images``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .images import check_images

__all__ = ["METHODS", "register", "closed_forms", "MethodConfig", "TrainingConfig", "ErasureMethod",
           "MAX_STEPS"]

METHODS: dict[str, type["ErasureMethod"]] = {}  # name -> class, in the order they were registered
MAX_STEPS = 5000


def closed_forms() -> list[str]:
    """The methods solved in closed form (nothing trained), by name."""
    return [name for name, cls in METHODS.items() if not cls.trains]


def register(cls: type["ErasureMethod"]) -> type["ErasureMethod"]:
    """Class decorator: makes the method available by its name."""
    assert cls.name not in METHODS, f"two methods named {cls.name}"
    METHODS[cls.name] = cls
    return cls


@dataclass
class MethodConfig:
    """Settings every method has."""

    guide: str = ""  # steer the concept toward this one instead of toward nothing (concept correction)
    # the user's words to hold; `erase` adds the model's nearest (keep.py)
    keep: list[str] = field(default_factory=list)
    # the words held: `erase` fills in `keep` and the nearest ([]: none)
    preserve: list[str] = field(default_factory=list)
    seed: int = 0

    def check(self) -> None:
        """Raises ValueError naming a setting that is out of range."""


@dataclass
class TrainingConfig(MethodConfig):
    """Settings of the methods the shared loop trains; each method overrides the defaults."""

    steps: int = 100
    lr: float = 1e-3
    rank: int = 4  # of the LoRA adapter that becomes the patch
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    preserve_weight: float = 1.0  # ours: the preservation term's weight (0: none, as in the papers)
    keep_attention: float = 0.0  # ours: in that term, the weight of keeping the preserved words' cross-attention maps
    adversarial: bool = False  # also erase the words an attacker learns against the patch as it trains (adversarial.py)
    attack_every: int = 10  # adversarial: training steps between two rounds of the attacker's learning
    attack_steps: int = 10  # adversarial: inversion steps a round, each round from the last words
    attack_lr: float = 5e-3  # adversarial: the inversion's step size (the attack's, fmn/attack.py)

    def check(self) -> None:
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"Steps {self.steps} is out of range: use 1 to {MAX_STEPS}.")
        if not 0 < self.lr < 1:
            raise ValueError(f"Learning rate {self.lr} is out of range: use a positive number below 1 (e.g. 1e-3).")
        if self.adversarial and not (1 <= self.attack_every <= MAX_STEPS and 1 <= self.attack_steps <= 1000):
            raise ValueError(f"Adversarial rounds every {self.attack_every} steps of {self.attack_steps} "
                             f"inversion steps: use 1 to {MAX_STEPS} and 1 to 1000 (the first round is at step 1).")


class ErasureMethod:
    """The declarations every method makes; subclasses add how they erase."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    trains: ClassVar[bool] = True  # the shared loop trains it; False: `solve(pipe)` is a closed form
    on_transformers: ClassVar[bool] = False  # erases SD3 and FLUX too (their joint attention), not only UNet models

    def __init__(self, concepts: list[str], config: MethodConfig, images: torch.Tensor | None = None):
        if images is not None:
            check_images(images)
        self.concepts, self.config = concepts, config
        self.images = images  # (N, 3, H, W) in [-1, 1] of the first concept, or None

    @property
    def learns_new_words(self) -> bool:
        """True when the concept may be a word the model never saw (it is learned from the images)."""
        return False
