"""Erasures out of the studio and LoRA files in: each format read back by diffusers' own loaders gives
the patched studio's images; refusals write nothing."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fmn.export import FORMATS
from fmn.generate import GenerationSettings, generate
from fmn.models import load_pipeline
from fmn.patch import Patch, PatchError, adapter_tensors, fingerprint, new_adapter
from fmn.studio import Studio

from conftest import ROOT
from test_patch import make_patch

SETTINGS = GenerationSettings("a red circle", steps=3)
SEEDS = [0, 1]
TOLERANCE = 2 / 255  # the bar: mean absolute pixel difference


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float32) / 255 for im in images])


def difference(a, b) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


@pytest.fixture(scope="module")
def stacked(tiny_dirs):
    """A tiny SD 1.x studio with two patches, each changing the UNet and the text encoder; their images together;
    how close an export's images must come to them."""
    studio = Studio(tiny_dirs["sd15"], device="cpu")
    for name, concept, seed in (("a", "circle", 1), ("b", "square", 2)):
        studio.patches[name] = make_patch(studio.pipe, name, concept, seed)
        for module in (studio.pipe.unet, studio.pipe.text_encoder):  # a change the tiny model's images show clearly
            for key, param in module.named_parameters():
                if f"lora_B.{name}" in key:
                    param.data *= 8
        studio.patches[name].tensors = {
            k: v.clone() for k, v in adapter_tensors(studio.pipe, name, ["unet", "text_encoder"]).items()}
    images = studio.generate(SETTINGS, SEEDS, patches=["a", "b"])
    bar = min(TOLERANCE, difference(images, studio.generate(SETTINGS, SEEDS)) / 10)  # the tiny model's images are
    return studio, images, bar  # low in contrast: a match must also be ten times closer to them than the base model


@pytest.mark.parametrize("to", ["diffusers-lora", "kohya"])
def test_lora_exports_load_in_diffusers_and_draw_what_the_studio_draws(stacked, tiny_dirs, tmp_path, to):
    studio, patched, bar = stacked
    path = studio.export(["a", "b"], to, tmp_path / "erasure.safetensors")
    pipe = load_pipeline(tiny_dirs["sd15"], device="cpu")
    pipe.load_lora_weights(str(path))  # diffusers' own loader (kohya: its own conversion)
    assert difference(generate(pipe, SETTINGS, SEEDS), patched) <= bar
    with safe_open(path, "pt") as f:
        erasures = json.loads(f.metadata()["fmn_erasures"])
        keys = list(f.keys())
    assert ([e["concepts"] for e in erasures] == [["circle"], ["square"]]
            and erasures[0]["base"] == studio.patches["a"].base)
    if to == "kohya":
        assert all(k.startswith(("lora_unet_", "lora_te_text_model_")) for k in keys)
        assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)


def test_merged_folder_and_single_file_draw_what_the_studio_draws(stacked, tiny_dirs, tmp_path):
    studio, patched, bar = stacked
    folder = studio.export(["a", "b"], "merged", tmp_path / "merged")
    assert json.loads((folder / "erasure.json").read_text())[1]["concepts"] == ["square"]
    assert difference(generate(load_pipeline(folder, device="cpu"), SETTINGS, SEEDS), patched) <= bar
    single = studio.export(["a", "b"], "single-file", tmp_path / "merged.safetensors")
    pipe = load_pipeline(single, device="cpu", config=str(tiny_dirs["sd15"]))
    assert difference(generate(pipe, SETTINGS, SEEDS), patched) <= bar


def test_a_patch_on_convolutions_exports_to_every_format(tiny_dirs, tmp_path):
    """ESD-u's patch holds convolutions' factors (a k x k kernel, then a 1 x 1): the LoRA files carry them as
    diffusers reads them, the merged folder and the single file fold them into one kernel, and each draws what the
    studio draws."""
    studio = Studio(tiny_dirs["sd15"], device="cpu")
    lora = {"unet": new_adapter(studio.pipe, "c", "unet", ["conv_in", "conv_out", "conv1"], rank=2)}
    gen = torch.Generator().manual_seed(0)
    for key, param in studio.pipe.unet.named_parameters():
        if "lora_B.c" in key:
            param.data = torch.randn(param.shape, generator=gen) * 0.3
    tensors = adapter_tensors(studio.pipe, "c", ["unet"])
    assert any(t.dim() == 4 and t.shape[-1] == 3 for t in tensors.values())  # a 3 x 3 factor
    studio.patches["c"] = Patch(tensors, "test", ["circle"], fingerprint(studio.pipe), lora)
    patched = studio.generate(SETTINGS, SEEDS, patches=["c"])
    bar = min(TOLERANCE, difference(patched, studio.generate(SETTINGS, SEEDS)) / 10)
    for to in ("diffusers-lora", "kohya"):
        pipe = load_pipeline(tiny_dirs["sd15"], device="cpu")
        pipe.load_lora_weights(str(studio.export(["c"], to, tmp_path / f"{to}.safetensors")))
        assert difference(generate(pipe, SETTINGS, SEEDS), patched) <= bar, to
    folder = studio.export(["c"], "merged", tmp_path / "merged")
    assert difference(generate(load_pipeline(folder, device="cpu"), SETTINGS, SEEDS), patched) <= bar
    single = studio.export(["c"], "single-file", tmp_path / "merged.safetensors")
    pipe = load_pipeline(single, device="cpu", config=str(tiny_dirs["sd15"]))
    assert difference(generate(pipe, SETTINGS, SEEDS), patched) <= bar


def test_an_exported_lora_imports_as_a_patch_with_its_metadata(stacked, tiny_dirs, tmp_path):
    studio, patched, bar = stacked
    path = studio.export(["a", "b"], "kohya", tmp_path / "kohya.safetensors")
    other = Studio(tiny_dirs["sd15"], device="cpu")
    patch_id = other.load_patch(path)
    patch = other.patches[patch_id]
    assert patch.concepts == ["circle", "square"] and patch.method == "test+test"
    assert difference(other.generate(SETTINGS, SEEDS, patches=[patch_id]), patched) <= bar
    saved = other.save_patch(patch_id, tmp_path / "again")  # a studio patch now: saved, loaded, removed as any
    again = Studio(tiny_dirs["sd15"], device="cpu")
    assert difference(again.generate(SETTINGS, SEEDS, patches=[again.load_patch(saved)]), patched) <= bar
    other.remove_patch(patch_id)
    assert not hasattr(other.pipe.unet, "peft_config") and not hasattr(other.pipe.text_encoder, "peft_config")
    assert difference(other.generate(SETTINGS, SEEDS), studio.generate(SETTINGS, SEEDS)) == 0


@pytest.mark.parametrize("layer, shapes, message", [
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", ((2, 768), (16, 2)),
     "(takes 768 inputs, the model's layer 32)"),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", ((2, 32), (320, 2)),
     "(gives 320 outputs, the model's layer 16)"),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", ((2, 32), (16, 2)), "(no such layer in the unet)"),
])
def test_a_lora_for_another_model_is_refused_and_the_model_left_alone(tiny_dirs, tmp_path, layer, shapes, message):
    """A LoRA made for a bigger model (SD 1.5's 768-wide text) or with layers this one lacks."""
    path = tmp_path / "other.safetensors"
    save_file({f"unet.{layer}.lora_A.weight": torch.ones(shapes[0]),
               f"unet.{layer}.lora_B.weight": torch.ones(shapes[1])}, path)
    studio = Studio(tiny_dirs["sd15"], device="cpu")
    before = studio.generate(SETTINGS, SEEDS)
    with pytest.raises(PatchError, match=re.escape(f"other.safetensors does not fit this model: {layer} {message}")):
        studio.load_patch(path)
    assert studio.patches == {} and not hasattr(studio.pipe.unet, "peft_config")
    assert difference(studio.generate(SETTINGS, SEEDS), before) == 0


def run(*args):
    from fmn.__main__ import main

    return main(list(args))


def test_export_refusals_write_nothing(stacked, tiny_dirs, tmp_path, capsys):
    studio, _, _ = stacked
    patch = studio.save_patch("a", tmp_path)
    sd2 = Studio(tiny_dirs["sd2"], device="cpu")
    sd2.patches["x"] = make_patch(sd2.pipe, "x", "circle", 3)
    foreign = sd2.save_patch("x", tmp_path / "sd2")
    cases = [
        (["--to", "png", "--out", "x.safetensors"], "--to png: use one of diffusers-lora, kohya, merged, single-file"),
        ([str(foreign), "--to", "kohya", "--out", "y.safetensors"], "made for another model"),
        (["--to", "kohya", "--out", "y.bin"], "a kohya export is one .safetensors file"),
        (["--to", "merged", "--out", str(tmp_path)], "exists and is not an empty folder"),
    ]
    for args, message in cases:
        if not args[0].endswith(".safetensors"):
            args = [str(patch), *args]
        assert run("export", *args, "--model", str(tiny_dirs["sd15"])) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bars
        assert last.startswith("error: ") and message in last, last
    assert not list(ROOT.glob("*.safetensors")) and not list(tmp_path.glob(".export-*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([patch.name, "sd2"])


def test_export_formats_are_listed_in_the_cli_help():
    help_text = subprocess.run([sys.executable, "-m", "fmn", "export", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=120).stdout
    assert all(name in help_text for name in FORMATS)


def test_plain_diffusers_loads_the_embedded_model_with_no_arguments(tmp_path):
    """`StableDiffusionPipeline.from_pretrained(folder)`, nothing else, in a script that imports nothing from fmn;
    and in fp16 (`torch_dtype=torch.float16`, as on a GPU; here on the CPU), drawing nearly the same images."""
    from PIL import Image

    script = ROOT / "tests" / "plain_diffusers.py"
    assert "fmn" not in {line.split()[1].split(".")[0] for line in script.read_text().splitlines()
                         if line.startswith(("import ", "from "))}
    done = subprocess.run([sys.executable, str(script), str(ROOT / "assets" / "fmn-shapes"), "--out", str(tmp_path),
                           "--seeds", "0", "1", "--half"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    full, half = ([Image.open(tmp_path / f"{name}-{s}.png") for s in (0, 1)] for name in ("base", "half"))
    assert pixels(full).std() > 0.1 and difference(full, half) <= TOLERANCE, difference(full, half)


@pytest.mark.slow
def test_exports_of_a_real_erasure_match_fmn_generate_in_plain_diffusers(tmp_path):
    """The issue's claim on the embedded model: two erasures (the closed form on the UNet, the text encoder's),
    exported stacked in the four formats, drawn by plain diffusers, match `python -m fmn generate --patch`."""
    from PIL import Image

    model = ROOT / "assets" / "fmn-shapes"
    patches = [tmp_path / "uce.safetensors", tmp_path / "te.safetensors"]
    assert run("erase", "--concept", "circle", "--method", "uce", "--out", str(patches[0])) == 0
    assert run("erase", "--concept", "Mimo", "--method", "text-encoder", "--out", str(patches[1])) == 0
    flags = {}
    for to, out in (("diffusers-lora", "lora.safetensors"), ("kohya", "kohya.safetensors"), ("merged", "merged"),
                    ("single-file", "single.safetensors")):
        assert run("export", *map(str, patches), "--to", to, "--out", str(tmp_path / out)) == 0
        flags[to] = str(tmp_path / out)
    studio_out = tmp_path / "fmn" / "img.png"
    assert run("generate", "--prompt", "a red circle", "--num-images", "2", "--patch", str(patches[0]),
               "--patch", str(patches[1]), "--out", str(studio_out)) == 0
    plain = tmp_path / "plain"
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "plain_diffusers.py"), str(model), "--out", str(plain),
                           "--lora", flags["diffusers-lora"], "--kohya", flags["kohya"], "--merged", flags["merged"],
                           "--single-file", flags["single-file"]], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    studio = [Image.open(studio_out.with_stem(f"img-{s}")) for s in (0, 1)]
    gaps = {name: difference([Image.open(plain / f"{name}-{s}.png") for s in (0, 1)], studio)
            for name in ("base", "lora", "kohya", "merged", "single-file")}
    print(gaps)
    assert gaps["base"] > 3 * TOLERANCE  # the erasure shows (mean 12/255 when measured)
    assert all(gaps[name] <= TOLERANCE for name in ("lora", "kohya", "merged", "single-file")), gaps
