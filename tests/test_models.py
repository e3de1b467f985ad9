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


def test_on_a_cpu_the_unet_runs_channels_last_and_draws_the_same_images(embedded):
    """Loaded on a CPU, the UNet's weights are channels-last (oneDNN's faster layout): the images are those of the
    default layout within one level, and the model's fingerprint, which patches check, is the same."""
    from fmn.patch import fingerprint

    settings, seeds = GenerationSettings("a red circle on grass", steps=5), [0, 1, 2]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in embedded.unet.parameters() if p.dim() == 4)
    fast, base = generate(embedded, settings, seeds), fingerprint(embedded)
    try:
        embedded.unet.to(memory_format=torch.contiguous_format)
        plain = generate(embedded, settings, seeds)
        assert fingerprint(embedded) == base
    finally:
        embedded.unet.to(memory_format=torch.channels_last)
    difference = np.abs(np.stack([np.asarray(i, dtype=np.int16) for i in fast])
                        - np.stack([np.asarray(i, dtype=np.int16) for i in plain]))
    assert difference.max() <= 1, difference.max()


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
    folder = tmp_path / "flux"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match="no safetensors weights in transformer/"):
        load_pipeline(folder)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(ModelLoadError, match="KandinskyPipeline: not supported yet"):
        load_pipeline(folder)


# the tiny SD3 transformer's modules (diffusers) -> Stability's names, block by block and around the blocks
SD3_BLOCK = {"attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
             "norm1.linear": "x_block.adaLN_modulation.1", "norm1_context.linear": "context_block.adaLN_modulation.1",
             "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2",
             "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2"}
SD3_QKV = {"x_block": ("to_q", "to_k", "to_v"), "context_block": ("add_q_proj", "add_k_proj", "add_v_proj")}
SD3_OUTER = {"pos_embed.proj": "x_embedder.proj", "context_embedder": "context_embedder",
             "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
             "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
             "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
             "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
             "proj_out": "final_layer.linear", "norm_out.linear": "final_layer.adaLN_modulation.1"}


def sd3_original_layout(transformer) -> dict[str, torch.Tensor]:
    """The tiny SD3 transformer in Stability's layout, as `from_single_file` reads it: the inverse of diffusers'
    converter for this config (no q/k norms, no second attention). Each block's q, k, v fused per stream; the
    modulations diffusers reorders (the last block's text side, the final layer's) back to (shift, scale)."""
    sd, last = transformer.state_dict(), transformer.config.num_layers - 1
    renames = dict(SD3_OUTER) | {f"transformer_blocks.{i}.{new}": f"joint_blocks.{i}.{old}"
                                 for i in range(last + 1) for new, old in SD3_BLOCK.items()}
    out = {"pos_embed": sd["pos_embed.pos_embed"]}
    for kind in ("weight", "bias"):
        out |= {f"{old}.{kind}": sd[f"{new}.{kind}"] for new, old in renames.items() if f"{new}.{kind}" in sd}
        out |= {f"joint_blocks.{i}.{side}.attn.qkv.{kind}": torch.cat(
                    [sd[f"transformer_blocks.{i}.attn.{x}.{kind}"] for x in names])
                for i in range(last + 1) for side, names in SD3_QKV.items()}
        for module in ("final_layer", f"joint_blocks.{last}.context_block"):
            key = f"{module}.adaLN_modulation.1.{kind}"
            out[key] = torch.cat(out[key].chunk(2)[::-1])  # diffusers' (scale, shift) -> (shift, scale)
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in sd.values())  # every weight, once
    return {k: v.contiguous() for k, v in out.items()}


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])  # a transformer file alone; an all-in-one's key
def test_an_sd3_transformer_file_loads_with_its_config(transformer_dirs, tmp_path, prefix):
    """A single file of SD3's transformer in Stability's layout plus --config: the folder's transformer weights,
    the same image for a seed."""
    folder = transformer_dirs["sd3"]
    pipe = load_pipeline(folder, device="cpu")
    path = tmp_path / "sd3.safetensors"
    save_file({prefix + k: v for k, v in sd3_original_layout(pipe.transformer).items()}, path)
    from_file = load_pipeline(path, device="cpu", config=folder)
    assert type(from_file).__name__ == "StableDiffusion3Pipeline"
    expected, loaded = pipe.transformer.state_dict(), from_file.transformer.state_dict()
    assert expected.keys() == loaded.keys() and all(torch.equal(expected[k], loaded[k]) for k in expected)
    settings = GenerationSettings("a red circle", steps=2, width=32, height=32)
    assert np.array_equal(np.asarray(generate(from_file, settings)[0]), np.asarray(generate(pipe, settings)[0]))


# FLUX's transformer modules (diffusers) -> Black Forest Labs' names, per double block, per single block, around them
FLUX_DOUBLE = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
               "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
               "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
               "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2"}
FLUX_DOUBLE_NORMS = {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                     "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm"}
FLUX_SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
FLUX_SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}
FLUX_FUSED = {"img_attn.qkv": ("to_q", "to_k", "to_v"), "txt_attn.qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}
FLUX_OUTER = {"time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
              "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
              "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
              "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
              "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
              "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
              "context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear",
              "norm_out.linear": "final_layer.adaLN_modulation.1"}


def flux_original_layout(transformer) -> dict[str, torch.Tensor]:
    """A FLUX transformer in Black Forest Labs' layout, as `from_single_file` reads it: the inverse of diffusers'
    converter. q, k, v fused per stream in the double blocks, q, k, v and the MLP's input in the single ones; the
    final modulation back to (shift, scale); the q/k norms' weights as `scale`."""
    sd, config = transformer.state_dict(), transformer.config
    double = [f"double_blocks.{i}." for i in range(config.num_layers)]
    single = [f"single_blocks.{i}." for i in range(config.num_single_layers)]
    renames = (dict(FLUX_OUTER)
               | {f"transformer_blocks.{i}.{new}": old + name for i, old in enumerate(double)
                  for new, name in FLUX_DOUBLE.items()}
               | {f"single_transformer_blocks.{i}.{new}": old + name for i, old in enumerate(single)
                  for new, name in FLUX_SINGLE.items()})
    norms = ({f"transformer_blocks.{i}.{new}": old + name for i, old in enumerate(double)
              for new, name in FLUX_DOUBLE_NORMS.items()}
             | {f"single_transformer_blocks.{i}.{new}": old + name for i, old in enumerate(single)
                for new, name in FLUX_SINGLE_NORMS.items()})
    out = {f"{old}.scale": sd[f"{new}.weight"] for new, old in norms.items()}
    for kind in ("weight", "bias"):
        out |= {f"{old}.{kind}": sd[f"{new}.{kind}"] for new, old in renames.items()}
        out |= {f"{old}{fused}.{kind}": torch.cat([sd[f"transformer_blocks.{i}.attn.{x}.{kind}"] for x in names])
                for i, old in enumerate(double) for fused, names in FLUX_FUSED.items()}
        out |= {f"{old}linear1.{kind}": torch.cat([sd[f"single_transformer_blocks.{i}.{x}.{kind}"]
                                                   for x in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")])
                for i, old in enumerate(single)}
        key = f"final_layer.adaLN_modulation.1.{kind}"
        out[key] = torch.cat(out[key].chunk(2)[::-1])  # diffusers' (scale, shift) -> (shift, scale)
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in sd.values())  # every weight, once
    return {k: v.contiguous() for k, v in out.items()}


@pytest.mark.slow  # at FLUX.1's width, which diffusers' converter of this layout assumes: 1 + 1 blocks, 0.5 B
def test_a_flux_transformer_file_loads_with_its_config(transformer_dirs, tmp_path):
    """A single file of FLUX's transformer in Black Forest Labs' layout plus --config: its weights, in a pipeline
    that generates."""
    import shutil

    from diffusers import FluxTransformer2DModel

    folder = tmp_path / "flux"
    shutil.copytree(transformer_dirs["flux"], folder)
    with torch.device("meta"):
        wide = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                      attention_head_dim=128, num_attention_heads=24, joint_attention_dim=64,
                                      pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    wide = wide.to_empty(device="cpu").to(torch.bfloat16)  # bf16, as Black Forest Labs ship it
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in wide.parameters():
            weight.normal_(0, 0.02, generator=generator)
    shutil.rmtree(folder / "transformer")
    wide.save_config(folder / "transformer")  # the config only: the weights come from the file
    path = tmp_path / "flux1.safetensors"
    save_file(flux_original_layout(wide), path)
    from_file = load_pipeline(path, device="cpu", config=str(folder))
    assert type(from_file).__name__ == "FluxPipeline"
    expected, loaded = wide.state_dict(), from_file.transformer.state_dict()
    assert expected.keys() == loaded.keys() and all(torch.equal(expected[k].float(), loaded[k]) for k in expected)
    image = generate(from_file, GenerationSettings("a red circle", steps=2, width=32, height=32))[0]
    assert image.size == (32, 32) and np.asarray(image).std() > 0


@pytest.mark.parametrize("name, key", [("sd3", "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"),
                                       ("flux", "double_blocks.0.img_attn.norm.key_norm.scale")])
def test_a_transformer_file_without_config_offline_asks_for_one(tmp_path, name, key):
    path = tmp_path / f"{name}.safetensors"
    save_file({key: torch.zeros(2)}, path)
    with pytest.raises(ModelLoadError, match="--config <diffusers folder>"):
        load_pipeline(path, device="cpu")


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


@pytest.mark.parametrize("kind, pipeline", [("sd15", "StableDiffusionPipeline"), ("sdxl", "StableDiffusionXLPipeline"),
                                            ("sd3", "StableDiffusion3Pipeline"), ("flux", "FluxPipeline")])
def test_a_hub_id_loads_from_the_local_cache(tiny_dirs, transformer_dirs, tmp_path, monkeypatch, kind, pipeline):
    """A hub id already in the Hugging Face cache (as `hf download` leaves it) loads offline, its pipeline class
    read from its model_index.json."""
    import shutil

    snapshot = tmp_path / "hub" / f"models--someone--tiny-{kind}" / "snapshots" / ("0" * 40)
    shutil.copytree({**tiny_dirs, **transformer_dirs}[kind], snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    pipe = load_pipeline(f"someone/tiny-{kind}", device="cpu")
    assert type(pipe).__name__ == pipeline
