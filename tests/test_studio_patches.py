"""The studio keeps each caller's patches to itself and never loses or corrupts the shared model."""

import numpy as np
import pytest

from fmn.generate import GenerationSettings
from fmn.patch import PatchError
from fmn.studio import Studio


@pytest.fixture(scope="module")
def studio(tiny_dirs):
    return Studio(tiny_dirs["sd15"], device="cpu")


def pixels(images):
    return [np.asarray(im).astype(int) for im in images]


def test_a_patch_changes_only_the_calls_that_name_it(studio, tmp_path):
    s = GenerationSettings("a circle", steps=3)
    base = pixels(studio.generate(s, seeds=[0, 1]))
    pid = studio.erase(["circle"], "uce", lam=0.01)
    erased = pixels(studio.generate(s, seeds=[0, 1], patches=[pid]))
    assert any(not np.array_equal(a, b) for a, b in zip(base, erased))
    assert all(np.array_equal(a, b) for a, b in zip(base, pixels(studio.generate(s, seeds=[0, 1]))))  # another session

    studio.patches[pid].save(tmp_path / "p.safetensors")
    again = studio.load_patch(tmp_path / "p.safetensors")
    reloaded = pixels(studio.generate(s, seeds=[0, 1], patches=[again]))
    assert all(np.abs(a - b).max() <= 2 for a, b in zip(erased, reloaded))  # fp16 storage
    studio.remove_patch(pid)
    studio.remove_patch(again)
    assert all(np.array_equal(a, b) for a, b in zip(base, pixels(studio.generate(s, seeds=[0, 1]))))
    with pytest.raises(ValueError, match="not loaded"):
        studio.generate(s, patches=[pid])


def test_a_patch_for_another_model_is_refused(studio, tiny_dirs, tmp_path):
    other = Studio(tiny_dirs["sd2"], device="cpu")
    pid = other.erase(["star"], "uce")
    other.patches[pid].save(tmp_path / "other.safetensors")
    with pytest.raises(PatchError, match="made for another model"):
        studio.load_patch(tmp_path / "other.safetensors")


def test_dots_and_path_parts_in_a_concept_or_a_file_name_make_a_plain_adapter_name(studio, tmp_path):
    """peft refuses an adapter name with a '.'; LoRA files are often named "style.v2.safetensors"."""
    s = GenerationSettings("a circle", steps=3)
    pid = studio.erase(["Mr. Circle v1.5"], "uce")
    assert pid.startswith("uce:Mr_Circle_v1_5#") and "." not in pid
    folder = tmp_path / "my loras" / ".."
    (tmp_path / "my loras").mkdir()
    lora = studio.export([pid], "diffusers-lora", folder / "style.v2 (final).safetensors")
    loaded = studio.load_patch(lora)
    assert loaded.startswith("lora:style_v2_final_#")
    images = [pixels(studio.generate(s, seeds=[0], patches=p)) for p in ([pid], [loaded])]
    assert np.abs(images[0][0] - images[1][0]).max() <= 2
    for p in (pid, loaded):
        studio.remove_patch(p)
