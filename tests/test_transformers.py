"""SD3 and FLUX on tiny random pipelines built from configs: loading from a folder, seeded generation through the
same path as SD 1.x, per-word heatmaps from the joint attention (the images unchanged by tracing, the probabilities
those of the block's own attention), erasure through the registry and patch format (the closed forms and ESD-x on the
joint blocks, text-map on the text encoders), the attack's inversion in T5's and CLIP's tables, and exports."""

import numpy as np
import pytest
import torch

from fmn.generate import GenerationSettings
from fmn.models import is_transformer
from fmn.studio import Studio

KINDS = ["sd3", "flux"]
SETTINGS = GenerationSettings("a red circle on grass, Mimo", steps=3, width=32, height=32)


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float32) for im in images])


@pytest.fixture(scope="module")
def folders(transformer_dirs) -> dict[str, str]:
    """Diffusers folders of the tiny SD3 and FLUX (shared with the app's tests)."""
    return transformer_dirs


@pytest.fixture(scope="module")
def studios(folders) -> dict[str, Studio]:
    return {kind: Studio(folder, device="cpu") for kind, folder in folders.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_a_folder_loads_and_generates_with_seeds(studios, kind):
    studio = studios[kind]
    assert is_transformer(studio.pipe) and type(studio.pipe).__name__ == {"sd3": "StableDiffusion3Pipeline",
                                                                           "flux": "FluxPipeline"}[kind]
    first, again = studio.generate(SETTINGS, [0, 1]), studio.generate(SETTINGS, [0, 1])
    assert first[0].size == (32, 32) and np.array_equal(pixels(first), pixels(again))  # seeds reproduce
    assert not np.array_equal(pixels(first[:1]), pixels(first[1:]))  # and differ from each other


@pytest.mark.parametrize("kind", KINDS)
def test_the_generate_command_reads_a_transformer_folder(folders, tmp_path, kind):
    from fmn.__main__ import main

    out = tmp_path / "image.png"
    assert main(["generate", "--model", folders[kind], "--prompt", "a red circle", "--steps", "2", "--width", "32",
                 "--height", "32", "--device", "cpu", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["generate", "--model", folders[kind], "--prompt", "a red circle", "--width", "36",
                 "--out", str(out)]) == 2  # not a multiple of the VAE's and the patches' 8


@pytest.mark.parametrize("kind", KINDS)
def test_tracing_leaves_the_images_unchanged(studios, kind):
    studio = studios[kind]
    plain = studio.generate(SETTINGS, [0, 1])
    traced, tc = studio.generate_traced(SETTINGS, [0, 1])
    assert np.array_equal(pixels(plain), pixels(traced)) and tc.steps == 3
    blocks = {"sd3": 2, "flux": 2 + 1}[kind]  # FLUX: both double-stream blocks and the single-stream one
    assert tc.n_maps == 3 * blocks  # every step, every block


@pytest.mark.parametrize("kind", KINDS)
def test_the_maps_are_the_blocks_own_attention(studios, kind, monkeypatch):
    """The traced probabilities equal softmax(q k^T / sqrt(d)) of the queries and keys the block hands to SDPA,
    at the image rows and text columns (SD3 orders the joint sequence [image, text], FLUX [text, image], in its
    double-stream blocks and in its single-stream one alike)."""
    from fmn.transformer_attention import install_joint

    pipe = studios[kind].pipe
    seen, traced = [], []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(*args, **kwargs):
        named = dict(zip(("query", "key"), args)) | kwargs  # FLUX's dispatcher names them
        seen.append((named["query"], named["key"]))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    with install_joint(pipe.transformer, lambda name, probs, attn: traced.append(probs)), torch.no_grad():
        pipe("a red circle", num_inference_steps=1, width=32, height=32, guidance_scale=1.0,
             generator=torch.Generator().manual_seed(0))
    joint = [(q, k) for q, k in seen if q.shape[2] == 16 + traced[0].shape[-1]]  # not the text encoders' calls
    assert len(traced) == len(joint) == {"sd3": 2, "flux": 3}[kind]  # FLUX's single-stream block comes last
    for (q, k), probs in zip(joint, traced):
        n_text = probs.shape[-1]
        full = (q.float() @ k.float().transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1).mean(1)  # (B, S, S)
        image, text = (slice(0, 16), slice(16, None)) if kind == "sd3" else (slice(n_text, None), slice(0, n_text))
        torch.testing.assert_close(probs, full[:, image, text], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_every_word_has_a_map_from_its_clip_and_t5_tokens(studios, kind):
    studio = studios[kind]
    result = studio.inspect(SETTINGS)
    assert list(result.word_maps) == ["a", "red", "circle", "on", "grass", "mimo"]
    assert all(m.shape == (4, 4) and torch.isfinite(m).all() for m in result.word_maps.values())
    _, tc = studio.generate_traced(SETTINGS, [0])
    positions = dict(tc._word_spans())
    t5_start = 77 if kind == "sd3" else 0  # SD3: CLIP's 77 positions, then T5's
    assert [p for p in positions["circle"] if p >= t5_start]  # T5's token of the word
    assert (kind == "sd3") == any(p < t5_start for p in positions["circle"])  # CLIP's, where the sequence has it
    assert len([p for p in positions["mimo"] if p >= t5_start]) > 1  # an unknown word: T5 spells it out
    assert 0 < tc.share("circle") < 1 and tc.share("circle") != tc.share("grass")


def test_a_transformer_trace_refuses_resolutions(studios):
    with pytest.raises(ValueError, match="one resolution"):
        studios["sd3"].inspect(SETTINGS, resolutions={4})


@pytest.mark.parametrize("kind, method", [(k, m) for k in KINDS for m in ("uce", "rece")])
def test_the_closed_forms_edit_each_joint_blocks_text_projections(studios, kind, method):
    """The patch changes every joint block's add_k_proj/add_v_proj (FLUX: the double-stream blocks'), sends the
    concept's rows toward what the guide's give, and a keep prompt holds that prompt's: W' x against W x on each
    block's own input."""
    from fmn.erase import make_method
    from fmn.erase.joint import joint_inputs

    studio, keep = studios[kind], "a blue square on grass"
    none = dict(preserve=[], in_context=[], keep_prompts=[])
    erase, targets = make_method("uce", ["circle"], **none).erased_rows(studio.pipe)
    kept = joint_inputs(studio.pipe, [keep])[0]
    width = kept.shape[1] // 2  # two joint blocks
    misses, changes = [], []
    for keep_prompts in ([], [keep]):
        patch_id = studio.erase("circle", method, **(none | {"keep_prompts": keep_prompts}))
        patch = studio.patches[patch_id]
        modules = patch.lora["transformer"]["target_modules"]
        assert sorted(patch.lora) == ["transformer"] and modules == sorted(
            f"transformer_blocks.{i}.attn.add_{x}_proj" for i in range(2) for x in "kv")
        for module in modules:
            cols = slice(int(module.split(".")[1]) * width, (int(module.split(".")[1]) + 1) * width)
            w = dict(studio.pipe.transformer.named_modules())[module].weight.float()
            a, b = (patch.tensors[f"transformer.{module}.lora_{f}.weight"].float() for f in "AB")
            edited = w + b @ a
            misses.append([(erase[:, cols] @ m.T - targets[:, cols] @ w.T).norm() for m in (w, edited)])
            changes.append((kept[:, cols] @ (edited - w).T).norm() / (kept[:, cols] @ w.T).norm())
        plain, erased = studio.generate(SETTINGS, [0]), studio.generate(SETTINGS, [0], patches=[patch_id])
        assert not np.array_equal(pixels(plain), pixels(erased))
        studio.remove_patch(patch_id)
        assert np.array_equal(pixels(studio.generate(SETTINGS, [0])), pixels(plain))  # removed: the model as loaded
    assert all(after < 0.5 * before for before, after in misses[:4])  # nothing kept: the rows land near the targets
    assert all(held < 0.5 * free for free, held in zip(changes[:4], changes[4:]))  # kept: the prompt barely moves


@pytest.mark.parametrize("kind", KINDS)
def test_erase_save_and_heatmap_compare_from_the_command_line(folders, tmp_path, kind):
    import json

    from fmn.__main__ import main

    patch = tmp_path / "circle.safetensors"
    assert main(["erase", "--model", folders[kind], "--concept", "circle", "--method", "uce", "--device", "cpu",
                 "--out", str(patch)]) == 0
    out = tmp_path / "maps.png"
    assert main(["heatmap", "--model", folders[kind], "--prompt", "a red circle", "--patch", str(patch), "--compare",
                 "--num-images", "2", "--steps", "2", "--width", "32", "--height", "32", "--device", "cpu",
                 "--out", str(out), "--json", str(tmp_path / "maps.json")]) == 0
    shares = json.loads((tmp_path / "maps.json").read_text())["shares"]
    assert list(shares) == ["a", "red", "circle"] and shares["circle"]["before"] != shares["circle"]["after"]
    assert main(["erase", "--model", folders[kind], "--concept", "circle", "--method", "esd-u",
                 "--out", str(tmp_path / "no.safetensors")]) == 2  # a UNet method, refused with the ones that run


ESD_FAST = dict(steps=40, trajectories=2, sample_steps=4)  # a few trajectories of a few steps: seconds on a CPU


def toward_esd_target(pipe, patch_id: str, refs, prompt: str, eta: float) -> float:
    """How far the patch brings the prediction for `prompt` (read as noise) on ESD's cached latents toward ESD's
    negatively guided target for that prompt, 1 - |patched - target|^2 / |unedited - target|^2: 0 unmoved, 1 on it."""
    from fmn.diffusion import denoise, encode
    from fmn.patch import active

    with torch.no_grad():
        text = encode(pipe, [prompt]).expand(len(refs.latents))
        plain = denoise(pipe, refs.latents, refs.timesteps, text)
        target = refs.eps_guide - eta * (plain - refs.eps_guide)
        with active(pipe, [patch_id]):
            patched = denoise(pipe, refs.latents, refs.timesteps, text)
    return 1 - ((patched - target).pow(2).sum() / (plain - target).pow(2).sum()).item()


@pytest.mark.parametrize("kind", KINDS)
def test_esd_x_trains_the_joint_blocks_text_projections(studios, kind):
    """ESD-x on SD3 and FLUX: the patch is a LoRA on every joint block's add_k_proj/add_v_proj (FLUX: the
    double-stream blocks') and nothing else; on the unedited model's cached trajectories of the concept, ESD's loss
    falls (the concept's prediction moves toward its negatively guided target) and an unrelated prompt's prediction
    moves less toward its own; the patch changes the images and, removed, leaves the model as loaded."""
    from fmn.erase import make_method

    studio, settings = studios[kind], ESD_FAST | dict(preserve=[])
    method = make_method("esd-x", ["circle"], **settings)
    with torch.no_grad():  # the trajectories the erasure trains on: same seed, same references
        refs = method.references(studio.pipe, torch.Generator().manual_seed(method.config.seed))
    # every sampled step but pure noise (t = 1000), where any prediction reads as the latent itself
    assert len(refs.latents) == method.config.trajectories * (method.config.sample_steps - 1)
    assert refs.timesteps.max() < 1000 and not torch.equal(refs.eps_guide, refs.eps_concept)
    plain = studio.generate(SETTINGS, [0])
    patch_id = studio.erase("circle", "esd-x", **settings)
    patch = studio.patches[patch_id]
    modules = sorted(f"transformer_blocks.{i}.attn.add_{x}_proj" for i in range(2) for x in "kv")
    assert list(patch.lora) == ["transformer"] and patch.lora["transformer"]["target_modules"] == modules
    assert {key.split(".lora_")[0] for key in patch.tensors} == {f"transformer.{m}" for m in modules}
    moved = {prompt: toward_esd_target(studio.pipe, patch_id, refs, prompt, method.config.eta)
             for prompt in ("circle", "a blue square on grass")}
    # measured: 71 % of the way for the concept, 37 % for the other prompt (SD3); 58 % and 8 % (FLUX). The other
    # prompt moves too: its padding rows, most of the text sequence, are the concept's, and they pass the same LoRA
    assert moved["circle"] > 0.4 and moved["circle"] > 1.5 * moved["a blue square on grass"], moved
    assert not np.array_equal(pixels(plain), pixels(studio.generate(SETTINGS, [0], patches=[patch_id])))
    studio.remove_patch(patch_id)
    assert np.array_equal(pixels(studio.generate(SETTINGS, [0])), pixels(plain))
    with pytest.raises(ValueError, match="keep_attention 1.0 holds"):  # a UNet's cross-attention maps: none here
        studio.erase("circle", "esd-x", keep_attention=1.0, **settings)


def test_esd_x_erases_and_generates_from_the_command_line(folders, tmp_path):
    """On the tiny SD3 folder with ESD's default trajectories and the held words: erase --method esd-x writes a
    patch of the transformer, and generate --patch applies it."""
    from fmn.__main__ import main
    from fmn.patch import Patch

    patch, image = tmp_path / "circle.safetensors", tmp_path / "image.png"
    assert main(["erase", "--model", folders["sd3"], "--concept", "circle", "--method", "esd-x", "--steps", "3",
                 "--device", "cpu", "--out", str(patch)]) == 0
    saved = Patch.load(patch)
    assert saved.method == "esd-x" and list(saved.lora) == ["transformer"] and saved.settings["preserve"]
    assert main(["generate", "--model", folders["sd3"], "--prompt", "a red circle", "--patch", str(patch),
                 "--steps", "2", "--width", "32", "--height", "32", "--device", "cpu", "--out", str(image)]) == 0
    assert image.is_file()


@pytest.mark.parametrize("kind", KINDS)
def test_text_map_trains_the_text_encoders(studios, kind):
    """Text-map on SD3's CLIP-L, CLIP-G and T5 and FLUX's CLIP-L and T5: the patch's LoRA sits on the text encoders
    alone; the concept's rows in each encoder's output (SD3: CLIP's sequence and T5's; FLUX: T5's; both: the pooled
    row) move toward their targets; a keep prompt's rows hold, where without it they drift further; the patched
    pipeline generates, and removed, leaves the model as loaded."""
    from fmn.erase import make_method
    from fmn.erase.encoders import encoder_rows
    from fmn.patch import active

    studio, keep = studios[kind], ["a blue square on grass", "a red star on sand"]
    settings = dict(preserve=[], in_context=["a red circle on grass", "a circle on water"], keep_prompts=keep,
                    batch=4, keep_batch=2, steps=60)
    method = make_method("text-map", ["circle"], **settings)
    spans, segments = method.spans(studio.pipe), method.segments(studio.pipe)
    assert [length for _, _, length in segments] == {"sd3": [77, 256, 1], "flux": [512, 1]}[kind]
    with torch.no_grad():
        kept = encoder_rows(studio.pipe, keep)
    plain, drift = studio.generate(SETTINGS, [0]), {}
    for weight in (1.0, 0.0):
        patch_id = studio.erase("circle", "text-map", **settings, keep_weight=weight)
        patch = studio.patches[patch_id]
        assert sorted(patch.lora) == ["text_encoder", "text_encoder_2", "text_encoder_3"][:{"sd3": 3, "flux": 2}[kind]]
        assert all(key.startswith("text_encoder") for key in patch.tensors)
        with torch.no_grad(), active(studio.pipe, [patch_id]):
            drift[weight] = ((encoder_rows(studio.pipe, keep) - kept).norm() / kept.norm()).item()
            now = encoder_rows(studio.pipe, [s.prompt for s in spans])
        if weight:  # each encoder's rows, and the pooled one, part of the way to their targets
            for s, rows in zip(spans, now):
                for _, begin, length in segments:
                    at = (s.positions >= begin) & (s.positions < begin + length)
                    left = (rows[s.positions[at]] - s.targets[at]).norm() / (s.rows[at] - s.targets[at]).norm()
                    assert left < 0.85, (s.prompt, begin, left)
            erased = studio.generate(SETTINGS, [0], patches=[patch_id])
            assert not np.array_equal(pixels(plain), pixels(erased)) and np.isfinite(pixels(erased)).all()
        studio.remove_patch(patch_id)
        assert np.array_equal(pixels(studio.generate(SETTINGS, [0])), pixels(plain))
    # measured: 2.8 % (SD3) and 1.5 % (FLUX) drift held, 13 % and 3.5 % without the keep prompts
    assert drift[1.0] < 0.6 * drift[0.0], drift


@pytest.mark.parametrize("kind", KINDS)
def test_text_map_from_images_learns_the_word_in_every_encoders_table(studios, kind):
    from fmn.erase import make_method
    from fmn.erase.learned_word import learn_word
    from fmn.inversion import text_encoders

    studio, images = studios[kind], torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    settings = dict(preserve=[], in_context=["a red circle on grass"], keep_prompts=["a blue square"], batch=2,
                    keep_batch=1, learned_batch=2, inversion_steps=3)
    method = make_method("text-map", ["circle"], images, **settings)
    with torch.no_grad():  # as the erasure loop computes its references
        word = learn_word(studio.pipe, method, images, method.config)
    assert [v.shape[1] for v in word.inverted.vectors] == [e.get_input_embeddings().weight.shape[1]
                                                          for e in text_encoders(studio.pipe)]
    assert [s.prompt for s in word.spans] == ["circle", "a red circle on grass"]
    patch_id = studio.erase("circle", "text-map", images=images, steps=3, **settings)
    assert all(key.startswith("text_encoder") for key in studio.patches[patch_id].tensors)
    studio.remove_patch(patch_id)


@pytest.mark.parametrize("kind", KINDS)
def test_a_closed_form_from_images_solves_for_the_learned_words_rows_too(studios, kind):
    """UCE given images on SD3 and FLUX edits the joint blocks' text-side projections alone, and otherwise than by
    name: the learned word's rows are solved for beside the name's (their effect: tests/test_learned_word.py)."""
    studio, images = studios[kind], torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    settings = dict(preserve=[], in_context=["a red circle on grass"], keep_prompts=[], inversion_steps=3)
    changes = []
    for given in (images, None):
        patch_id = studio.erase("circle", "uce", images=given, **settings)
        patch = studio.patches[patch_id]
        assert list(patch.lora) == ["transformer"]
        assert all(m.endswith(("add_k_proj", "add_v_proj")) for m in patch.lora["transformer"]["target_modules"])
        changes.append(torch.cat([(patch.tensors[k.replace("lora_A", "lora_B")] @ a).flatten()
                                  for k, a in sorted(patch.tensors.items()) if "lora_A" in k]))
        studio.remove_patch(patch_id)
    assert (changes[0] - changes[1]).norm() > 0.05 * changes[1].norm()


def flow_loss(pipe, latents, learned=None, n=8) -> float:
    """The inversion's own loss (the noise the transformer's velocity implies) on fixed noise and steps."""
    from contextlib import nullcontext

    from fmn.diffusion import denoise, encode, noisy
    from fmn.inversion import inverted

    zt, noise, t = noisy(pipe, latents.repeat(n // len(latents), 1, 1, 1), torch.Generator().manual_seed(123))
    with torch.no_grad(), inverted(pipe, learned) if learned else nullcontext():
        return (denoise(pipe, zt, t, encode(pipe, ["a photo of circle"] * n)) - noise).pow(2).mean().item()


@pytest.mark.parametrize("kind", KINDS)
def test_the_attack_learns_the_concepts_words_in_t5s_table_and_clips(studios, kind):
    """Concept inversion on SD3 and FLUX: rows for the name's tokens in each encoder's own table (T5's own ids),
    learned on the flow-matching loss of the images; they lower it, change the encoding of a prompt that names the
    concept in every part (SD3: CLIP's and T5's sequence; both: the pooled CLIP row) and of no other prompt, and
    no weight changes."""
    from fmn.attack import AttackConfig, concept_inversion
    from fmn.diffusion import encode, reference_latents
    from fmn.inversion import inverted, text_encoders

    pipe = studios[kind].pipe
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = reference_latents(pipe, [], 1, 0, None, images)
    modules = [pipe.transformer, *text_encoders(pipe)]
    weights = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    before = flow_loss(pipe, latents)
    learned = concept_inversion(pipe, "circle", [], AttackConfig(steps=30, lr=5e-2, batch=2), images=images)
    t5 = pipe.tokenizer_3 if kind == "sd3" else pipe.tokenizer_2
    assert learned.token_ids[-1] == t5("circle", add_special_tokens=False).input_ids != learned.token_ids[0]
    assert [v.shape[1] for v in learned.vectors] == [e.get_input_embeddings().weight.shape[1]
                                                    for e in text_encoders(pipe)]
    assert flow_loss(pipe, latents, learned) < before
    with torch.no_grad():
        plain = encode(pipe, ["a red circle", "a blue square"])
        with inverted(pipe, learned):
            read = encode(pipe, ["a red circle", "a blue square"])
    parts = {"sd3": [slice(0, 77), slice(77, None)], "flux": [slice(None)]}[kind]
    assert all(not torch.allclose(read.states[0, part], plain.states[0, part]) for part in parts)
    assert not torch.allclose(read.pooled[0], plain.pooled[0])
    assert torch.equal(read.states[1], plain.states[1]) and torch.equal(read.pooled[1], plain.pooled[1])
    assert all(torch.equal(v, w[k]) for m, w in zip(modules, weights) for k, v in m.state_dict().items())


def test_a_transformer_patch_onto_another_model_is_refused(studios, tmp_path):
    from fmn.patch import PatchError

    patch_id = studios["sd3"].erase("circle", "uce")
    saved = studios["sd3"].save_patch(patch_id, tmp_path)
    studios["sd3"].remove_patch(patch_id)
    with pytest.raises(PatchError, match="was made for another model"):
        studios["flux"].load_patch(saved)


def comfy_reads(key: str, transformer) -> bool:
    """ComfyUI's SD3/FLUX LoRA loader (comfy/lora.py, model_lora_keys_unet) maps ``transformer.<module>`` and
    ``lora_transformer_<module, dots as underscores>`` for every weight of the diffusers transformer's modules."""
    modules = {n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear) and ".lora_" not in n}
    names = {f"transformer.{n}" for n in modules} | {"lora_transformer_" + n.replace(".", "_") for n in modules}
    stem = key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]  # no .lora_A.weight, .alpha
    return stem in names and key.split(stem, 1)[1] in (".lora_A.weight", ".lora_B.weight", ".lora_down.weight",
                                                       ".lora_up.weight", ".alpha")


@pytest.mark.parametrize("kind, method", [(k, m) for k in KINDS for m in ("uce", "esd-x")])
def test_exports_load_in_diffusers_and_carry_comfyuis_key_names(studios, folders, tmp_path, kind, method):
    """A closed form's patch and a trained one (ESD-x's LoRA on the transformer) export alike."""
    from diffusers import DiffusionPipeline
    from safetensors import safe_open

    from fmn.generate import generate

    studio = studios[kind]
    patch_id = studio.erase("circle", method, **(ESD_FAST | dict(steps=5) if method == "esd-x" else {}))
    erased = pixels(studio.generate(SETTINGS, [0], patches=[patch_id]))
    lora = studio.export([patch_id], "diffusers-lora", tmp_path / "lora.safetensors")
    kohya = studio.export([patch_id], "kohya", tmp_path / "kohya.safetensors")
    merged = studio.export([patch_id], "merged", tmp_path / "merged")
    with pytest.raises(ValueError, match="export SD3 and FLUX as diffusers-lora, kohya, merged"):
        studio.export([patch_id], "single-file", tmp_path / "single.safetensors")
    studio.remove_patch(patch_id)
    for path, prefix in ((lora, "transformer."), (kohya, "lora_transformer_")):
        with safe_open(path, "pt") as f:
            keys = list(f.keys())
        assert keys and all(k.startswith(prefix) and comfy_reads(k, studio.pipe.transformer) for k in keys)
    plain = DiffusionPipeline.from_pretrained(folders[kind])  # diffusers alone, no fmn code
    plain.load_lora_weights(str(lora))
    assert np.abs(pixels(generate(plain, SETTINGS, [0])) - erased).mean() <= 1  # of 255
    assert np.abs(pixels(generate(DiffusionPipeline.from_pretrained(merged), SETTINGS, [0])) - erased).mean() <= 1
    for made_elsewhere in (lora, kohya):  # and back in, as LoRAs made elsewhere (kohya's: as ComfyUI writes it)
        back = studio.load_patch(made_elsewhere)
        assert np.abs(pixels(studio.generate(SETTINGS, [0], patches=[back])) - erased).mean() <= 1
        studio.remove_patch(back)


@pytest.mark.parametrize("kind", KINDS)
def test_a_text_map_patch_leaves_as_a_merged_folder(studios, tmp_path, kind):
    """Text-map edits T5 too, which no SD3 or FLUX LoRA loader reads: the LoRA formats are refused and name the
    merged folder, which encodes prompts as the patched model does, loaded by diffusers alone."""
    from diffusers import DiffusionPipeline

    from fmn.diffusion import encode
    from fmn.patch import active

    studio, prompts = studios[kind], ["a red circle", "a blue square"]
    patch_id = studio.erase("circle", "text-map", passes=5)
    with torch.no_grad():
        plain = encode(studio.pipe, prompts)
        with active(studio.pipe, [patch_id]):
            patched = encode(studio.pipe, prompts)
    for to in ("diffusers-lora", "kohya"):
        with pytest.raises(ValueError, match="change T5 .* export them as merged"):
            studio.export([patch_id], to, tmp_path / f"{to}.safetensors")
    merged = studio.export([patch_id], "merged", tmp_path / "merged")
    studio.remove_patch(patch_id)
    with torch.no_grad():
        read = encode(DiffusionPipeline.from_pretrained(merged), prompts)
    assert torch.allclose(read.states, patched.states, atol=1e-4), (read.states - patched.states).abs().max()
    assert torch.allclose(read.pooled, patched.pooled, atol=1e-4)
    assert not torch.allclose(read.states[0], plain.states[0], atol=1e-3)  # the erasure is in it


def test_a_transformer_lora_onto_a_unet_model_is_refused_by_name(studios, tmp_path):
    """A LoRA of FLUX's transformer, in either layout, does not fit an SD 1.5 model: the message names what is
    missing once, not once per factor of every layer."""
    from fmn.patch import PatchError

    patch_id = studios["flux"].erase("circle", "uce")
    files = [studios["flux"].export([patch_id], to, tmp_path / f"{to}.safetensors")
             for to in ("diffusers-lora", "kohya")]
    studios["flux"].remove_patch(patch_id)
    unet = Studio(None, device="cpu")  # the embedded model: SD 1.5's architecture
    messages = []
    for path in files:
        with pytest.raises(PatchError, match="does not fit this model") as refused:
            unet.load_patch(path)
        messages.append(str(refused.value))
    for message in messages:
        assert message.endswith("does not fit this model: its transformer layers (this kind of model has no "
                                "transformer)."), message
