"""Patches: adapters that switch on and off exactly, files that round-trip, and refusals that leave the model alone."""

import pytest
import torch
from safetensors.torch import save_file

from fmn.patch import Patch, PatchError, activate, adapter_tensors, attach, detach, fingerprint, new_adapter
from fmn.tiny import tiny_pipeline


@pytest.fixture()
def pipe():
    return tiny_pipeline()


def denoise(pipe):
    torch.manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([10])
    ids = pipe.tokenizer(["a red circle"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.unet(x, t, pipe.text_encoder(ids).last_hidden_state).sample


def make_patch(pipe, name, concept, seed):
    lora = {"unet": new_adapter(pipe, name, "unet", ["attn2.to_k", "attn2.to_v"], rank=2),
            "text_encoder": new_adapter(pipe, name, "text_encoder", ["fc1", "fc2"], rank=2)}
    gen = torch.Generator().manual_seed(seed)
    for module in (pipe.unet, pipe.text_encoder):
        for key, param in module.named_parameters():
            if f"lora_B.{name}" in key:  # stands in for training: any non-zero change
                param.data = torch.randn(param.shape, generator=gen) * 0.3
    return Patch(adapter_tensors(pipe, name, ["unet", "text_encoder"]), "test", [concept], fingerprint(pipe), lora)


def test_switching_a_patch_off_gives_the_base_model_exactly(pipe):
    base = denoise(pipe)
    make_patch(pipe, "a", "circle", 0)
    activate(pipe, ["a"])
    assert (denoise(pipe) - base).abs().max() > 1e-3
    activate(pipe, [])
    assert torch.equal(denoise(pipe), base)


def test_save_load_round_trip_stack_and_remove(pipe, tmp_path):
    base = denoise(pipe)
    layout = set(pipe.unet.state_dict()) | set(pipe.text_encoder.state_dict())
    a, b = make_patch(pipe, "a", "circle", 0), make_patch(pipe, "b", "Mimo", 1)
    activate(pipe, ["a"])
    only_a = denoise(pipe)
    activate(pipe, ["a", "b"])
    both = denoise(pipe)
    a.save(tmp_path / "a.safetensors")
    b.save(tmp_path / "b.safetensors")
    detach(pipe, "a")
    detach(pipe, "b")
    assert torch.equal(denoise(pipe), base)

    attach(pipe, Patch.load(tmp_path / "a.safetensors"), "a2")
    attach(pipe, Patch.load(tmp_path / "b.safetensors"), "b2")
    activate(pipe, ["a2"])
    assert torch.allclose(denoise(pipe), only_a, atol=2e-3)  # fp16 storage
    activate(pipe, ["a2", "b2"])
    assert torch.allclose(denoise(pipe), both, atol=2e-3)
    assert (both - only_a).abs().max() > 1e-3
    detach(pipe, "a2")
    detach(pipe, "b2")
    assert torch.equal(denoise(pipe), base)
    assert set(pipe.unet.state_dict()) | set(pipe.text_encoder.state_dict()) == layout  # no LoRA wrappers left


def test_patch_for_another_model_is_refused_and_changes_nothing(pipe, tmp_path):
    other = tiny_pipeline(seed=1)
    make_patch(other, "a", "circle", 0).save(tmp_path / "a.safetensors")
    base = denoise(pipe)
    with pytest.raises(PatchError, match="made for another model"):
        attach(pipe, Patch.load(tmp_path / "a.safetensors"), "a")
    assert not getattr(pipe.unet, "peft_config", {}) and torch.equal(denoise(pipe), base)


def test_bad_files_get_clear_messages(pipe, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"nonsense" * 10)
    with pytest.raises(PatchError, match="not a readable safetensors file"):
        Patch.load(corrupt)
    foreign = tmp_path / "lora.safetensors"
    save_file({"x": torch.zeros(2)}, foreign)
    with pytest.raises(PatchError, match="not a Forget-Me-Not Studio patch"):
        Patch.load(foreign)
    future = tmp_path / "future.safetensors"
    save_file({"x": torch.zeros(2)}, future, metadata={"format": "fmn-patch", "version": "99"})
    with pytest.raises(PatchError, match="version 99"):
        Patch.load(future)
    with pytest.raises(PatchError, match="a .safetensors file"):
        Patch.load(tmp_path / "patch.ckpt")


def test_fingerprint_ignores_dtype(pipe):
    before = fingerprint(pipe)
    assert fingerprint(pipe.to(torch.bfloat16)) == before
