"""What an erasure holds while a concept goes, found on any model: the words the user names, and the
whole words of the model's own vocabulary that lie nearest the concept.

An edit that learns only where the concept goes moves every other prompt with it: nothing holds them.
What to hold comes from what every model has, never from a list of what it was trained on:
- the user's list (``keep=["dog", "cat"]``, the CLI's ``--keep``, the app's *Keep* field);
- the ``NEAR`` whole-word tokens whose input embeddings lie nearest the concept's (cosine): the
  concepts most at risk, as MACE and SPEED choose what to preserve. On the embedded model this finds
  the shapes world's words ("circle": square, block, heart); on CLIP's vocabulary, real English words.
  A word nearer than ``SAME`` may be the concept in other words ("circle": disc; "night": midnight,
  moon, dark): holding it would hold the concept, so it is left out, listed in ``near`` for the user;
- whole prompts built from those words and words drawn from the whole vocabulary, in generic
  templates (``keep_prompts``), and the concept among other words (``in_context``), for the methods
  whose edit reads whole prompts (`targets.py`).
The vocabulary's unit vectors are computed once per text encoder (`vocabulary`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import torch
from diffusers import StableDiffusionPipeline
from torch import nn

from .targets import find

__all__ = ["KeepSet", "keep_set", "nearest", "nearest_learned", "vocabulary", "held_settings", "NEAR", "SAME",
           "KEEP_PROMPTS", "IN_CONTEXT", "TWINS"]

NEAR = 8  # nearest words held per concept
SAME = 0.6  # at this cosine or above, a word may be the concept itself: not held
KEEP_PROMPTS = 20  # generic keep prompts per concept erased, beside TWINS per in-context prompt
IN_CONTEXT = 31  # prompts that show each concept among other words (with its word alone: one text-map batch of 32)
TWINS = 1  # keep prompts per in-context prompt: the same words, a held word in the concept's place
# Words that glue a prompt together: never held on their own (the templates hold them in place)
GLUE = frozenset("""a an the of in on at to for from by with and or but is are was were be been it its this that
these those there here as into onto over under after before than then up down out off not no very""".split())
KEEP_TEMPLATES = ("{0}", "a photo of a {0}", "a {0} {1}", "a painting of a {0} and a {1}", "a {0} {1} next to a {2}",
                  "a photo of a {0} {1} on {2}", "a {0} and a {1} {2} in the style of {3}",
                  "a drawing of a {0} {1} on {2} with a {3}",
                  "a close-up of the {0} by a {1} {2}", "there is a {0} {1} and a {2} {3} on {0}")
CONTEXT_TEMPLATES = ("{c}", "a photo of a {c}", "a {w} {c}", "a {c} {w}", "a {c} and a {w}",
                     "a painting of a {w} with a {c}",
                     "a {c} in the style of {w}", "a {w} {c} next to a {v}", "a close-up of the {c} by a {w}",
                     "a photo of a {w} {c} on {v} in the style of {u}", "a {w} {v} and a {c} on {u}",
                     "a {c} on {w} with a {v} {u}")


def held_settings() -> dict:
    """How the keep set is found, for a benchmark cell's spec: a cell made with other settings runs again."""
    return {"near": NEAR, "same": SAME, "keep_prompts": KEEP_PROMPTS, "in_context": IN_CONTEXT, "twins": TWINS,
            "templates": [*KEEP_TEMPLATES, *CONTEXT_TEMPLATES]}


@dataclass
class Vocabulary:
    """A text encoder's whole-word tokens and their input embeddings, each of unit length."""

    words: list[str]
    vectors: torch.Tensor  # (N, D)
    table_size: int  # the embedding table's rows when it was read (a learned word adds one: read again)


_VOCABULARIES: WeakKeyDictionary[nn.Module, Vocabulary] = WeakKeyDictionary()


def vocabulary(pipe: StableDiffusionPipeline) -> Vocabulary:
    """The whole words of the (first) tokenizer, letters only, three or more, no glue; cached per text encoder."""
    table = pipe.text_encoder.get_input_embeddings()
    cached = _VOCABULARIES.get(table)
    if cached is not None and cached.table_size == table.weight.shape[0]:
        return cached
    ids, words = [], []
    # in id order: seeds reproduce
    for token, i in sorted(pipe.tokenizer.get_vocab().items(), key=lambda item: item[1]):
        word = token[:-4]
        if token.endswith("</w>") and re.fullmatch(r"[a-z]{3,}", word) and word not in GLUE:
            ids.append(i)
            words.append(word)
    with torch.no_grad():
        vectors = nn.functional.normalize(table.weight[torch.tensor(ids, device=table.weight.device)].float(),
                                          dim=-1).cpu()
    _VOCABULARIES[table] = Vocabulary(words, vectors, table.weight.shape[0])
    return _VOCABULARIES[table]


def _vector(pipe: StableDiffusionPipeline, text: str) -> torch.Tensor:
    """A phrase's direction in the embedding table: the mean of its tokens' embeddings, unit length."""
    ids = pipe.tokenizer(text, add_special_tokens=False).input_ids
    table = pipe.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        return nn.functional.normalize(table[torch.tensor(ids, device=table.device)].float().mean(0), dim=-1).cpu()


def _same_word(word: str, concept: str) -> bool:
    """"circles" for circle, "nights" for night: one contains the other (four letters or more)."""
    w, c = word.lower(), concept.lower()
    return len(min(w, c, key=len)) >= 4 and (w in c or c in w) or w in c.split()


def _ranked(pipe: StableDiffusionPipeline, direction: torch.Tensor, concept: str) -> list[tuple[str, float]]:
    """Every whole word by its cosine with `direction` (unit length), highest first, the concept's forms left out."""
    vocab = vocabulary(pipe)
    similarity = vocab.vectors @ direction
    return [(vocab.words[i], float(similarity[i])) for i in similarity.argsort(descending=True).tolist()
            if not _same_word(vocab.words[i], concept)]


def nearest(pipe: StableDiffusionPipeline, concept: str, n: int = NEAR) -> list[tuple[str, float]]:
    """The n whole words nearest the concept (cosine, highest first), the concept's own word forms left out."""
    return _ranked(pipe, _vector(pipe, concept), concept)[:n]


def nearest_learned(pipe: StableDiffusionPipeline, concept: str, vectors: torch.Tensor, n: int = NEAR) -> list[str]:
    """The n whole words nearest a word learned from images of the concept (`vectors`: its tokens' rows of the first
    text encoder's table, (T, D); their mean's cosine). Inversion puts into the word what the images show beside
    the concept (a background, a style, the shapes a colour was on), so erasing it takes those along unless they
    are held. A word that may be the concept itself (at SAME or nearer its name) is left out."""
    name = _vector(pipe, concept)
    vocab = vocabulary(pipe)
    near_name = dict(zip(vocab.words, (vocab.vectors @ name).tolist()))
    direction = nn.functional.normalize(vectors.detach().float().mean(0).cpu(), dim=-1)
    return [word for word, _ in _ranked(pipe, direction, concept) if near_name[word] < SAME][:n]


@dataclass
class KeepSet:
    """What an erasure holds, and the near words it leaves alone."""

    words: list[str] = field(default_factory=list)  # held: the user's, then the model's nearest (a method's `preserve`)
    prompts: list[str] = field(default_factory=list)  # whole prompts held (`keep_prompts`)
    in_context: list[str] = field(default_factory=list)  # the concepts among other words
    # nearer than SAME: maybe the concept in other words, neither held nor erased
    near: list[str] = field(default_factory=list)


def _check_keep(keep: list[str], gone: list[str]) -> None:
    for word in keep:
        clash = next((c for c in gone if find(c, word) or find(word, c)), None)
        if clash:
            raise ValueError(f"Keep {word!r} names {clash!r}, which this erasure removes: keep other words.")


def keep_set(pipe: StableDiffusionPipeline, concepts: list[str], keep: list[str] = (), guide: str = "",
             near: int = NEAR, seed: int = 0) -> KeepSet:
    """What erasing `concepts` (toward `guide`) holds: the user's `keep` words, each concept's `near` nearest
    words below SAME, keep prompts of those and other words of the vocabulary, and in-context prompts."""
    gone = [c for c in (*concepts, guide) if c]
    _check_keep(list(keep), gone)
    held, close = list(dict.fromkeys(keep)), []
    for concept in concepts:
        for word, similarity in nearest(pipe, concept, near):
            if any(_same_word(word, c) for c in gone):
                continue
            (close if similarity >= SAME else held).append(word)
    held = [w for w in dict.fromkeys(held) if w not in close]
    blocked = {w.lower() for w in (*close, *gone)}
    others = [w for w in vocabulary(pipe).words if w not in blocked and not any(_same_word(w, c) for c in gone)]
    rng = random.Random(f"{seed}-{sorted(gone)}-{held}")
    pick = lambda: rng.choice(held) if held and rng.random() < 0.5 else rng.choice(others)  # noqa: E731
    in_context, prompts = [], []
    for concept in concepts if others else []:
        for _ in range(IN_CONTEXT):  # each context also with held words in the concept's place: only the concept goes
            template, words = rng.choice(CONTEXT_TEMPLATES), {"w": pick(), "v": pick(), "u": pick()}
            in_context.append(template.format(c=concept, **words))
            prompts += [template.format(c=rng.choice(held or others), **words) for _ in range(TWINS)]
        prompts += [rng.choice(KEEP_TEMPLATES).format(*(pick() for _ in range(4))) for _ in range(KEEP_PROMPTS)]
    return KeepSet(held, prompts, in_context, list(dict.fromkeys(close)))
