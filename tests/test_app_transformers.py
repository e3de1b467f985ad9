"""The app on SD3 and FLUX: a real server on a tiny random folder, driven through gradio_client as a visitor does
(generate with joint-attention heatmaps, erase with UCE, the before/after heatmaps, compare with the original,
export), and the handlers that have no API name (the word's heatmaps, the collateral map, the figure) in-process."""

import zipfile

import pytest
from gradio_client import Client
from PIL import Image

from app import GENERIC_EXAMPLES

from conftest import OUTPUT

KINDS = ["sd3", "flux"]
STEPS = 3
WORDS = ["a", "red", "circle", "on", "grass"]


@pytest.fixture(scope="module", params=KINDS)
def served(request, transformer_dirs):
    """app.py serving the tiny model of the kind, and a client of it; stopped after the kind's tests."""
    from fmn.bench.load import Server

    OUTPUT.mkdir(exist_ok=True)
    server = Server(OUTPUT / f"app-server-{request.param}.log", "--model", transformer_dirs[request.param])
    yield request.param, Client(server.url, verbose=False)
    server.stop()


def offered(client, elem_id: str) -> list[str]:
    """The choices of the page's dropdown `elem_id`, as the page's config gives them."""
    props = next(c["props"] for c in client.config["components"] if c["props"].get("elem_id") == elem_id)
    return [value for _, value in props["choices"]]


def test_a_visitor_generates_erases_compares_and_exports(served):
    kind, client = served
    assert offered(client, "method") == ["esd-x", "uce", "rece", "text-map"]  # the methods that erase a transformer
    assert "single-file" not in offered(client, "export-to")
    examples = next(c["props"]["samples"] for c in client.config["components"] if c["type"] == "dataset")
    assert [prompt for prompt, _ in examples] == [prompt for prompt, _ in GENERIC_EXAMPLES]  # not the shapes world's
    image, maps, compared = client.predict("a red circle on grass", "", 0, STEPS, 5.0, 0, STEPS, api_name="/generate")
    assert Image.open(image).size == (32, 32) and compared is None
    assert [m["caption"] for m in maps] == WORDS  # one joint-attention map per word

    status, _, grid, pair, patch, _, heat, word = client.predict("circle", "uce", None, "", 0, False, "",
                                                                      api_name="/erase")
    assert "Erased **circle** with uce" in status and patch.endswith(".safetensors")
    assert word["value"] == "circle" and "dog" in dict(word["choices"])  # the probes' words
    assert Image.open(heat).height > Image.open(heat).width  # the word's maps before -> after, a line a probe and seed

    *_, compared = client.predict("a red circle on grass", "", 0, STEPS, 5.0, 0, STEPS, [], True,
                                  api_name="/generate")  # no layers to pick: one resolution
    assert Image.open(compared).height > 2 * 32  # the original model's maps above the patched ones

    for to in ("diffusers-lora", "kohya"):
        assert client.predict(to, api_name="/export").endswith(f"erasure-{to}.safetensors")
    assert "model_index.json" in zipfile.ZipFile(client.predict("merged", api_name="/export")).namelist()
    with pytest.raises(Exception, match="not in the list of choices"):  # gradio refuses what the page does not offer
        client.predict("single-file", api_name="/export")
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict("circle", "esd-u", None, "", 0, False, "", api_name="/erase")


@pytest.mark.parametrize("kind", KINDS)
def test_the_heatmaps_collateral_and_figure_handlers(transformer_dirs, kind):
    """What the page does without an API name: the heatmap layers hidden (one resolution), another word's maps from
    the comparison drawn, the collateral map of listed concepts, the figure."""
    from fmn.studio import Studio

    from test_app import handlers

    studio = Studio(transformer_dirs[kind], device="cpu")
    ui, fns = handlers(studio)
    assert ui.layers.visible is False and ui.method.value == "text-map"
    *_, last = list(fns["erase"]("circle", "uce", None, "", 0, [], False, ""))
    session, comparison, heat = last[ui.session], last[ui.comparison], last[ui.heat_grid]
    assert fns["show_word"]("dog", comparison).height < heat.height  # one probe names a dog, three a circle
    chart, table, chart_file, drawn = fns["collateral"]("circle, dog", session)
    assert set(table["concept"]) == {"circle", "dog"} and chart_file.endswith(".png")
    figure, (png, gif) = fns["figure"]("circle", "circle, dog", session, comparison, drawn)
    assert figure.height > 200 and gif.endswith(".gif")
