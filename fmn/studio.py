"""The studio: one model in memory, shared by every caller, and what a user does with it.

The app and the command line both go through `Studio`: it loads a model once, swaps it
when asked for another, serialises device work with a lock, and offers `generate`,
`inspect` (generation with per-word cross-attention heatmaps) and `erase`. Patches live
on the shared model as adapters with unique ids; each call names the patches it wants
active, so one user's erasure never changes another user's images.
"""

from __future__ import annotations

import queue
import threading
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .attack import AttackConfig, concept_inversion
from .attention import trace
from .erase import erase
from .evaluate import judge_for
from .generate import GenerationSettings, check_settings, generate, unknown_words
from .heatmaps import word_grid
from .inversion import Inverted, inverted
from .models import EMBEDDED, load_pipeline
from .patch import Patch, activate, attach, detach

__all__ = ["Studio", "Inspection"]


@dataclass
class Inspection:
    """A generated image and what each word of its prompt attended to."""

    image: Image.Image
    word_maps: dict[str, torch.Tensor]  # word -> (H, W) in [0, 1]
    grid: Image.Image  # the image and one overlay per word, with a colour bar
    warnings: list[str]


class Studio:
    """Holds one pipeline; every method is safe to call from several threads."""

    def __init__(self, source: str | Path | None = None, device: str | None = None, config: str | None = None):
        self.device = device
        self.source = str(source or EMBEDDED)
        self.pipe = load_pipeline(self.source, device=device, config=config)
        self.patches: dict[str, Patch] = {}  # id -> patch, attached to self.pipe
        self.lock = threading.Lock()

    def use(self, source: str | Path | None) -> str:
        """Switches to another model (None or "" for the embedded one); returns its name."""
        source = str(source or EMBEDDED).strip()
        with self.lock:
            if source != self.source:
                pipe = load_pipeline(source, device=self.device)  # raises before anything changes
                self.pipe, self.source, self.patches = pipe, source, {}
        return self.source

    def warnings(self, settings: GenerationSettings) -> list[str]:
        unknown = unknown_words(self.pipe, settings.prompt)
        return [f"The model never saw these words: {', '.join(unknown)}. It will ignore or misread them."] if unknown else []

    def _check_patches(self, patches) -> None:
        missing = [p for p in patches if p not in self.patches]
        if missing:
            raise ValueError(f"Patch {', '.join(missing)} is not loaded (the model may have been switched): erase or upload it again.")

    @contextmanager
    def _patched(self, patches: list[str] | tuple = ()):
        """Device work with exactly these patches active; call with the lock held."""
        self._check_patches(patches)
        activate(self.pipe, list(patches))
        try:
            yield
        finally:
            activate(self.pipe, [])

    def generate(self, settings: GenerationSettings, seeds: list[int] | None = None, on_step=None,
                 patches: list[str] | tuple = (), learned: Inverted | None = None) -> list[Image.Image]:
        """Images for the seeds with these patches active; `learned`: words replaced by an attack's embeddings."""
        check_settings(self.pipe, settings)
        with self.lock, self._patched(patches), (inverted(self.pipe, learned) if learned else nullcontext()):
            return generate(self.pipe, settings, seeds, on_step)

    def inspect(self, settings: GenerationSettings, words: list[str] | None = None, step_range=None,
                resolutions=None, on_step=None, patches: list[str] | tuple = ()) -> Inspection:
        """Generates one image while tracing cross-attention, and renders the words' heatmaps."""
        settings = check_settings(self.pipe, settings)
        with self.lock, self._patched(patches):
            with trace(self.pipe, settings.prompt, step_range=step_range, resolutions=resolutions) as tc:
                image = generate(self.pipe, settings, None, on_step)[0]
            maps = {w: m for w, m in tc.word_maps().items() if any(c.isalnum() for c in w)}  # no punctuation panels
        if words:
            missing = [w for w in words if w.lower() not in maps]
            if missing:
                raise ValueError(f"{', '.join(missing)} not in the prompt; its words are: {', '.join(maps)}")
            maps = {w.lower(): maps[w.lower()] for w in words}
        return Inspection(image, maps, word_grid(image, maps, title=settings.prompt), self.warnings(settings))

    def erase(self, concepts: list[str], method: str = "fmn", images=None, replace_with: str | None = None,
              on_progress=None, cancelled=None, **overrides) -> str:
        """Runs an erasure on the shared model; returns the new patch's id (inactive until named in a call)."""
        patch_id = f"{method}:{'+'.join(c.strip() for c in concepts)}#{uuid.uuid4().hex[:6]}"
        with self.lock:
            self.patches[patch_id] = erase(self.pipe, concepts, method, images, replace_with,
                                           on_progress, cancelled, name=patch_id, **overrides)
        return patch_id

    def erase_live(self, concepts: list[str], method: str = "fmn", images=None, replace_with: str | None = None,
                   **overrides):
        """`erase` in a worker thread, as a generator: yields each `Progress`, then the patch id.

        Closing the generator early (a cancelled request) stops the erasure at its next step
        and leaves the model as it was.
        """
        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        outcome: dict = {}

        def work():
            try:
                outcome["id"] = self.erase(concepts, method, images, replace_with, events.put, stop.is_set, **overrides)
            except Exception as err:  # handed to the caller's thread below
                outcome["error"] = err
            finally:
                events.put(None)

        threading.Thread(target=work, daemon=True).start()
        try:
            while (event := events.get()) is not None:
                yield event
        finally:
            stop.set()
        if "error" in outcome:
            raise outcome["error"]
        yield outcome["id"]

    def attack(self, concept: str, patches: list[str], images=None, on_step=None, **overrides) -> Inverted:
        """Concept inversion against the model with `patches` active: learned embeddings for the
        concept's words that try to bring it back (see `fmn.attack`). Pass them to `generate`.
        On the shapes world the judge is the attacker's eye: it keeps the words that draw the
        concept most surely, the name's own among them, so the attack is never weaker than the name;
        it looks every 50 steps by default, 4 looks over 150 steps, cheap on a CPU."""
        concept = concept.strip()
        if not concept:
            raise ValueError("Name the erased concept to attack.")
        if not patches:
            raise ValueError("Nothing to attack: erase a concept (or upload a patch) first.")
        self._check_patches(patches)
        judge = judge_for(self.pipe)
        eye = judge.sureness(concept) if judge is not None and judge.knows(concept) else None
        with self.lock:
            return concept_inversion(self.pipe, concept, list(patches), AttackConfig(**{"look_every": 50} | overrides), images, on_step, eye)

    def load_patch(self, path: str | Path) -> str:
        """Reads a patch file and attaches it; raises PatchError (model untouched) if it does not fit."""
        patch = Patch.load(path)
        patch_id = f"{patch.name}#{uuid.uuid4().hex[:6]}"
        with self.lock:
            attach(self.pipe, patch, patch_id)
            self.patches[patch_id] = patch
        return patch_id

    def remove_patch(self, patch_id: str) -> None:
        with self.lock:
            if self.patches.pop(patch_id, None) is not None:
                detach(self.pipe, patch_id)
