"""The app as a real server: gradio_client calls, concurrent users, and a headless browser."""

import re
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from fmn.bench.click import launch_chromium

from conftest import BAD_UPLOADS, OUTPUT, bad_upload

STEPS = 10  # fewer steps than the default keeps the server tests quick
SERVER = pytest.mark.slow  # the live server and the browser: the handlers themselves are tested in-process below


def call(client, prompt, seed, **kw):
    return client.predict(prompt, "", seed, STEPS, 5.0, 0, STEPS, api_name="/generate", **kw)


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@SERVER
def test_generate_endpoint_returns_image_and_a_map_per_word(client):
    image, maps, compared = call(client, "a red circle on grass", 3)
    assert compared is None  # "compare with the original" is off
    assert Image.open(image).size == (64, 64)
    assert [m["caption"] for m in maps] == ["a", "red", "circle", "on", "grass"]
    again, *_ = call(client, "a red circle on grass", 3)
    assert np.array_equal(pixels(image), pixels(again))


@SERVER
@pytest.mark.parametrize("prompt, seed, message", [
    ("", 0, "prompt is empty"),
    ("a" * 2000, 0, "limit is 1000"),
    ("a red circle", -5, "less than minimum value 0"),  # gradio checks the Number bounds itself
])
def test_bad_input_is_an_error_message(client, prompt, seed, message):
    with pytest.raises(Exception, match=message):
        call(client, prompt, seed)


@SERVER
def test_ten_concurrent_users_are_all_served_and_reproduce(app_url, client):
    seeds = list(range(100, 110))

    def user(seed):
        return call(Client(app_url, verbose=False), "a blue square on sand", seed)[0]

    with ThreadPoolExecutor(len(seeds)) as pool:
        images = list(pool.map(user, seeds))
    assert len(images) == len(seeds)
    for seed, path in list(zip(seeds, images))[:3]:  # a few re-run alone: same seed, same picture
        assert np.array_equal(pixels(path), pixels(call(client, "a blue square on sand", seed)[0]))
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))


@SERVER
def test_browser_types_a_prompt_and_sees_image_and_heatmaps(app_url):
    from playwright.sync_api import sync_playwright

    OUTPUT.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(app_url)
        page.get_by_label("Prompt", exact=True).fill("Mimo and a yellow star on water")
        page.locator("#generate").click()
        page.locator("#heatmaps img").nth(5).wait_for(timeout=120_000)
        assert page.locator("#heatmaps img").count() == 7  # one per word, "and" and "on" included
        assert page.locator("#image img").count() == 1
        page.screenshot(path=str(OUTPUT / "app-generate.png"), full_page=True)

        page.get_by_label("Prompt", exact=True).fill("")
        page.locator("#generate").click()
        page.get_by_text("The prompt is empty").first.wait_for(timeout=30_000)
        browser.close()


@SERVER
def test_erase_endpoint_and_sessions_do_not_leak(app_url):
    alice, bob = Client(app_url, verbose=False), Client(app_url, verbose=False)
    bob_before = pixels(call(bob, "a red circle", 11)[0])
    status, _, grid, pair, patch, judged, heat, word = alice.predict("circle", "uce", None, "", 0, api_name="/erase")
    assert "Erased **circle** with uce" in status and word["value"] == "circle" and "grass" in dict(word["choices"])
    assert Image.open(heat).height > Image.open(heat).width  # the concept word's maps: before, after, a line a seed
    assert Image.open(grid).width > Image.open(grid).height // 2 and patch.endswith(".safetensors")
    assert "circle:" in judged and "→" in judged  # the judge's before -> after per probe
    assert not np.array_equal(pixels(call(alice, "a red circle", 11)[0]), bob_before)  # alice's session is patched
    assert np.array_equal(pixels(call(bob, "a red circle", 11)[0]), bob_before)  # bob's is not

    carol = Client(app_url, verbose=False)  # a patch file carries the erasure to another session
    status = carol.predict(handle_file(patch), api_name="/load_patch")
    assert "Loaded" in status
    carried = pixels(call(carol, "a red circle", 11)[0]) - pixels(call(alice, "a red circle", 11)[0])
    assert np.abs(carried).max() <= 3  # the file holds fp16 factors

    dave = Client(app_url, verbose=False)  # so does a kohya LoRA exported from alice's session
    assert "Loaded" in dave.predict(handle_file(alice.predict("kohya", api_name="/export")), api_name="/load_patch")
    assert np.abs(pixels(call(dave, "a red circle", 11)[0]) - pixels(call(alice, "a red circle", 11)[0])).max() <= 3


@pytest.fixture(scope="module")
def erased(app_url):
    """A session that has erased circle (an empty upload: no images), and its patched image of one."""
    session = Client(app_url, verbose=False)
    status, *_ = session.predict("circle", "uce", [], "", 0, api_name="/erase")
    assert "Erased **circle** with uce" in status
    patched = pixels(call(session, "a red circle", 11)[0])
    assert not np.array_equal(patched, pixels(call(Client(app_url, verbose=False), "a red circle", 11)[0]))  # it shows
    return session, patched


@SERVER
@pytest.mark.parametrize("concept, upload, steps, message", [
    ("", None, 0, "concept is empty"), ("x" * 500, None, 0, "500 characters"),
    ("circle", None, 1_000_000, "Steps 1000000"),
    ("dragon", None, 0, "never saw dragon"),  # a word the embedded model does not know
    # uploads: the message of `bad_upload`, but gradio refuses a .txt itself
    *[("circle", case, 0, "Invalid file type" if case == "not an image" else None) for case in BAD_UPLOADS],
])
def test_erase_bad_input_loses_nothing(erased, tmp_path, concept, upload, steps, message):
    session, patched = erased
    files = None
    if upload:
        paths, expected = bad_upload(upload, tmp_path)
        files, message = [handle_file(str(p)) for p in paths], message or expected
    with pytest.raises(Exception, match=message):
        session.predict(concept, "fmn", files, "", steps, api_name="/erase")
    assert np.array_equal(pixels(call(session, "a red circle", 11)[0]), patched)  # the session's patch still applies


@SERVER
def test_try_to_break_it_attacks_the_sessions_erasure(app_url, erased):
    session, patched = erased
    grid, judged, heat, word = session.predict("circle", None, api_name="/attack")
    assert word["value"] == "circle" and Image.open(heat).height > Image.open(heat).width  # erased -> attacked maps
    readings = [re.search(r"\[(\w+): ([\d.]+) → ([\d.]+)\]", line) for line in judged.splitlines()]
    assert len(readings) == 6 and all(readings), judged  # every probe of an object, judged erased -> attacked
    assert {r[1] for r in readings} >= {"circle"} and all(0 <= float(r[k]) <= 1 for r in readings for k in (2, 3))
    assert Image.open(grid).width > Image.open(grid).height // 2  # erased and attacked side by side
    assert np.array_equal(pixels(call(session, "a red circle", 11)[0]), patched)  # the learned word stays in the attack
    with pytest.raises(Exception, match="Nothing to attack"):
        Client(app_url, verbose=False).predict("circle", None, api_name="/attack")


def handlers(studio):
    """The page's components by name (what the handlers' dicts are keyed by) and the app's event handlers by API
    name, to call in-process."""
    from app import create_demo

    demo = create_demo(studio)
    return demo.ui, {f.api_name: f.fn for f in demo.fns.values() if f.api_name}


def test_handlers_generate_erase_and_refuse_in_process(tiny_dirs):
    """The handlers the server runs, without a server: maps per word, an erasure streamed to its
    before/after and patch file, and bad input as the app's error message."""
    import gradio as gr

    from fmn.studio import Studio

    studio = Studio(tiny_dirs["sd15"], device="cpu")
    ui, fns = handlers(studio)
    image, maps, compared = fns["generate"]("a red circle", "", 0, 2, 5.0, 0, 2, None, [])
    assert image.size == (32, 32) and [word for _, word in maps] == ["a", "red", "circle"]
    held = fns["show_held"]("circle, square", "dog", "")  # what the erasure will hold, before the click
    assert held.startswith("**Holds:** dog, ") and len(held.split(", ")) > 2 and "circle" not in held
    assert "names 'circle'" in fns["show_held"]("circle", "a circle", "")
    *streamed, last = list(fns["erase"]("circle, square", "uce", None, "", 0, [], False, "dog"))
    status, grid, path, session, judged, heat, word, comparison = (last[c] for c in (
        ui.erase_status, ui.grid, ui.patch_file, ui.session, ui.judged, ui.heat_grid, ui.heat_word, ui.comparison))
    # while it erases: the status and the loss; then, while the comparison is drawn, the status alone
    assert [set(s) for s in streamed] == [{ui.erase_status, ui.loss_plot}, {ui.erase_status}]
    assert streamed[0][ui.erase_status] == "Erasing: step 1/1, 0 s" and "Erased **circle, square** with uce" in status
    assert streamed[1][ui.erase_status] == "Erasing: done after 1 step(s); drawing the before/after…"
    assert session == list(studio.patches) and path.endswith("uce-circle_square.safetensors")
    assert studio.patches[session[0]].settings["keep"] == ["dog"]
    assert len(judged.splitlines()) == 5 and grid.width > grid.height // 2  # the probes of a model without a world
    # the word's maps: a line of four panels per probe that names it and seed
    assert word["value"] == "circle" and "photo" in word["choices"] and heat.height > heat.width
    assert fns["show_word"]("dog", comparison).height < heat.height  # one probe names a dog, three a circle
    chart, table, chart_file, drawn = fns["collateral"]("circle, dog", session)
    assert list(table["concept"])[:2] and set(table["concept"]) == {"circle", "dog"} and chart_file.endswith(".png")
    with pytest.raises(gr.Error, match="no list of what it knows"):
        fns["collateral"]("", session)
    maps_drawn, draw_map = [], studio.collateral
    studio.collateral = lambda *args, **kwargs: maps_drawn.append(args) or draw_map(*args, **kwargs)
    figure, (png, gif) = fns["figure"]("circle", "circle, dog", session, comparison, drawn)
    assert figure.height > 400 and png.endswith(".png") and gif.endswith(".gif")
    assert maps_drawn == []  # the figure reuses the map just drawn
    fns["figure"]("circle", "dog", session, comparison, drawn)
    assert maps_drawn == [(session, "dog")]  # other concepts: drawn anew
    studio.collateral = draw_map
    with pytest.raises(gr.Error, match="Erase a concept first"):
        fns["figure"]("circle", "", session, None, None)
    exported = fns["export"]("kohya", session)
    imported = studio.load_patch(exported)  # a LoRA comes back as a patch, with what made it
    assert exported.endswith("erasure-kohya.safetensors") and studio.patches[imported].method == "uce"
    studio.remove_patch(imported)
    assert zipfile.ZipFile(fns["export"]("merged", session)).getinfo("erasure.json").file_size > 0
    with pytest.raises(gr.Error, match="Nothing to export"):
        fns["export"]("kohya", [])
    with pytest.raises(gr.Error, match="concept is empty"):
        list(fns["erase"](" , ", "fmn", None, "", 0, session))
    with pytest.raises(gr.Error, match="uce is a closed form: adversarial mode is for the trained methods"):
        list(fns["erase"]("circle", "uce", None, "", 0, session, True))
    *_, last = list(fns["erase"]("star", "fmn", None, "", 2, session, True))  # the switch
    status, session = last[ui.erase_status], last[ui.session]
    assert ("Erased **star** with fmn in adversarial mode" in status
            and studio.patches[session[-1]].settings["adversarial"])
    *_, compared = fns["generate"]("a red circle", "", 0, 2, 5.0, 0, 2, None, session, True)  # with the original
    assert compared.height > image.height * 4  # two rows of maps: the original model's, then the session's
    with pytest.raises(gr.Error, match="prompt is empty"):
        fns["generate"]("", "", 0, 2, 5.0, 0, 2, None, session)
    assert list(studio.patches) == session and len(session) == 2  # nothing lost


def test_the_default_erases_from_uploaded_images_in_process(tiny_dirs, tmp_path):
    """Uploads with the default method: the status says it learns from them first, then the erasure streams."""
    from fmn.erase import DEFAULT_METHOD
    from fmn.studio import Studio

    studio = Studio(tiny_dirs["sd15"], device="cpu")
    ui, fns = handlers(studio)
    uploads = []
    for colour in ("red", "blue"):
        Image.new("RGB", (48, 40), colour).save(tmp_path / f"{colour}.png")
        uploads.append(str(tmp_path / f"{colour}.png"))
    first, *streamed, last = list(fns["erase"]("circle", DEFAULT_METHOD, uploads, "", 2, []))
    assert first == {ui.erase_status: "Learning from your 2 images, then erasing…"}
    statuses = [s[ui.erase_status] for s in streamed]
    assert all(s.startswith("Erasing: step") for s in statuses[:-1])  # progress, at most once a second
    assert statuses[-1] == "Erasing: done after 2 step(s); drawing the before/after…"
    assert f"Erased **circle** with {DEFAULT_METHOD}" in last[ui.erase_status]
    assert studio.patches[last[ui.session][0]].settings["inversion_steps"] > 0


def test_erase_shows_why_a_nan_loss_stopped_it(tiny_dirs, monkeypatch):
    """The app has no learning-rate field, so the NaN is forced; the handler must turn it into a message."""
    import gradio as gr

    from fmn.erase.forget_me_not import ForgetMeNot
    from fmn.studio import Studio

    studio = Studio(tiny_dirs["sd15"], device="cpu")
    run_erase = handlers(studio)[1]["erase"]
    monkeypatch.setattr(ForgetMeNot, "loss", lambda self, pipe, refs, generator: torch.tensor(float("nan")))
    with pytest.raises(gr.Error, match="the loss became nan at step 1"):
        list(run_erase("circle", "fmn", None, "", 3, []))
    assert not studio.patches and not getattr(studio.pipe.unet, "peft_config", {})


@SERVER
def test_browser_erases_and_sees_before_and_after(app_url):
    """Erase, see the before/after heatmaps and switch their word, draw the collateral map, download the figure."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(app_url)
        page.get_by_role("tab", name="Erase").click()
        page.locator("#concept textarea, #concept input").first.fill("Mimo")
        page.locator("#keep textarea, #keep input").first.fill("Tobble")
        # what the erasure will hold is on the page before the click: the user's word, then the model's nearest
        page.wait_for_function("() => document.querySelector('#held').innerText.includes('Holds: Tobble, ')",
                               timeout=30_000)
        page.locator("#erase").click()  # the default method at its defaults, as a visitor first clicks
        page.get_by_text("Erasing: step").first.wait_for(timeout=120_000)  # live progress
        page.get_by_text("Erased **Mimo**").or_(page.get_by_text("Erased Mimo")).first.wait_for(timeout=300_000)
        page.locator("#grid img").wait_for(timeout=60_000)
        assert "Mimo:" in page.locator("#judged textarea").input_value()
        heat = page.locator("#heat-grid img")  # the concept word's maps before -> after, then another word's
        heat.wait_for(timeout=60_000)
        mimo_maps = heat.get_attribute("src")
        page.locator("#heat-word input").click()
        page.get_by_role("option", name="star", exact=True).click()
        page.wait_for_function("src => { const img = document.querySelector('#heat-grid img'); "
                               "return img && img.src !== src && img.complete; }", arg=mimo_maps, timeout=60_000)
        page.wait_for_timeout(1500)  # the new maps fade in: the screenshot (docs/app-erase.png) shows them at full
        page.screenshot(path=str(OUTPUT / "app-erase.png"), full_page=True)
        page.locator("#heat-word input").click()
        page.get_by_role("option", name="mimo", exact=True).click()  # the figure tells the erased word's story
        page.get_by_text("What else changed?").click()
        page.locator("#collateral").click()
        page.locator("#collateral-chart img").wait_for(timeout=300_000)
        assert page.locator("#collateral-table").get_by_text("Zubrik").count() >= 1  # every character is in the table
        page.locator("#figure").click()
        link = page.locator("#figure-files a").first
        link.wait_for(timeout=300_000)
        with page.expect_download() as download:
            link.click()
        saved = OUTPUT / "app-figure.png"
        download.value.save_as(saved)
        assert Image.open(saved).height > 400
        page.locator("#collateral-chart").scroll_into_view_if_needed()
        page.screenshot(path=str(OUTPUT / "app-collateral.png"), full_page=True)
        browser.close()
