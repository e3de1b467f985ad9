"""The studio: one model in memory, shared by every caller, and what a user does with it.

The app and the command line both go through `Studio`: it loads a model once, swaps it
when asked for another, serialises device work with a lock, and offers what a user does:
`generate`, `inspect` (generation with per-word cross-attention heatmaps), `erase` (or
`erase_live`, which streams typed events), `compare` (before/after on the same seeds),
`attack`, and loading, saving and removing patches. Patches live on the shared model as
adapters with unique ids; each call names the patches it wants active, so one user's
erasure never changes another user's images.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

from .attack import AttackConfig, Reading, Recovery, concept_inversion, encoder_swap, recovery
from .attention import Trace, cross_attention_resolutions, trace
from .collateral import Collateral, collateral
from .erase import DEFAULT_METHOD, METHODS, KeepSet, Progress, erase, keep_set, methods_for, split_concepts
from .evaluate import Comparison, Draw, Probe, compare_prompts, judge_for, probe_prompts
from .export import export, formats_for, import_lora
from .generate import GenerationSettings, check_settings, generate, generate_pairs, unknown_words
from .heatmaps import word_grid
from .inversion import Inverted, inverted
from .models import EMBEDDED, is_transformer, load_pipeline, world_of
from .patch import NotAPatch, Patch, activate, active, adapter_name, attach, detach
from .world.reading import shows

__all__ = ["Studio", "Inspection", "Erased", "new_id"]


def new_id(label: str) -> str:
    """A patch's id on the shared model: its label (method and concepts, or a LoRA file's name) as an adapter
    name, and a random suffix that keeps two erasures of the same concept apart."""
    return f"{adapter_name(label)}#{uuid.uuid4().hex[:6]}"


ORIGINALS_KEPT = 192  # the unedited model's images remembered: a collateral map's and a few comparisons' "before" sides
BATCH = 32  # images per pipeline call when a comparison draws one side
BATCH_PIXELS = 8 * 512 * 512  # and at most this many pixels per call: 8 images at SD 1.x's size, 2 at SDXL's
LOOK_EVERY = 50  # the attacker's eye looks every 50 steps here: 4 looks over 150 steps, cheap on a CPU


def _attack_config(overrides: dict) -> AttackConfig:
    return AttackConfig(**{"look_every": LOOK_EVERY} | overrides)


@dataclass
class Inspection:
    """A generated image and what each word of its prompt attended to."""

    image: Image.Image
    word_maps: dict[str, torch.Tensor]  # word -> (H, W) in [0, 1]
    grid: Image.Image  # the image and one overlay per word, with a colour bar
    warnings: list[str]


@dataclass
class Erased:
    """The last event of `Studio.erase_live`: the new patch, attached and inactive."""

    patch_id: str
    patch: Patch
    losses: list[float]  # one per training step (a closed form has one step at 0)


class Studio:
    """Holds one pipeline; every method is safe to call from several threads."""

    def __init__(self, source: str | Path | None = None, device: str | None = None, config: str | None = None):
        self.device = device
        self.source, self.config = str(source or EMBEDDED), config
        self.pipe = load_pipeline(self.source, device=device, config=config)
        self.patches: dict[str, Patch] = {}  # id -> patch, attached to self.pipe
        self.originals: OrderedDict = OrderedDict()  # (settings, trace options) -> (image, trace), oldest first
        self.lock = threading.Lock()  # the device: one call at a time
        self.turns = threading.Condition()  # guards `waiting`, the generations queued for the lock
        self.waiting = 0

    def use(self, source: str | Path | None) -> str:
        """Switches to another model (None or "" for the embedded one); returns its name."""
        source = str(source or EMBEDDED).strip()
        with self.lock:
            if source != self.source:
                pipe = load_pipeline(source, device=self.device)  # raises before anything changes
                self.pipe, self.source, self.config, self.patches = pipe, source, None, {}
                self.originals.clear()
        return self.source

    def methods(self) -> list[str]:
        """The erasure methods that run on the model loaded (SD3 and FLUX: those made for their joint attention)."""
        return methods_for(self.pipe)

    def formats(self) -> list[str]:
        """The export formats the model loaded writes to (SD3 and FLUX: no single file)."""
        return formats_for(self.pipe)

    def layer_sizes(self) -> list[int]:
        """The latent sizes of the layers a heatmap may be read from; [] on SD3 and FLUX, whose joint blocks all
        share one resolution."""
        return [] if is_transformer(self.pipe) else cross_attention_resolutions(self.pipe.unet)

    def warnings(self, settings: GenerationSettings) -> list[str]:
        unknown = unknown_words(self.pipe, settings.prompt)
        return ([f"The model never saw these words: {', '.join(unknown)}. It will ignore or misread them."]
                if unknown else [])

    def _check_patches(self, patches) -> None:
        missing = [p for p in patches if p not in self.patches]
        if missing:
            raise ValueError(f"Patch {', '.join(missing)} is not loaded (the model may have been switched): "
                             "erase or upload it again.")

    @contextmanager
    def _patched(self, patches: list[str] | tuple = (), learned: Inverted | None = None):
        """Device work with exactly these patches active (and an attack's `learned` words); call with the lock held."""
        self._check_patches(patches)
        with active(self.pipe, list(patches)), (inverted(self.pipe, learned) if learned else nullcontext()):
            yield

    @contextmanager
    def _turn(self):
        """The lock for a generation: an erasure running hands it over between two of its steps."""
        with self.turns:
            self.waiting += 1
        self.lock.acquire()
        with self.turns:
            self.waiting -= 1
            self.turns.notify_all()
        try:
            yield
        finally:
            self.lock.release()

    def _let_generations_run(self, training: str) -> None:
        """Called by an erasure, holding the lock, between two steps: lets every queued generation run,
        then takes the device back and switches its training adapter on again."""
        with self.turns:
            if not self.waiting:
                return
        self.lock.release()
        with self.turns:
            self.turns.wait_for(lambda: self.waiting == 0)
        self.lock.acquire()
        activate(self.pipe, [training])  # a generation switched it off (and its factors' gradients with it)

    def generate(self, settings: GenerationSettings, seeds: list[int] | None = None, on_step=None,
                 patches: list[str] | tuple = (), learned: Inverted | None = None) -> list[Image.Image]:
        """Images for the seeds with these patches active; `learned`: words replaced by an attack's embeddings."""
        check_settings(self.pipe, settings)
        with self._turn(), self._patched(patches, learned):
            return generate(self.pipe, settings, seeds, on_step)

    def generate_traced(self, settings: GenerationSettings, seeds: list[int] | None = None, on_step=None,
                        patches: list[str] | tuple = (), learned: Inverted | None = None, step_range=None,
                        resolutions=None) -> tuple[list[Image.Image], Trace]:
        """`generate`, tracing the cross-attention of the same call: `trace.image(i)` is the i-th seed's."""
        settings = check_settings(self.pipe, settings)
        with self._turn(), self._patched(patches, learned):
            with trace(self.pipe, settings.prompt, step_range=step_range, resolutions=resolutions) as tc:
                images = generate(self.pipe, settings, seeds, on_step)
        return images, tc

    def generate_pairs_traced(self, settings: GenerationSettings, prompts: list[str], seeds: list[int],
                              patches: list[str] | tuple = (), learned: Inverted | None = None, step_range=None,
                              resolutions=None, on_image=None) -> tuple[list[Image.Image], list[Trace]]:
        """One image and its trace per (prompt, seed) pair, `settings` giving the rest: a comparison's side, drawn
        `BATCH` images per pipeline call, the same images as one prompt at a time (each has its own generator).
        The unedited model's are remembered (the last `ORIGINALS_KEPT`): a comparison's "before" side is drawn
        once. ``on_image(done, total)`` after each call. Callers must not change the images returned."""
        pairs = [check_settings(self.pipe, replace(settings, prompt=prompt, seed=seed))
                 for prompt, seed in zip(prompts, seeds, strict=True)]
        if not pairs:
            return [], []
        original = not patches and learned is None
        keys = [(repr(pair), step_range, tuple(sorted(resolutions or ()))) for pair in pairs]
        with self._turn():
            drawn = {key: self.originals[key] for key in keys if original and key in self.originals}
            todo = [i for i, key in enumerate(keys) if key not in drawn]
            batch = max(1, min(BATCH, BATCH_PIXELS // (pairs[0].width * pairs[0].height)))
            with self._patched(patches, learned):
                for start in range(0, len(todo), batch):
                    chunk = todo[start : start + batch]
                    traced = self._traced_call([pairs[i] for i in chunk], step_range, resolutions)
                    drawn.update(zip([keys[i] for i in chunk], traced))
                    if on_image:
                        on_image(len(keys) - len(todo) + start + len(chunk), len(keys))
            if original:
                self._remember(drawn)
        return [drawn[key][0] for key in keys], [drawn[key][1] for key in keys]

    def _traced_call(self, pairs: list[GenerationSettings], step_range, resolutions) -> list[tuple[Image.Image, Trace]]:
        """(image, trace) per checked settings, in one pipeline call; call with the lock held and the patches on."""
        prompts = [pair.prompt for pair in pairs]
        with trace(self.pipe, prompts, step_range=step_range, resolutions=resolutions) as tc:
            images = generate_pairs(self.pipe, pairs[0], prompts, [pair.seed for pair in pairs])
        return [(image, tc.image(i)) for i, image in enumerate(images)]

    def _remember(self, drawn: dict) -> None:
        """Keeps the unedited model's (image, trace) per pair just used, the newest last, `ORIGINALS_KEPT` at most."""
        for key, value in drawn.items():
            self.originals[key] = value
            self.originals.move_to_end(key)
        while len(self.originals) > ORIGINALS_KEPT:
            self.originals.popitem(last=False)

    def inspect(self, settings: GenerationSettings, words: list[str] | None = None, step_range=None,
                resolutions=None, on_step=None, patches: list[str] | tuple = ()) -> Inspection:
        """Generates one image while tracing cross-attention, and renders the words' heatmaps."""
        settings = check_settings(self.pipe, settings)
        (image,), tc = self.generate_traced(settings, None, on_step, patches, step_range=step_range,
                                            resolutions=resolutions)
        maps = {w: m for w, m in tc.word_maps().items() if any(c.isalnum() for c in w)}  # no punctuation panels
        if words:
            missing = [w for w in words if w.lower() not in maps]
            if missing:
                raise ValueError(f"{', '.join(missing)} not in the prompt; its words are: {', '.join(maps)}")
            maps = {w.lower(): maps[w.lower()] for w in words}
        return Inspection(image, maps, word_grid(image, maps, title=settings.prompt), self.warnings(settings))

    def held(self, concepts: list[str] | str, keep: list[str] | str = (), replace_with: str | None = None) -> KeepSet:
        """What erasing `concepts` will hold: the `keep` words and the model's own words nearest each concept
        (and the near ones it leaves alone), shown before the click; nothing is drawn."""
        return keep_set(self.pipe, split_concepts(concepts), split_concepts(keep), (replace_with or "").strip())

    def erase(self, concepts: list[str] | str, method: str = DEFAULT_METHOD, images=None,
              replace_with: str | None = None, on_progress=None, cancelled=None, **overrides) -> str:
        """Runs an erasure on the shared model; returns the new patch's id (inactive until named in a call).
        `concepts`: a list, or one text with commas between concepts. Generations asked for meanwhile run
        between two of its steps (an erasure takes seconds to minutes; a visitor's image, a second)."""
        concepts = split_concepts(concepts)
        patch_id = new_id(f"{method}:{'+'.join(concepts)}")

        def between_steps(progress: Progress) -> None:
            if on_progress:
                on_progress(progress)
            if METHODS[method].trains:  # a closed form's one step is its end
                self._let_generations_run(patch_id)

        with self.lock:
            self.patches[patch_id] = erase(self.pipe, concepts, method, images, replace_with,
                                           between_steps, cancelled, name=patch_id, **overrides)
        return patch_id

    def erase_live(self, concepts: list[str] | str, method: str = DEFAULT_METHOD, images=None,
                   replace_with: str | None = None, **overrides) -> Iterator[Progress | Erased]:
        """`erase` in a worker thread, as a generator: yields a `Progress` per step, then `Erased`.

        Closing the generator early (a cancelled request) stops the erasure at its next step
        and leaves the model as it was. Bad input raises ValueError before the first event.
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
        losses = []
        try:
            while (event := events.get()) is not None:
                losses.append(event.loss)
                yield event
        finally:
            stop.set()
        if "error" in outcome:
            raise outcome["error"]
        yield Erased(outcome["id"], self.patches[outcome["id"]], losses)

    def compare(self, concepts: list[str] | str, patches: list[str], learned: Inverted | None = None,
                on_image=None) -> Comparison:
        """The first concept's probe prompts without and with `patches`, on the same seeds (see
        `fmn.evaluate.compare_prompts`); with `learned`, erased against attacked.
        ``on_image(done, total)``: the images drawn so far, both sides."""
        names = split_concepts(concepts)
        if not names:
            raise ValueError("Name the concept to compare, e.g. 'circle'.")
        self._check_patches(patches)
        titles = ("erased", "attacked") if learned else ("before", "after")
        return compare_prompts(self.sides(patches, learned, on_image=on_image), probe_prompts(self.pipe, names[0]),
                               judge=judge_for(self.pipe), titles=titles)

    def compare_prompt(self, settings: GenerationSettings, patches: list[str], seeds: list[int] | None = None,
                       step_range=None, resolutions=None) -> Comparison:
        """One prompt without and with `patches` on the same seeds (default: its seed), traced: the Generate
        tab's "compare with the original" and `python -m fmn heatmap --compare`."""
        if not patches:
            raise ValueError("Nothing to compare the original with: apply a patch (erase a concept or upload one).")
        self._check_patches(patches)
        settings = check_settings(self.pipe, settings)
        return compare_prompts(self.sides(patches, settings=settings, step_range=step_range, resolutions=resolutions),
                               [Probe("prompt", settings.prompt, None)], seeds or [settings.seed], judge_for(self.pipe))

    def collateral(self, patches: list[str], concepts: list[str] | str | None = None, on_image=None) -> Collateral:
        """What else `patches` changed: every concept the model knows (or `concepts`), drawn without and
        with them on the same seeds (see `fmn.collateral`). ``on_image(done, total)``: the images drawn so far."""
        self._check_patches(patches)
        if not patches:
            raise ValueError("Nothing to compare: erase a concept (or upload a patch) first.")
        erased = [c for p in patches for c in self.patches[p].concepts]
        return collateral(self.sides(patches, on_image=on_image), erased, world_of(self.pipe), concepts)

    def sides(self, patches: list[str], learned: Inverted | None = None, settings: GenerationSettings | None = None,
               step_range=None, resolutions=None, on_image=None) -> Draw:
        """A comparison's two sides as the `fmn.evaluate.Draw` that `compare_prompts` and `collateral` take: "before"
        without the patches (with them, against an attack's `learned` words), "after" with them; `settings` but the
        prompt and seed (default: the defaults). ``on_image(done, total)`` counts the images of both sides."""
        settings = settings or GenerationSettings("")
        model = {"before": (patches if learned else (), None), "after": (patches, learned)}  # (patches, learned)

        def draw(prompts: list[str], seeds: list[int], side: str):
            done = len(prompts) if side == "after" else 0  # the "before" side is drawn first
            progress = (lambda i, n: on_image(done + i, 2 * n)) if on_image else None
            return self.generate_pairs_traced(settings, prompts, seeds, *model[side], step_range, resolutions,
                                              progress)

        return draw

    def save_patch(self, patch_id: str, folder: str | Path) -> Path:
        """Writes a loaded patch to `folder` under a readable file name (e.g. "uce-circle.safetensors")."""
        self._check_patches([patch_id])
        patch = self.patches[patch_id]
        stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in f"{patch.method}-{'_'.join(patch.concepts)}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return patch.save(folder / f"{stem}.safetensors")

    def attack(self, concept: str, patches: list[str], images=None, on_step=None, **overrides) -> Inverted:
        """Concept inversion against the model with `patches` active: learned embeddings for the
        concept's words that try to bring it back (see `fmn.attack`). Pass them to `generate`.
        On the shapes world the judge is the attacker's eye: it keeps the words that draw the
        concept most surely, the name's own among them, so the attack is never weaker than the name;
        it looks every LOOK_EVERY steps by default."""
        concept, eye, _ = self._attacked(concept, patches)
        with self.lock:
            return concept_inversion(self.pipe, concept, list(patches), _attack_config(overrides), images, on_step,
                                     eye)

    def recovery(self, concept: str, patches: list[str], reading: Reading | None = None, seeds=(0, 1, 2),
                 images=None, on_step=None, **overrides) -> list[Recovery]:
        """The attack as it is measured (`fmn.attack.recovery`, the quality benchmark's code): once per seed, read
        (default: on 8 plain prompts) by the model's judge where it has one (rates None elsewhere: look)."""
        concept, eye, shows = self._attacked(concept, patches)
        reading = reading or Reading.plain_prompts(concept)
        with self.lock:
            return recovery(self.pipe, concept, list(patches), reading, shows,
                            _attack_config(overrides), tuple(seeds), images=images,
                            on_step=on_step, looks_like=eye)

    def swap(self, concept: str, patches: list[str], reading: Reading | None = None) -> dict[str, Recovery]:
        """The encoder swap (`fmn.attack.encoder_swap`): per side, the patches with only that side on, read (default:
        on 8 plain prompts) by the model's judge where it has one."""
        concept, _, shows = self._attacked(concept, patches)
        with self.lock:
            return encoder_swap(self.pipe, list(patches), reading or Reading.plain_prompts(concept), shows)

    def _attacked(self, concept: str, patches: list[str]):
        """The concept's first name, and the judge's eye and reading of it (None on a model without a judge)."""
        concept = next(iter(split_concepts(concept)), "")
        if not concept:
            raise ValueError("Name the erased concept to attack.")
        if not patches:
            raise ValueError("Nothing to attack: erase a concept (or upload a patch) first.")
        self._check_patches(patches)
        judge = judge_for(self.pipe)
        if judge is None or not judge.knows(concept):
            return concept, None, None
        return concept, judge.sureness(concept), shows(judge, concept)

    def load_patch(self, path: str | Path) -> str:
        """Reads a patch file, or a LoRA made elsewhere (any layout diffusers reads), and attaches it;
        raises PatchError (model untouched) if it does not fit."""
        try:
            patch = Patch.load(path)
        except NotAPatch:
            patch_id = new_id(f"lora:{Path(path).stem}")
            with self.lock:
                self.patches[patch_id] = import_lora(self.pipe, path, patch_id)
            return patch_id
        patch_id = new_id(patch.name)
        with self.lock:
            attach(self.pipe, patch, patch_id)
            self.patches[patch_id] = patch
        return patch_id

    def export(self, patch_ids: list[str], to: str, out: str | Path) -> Path:
        """Writes these patches, stacked, as a LoRA, a merged model or a single file (see `fmn.export`)."""
        self._check_patches(patch_ids)
        return export(self.pipe, [self.patches[p] for p in patch_ids], to, out, self.source, self.config)

    def remove_patch(self, patch_id: str) -> None:
        with self.lock:
            if self.patches.pop(patch_id, None) is not None:
                detach(self.pipe, patch_id)
