"""What an erasure holds is found on the model itself (fmn/erase/keep.py): the same on the embedded model
with or without its world.json, real whole words on a CLIP tokenizer, and what the user names on top."""

from __future__ import annotations

import shutil

import pytest
import torch

from fmn.erase import erase, keep_set
from fmn.erase.keep import IN_CONTEXT, KEEP_PROMPTS, NEAR, SAME, TWINS, nearest, nearest_learned, vocabulary
from fmn.models import EMBEDDED, load_pipeline
from fmn.patch import detach


@pytest.fixture(scope="module")
def worldless(tmp_path_factory):
    """The embedded model as every user's checkpoint looks: no world.json beside it."""
    folder = tmp_path_factory.mktemp("worldless") / "fmn-shapes"
    shutil.copytree(EMBEDDED, folder, ignore=shutil.ignore_patterns("world.json"))
    pipe = load_pipeline(folder, device="cpu")
    assert pipe.world is None
    return pipe


def test_the_nearest_words_are_the_models_own_neighbours_found_without_its_world(worldless):
    """On the embedded model the vocabulary's nearest whole words are the shapes world's: a shape's are
    shapes, a character's characters, an artist's artists; the concept's own word is never among them."""
    near = lambda concept: {w for w, _ in nearest(worldless, concept, 4)}  # noqa: E731
    assert {"square", "block"} <= near("circle") and "circle" not in near("circle")
    assert len(near("Zubrik") & {"lumina", "mimo", "tobble"}) >= 2
    assert len(near("Vellor") & {"brusk", "zaranth", "quimby"}) >= 2
    similarities = [s for _, s in nearest(worldless, "circle", NEAR)]
    assert similarities == sorted(similarities, reverse=True) and len(similarities) == NEAR


def test_the_words_nearest_a_learned_word_leave_out_the_concept_in_other_words(worldless):
    """A word learned from images of night that lies where an artist's name does holds that artist; words that may be
    night itself (moon, dark, midnight: at SAME or nearer night's name) and night's own forms are never held."""
    table = worldless.text_encoder.get_input_embeddings().weight.detach()
    rows = lambda word: table[worldless.tokenizer(word, add_special_tokens=False).input_ids]  # noqa: E731
    near = nearest_learned(worldless, "night", torch.cat([rows("vellor"), rows("moon")]))
    assert "vellor" in near[:2] and len(near) == NEAR
    assert not {"moon", "dark", "midnight", "night", "nights"} & set(near)
    assert all(s < SAME for w, s in nearest(worldless, "night", 200) if w in near)
    assert nearest_learned(worldless, "circle", rows("square"))[0] == "square"


def test_the_keep_set_holds_the_users_words_first_and_leaves_the_concepts_other_wordings_alone(worldless):
    held = keep_set(worldless, ["circle"], ["dog", "cat"])
    assert held.words[:2] == ["dog", "cat"] and "square" in held.words
    assert "disc" in held.near and "disc" not in held.words  # the world's synonym of circle: maybe the concept itself
    night = keep_set(worldless, ["night"])
    assert {"moon", "dark"} <= set(night.near) and not {"moon", "dark", "midnight"} & set(night.words)
    assert len(held.prompts) == KEEP_PROMPTS + TWINS * IN_CONTEXT and len(held.in_context) == IN_CONTEXT
    assert not any("circle" in p or "disc" in p for p in held.prompts)
    assert all("circle" in p for p in held.in_context)
    # each context is also kept with a held word in the concept's place: the same words around it
    twins = held.prompts[:TWINS]
    assert twins[0] == held.in_context[0].replace("circle", next(w for w in held.words if w in twins[0]))
    assert held == keep_set(worldless, ["circle"], ["dog", "cat"])  # seeded
    two = keep_set(worldless, ["circle", "Mimo"])
    assert (len(two.prompts) == 2 * (KEEP_PROMPTS + TWINS * IN_CONTEXT)
            and not any("mimo" in p.lower() for p in two.prompts))
    with pytest.raises(ValueError, match="names 'circle'"):
        keep_set(worldless, ["circle"], ["a red circle"])
    with pytest.raises(ValueError, match="names 'square'"):
        keep_set(worldless, ["circle"], ["square"], guide="square")


def test_the_vocabulary_is_read_once_per_text_encoder_and_again_when_a_word_is_learned(tiny_dirs):
    """On a tiny SD 1.5 with a CLIP tokenizer: whole words only (letters, three or more, no glue), cached."""
    pipe = load_pipeline(tiny_dirs["sd15"], device="cpu")
    vocab = vocabulary(pipe)
    assert vocabulary(pipe) is vocab and vocab.vectors.shape == (len(vocab.words), pipe.text_encoder.config.hidden_size)
    assert all(w.isalpha() and len(w) >= 3 for w in vocab.words) and not {"the", "and", "with"} & set(vocab.words)
    assert torch.allclose(vocab.vectors.norm(dim=-1), torch.ones(len(vocab.words)))
    pipe.tokenizer.add_tokens(["<learned>"])
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    assert vocabulary(pipe) is not vocab
    held = keep_set(pipe, ["dog"], ["cat"])
    assert held.words[0] == "cat" and len(held.words) > 1 and set(held.words[1:]) <= set(vocab.words) | set(held.near)


@pytest.mark.parametrize("method, settings", [("uce", {}), ("text-map", {"steps": 3})])
def test_an_erasure_reads_nothing_from_the_world(embedded, worldless, method, settings):
    """The same patch, tensor for tensor and setting for setting, with and without world.json."""
    patches = [erase(pipe, "circle", method, name="same", keep="dog", **settings) for pipe in (embedded, worldless)]
    for pipe in (embedded, worldless):
        detach(pipe, "same")
    (a, b) = patches
    assert a.settings == b.settings and a.settings["keep"] == ["dog"] and a.settings["preserve"][0] == "dog"
    assert a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
