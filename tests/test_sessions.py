"""Many visitors on one shared model: each session's patches are freed when it ends or idles, a session holds
at most so many, and the model is switched only where the operator allows it and no one else loses work."""

import threading
import time

import numpy as np
import pytest
import torch

from fmn.generate import GenerationSettings
from fmn.sessions import Limits, Sessions
from fmn.studio import Studio

from test_patch import make_patch


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def adapters(studio) -> set[str]:
    """Every adapter name on the shared model's parts."""
    return {name for part in (studio.pipe.unet, studio.pipe.text_encoder) for name in getattr(part, "peft_config", {})}


@pytest.fixture()
def studio(tiny_dirs):
    return Studio(tiny_dirs["sd15"], device="cpu")


def add(studio, sessions, session, name):
    sessions.check_room(session)
    studio.patches[name] = make_patch(studio.pipe, name, "circle", len(studio.patches))
    sessions.add(session, name)


def test_ending_or_idling_frees_a_sessions_patches_and_only_its_own(studio):
    clock = Clock()
    sessions = Sessions(studio, Limits(patches=2, idle_s=60), clock)
    add(studio, sessions, "alice", "a1")
    add(studio, sessions, "alice", "a2")
    add(studio, sessions, "bob", "b1")
    with pytest.raises(ValueError, match="applies 2 patches, the most this server allows"):
        sessions.check_room("alice")
    assert sessions.end("alice") == 2 and set(studio.patches) == {"b1"} and adapters(studio) == {"b1"}
    clock.now = 30
    sessions.touch("carol")
    clock.now = 61  # bob was last seen at 0: idle past the limit; carol at 30
    assert sessions.expire() == ["bob"] and studio.patches == {} and adapters(studio) == set()
    assert not hasattr(studio.pipe.unet, "peft_config")  # the model is as loaded


def test_other_visitors_patches_are_counted(studio):
    sessions = Sessions(studio)
    add(studio, sessions, "alice", "a1")
    assert sessions.others_hold_patches("alice") == 0 and sessions.others_hold_patches("bob") == 1


def handlers(studio, **options):
    from app import create_demo

    demo = create_demo(studio, **options)
    return demo, {f.api_name: f.fn for f in demo.fns.values() if f.api_name}


def test_load_is_refused_without_the_operators_flag_and_changes_nothing(studio, tiny_dirs):
    import gradio as gr

    _, fns = handlers(studio)
    list(fns["erase"]("circle", "uce", None, "", 0, []))
    before = (studio.source, studio.pipe, dict(studio.patches))
    with pytest.raises(gr.Error, match="Model switching is off on this server"):
        fns["load_model"](str(tiny_dirs["sd2"]))
    assert (studio.source, studio.pipe, dict(studio.patches)) == before


def test_load_with_the_flag_never_drops_another_visitors_patches(studio, tiny_dirs):
    import gradio as gr

    demo, fns = handlers(studio, allow_model_switch=True)
    alice, bob = Request("alice"), Request("bob")
    list(fns["erase"]("circle", "uce", None, "", 0, [], request=alice))
    with pytest.raises(gr.Error, match="Other visitors' 1 patch"):
        fns["load_model"](str(tiny_dirs["sd2"]), request=bob)
    assert studio.source == str(tiny_dirs["sd15"]) and len(studio.patches) == 1
    assert "Loaded" in fns["load_model"](str(tiny_dirs["sdxl"]), request=alice)  # only her own: they go with the model
    assert studio.source == str(tiny_dirs["sdxl"]) and studio.patches == {} and demo.sessions.owned == {}
    image, maps, _ = fns["generate"]("a red circle", "", 0, 2, 5.0, 0, 2, None, [], request=alice)  # an SDXL folder
    assert image.size == (32, 32) and len(maps) == 3


def test_a_session_may_hold_only_so_many_patches(studio):
    import gradio as gr

    from app import create_demo

    demo = create_demo(studio, limits=Limits(patches=1))
    erase = next(f.fn for f in demo.fns.values() if f.api_name == "erase")
    list(erase("circle", "uce", None, "", 0, [], request=Request("alice")))
    with pytest.raises(gr.Error, match="applies 1 patches, the most this server allows"):
        list(erase("square", "uce", None, "", 0, [], request=Request("alice")))
    list(erase("square", "uce", None, "", 0, [], request=Request("bob")))  # another visitor has room
    assert len(studio.patches) == 2


def test_a_generation_runs_between_an_erasures_steps_and_changes_neither(tiny_dirs):
    """A visitor's image does not wait for another's erasure to end: the erasure hands the device over between
    two steps. The image and the patch are bit for bit what each gives alone."""
    settings, erasing = (GenerationSettings("a red circle", steps=3),
                         {"steps": 40, "references": 1, "reference_steps": 2})
    alone = Studio(tiny_dirs["sd15"], device="cpu")
    image_alone = alone.generate(settings, [4])
    patch_alone = alone.patches[alone.erase("circle", "fmn", **erasing)]
    studio = Studio(tiny_dirs["sd15"], device="cpu")
    started, finished = threading.Event(), []
    worker = threading.Thread(target=lambda: finished.append(
        studio.erase("circle", "fmn", on_progress=lambda p: started.set(), **erasing)))
    worker.start()
    assert started.wait(120)
    image = studio.generate(settings, [4])
    assert not finished  # drawn while the erasure was still running
    worker.join()
    patch = studio.patches[finished[0]]
    assert np.array_equal(np.asarray(image[0]), np.asarray(image_alone[0]))
    assert patch.tensors.keys() == patch_alone.tensors.keys()
    assert all(torch.equal(patch.tensors[k], patch_alone.tensors[k]) for k in patch.tensors)


class Request:
    """What the handlers read of gr.Request."""

    def __init__(self, session_hash):
        self.session_hash = session_hash


@pytest.mark.slow
def test_a_tab_closed_without_reset_leaves_no_adapter(tiny_dirs):
    """A real server in this process and a real browser: erase, close the tab, the patch is gone."""
    from playwright.sync_api import sync_playwright

    from app import CSS, create_demo
    from fmn.bench.click import launch_chromium

    studio = Studio(tiny_dirs["sd15"], device="cpu")
    demo = create_demo(studio)
    demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", prevent_thread_lock=True, css=CSS,
                                                    quiet=True)
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page()
            page.goto(demo.local_url)
            page.get_by_role("tab", name="Erase").click()
            page.locator("#method input").click()
            page.get_by_role("option", name="uce").click()
            page.locator("#erase").click()
            page.get_by_text("Erased **circle**").or_(page.get_by_text("Erased circle")).first.wait_for(timeout=120_000)
            assert len(studio.patches) == 1 and adapters(studio)
            page.close()  # no Reset
            deadline = time.time() + 60
            while studio.patches and time.time() < deadline:
                time.sleep(0.5)
            browser.close()
        assert studio.patches == {} and adapters(studio) == set() and demo.sessions.owned == {}
    finally:
        demo.close()
