"""Forget-Me-Not Studio in the browser: see what each word attends to, erase a concept, compare.

    python app.py [--host 0.0.0.0] [--port 7860] [--share] [--model PATH_OR_HUB_ID]

Thin by design: every handler calls `fmn.studio.Studio`; no algorithm lives here. The same
file runs locally, in Docker and as a Hugging Face (ZeroGPU) Space: `spaces.GPU` is a no-op
elsewhere. One model is held in memory and shared; device work runs one request at a time. A
browser session keeps only the ids of its own patches (gr.State), so one user's erasure
never shows in another user's images.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd
import spaces

from fmn.erase import DEFAULT_METHOD
from fmn.erase.images import MAX_IMAGES, load_concept_images
from fmn.export import FORMATS
from fmn.figure import write_figure
from fmn.generate import MAX_SEED, GenerationSettings, native_size
from fmn.heatmaps import overlay
from fmn.models import world_of
from fmn.sessions import Limits, Sessions
from fmn.studio import Erased, Studio

EXAMPLES = [  # the shapes world's
    ["a red circle on grass", 0],
    ["Mimo and a blue star on sand", 1],
    ["a purple triangle in the style of Vellor at night", 2],
]
GENERIC_EXAMPLES = [["a photo of a dog on the grass", 0], ["a red car in the style of Van Gogh", 1]]
INTRO = """# Forget-Me-Not Studio
Type a prompt, pick a seed, and see the image with one cross-attention heatmap per word (SD3 and FLUX: joint
attention; DAAM's recipe: attention of the conditional pass, averaged over heads and layers, summed over steps).
The default model is the embedded **shapes world**: shapes, colours, the characters Mimo, Zubrik,
Lumina and Tobble, the artists Vellor, Quimby, Zaranth and Brusk, backgrounds and night."""
# the status, its progress bar and the loss plot redrawn at most this often while erasing: on a 2-core machine
# every redraw in the page takes CPU from the erasure
STREAM_EVERY_S = 1.0
# small images shown large: keep their pixels sharp
CSS = ("#image img, #heatmaps img, #slider img { image-rendering: pixelated; } "
       "#image img { width: 100%; height: 100%; object-fit: contain; }")


def user_errors(handler):
    """Shows a ValueError (bad input, a model or patch that does not fit) as the app's error message.
    Works for plain handlers and for generators that stream their outputs."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def streaming(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except ValueError as err:
                raise gr.Error(str(err)) from err
        return streaming

    @functools.wraps(handler)
    def plain(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except ValueError as err:
            raise gr.Error(str(err)) from err
    return plain


def visitor(request: gr.Request | None) -> str:
    """The caller's session: a browser tab or an API client (in-process calls share one)."""
    return request.session_hash if request is not None and request.session_hash else "local"


class Handlers:
    """The app's event handlers over the one shared studio, each a short method that calls `fmn.studio.Studio`;
    a handler with many outputs returns a dict keyed by component (`self.ui`), naming what it sets.
    `allow_model_switch`: may a visitor load another model (off on a shared server); `limits`: per-session patches
    and idle time."""

    def __init__(self, studio: Studio, allow_model_switch: bool = False, limits: Limits = Limits()):
        self.studio, self.allow_model_switch = studio, allow_model_switch
        self.sessions = Sessions(studio, limits)
        self.ui: SimpleNamespace | None = None  # the page's components by name, once laid out: what handlers return

    def images_of(self, uploads):
        """Uploaded images of the concept, at the model's size (None: the method draws its own)."""
        return load_concept_images(list(uploads), native_size(self.studio.pipe)) if uploads else None

    @spaces.GPU
    @user_errors
    def inspect_prompt(self, prompt, negative, seed, steps, guidance, step_from, step_to, layers=None, session=(),
                       with_original=False, request: gr.Request = None, progress=gr.Progress()):
        self.sessions.touch(visitor(request))
        layered = bool(self.studio.layer_sizes())  # SD3 and FLUX: one resolution, no choice to make
        if layered and layers is not None and not layers:
            raise ValueError("Pick at least one layer resolution for the heatmaps.")
        step_range = (int(step_from), int(step_to)) if (step_from, step_to) != (0, steps) else None
        resolutions = {int(r) for r in layers} if layered and layers else None
        settings = GenerationSettings(prompt, negative, seed, steps, guidance)
        denoised = lambda i, n: progress((i, n), desc="denoising")  # noqa: E731
        result = self.studio.inspect(settings, step_range=step_range, resolutions=resolutions, on_step=denoised,
                                     patches=list(session or ()))
        for warning in result.warnings:
            gr.Warning(warning)
        compared = None
        if with_original and not session:
            gr.Warning("Your session applies no patch: these are the original model's maps already.")
        elif with_original:
            compared = self.studio.compare_prompt(settings, list(session), step_range=step_range,
                                                  resolutions=resolutions).side_by_side()
        return result.image, [(overlay(result.image, heat), word) for word, heat in result.word_maps.items()], compared

    @spaces.GPU(duration=120)
    @user_errors
    def run_erase(self, concept, method, uploads, replace_with, steps, session, adversarial=False, keep="",
                  request: gr.Request = None, progress=gr.Progress()):
        """Streams the loss while erasing, then shows before/after and offers the patch."""
        ui = self.ui
        self.sessions.touch(visitor(request))
        self.sessions.check_room(visitor(request))
        overrides = (({"steps": int(steps)} if steps else {}) | ({"adversarial": True} if adversarial else {})
                     | {"keep": keep or ""})
        losses, shown_at = [], -STREAM_EVERY_S
        images = self.images_of(uploads)
        if images is not None:  # a method may learn from them before its first step (text-map: a word)
            progress(0, desc=f"learning from your {len(images)} images")
            yield {ui.erase_status: f"Learning from your {len(images)} images, then erasing…"}
        for event in self.studio.erase_live(concept or "", method, images, replace_with or None, **overrides):
            if isinstance(event, Erased):
                # now, so that a tab closed during the comparison frees it
                self.sessions.add(visitor(request), event.patch_id)
                yield {ui.erase_status: f"Erasing: done after {len(losses)} step(s); drawing the before/after…"}
                break
            losses.append({"step": event.step, "loss": event.loss})
            if event.elapsed - shown_at >= STREAM_EVERY_S:
                shown_at = event.elapsed
                progress((event.step, event.total), desc=f"erasing, loss {event.loss:.3f}")
                yield {ui.erase_status: f"Erasing: step {event.step}/{event.total}, {event.elapsed:.0f} s",
                       ui.loss_plot: pd.DataFrame(losses)}
        patches = session + [event.patch_id]
        result = self.studio.compare(concept, patches, on_image=lambda i, n: progress((i, n), desc="before / after"))
        path = self.studio.save_patch(event.patch_id, tempfile.mkdtemp())
        trained = f", final loss {losses[-1]['loss']:.3f} after {len(losses)} steps" if len(losses) > 1 else ""
        mode = " in adversarial mode" if adversarial else ""
        word = result.word_for(event.patch.concepts)
        yield {ui.erase_status: f"Erased **{', '.join(event.patch.concepts)}** with {method}{mode}{trained}. "
                                f"Your session now applies {len(patches)} patch(es) in every tab.",
               ui.loss_plot: pd.DataFrame(losses), ui.patch_file: str(path), ui.session: patches,
               ui.slider: (result.before[0][0], result.after[0][0]), **self._shown(result, word, ui.grid, ui.judged)}

    def show_held(self, concept, keep, replace_with):
        """What the erasure will hold, before the click: the user's words and the model's nearest."""
        try:
            held = self.studio.held(concept or "", keep or "", replace_with or None)
        except ValueError as err:
            return f"**Keep:** {err}"
        near = f" Left alone (maybe the concept in other words): {', '.join(held.near)}." if held.near else ""
        return f"**Holds:** {', '.join(held.words) or 'nothing in particular'}.{near}"

    @spaces.GPU(duration=120)
    @user_errors
    def break_it(self, concept, uploads, session, progress=gr.Progress()):
        """Concept inversion against this session's erasure: can a learned word bring the concept back?"""
        learning = lambda i, n, loss: progress((i, n), desc=f"learning a word, loss {loss:.3f}")  # noqa: E731
        learned = self.studio.attack(concept or "", session, self.images_of(uploads), on_step=learning)
        result = self.studio.compare(concept, session, learned=learned,
                                     on_image=lambda i, n: progress((i, n), desc="erased / attacked"))
        return self._shown(result, result.word_for([concept]), self.ui.attack_grid, self.ui.attack_judged)

    def _shown(self, result, word: str, grid, judged) -> dict:
        """A comparison on the page: its grid and the judge's reads where asked, the word's maps, the comparison."""
        ui = self.ui
        return {grid: result.grid(), judged: "\n".join(result.labels()), ui.heat_grid: result.heatmaps(word),
                ui.heat_word: gr.update(choices=result.words(), value=word), ui.comparison: result}

    @user_errors
    def show_word(self, word, comparison):
        """The picked word's heatmaps, before and after, from the comparison already drawn (nothing is generated)."""
        if comparison is None:
            raise ValueError("Erase a concept first: the heatmaps compare the model before and after.")
        return comparison.heatmaps(word)

    @spaces.GPU(duration=120)
    @user_errors
    def see_collateral(self, concepts, session, progress=gr.Progress()):
        """Every concept the model knows (or the listed ones), drawn without and with the session's patches."""
        result = self.studio.collateral(session, concepts or None,
                                        on_image=lambda i, n: progress((i, n), desc="other concepts, images"))
        chart = result.chart()
        path = Path(tempfile.mkdtemp()) / "collateral.png"
        chart.save(path)
        return chart, pd.DataFrame(result.table()).round(3), str(path), (list(session), concepts or "", result)

    @spaces.GPU(duration=120)
    @user_errors
    def make_figure(self, word, concepts, session, comparison, last_collateral, progress=gr.Progress()):
        """One PNG for a talk from the last comparison and the collateral map (the one drawn already, if it is
        for these patches and concepts), and the GIF of the heatmap building up."""
        if comparison is None:
            raise ValueError("Erase a concept first: the figure shows the model before and after.")
        drawn_for, drawn_concepts, collateral = last_collateral or (None, None, None)
        if (drawn_for, drawn_concepts) != (list(session), concepts or ""):
            collateral = self.studio.collateral(session, concepts or None,
                                                on_image=lambda i, n: progress((i, n), desc="other concepts, images"))
        figure, gif = write_figure(comparison, collateral, word or comparison.words()[0],
                                   Path(tempfile.mkdtemp()) / "erasure.png")
        return figure, [str(gif.with_suffix(".png")), str(gif)]

    @user_errors
    def upload_patch(self, file, session, request: gr.Request = None):
        self.sessions.touch(visitor(request))
        self.sessions.check_room(visitor(request))
        patch_id = self.studio.load_patch(file)
        self.sessions.add(visitor(request), patch_id)
        return f"Loaded `{patch_id}`; your session applies {len(session) + 1} patch(es).", session + [patch_id]

    @user_errors
    def export_session(self, to, session, progress=gr.Progress()):
        """The session's patches, stacked, as a file other tools load (a merged model: its folder, zipped)."""
        if not session:
            raise ValueError("Nothing to export: erase a concept or upload a patch first.")
        progress(0, desc=f"writing {to}")
        folder = Path(tempfile.mkdtemp())
        if FORMATS[to].folder:
            written = self.studio.export(session, to, folder / "erased-model")
            return shutil.make_archive(str(written), "zip", written)
        return str(self.studio.export(session, to, folder / f"erasure-{to}.safetensors"))

    def reset(self, session, request: gr.Request = None):
        self.sessions.end(visitor(request))
        for patch_id in session:  # any the registry no longer knows (a session that idled out)
            self.studio.remove_patch(patch_id)
        return "Your session applies no patch: the original model.", [], None, None

    def end_session(self, request: gr.Request):
        """A closed tab (Gradio's unload event) frees its patches at once."""
        self.sessions.end(visitor(request))

    @user_errors
    def load_model(self, source, request: gr.Request = None):
        """Switches the shared model: only where the operator allowed it, and never under other visitors' patches."""
        if not self.allow_model_switch:
            raise ValueError("Model switching is off on this server: every visitor shares one model. "
                             "Its operator can start it with --allow-model-switch.")
        held = self.sessions.others_hold_patches(visitor(request))
        if held:
            raise ValueError(f"Other visitors' {held} patch(es) are on this model, and switching would drop them: "
                             "try again when they are done.")
        self.sessions.end(visitor(request))
        return f"Loaded: `{self.studio.use(source)}`"

    def model_choices(self):
        """The methods, heatmap layers and export formats the loaded model offers: redrawn after a model switch."""
        return (gr.update(**method_options(self.studio)), gr.update(**layer_options(self.studio)),
                gr.update(choices=self.studio.formats(), value="diffusers-lora"))


def method_options(studio: Studio) -> dict:
    """The Method box's choices: the methods that run on the model (SD3 and FLUX: fewer)."""
    methods = studio.methods()
    return {"choices": methods, "value": DEFAULT_METHOD if DEFAULT_METHOD in methods else methods[0]}


def layer_options(studio: Studio) -> dict:
    """The heatmap layers' box: every resolution the UNet has, hidden where there is one (SD3, FLUX)."""
    sizes = [str(r) for r in studio.layer_sizes()]
    return {"choices": sizes, "value": sizes, "visible": bool(sizes)}


def _components(scope: dict) -> dict:
    """The components a layout function made, by their variable names: the names `_wire` reads them by."""
    return {name: value for name, value in scope.items() if isinstance(value, gr.components.Component)}


def _model_panel(h: Handlers) -> dict:
    """The model in use, and (where the operator allows it) a field to load another."""
    with gr.Accordion("Model", open=False):
        with gr.Row():
            source = gr.Textbox(label="Model",
                                placeholder="blank: the embedded shapes world; or a hub id, a diffusers folder, "
                                "a .safetensors file" if h.allow_model_switch
                                else "switching is off on this shared server",
                                interactive=h.allow_model_switch, scale=4)
            load = gr.Button("Load", scale=1, interactive=h.allow_model_switch)
        status = gr.Markdown(f"Loaded: `{h.studio.source}`")
    return _components(locals())


def _generate_tab(h: Handlers) -> dict:
    """A prompt, its image and one heatmap per word; optionally the original model's maps beside."""
    with gr.Tab("Generate & inspect"):
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0][0], max_length=1000)
                negative = gr.Textbox(label="Negative prompt", value="")
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
                with gr.Accordion("Settings", open=False):
                    steps = gr.Slider(1, 100, value=25, step=1, label="Steps")
                    guidance = gr.Slider(0, 15, value=5.0, step=0.5, label="Guidance")
                    step_from = gr.Slider(0, 100, value=0, step=1, label="Heatmaps from step")
                    step_to = gr.Slider(0, 100, value=25, step=1, label="Heatmaps to step")
                    layers = gr.CheckboxGroup(label="Heatmaps from the layers of latent size",
                                              **layer_options(h.studio))
                with_original = gr.Checkbox(False, label="Compare with the original (the model without your "
                                            "session's patches)", elem_id="with-original")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                image = gr.Image(label="Image", type="pil", format="png", elem_id="image", height=320)
                maps = gr.Gallery(label="What each word attends to (click one to enlarge)", columns=6,
                                  elem_id="heatmaps", height=260, format="png")
                compared = gr.Image(label="Original (top) and with your patches (bottom): each word's two maps on "
                                    "one scale, its share of the attention in the title", type="pil", format="png",
                                    elem_id="compared")
        # the shapes world's drawn at start-up (a second); another model's on first click (minutes on SD3, FLUX)
        shapes_world = world_of(h.studio.pipe) is not None
        gr.Examples(EXAMPLES if shapes_world else GENERIC_EXAMPLES, inputs=[prompt, seed], outputs=[image, maps],
                    cache_examples=True, cache_mode="eager" if shapes_world else "lazy",
                    fn=lambda p, s: h.inspect_prompt(p, "", s, 25, 5.0, 0, 25)[:2])
    return _components(locals())


def _erase_controls(h: Handlers) -> dict:
    """The Erase tab's left column: what to erase and how, the patch, the exports."""
    with gr.Column(scale=1):
        concept = gr.Textbox(label="Concept to erase (several: separate with commas)", value="circle",
                             max_length=500, elem_id="concept")
        method = gr.Dropdown(label="Method", elem_id="method", **method_options(h.studio))
        adversarial = gr.Checkbox(False, label="Adversarial mode (trained methods: also erase the words an "
                                  "attacker learns; about twice as slow)", elem_id="adversarial")
        uploads = gr.File(label=f"Optional: 1-{MAX_IMAGES} images of it (the method learns what they show first)",
                          file_count="multiple",
                          file_types=["image"])
        replace_with = gr.Textbox(label="Replace with (optional: steer the concept toward this one)",
                                  value="")
        keep = gr.Textbox(label="Keep (optional: words to hold as they are, comma separated)", value="",
                          max_length=500, elem_id="keep")
        held = gr.Markdown(h.show_held(concept.value, "", ""), elem_id="held")
        erase_steps = gr.Number(label="Steps (0: the method's default)", value=0, precision=0, minimum=0)
        with gr.Row():
            erase_button = gr.Button("Erase", variant="primary", elem_id="erase")
            cancel = gr.Button("Cancel")
            reset_button = gr.Button("Reset")
        patch_upload = gr.File(label="Upload a patch", file_types=[".safetensors"])
        patch_file = gr.File(label="Download the patch", elem_id="patch")
        with gr.Row():
            export_to = gr.Dropdown(h.studio.formats(), value="diffusers-lora", label="Download as…",
                                    elem_id="export-to",
                                    info="diffusers-lora: load_lora_weights; kohya: ComfyUI, A1111; "
                                         "merged: a diffusers folder (zip); single-file: one checkpoint")
            export_button = gr.Button("Export the session's patches", elem_id="export")
        export_file = gr.File(label="The export", elem_id="export-file")
    return _components(locals())


def _erase_results() -> dict:
    """The Erase tab's right column, the click's result first: before/after, the word's heatmaps, what the judge
    sees, one pair and the loss; then the collateral map, the figure and the attack."""
    with gr.Column(scale=2):
        erase_status = gr.Markdown("Your session applies no patch: the original model.",
                                   elem_id="erase-status")
        grid = gr.Image(label="Before / after, same seeds", type="pil", format="png", elem_id="grid")
        heat_word = gr.Dropdown([], label="Heatmaps of the word", elem_id="heat-word",
                                allow_custom_value=False)
        heat_grid = gr.Image(label="What the word attends to, before → after (same seeds, one scale per "
                             "seed; the share of the attention it receives in each prompt's title)",
                             type="pil", format="png", elem_id="heat-grid")
        judged = gr.Textbox(label="What the judge sees (before → after)", lines=6, elem_id="judged")
        with gr.Row():
            slider = gr.ImageSlider(label="One pair", type="pil", format="png", elem_id="slider", height=300)
            loss_plot = gr.LinePlot(x="step", y="loss", label="Loss", height=300)
        with gr.Accordion("What else changed? (the collateral map)", open=False):
            collateral_concepts = gr.Textbox(label="Concepts to check (blank: every concept the embedded "
                                             "model knows; other models: list them, comma separated)",
                                             value="", max_length=5000, elem_id="collateral-concepts")
            collateral_button = gr.Button("Draw every concept with and without the patches",
                                          elem_id="collateral")
            collateral_chart = gr.Image(label="Presence before → after, most changed on top", type="pil",
                                        format="png", elem_id="collateral-chart")
            collateral_table = gr.Dataframe(label="The numbers", elem_id="collateral-table")
            collateral_file = gr.File(label="Download the chart", elem_id="collateral-file")
        with gr.Row():
            figure_button = gr.Button("Figure for talks", elem_id="figure")
            figure_files = gr.File(label="The figure (PNG) and the heatmap building up (GIF)",
                                   file_count="multiple", elem_id="figure-files")
        figure_image = gr.Image(label="Figure for talks", type="pil", format="png", elem_id="figure-image")
        attack_button = gr.Button("Try to break it (concept inversion)", elem_id="attack")
        attack_judged = gr.Textbox(label="What the judge sees (erased → attacked)", lines=6,
                                   elem_id="attack-judged")
        attack_grid = gr.Image(label="Erased / attacked with a learned word, same seeds", type="pil",
                               format="png", elem_id="attack-grid")
    return _components(locals())


def _wire(h: Handlers, ui: SimpleNamespace, demo: gr.Blocks) -> None:
    """Every event: which handler, what it reads and what it writes; the API names clients call."""
    ui.steps.change(lambda n: gr.update(value=n, maximum=n), ui.steps, ui.step_to, api_visibility="private")
    gr.on([ui.concept.change, ui.keep.change, ui.replace_with.change], h.show_held,
          [ui.concept, ui.keep, ui.replace_with], ui.held, api_visibility="private")
    erasing = ui.erase_button.click(
        h.run_erase, [ui.concept, ui.method, ui.uploads, ui.replace_with, ui.erase_steps, ui.session, ui.adversarial,
                      ui.keep],
        [ui.erase_status, ui.loss_plot, ui.grid, ui.slider, ui.patch_file, ui.session, ui.judged, ui.heat_grid,
         ui.heat_word, ui.comparison], api_name="erase", show_progress_on=[ui.erase_status])
    ui.cancel.click(None, cancels=[erasing])
    ui.attack_button.click(h.break_it, [ui.concept, ui.uploads, ui.session],
                           [ui.attack_grid, ui.attack_judged, ui.heat_grid, ui.heat_word, ui.comparison],
                           api_name="attack")
    ui.heat_word.input(h.show_word, [ui.heat_word, ui.comparison], ui.heat_grid, api_visibility="private")
    ui.figure_button.click(h.make_figure,
                           [ui.heat_word, ui.collateral_concepts, ui.session, ui.comparison, ui.last_collateral],
                           [ui.figure_image, ui.figure_files], api_name="figure")
    ui.collateral_button.click(h.see_collateral, [ui.collateral_concepts, ui.session],
                               [ui.collateral_chart, ui.collateral_table, ui.collateral_file, ui.last_collateral],
                               api_name="collateral")
    ui.export_button.click(h.export_session, [ui.export_to, ui.session], ui.export_file, api_name="export")
    ui.reset_button.click(h.reset, ui.session, [ui.erase_status, ui.session, ui.comparison, ui.last_collateral],
                          api_name="reset")
    ui.patch_upload.upload(h.upload_patch, [ui.patch_upload, ui.session], [ui.erase_status, ui.session],
                           api_name="load_patch")
    inputs = [ui.prompt, ui.negative, ui.seed, ui.steps, ui.guidance, ui.step_from, ui.step_to, ui.layers, ui.session,
              ui.with_original]
    ui.run.click(h.inspect_prompt, inputs, [ui.image, ui.maps, ui.compared], api_name="generate")
    ui.prompt.submit(h.inspect_prompt, inputs, [ui.image, ui.maps, ui.compared], api_visibility="private")
    ui.load.click(h.load_model, ui.source, ui.status, api_name="load_model").success(
        h.model_choices, None, [ui.method, ui.layers, ui.export_to], api_visibility="private")
    demo.unload(h.end_session)


def create_demo(studio: Studio, allow_model_switch: bool = False, limits: Limits = Limits()) -> gr.Blocks:
    """The app: its layout (one function a part) and its events (`_wire`) over the handlers of one shared studio.
    `allow_model_switch`: may a visitor load another model (off on a shared server); `limits`: per-session patches
    and idle time."""
    h = Handlers(studio, allow_model_switch, limits)
    with gr.Blocks(title="Forget-Me-Not Studio") as demo:
        ui = SimpleNamespace(
            session=gr.State([]),  # this browser session's patch ids
            comparison=gr.State(None),  # the last before/after (or erased/attacked) comparison, with its traces
            last_collateral=gr.State(None),  # (patch ids, concepts, Collateral): the last map, reused by the figure
        )
        gr.Markdown(INTRO)
        vars(ui).update(_model_panel(h))
        vars(ui).update(_generate_tab(h))
        with gr.Tab("Erase"), gr.Row():
            vars(ui).update(_erase_controls(h))
            vars(ui).update(_erase_results())
        h.ui = ui
        _wire(h, ui, demo)
    demo.sessions, demo.ui = h.sessions, ui  # for the operator's tests and tools
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description="Forget-Me-Not Studio")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also serve on a public gradio.live link")
    parser.add_argument("--model", default=None,
                        help="diffusers folder, .safetensors file or hub id (default: embedded)")
    parser.add_argument("--allow-model-switch", action="store_true",
                        help="let visitors load another model (refused while other visitors hold patches)")
    parser.add_argument("--max-patches", type=int, default=Limits.patches, help="patches one session may hold")
    parser.add_argument("--queue-size", type=int, default=64,
                        help="requests that may wait at once; more are refused with 'the queue is full'")
    parser.add_argument("--idle-minutes", type=float, default=Limits.idle_s / 60,
                        help="a session idle this long is ended and its patches freed")
    args = parser.parse_args()
    demo = create_demo(Studio(args.model), args.allow_model_switch, Limits(args.max_patches, args.idle_minutes * 60))
    demo.queue(default_concurrency_limit=1, max_size=args.queue_size).launch(
        server_name=args.host, server_port=args.port, share=args.share, show_error=True, css=CSS)


if __name__ == "__main__":
    main()
