"""Loading: each kind of source, and a clear message for each kind of bad one."""

import json
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fmn.generate import GenerationSettings, generate
from fmn.models import EMBEDDED, ModelLoadError, load_pipeline, pick_device


def test_embedded_folder_loads_offline(embedded):
    assert embedded.unet.config.sample_size * embedded.vae_scale_factor == 64
    assert embedded.device.type == "cpu" and embedded.unet.dtype == torch.float32
    assert "attn2" in " ".join(embedded.unet.attn_processors)


@pytest.mark.parametrize("kind", ["sd15", "sd2"])
def test_saved_tiny_folders_load_and_generate(tiny_dirs, kind):
    pipe = load_pipeline(tiny_dirs[kind], device="cpu")
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if kind == "sd2" else "epsilon")
    image = generate(pipe, GenerationSettings("a red circle", steps=3))[0]
    assert image.size == (32, 32)
    assert np.asarray(image).std() > 0


def test_pick_device_defaults_to_cpu_fp32_here():
    device, dtype = pick_device()
    if not torch.cuda.is_available():
        assert (device.type, dtype) in (("cpu", torch.float32), ("mps", torch.float16))
    assert pick_device("cpu", torch.bfloat16) == (torch.device("cpu"), torch.bfloat16)


def test_missing_hub_id_fails_fast_with_offline_message():
    start = time.time()
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_pipeline("someone/not-a-cached-model")
    assert time.time() - start < 10


@pytest.mark.parametrize("source, message", [
    ("/no/such/folder", "no such file or folder"),
    ("weights.ckpt", "no such file"),
])
def test_missing_paths(source, message):
    with pytest.raises(ModelLoadError, match=message):
        load_pipeline(source)


def test_pickle_files_are_refused_unopened(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelLoadError, match="only .safetensors"):
        load_pipeline(path)


def test_corrupt_safetensors_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load_pipeline(path)


def test_other_architectures_are_named(tmp_path):
    path = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(2)}, path)
    with pytest.raises(ModelLoadError, match="FLUX single-file checkpoint: load FLUX from its diffusers folder"):
        load_pipeline(path)
    folder = tmp_path / "flux"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match="no safetensors weights in transformer/"):
        load_pipeline(folder)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(ModelLoadError, match="KandinskyPipeline: not supported yet"):
        load_pipeline(folder)


def test_folder_without_safetensors_is_refused(tiny_dirs, tmp_path):
    import shutil

    folder = tmp_path / "bin-only"
    shutil.copytree(tiny_dirs["sd15"], folder)
    for f in folder.glob("unet/*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ModelLoadError, match="no safetensors weights"):
        load_pipeline(folder)


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_pipeline(tmp_path)


def test_embedded_path_is_in_the_repo():
    assert (EMBEDDED / "model_index.json").exists()
    assert (EMBEDDED / "world.json").exists()


def test_single_file_checkpoint_round_trip(tiny_dirs, tmp_path):
    from fmn.single_file import save_single_file

    folder = tiny_dirs["sd15"]
    path = save_single_file(load_pipeline(folder, device="cpu"), tmp_path / "model.safetensors")
    settings = GenerationSettings("a red circle", steps=3)
    from_file = generate(load_pipeline(path, device="cpu", config=str(folder)), settings)[0]
    from_folder = generate(load_pipeline(folder, device="cpu"), settings)[0]
    assert np.array_equal(np.asarray(from_file), np.asarray(from_folder))


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_a_hub_id_loads_from_the_local_cache(tiny_dirs, tmp_path, monkeypatch, kind):
    """A hub id already in the Hugging Face cache (as `hf download` leaves it) loads offline, its pipeline class
    read from its model_index.json."""
    import shutil

    snapshot = tmp_path / "hub" / f"models--someone--tiny-{kind}" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_dirs[kind], snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    pipe = load_pipeline(f"someone/tiny-{kind}", device="cpu")
    assert type(pipe).__name__ == ("StableDiffusionXLPipeline" if kind == "sdxl" else "StableDiffusionPipeline")
