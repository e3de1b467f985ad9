"""The command line: files written, and bad input answered with one line and status 2."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from fmn.panels import PANEL
from fmn.patch import Patch

from conftest import BAD_UPLOADS, ROOT, bad_upload


def run(*args):
    """`python -m fmn` in a new interpreter: the real entry point."""
    return subprocess.run([sys.executable, "-m", "fmn", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def run_here(capsys, *args):
    """The command line in this process, for the many refusals (no interpreter start-up each):
    its exit status and the lines it wrote to stderr; an uncaught exception fails the test."""
    from fmn.__main__ import main

    status = main(list(args))
    return status, capsys.readouterr().err.splitlines()


def test_generate_and_heatmap(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "img.png"
    done = run("generate", "--model", str(tiny_dirs["sd15"]), "--prompt", "a red circle", "--steps", "3",
               "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (32, 32)
    maps = tmp_path / "maps.png"
    status, lines = run_here(capsys, "heatmap", "--model", str(tiny_dirs["sd15"]), "--prompt", "a red circle",
                             "--words", "circle", "red", "--steps", "3", "--out", str(maps))
    assert status == 0, lines
    assert Image.open(maps).width > Image.open(maps).height  # image + 2 overlays side by side


def test_several_seeds_write_several_files(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "img.png"
    status, lines = run_here(capsys, "generate", "--model", str(tiny_dirs["sd15"]), "--prompt", "a star",
                             "--steps", "2", "--seed", "5", "--num-images", "2", "--out", str(out))
    assert status == 0, lines
    assert (tmp_path / "img-5.png").exists() and (tmp_path / "img-6.png").exists()


def test_bad_input_is_one_line_and_status_2(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative --out paths land here
    cases = [
        (["generate", "--prompt", "", "--out", "x.png"], "prompt is empty"),
        (["generate", "--prompt", "a circle", "--steps", "0", "--out", "x.png"], "Steps 0"),
        (["generate", "--prompt", "a circle", "--model", "/no/such/model", "--out", "x.png"], "no such file"),
        (["heatmap", "--prompt", "a circle", "--words", "dragon", "--steps", "2", "--out", str(tmp_path / "m.png")],
         "dragon"),
        (["generate", "--prompt", "a circle", "--out", "x.gif"], ".png"),
    ]
    for args, message in cases:
        if "--model" not in args:
            args = [*args, "--model", str(tiny_dirs["sd15"])]
        status, lines = run_here(capsys, *args)
        assert status == 2 and lines[-1].startswith("error: ") and message in lines[-1], (args, lines)


def test_erase_writes_a_patch_that_generate_applies(tiny_dirs, tmp_path, capsys):
    model = str(tiny_dirs["sd15"])
    patch = tmp_path / "circle.safetensors"
    done = run("erase", "--model", model, "--concept", "circle", "--method", "uce", "--prior", "circle, ",
               "--keep", "dog, a cat", "--out", str(patch))
    assert done.returncode == 0, done.stderr
    settings = Patch.load(patch).settings
    assert settings["prior"] == ["circle"]  # a closed form's prior: named by hand
    assert (settings["keep"] == ["dog", "a cat"] and settings["preserve"][:2] == ["dog", "a cat"]
            and len(settings["preserve"]) > 2)
    assert "holding: dog, a cat, " in done.stderr
    plain, erased = tmp_path / "plain.png", tmp_path / "erased.png"
    for out, extra in ((plain, []), (erased, ["--patch", str(patch)])):
        status, lines = run_here(capsys, "generate", "--model", model, "--prompt", "a circle", "--steps", "3",
                                 "--out", str(out), *extra)
        assert status == 0, lines
    assert Image.open(plain).tobytes() != Image.open(erased).tobytes()


def test_erase_stacks_a_unet_edit_into_the_default_patch_at_a_frozen_share(tiny_dirs, tmp_path, capsys):
    patch = tmp_path / "circle.safetensors"
    status, lines = run_here(capsys, "erase", "--model", str(tiny_dirs["sd15"]), "--concept", "circle", "--steps",
                             "2", "--unet-edit", "uce", "--frozen-share", "0.5", "--padding-rows", "8",
                             "--out", str(patch))
    assert status == 0, lines
    loaded = Patch.load(patch)
    assert loaded.method == "text-map" and set(loaded.lora) == {"text_encoder", "unet"}
    assert loaded.settings["unet_edit"] == "uce" and loaded.settings["frozen_share"] == 0.5
    assert loaded.settings["padding_rows"] == 8


def test_erase_bad_input(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative --out paths land here
    model = str(tiny_dirs["sd15"])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "good").mkdir()
    Image.new("RGB", (40, 30), "red").save(tmp_path / "good" / "red.png")
    cases = [
        (["--concept", "", "--out", "p.safetensors"], "concept is empty"),
        (["--concept", "circle,square,circle", "--method", "uce", "--out", "p.safetensors"],
         "'circle' is named twice"),
        (["--concept", ",".join(["circle"] * 100), "--method", "uce", "--out", "p.safetensors"],
         "100 concepts at once"),
        (["--concept", "circle", "--out", "p.png"], "a patch is written as a .safetensors file"),
        (["--concept", "circle", "--method", "text-encoder", "--steps", "0", "--out", "p.safetensors"], "Steps 0"),
        (["--concept", "circle", "--method", "rece", "--steps", "10", "--out", "p.safetensors"],
         "rece has no setting steps"),
        (["--concept", "circle", "--method", "fmn", "--push", "1", "--out", "p.safetensors"],
         "fmn has no setting push"),
        (["--concept", "circle", "--method", "esd-x", "--prior", "circle", "--out", "p.safetensors"],
         "esd-x has no setting prior"),
        (["--concept", "circle", "--method", "fmn", "--keep-weight", "2", "--out", "p.safetensors"],
         "fmn has no setting keep_weight"),
        (["--concept", "circle", "--keep-weight", "-1", "--out", "p.safetensors"],
         "keep_weight -1.0 must be 0 or more"),
        (["--concept", "circle", "--method", "uce", "--frozen-share", "0.5", "--out", "p.safetensors"],
         "uce has no setting frozen_share"),
        (["--concept", "circle", "--frozen-share", "1", "--out", "p.safetensors"], "frozen_share 1.0: leave a share"),
        (["--concept", "circle", "--padding-rows", "-2", "--out", "p.safetensors"], "padding_rows -2: read 0 or more"),
        (["--concept", "circle", "--method", "uce", "--padding-rows", "8", "--out", "p.safetensors"],
         "uce has no setting padding_rows"),
        (["--concept", "circle", "--keep", "dog, a red circle", "--out", "p.safetensors"],
         "Keep 'a red circle' names 'circle'"),
        (["--concept", "circle", "--method", "uce", "--adversarial", "--out", "p.safetensors"],
         "uce is a closed form: adversarial mode is for"),
        (["--concept", "circle", "--method", "text-encoder", "--images", str(tmp_path / "good"), "--replace-with",
          "square", "--out", "p.safetensors"], "leave the uploads out"),
        (["--concept", "circle", "--method", "fmn", "--images", str(tmp_path / "imgs"), "--out", "p.safetensors"],
         "broken.png is not a readable image"),
        (["--concept", "circle", "--method", "fmn", "--images", str(tmp_path / "empty"), "--out", "p.safetensors"],
         "no such file"),
        (["--concept", "circle", "--images", str(tmp_path / "imgs"), "--out", "p.safetensors"],  # the default
         "broken.png is not a readable image"),
    ]
    for args, message in cases:
        status, lines = run_here(capsys, "erase", "--model", model, *args)
        assert status == 2 and lines[-1].startswith("error: ") and message in lines[-1], (args, lines)
    status, lines = run_here(capsys, "generate", "--model", model, "--prompt", "a circle", "--patch",
                             str(tmp_path / "notes.txt"), "--out", str(tmp_path / "x.png"))
    assert status == 2 and "a .safetensors file" in lines[-1]


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_erase_refuses_bad_uploads(tiny_dirs, tmp_path, capsys, case):
    paths, message = bad_upload(case, tmp_path / "imgs")
    images = paths[0] if len(paths) == 1 else paths[0].parent  # --images takes a file or a folder
    status, lines = run_here(capsys, "erase", "--model", str(tiny_dirs["sd15"]), "--concept", "circle",
                             "--method", "fmn", "--images", str(images), "--out", str(tmp_path / "p.safetensors"))
    assert status == 2 and lines[-1].startswith("error: ") and message in lines[-1], lines


@pytest.mark.parametrize("model, args, message", [
    ("sd15", ["--concept", "x" * 500], "500 characters"),
    ("sd15", ["--concept", "circle", "--method", "fmn", "--steps", "1000000"], "Steps 1000000"),
    ("sd15", ["--concept", "circle", "--method", "esd-x", "--lr", "nan"], "Learning rate nan"),
    ("sd15", ["--concept", "circle", "--method", "esd-x", "--lr", "inf"], "Learning rate inf"),
    ("sd15", ["--concept", "circle", "--method", "esd-x", "--lr", "-0.01"], "Learning rate -0.01"),
    ("sd15", ["--concept", "circle", "--method", "uce", "--steps", "10"], "uce has no setting steps"),
    ("sd15", ["--concept", "circle", "--method", "uce", "--unet-edit", "rece"], "uce has no setting unet_edit"),
    ("sd15", ["--concept", "circle", "--hold-learned"], "--hold-learned holds the words nearest the word learned"),
    (None, ["--concept", "dragon"], "never saw dragon"),  # the embedded model knows the words of its world
])
def test_erase_refuses_bad_settings(tiny_dirs, tmp_path, capsys, model, args, message):
    status, lines = run_here(capsys, "erase", *(["--model", str(tiny_dirs[model])] if model else []), *args,
                             "--out", str(tmp_path / "p.safetensors"))
    assert status == 2 and lines[-1].startswith("error: ") and message in lines[-1], lines


def test_erase_with_an_empty_folder_lets_the_model_draw_references(tiny_dirs, tmp_path, capsys):
    (tmp_path / "none").mkdir()
    out = tmp_path / "p.safetensors"
    status, lines = run_here(capsys, "erase", "--model", str(tiny_dirs["sd15"]), "--concept", "circle",
                             "--method", "fmn", "--images", str(tmp_path / "none"), "--steps", "1", "--out", str(out))
    assert status == 0 and out.exists() and any("the model draws its own references" in line for line in lines), lines


def test_the_default_erases_from_the_images_given(tiny_dirs, tmp_path, capsys):
    (tmp_path / "good").mkdir()
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (40, 30), colour).save(tmp_path / "good" / f"{i}.png")
    out = tmp_path / "p.safetensors"
    status, lines = run_here(capsys, "erase", "--model", str(tiny_dirs["sd15"]), "--concept", "circle",
                             "--images", str(tmp_path / "good"), "--steps", "2", "--out", str(out))
    assert status == 0 and "learning from 2 images of 'circle', then erasing" in lines, lines
    assert Patch.load(out).method == "text-map" and Patch.load(out).settings["inversion_steps"] == 100
    assert not any(line.startswith("held too") for line in lines)
    # --hold-learned: the words nearest the learned word are found once it is learned, held, and said then
    status, lines = run_here(capsys, "erase", "--model", str(tiny_dirs["sd15"]), "--concept", "circle",
                             "--images", str(tmp_path / "good"), "--steps", "2", "--hold-learned", "--out", str(out))
    more = [line.split(": ", 1)[1].split(", ") for line in lines if line.startswith("held too, nearest the word")]
    assert status == 0 and len(more) == 1 and set(more[0]) <= set(Patch.load(out).settings["preserve"]), lines


def test_erase_says_why_a_nan_loss_stopped_it_on_a_line_of_its_own(tiny_dirs, tmp_path, monkeypatch, capsys):
    from fmn.erase.forget_me_not import ForgetMeNot

    monkeypatch.setattr(ForgetMeNot, "loss", lambda self, pipe, refs, generator: torch.tensor(float("nan")))
    out = tmp_path / "p.safetensors"
    status, lines = run_here(capsys, "erase", "--model", str(tiny_dirs["sd15"]), "--concept", "circle",
                             "--method", "fmn", "--steps", "3", "--out", str(out))
    assert status == 2 and lines[-1].startswith("error: the loss became nan at step 1"), lines
    assert "model is unchanged" in lines[-1]
    assert not out.exists()


def test_attack_writes_the_attacked_images(tiny_dirs, tmp_path, capsys):
    model = str(tiny_dirs["sd15"])
    patch = tmp_path / "circle.safetensors"
    assert run_here(capsys, "erase", "--model", model, "--concept", "circle", "--method", "uce",
                    "--out", str(patch))[0] == 0
    from fmn.__main__ import main

    assert main(["attack", "--model", model, "--concept", "circle", "--patch", str(patch), "--num-images", "2",
                 "--steps", "2", "--attack-seeds", "2", "--seed", "5", "--out", str(tmp_path / "grid.png")]) == 0
    assert "no judge for this model" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.glob("grid-*.png")) == ["grid-0.png", "grid-1.png"]
    assert main(["attack", "--model", model, "--concept", "circle", "--patch", str(patch), "--num-images", "1",
                 "--swap", "--out", str(tmp_path / "swap.png")]) == 0
    said = capsys.readouterr().out
    assert "UNet part, unedited text encoder: look at the images" in said and "text-encoder part alone" in said
    assert sorted(p.name for p in tmp_path.glob("swap-*.png")) == ["swap-text-0.png", "swap-unet-0.png"]
    for args, message in ((["--num-images", "0"], "--num-images 0"), (["--out", str(tmp_path / "x.jpg")], "PNG"),
                          (["--attack-seeds", "0"], "--attack-seeds 0"),
                          (["--concept", ""], "Name the erased concept")):
        base = {"--concept": "circle", "--num-images": "1", "--steps": "1", "--out": str(tmp_path / "g.png")}
        base.update(dict(zip(args[::2], args[1::2])))
        status, lines = run_here(capsys, "attack", "--model", model, "--patch", str(patch),
                                 *[x for kv in base.items() for x in kv])
        assert status == 2 and lines[-1].startswith("error: ") and message in lines[-1], (args, lines)


def test_heatmap_compare_and_collateral_write_figures_and_numbers(tiny_dirs, circle_patch, tmp_path, capsys):
    model, patch = str(tiny_dirs["sd15"]), circle_patch
    maps, numbers = tmp_path / "maps.png", tmp_path / "maps.json"
    status, lines = run_here(capsys, "heatmap", "--model", model, "--prompt", "a red circle",
                             "--words", "circle", "red",
                             "--patch", str(patch), "--compare", "--num-images", "2", "--steps", "2",
                             "--out", str(maps), "--json", str(numbers))
    assert status == 0, lines
    shares = json.loads(numbers.read_text())
    assert shares["seeds"] == [0, 1] and set(shares["shares"]) == {"circle", "red"}
    assert all(0 < v < 1 for word in shares["shares"].values() for v in word.values())
    grid = Image.open(maps)  # a line of four panels for each word and seed
    assert grid.height > 4 * PANEL and 4 * PANEL < grid.width < 6 * PANEL
    chart, table = tmp_path / "chart.png", tmp_path / "collateral.json"
    status, lines = run_here(capsys, "collateral", "--model", model, "--patch", str(patch), "--concepts", "circle,dog",
                             "--out", str(chart), "--json", str(table))
    assert status == 0, lines
    rows = json.loads(table.read_text())["concepts"]
    assert ({r["concept"]: r["erased"] for r in rows} == {"circle": True, "dog": False}
            and Image.open(chart).height > 100)
    story = tmp_path / "story.png"
    status, lines = run_here(capsys, "erase", "--model", model, "--concept", "circle", "--method", "uce",
                             "--out", str(tmp_path / "again.safetensors"), "--figure", str(story),
                             "--check", "circle, dog")
    assert status == 0, lines
    assert Image.open(story).height > 400 and Image.open(story.with_suffix(".gif")).n_frames == 25


@pytest.fixture(scope="module")
def circle_patch(tiny_dirs, tmp_path_factory):
    from fmn.__main__ import main

    path = tmp_path_factory.mktemp("patch") / "circle.safetensors"
    assert main(["erase", "--model", str(tiny_dirs["sd15"]), "--concept", "circle", "--method", "uce",
                 "--out", str(path)]) == 0
    return path


PATCH = "<the circle patch>"
HEATMAP = ["heatmap", "--prompt", "a red circle", "--steps", "2"]


@pytest.mark.parametrize("args, message", [
    ([*HEATMAP, "--words", "dragon", "--compare", "--patch", PATCH], "'dragon' is in none of the prompts"),
    ([*HEATMAP, "--compare", "--patch", PATCH, "--num-images", "9"], "--num-images 9: use 1 to 8"),
    ([*HEATMAP, "--json", "x.json"], "--json writes the attention shares of --compare"),
    ([*HEATMAP, "--compare"], "--compare needs a --patch"),
    (["erase", "--concept", "circle", "--method", "uce", "--figure", "story.png"], "needs --check 'a, b, c'"),
    (["erase", "--concept", "circle", "--method", "uce", "--figure", "story.gif"], "the figure is written as a PNG"),
    (["collateral", "--patch", PATCH, "--concepts", " , "], "concept list is empty"),
    (["collateral", "--patch", PATCH], "no list of what it knows"),
    (["collateral", "--patch", PATCH, "--concepts", ",".join(f"t{i}" for i in range(200))],
     "200 concepts to check; the limit is 100"),
])
def test_heatmap_compare_and_collateral_bad_input(tiny_dirs, circle_patch, tmp_path, capsys, args, message):
    args = [str(circle_patch) if a == PATCH else a for a in args]
    out = tmp_path / ("out.safetensors" if args[0] == "erase" else "out.png")
    status, lines = run_here(capsys, *args, "--model", str(tiny_dirs["sd15"]), "--out", str(out))
    assert status == 2 and not out.exists() and lines[-1].startswith("error: ") and message in lines[-1], lines
