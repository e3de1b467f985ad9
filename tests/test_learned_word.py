"""Erasing from images: text-map (the default), UCE, RECE and ESD learn the concept from the images as a word
(textual inversion) and erase that word too; images the methods cannot read are refused with what they should be."""

import pytest
import torch

from fmn.diffusion import denoise, encode
from fmn.erase import DEFAULT_METHOD, erase, keep_set, make_method
from fmn.erase.keep import nearest_learned
from fmn.erase.learned_word import learn_word
from fmn.erase.uce import UCE
from fmn.generate import native_size
from fmn.inversion import Inverted, concept_token_ids, inverted
from fmn.patch import active, detach
from fmn.tiny import tiny_pipeline

INVERSION = dict(inversion_steps=60, inversion_lr=5e-2)  # the tiny model's random embeddings move far in 60 steps


def _images(pipe, n: int = 4, seed: int = 0) -> torch.Tensor:
    size = native_size(pipe)
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _left(pipe, patch: str, word) -> list[float]:
    """Per span of the learned word, how much of the way to its targets its rows have left to go with `patch` on."""
    with torch.no_grad(), active(pipe, [patch]), inverted(pipe, word.inverted):
        states = encode(pipe, [s.prompt for s in word.spans]).states
    return [((row[s.positions] - s.targets).norm() / (s.rows - s.targets).norm()).item()
            for row, s in zip(states, word.spans)]


def test_text_map_erases_the_word_it_learns_from_the_images():
    """The images are learned as a word (away from the name's own embeddings), its prompts' rows are sent to the
    targets: with the images they end far nearer them than after the same erasure by name alone."""
    pipe = tiny_pipeline()
    images = _images(pipe)
    method = make_method(DEFAULT_METHOD, ["circle"], images, in_context=["a red circle on grass"], **INVERSION)
    with torch.no_grad():
        refs = method.references(pipe, torch.Generator().manual_seed(0))
    word = refs.learned
    name = pipe.text_encoder.get_input_embeddings().weight[word.inverted.token_ids[0]]
    assert (word.inverted.vectors[0] - name).norm() > 5 * name.norm()  # measured: moved 1.8, the name 0.11 long
    assert [s.prompt for s in word.spans] == ["circle", "a red circle on grass"]
    settings = dict(in_context=["a red circle on grass"], steps=60, **INVERSION)
    patch = erase(pipe, ["circle"], DEFAULT_METHOD, images, name="from-images", **settings)
    erase(pipe, ["circle"], DEFAULT_METHOD, None, name="by-name", **settings)
    assert patch.settings["inversion_steps"] == 60
    # measured on the tiny model: 0.3 of the way left with the images, 0.8 by name alone
    with_images, by_name = _left(pipe, "from-images", word), _left(pipe, "by-name", word)
    assert max(with_images) < 0.5 and sum(with_images) < 0.6 * sum(by_name), (with_images, by_name)


def test_text_map_holds_the_words_nearest_the_word_it_learns(embedded):
    """Inversion puts what the images show beside the concept into the learned word: with `hold_learned`, the keep
    set is found again with the words nearest the learned word beside the user's, and the patch records what it
    held; by default the set found from the name stays."""
    by_name, images = keep_set(embedded, ["night"], ["dog"]), _images(embedded, 2)
    method = make_method(DEFAULT_METHOD, ["night"], images, held=by_name, keep=["dog"])
    table = embedded.text_encoder.get_input_embeddings().weight.detach()
    ids = concept_token_ids(embedded, "night")
    styled = table[embedded.tokenizer("vellor", add_special_tokens=False).input_ids].mean(0)  # night as a style
    method.hold_nearest(embedded, Inverted(ids, [styled.expand(len(ids[0]), -1)]))
    near = nearest_learned(embedded, "night", styled[None])
    assert "vellor" in near and "vellor" not in by_name.words
    again, cfg = keep_set(embedded, ["night"], ["dog", *near]), method.config
    assert (cfg.preserve, cfg.keep_prompts, cfg.in_context) == (again.words, again.prompts, again.in_context)
    settings = dict(steps=1, inversion_steps=2, inversion_lr=0.5)  # the word moves far from night's name
    held = {}
    for hold in (True, False):
        held[hold] = erase(embedded, ["night"], DEFAULT_METHOD, images, name="held", keep="dog", hold_learned=hold,
                           **settings).settings["preserve"]
        detach(embedded, "held")
    assert held[False] == by_name.words and held[True][0] == "dog" and held[True] != by_name.words


def _missed(weights: dict[str, torch.Tensor], patch, spans) -> float:
    """How far the patch's edited key and value projections leave the spans' rows from what the unedited ones give
    their targets, over how far the unedited ones leave them."""
    missed = left = 0.0
    for name, w in weights.items():
        edited = w + patch.tensors[f"unet.{name}.lora_B.weight"] @ patch.tensors[f"unet.{name}.lora_A.weight"]
        for s in spans:
            missed += (edited @ s.rows.T - w @ s.targets.T).norm().item()
            left += (w @ (s.rows - s.targets).T).norm().item()
    return missed / left


@pytest.mark.parametrize("method", ["uce", "rece"])
def test_a_closed_form_erases_the_word_it_learns_from_the_images(method):
    """UCE and RECE given images solve for the learned word's rows beside the name's: their edited projections send
    those rows far nearer what the unedited ones give the targets than the same edit by name alone does."""
    pipe = tiny_pipeline()
    images, settings = _images(pipe), dict(in_context=["a red circle on grass"], **INVERSION)
    with torch.no_grad():
        weights = {name: w.clone() for name, w in UCE.weights(pipe).items()}
        instance = make_method(method, ["circle"], images, **settings)
        word = learn_word(pipe, instance, images, instance.config, instance.config.seed)
    with_images = erase(pipe, ["circle"], method, images, name="from-images", **settings)
    by_name = erase(pipe, ["circle"], method, None, name="by-name", **settings)
    assert with_images.settings["inversion_steps"] == 60
    missed = _missed(weights, with_images, word.spans), _missed(weights, by_name, word.spans)
    # measured on the tiny model (UCE): 0.38 of the way left with the images, 0.99 by name alone
    assert missed[0] < 0.5 * missed[1], missed


def _toward_target(pipe, patch: str, method, refs, rows: torch.Tensor) -> float:
    """How far the patch brings the prediction on ESD's cached `rows` toward ESD's negatively guided target there,
    1 - |patched - target|^2 / |unedited - target|^2: 0 unmoved, 1 on it."""
    latents, steps = refs.latents[rows], refs.timesteps[rows]
    target = refs.eps_guide[rows] - method.config.eta * (refs.eps_concept[rows] - refs.eps_guide[rows])
    with torch.no_grad():
        text = method.texts(pipe, refs.concept[rows], refs.learned)
        plain = denoise(pipe, latents, steps, text)
        with active(pipe, [patch]):
            patched = denoise(pipe, latents, steps, text)
    return 1 - ((patched - target).pow(2).sum() / (plain - target).pow(2).sum()).item()


def test_esd_erases_the_word_it_learns_from_the_images():
    """ESD given images erases the learned word as one more concept: the unedited model's trajectories of its
    prompt are cached beside the name's, and the patch moves its prediction toward its negatively guided target,
    where the same erasure by name alone leaves it further."""
    pipe = tiny_pipeline()
    images = _images(pipe)
    settings = dict(steps=60, sample_steps=4, trajectories=2, lr=1e-2, **INVERSION)
    method = make_method("esd-x", ["circle"], images, **settings)
    with torch.no_grad():  # the references the erasure trains on: same seed
        refs = method.references(pipe, torch.Generator().manual_seed(method.config.seed))
    assert refs.learned is not None and refs.concept.unique().tolist() == [0, 1]
    erase(pipe, ["circle"], "esd-x", images, name="from-images", **settings)
    erase(pipe, ["circle"], "esd-x", None, name="by-name", **settings)
    word = refs.concept == 1
    moved = {patch: _toward_target(pipe, patch, method, refs, word) for patch in ("from-images", "by-name")}
    # measured on the tiny model: 91 % of the way with the images, 7 % by name alone
    assert moved["from-images"] > 0.3 and moved["from-images"] > 1.5 * moved["by-name"], moved


@pytest.mark.parametrize("images, message", [
    (torch.zeros(3, 32, 32), "a (N, 3, H, W) tensor in [-1, 1]"),
    ([[0.0]], "a (N, 3, H, W) tensor in [-1, 1] (fmn.erase.images.load_concept_images reads files into one), not list"),
    (torch.zeros(4, 1, 32, 32), "not (4, 1, 32, 32)"),
    (torch.zeros(0, 3, 32, 32), "0 images; give 1 to 20"),
    (torch.zeros(21, 3, 32, 32), "21 images; give 1 to 20"),
    (torch.zeros(2, 3, 30, 30), "images of 30x30 pixels: each side a multiple of 8"),
    (torch.full((2, 3, 32, 32), 255.0), "values in [-1, 1]"),
    (torch.full((2, 3, 32, 32), float("nan")), "values in [-1, 1]"),
])
def test_images_the_methods_cannot_read_are_refused_with_what_they_should_be(images, message):
    with pytest.raises(ValueError, match="^" if message.startswith("(") else None) as err:
        make_method(DEFAULT_METHOD, ["circle"], images)
    assert message in str(err.value)


def test_a_name_the_model_never_saw_is_learned_from_the_images(embedded):
    """Without images the embedded model refuses a word it never saw; with them the word is the learned word's
    placeholder: its prompts draw what the images show, and are erased."""
    with pytest.raises(ValueError, match="never saw zorblat"):
        erase(embedded, ["zorblat"], DEFAULT_METHOD, steps=1)
    patch = erase(embedded, ["zorblat"], DEFAULT_METHOD, _images(embedded, 2), name="zorblat", steps=2,
                  inversion_steps=2)
    assert patch.concepts == ["zorblat"] and patch.tensors
