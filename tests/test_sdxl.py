"""SDXL on a tiny random pipeline built from configs: loading, seeded generation, heatmaps over both text
encoders' tokens, every erasure method (SDXL's added conditioning passed in every UNet call), patches saved,
exported and reloaded, LoRA files made elsewhere (both text encoders) in, the attack, the app."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fmn.attack import AttackConfig, concept_inversion
from fmn.generate import GenerationSettings, generate
from fmn.models import is_sdxl, load_pipeline
from fmn.patch import PatchError
from fmn.studio import Studio

SETTINGS = GenerationSettings("a red circle", steps=3)
# the second transformer layer of the block: SDXL's layout
ATTN = "down_blocks.1.attentions.0.transformer_blocks.1.attn2"
TE_LAYERS = ("text_model.encoder.layers.1.self_attn.q_proj", "text_model.encoder.layers.1.self_attn.out_proj")


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float32) for im in images])


@pytest.fixture(scope="module")
def studio(tiny_dirs):
    return Studio(tiny_dirs["sdxl"], device="cpu")


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    """A LoRA as another tool writes one for SDXL: the UNet's cross-attention and both text encoders."""
    gen = torch.Generator().manual_seed(0)
    state = {f"unet.{ATTN}.to_k.lora_A.weight": torch.randn(2, 80, generator=gen),
             f"unet.{ATTN}.to_k.lora_B.weight": torch.randn(32, 2, generator=gen)}
    for te, width in (("text_encoder", 32), ("text_encoder_2", 48)):
        for layer in TE_LAYERS:
            state[f"{te}.{layer}.lora_A.weight"] = torch.randn(2, width, generator=gen)
            state[f"{te}.{layer}.lora_B.weight"] = torch.randn(width, 2, generator=gen)
    path = tmp_path_factory.mktemp("lora") / "sdxl-lora.safetensors"
    save_file(state, path)
    return path


def test_an_sdxl_folder_loads_and_generates_with_seeds(studio, tiny_dirs):
    assert is_sdxl(studio.pipe) and studio.pipe.text_encoder_2 is not None
    first, again = studio.generate(SETTINGS, [0, 1]), studio.generate(SETTINGS, [0, 1])
    assert first[0].size == (32, 32) and np.array_equal(pixels(first), pixels(again))  # seeds reproduce
    assert not np.array_equal(pixels(first[:1]), pixels(first[1:]))  # and differ from each other


def test_heatmaps_per_word(studio):
    result = studio.inspect(GenerationSettings("a red circle on grass", steps=3))
    assert list(result.word_maps) == ["a", "red", "circle", "on", "grass"]
    assert all(m.shape == result.word_maps["a"].shape and torch.isfinite(m).all() for m in result.word_maps.values())
    assert result.grid.width > result.image.width * 5


SMALL = {"fmn": {"references": 1, "reference_steps": 2}, "esd-x": {"sample_steps": 4, "trajectories": 2},
         "esd-u": {"sample_steps": 4, "trajectories": 2}, "text-encoder": {"references": 1, "reference_steps": 2},
         "uce": {}, "rece": {}}


@pytest.mark.parametrize("method", list(SMALL))
def test_every_method_erases_on_sdxl_and_its_patch_saves_exports_and_reloads(studio, tiny_dirs, tmp_path, method):
    """Each method's patch on SDXL's layers (the text-encoder method: both encoders) changes what is drawn,
    round-trips through its file and a kohya export, and leaves nothing behind when removed."""
    from fmn.erase import METHODS

    overrides = SMALL[method] | ({"steps": 2} if METHODS[method].trains else {})
    patch_id = studio.erase("circle", method, **overrides)
    patch = studio.patches[patch_id]
    if method == "text-encoder":
        assert sorted(patch.lora) == ["text_encoder", "text_encoder_2"]
    plain, erased = studio.generate(SETTINGS, [0]), studio.generate(SETTINGS, [0], patches=[patch_id])
    assert not np.array_equal(pixels(plain), pixels(erased))
    other = Studio(tiny_dirs["sdxl"], device="cpu")
    saved = studio.save_patch(patch_id, tmp_path)
    assert np.abs(pixels(other.generate(SETTINGS, [0], patches=[other.load_patch(saved)])) - pixels(erased)).max() <= 3
    kohya = studio.export([patch_id], "kohya", tmp_path / "kohya.safetensors")
    assert np.abs(pixels(other.generate(SETTINGS, [0], patches=[other.load_patch(kohya)])) - pixels(erased)).mean() <= 2
    studio.remove_patch(patch_id)
    assert studio.patches == {} and not hasattr(studio.pipe.unet, "peft_config")


def test_an_attack_learns_both_encoders_words(studio):
    patch_id = studio.erase("circle", "uce")
    learned = concept_inversion(studio.pipe, "circle", [patch_id], AttackConfig(steps=2, images=1, image_steps=2))
    assert [v.shape[1] for v in learned.vectors] == [32, 48]  # each table's width
    studio.remove_patch(patch_id)


def test_a_lora_for_both_text_encoders_loads_exports_and_comes_back(studio, lora, tiny_dirs, tmp_path):
    patch_id = studio.load_patch(lora)
    assert sorted(studio.patches[patch_id].lora) == ["text_encoder", "text_encoder_2", "unet"]
    plain, patched = studio.generate(SETTINGS, [0]), studio.generate(SETTINGS, [0], patches=[patch_id])
    assert np.abs(pixels(patched) - pixels(plain)).mean() > 0.5  # all three parts changed what is drawn
    kohya = studio.export([patch_id], "kohya", tmp_path / "kohya.safetensors")
    merged = studio.export([patch_id], "merged", tmp_path / "merged")
    single = studio.export([patch_id], "single-file", tmp_path / "single.safetensors")
    again = Studio(tiny_dirs["sdxl"], device="cpu")
    back = again.generate(SETTINGS, [0], patches=[again.load_patch(kohya)])
    assert np.abs(pixels(back) - pixels(patched)).mean() <= 2  # of 255
    for model in (load_pipeline(merged, device="cpu"),
                  load_pipeline(single, device="cpu", config=str(tiny_dirs["sdxl"]))):
        assert is_sdxl(model) and np.abs(pixels(generate(model, SETTINGS, [0])) - pixels(patched)).mean() <= 2
    studio.remove_patch(patch_id)
    assert np.array_equal(pixels(studio.generate(SETTINGS, [0])), pixels(plain))  # removed: the model as loaded


def test_an_sdxl_patch_or_lora_onto_an_sd15_model_is_refused(studio, lora, tiny_dirs, tmp_path):
    sd15 = Studio(tiny_dirs["sd15"], device="cpu")
    with pytest.raises(PatchError, match="this kind of model has no text_encoder_2"):
        sd15.load_patch(lora)
    patch_id = studio.erase("circle", "uce")
    saved = studio.save_patch(patch_id, tmp_path)
    studio.remove_patch(patch_id)
    with pytest.raises(PatchError, match="was made for another model"):
        sd15.load_patch(saved)
    assert sd15.patches == {} and not hasattr(sd15.pipe.unet, "peft_config")


def test_the_app_runs_on_an_sdxl_folder(studio):
    from app import create_demo

    demo = create_demo(studio)
    fns, ui = {f.api_name: f.fn for f in demo.fns.values() if f.api_name}, demo.ui
    image, maps, compared = fns["generate"]("a red circle", "", 0, 2, 5.0, 0, 2, None, [])
    assert image.size == (32, 32) and [word for _, word in maps] == ["a", "red", "circle"] and compared is None
    *_, last = list(fns["erase"]("circle", "uce", None, "", 0, []))
    status, grid, path, session = (last[c] for c in (ui.erase_status, ui.grid, ui.patch_file, ui.session))
    assert "Erased **circle** with uce" in status and path.endswith(".safetensors") and grid.width > grid.height // 2
    fns["export"]("diffusers-lora", session)
    for patch_id in session:
        studio.remove_patch(patch_id)


def test_the_speed_benchmark_builds_sdxl_from_its_config(tmp_path, capsys):
    from fmn.__main__ import main

    assert main(["bench", "speed", "--arch", "sdxl-tiny", "--random-weights", "--recipe", "ours", "--methods", "uce",
                 "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert "| uce | ours | float32 |" in (tmp_path / "speed-cpu.md").read_text()
    assert main(["bench", "speed", "--arch", "sdxl-tiny", "--random-weights", "--out", str(tmp_path)]) == 2
    assert "the published recipes are SD 1.x code; use --recipe ours" in capsys.readouterr().err
