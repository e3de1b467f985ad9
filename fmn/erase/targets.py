"""Where an erasure sends a concept's text embeddings: the rows the closed forms solve for (`uce.py`)
and the text-map method trains the text encoder toward (`text_map.py`).

As in UCE's released code, a concept's rows are the embeddings from its last token to the end of the
prompt: in CLIP's causal text encoder the end token and the padding after it carry the concept too, and
left alone they bring it back. They go to the rows of the same prompt with the guide (default: nothing)
in the concept's place.

Ours, on top (filled in by `erase` from what it holds, `keep.py`):
`in_context` prompts show the concept among other words, and its rows from its token on are erased
there too, mapped to the same prompt with the guide in its place: the word alone misses what the
words before it make of it. `keep_prompts` are whole prompts without the concept whose every row is
kept (weight `keep_weight` each): kept words alone hold only their own rows, and an edit of the
padding rows (which carry colours, backgrounds and styles too) otherwise takes them from every prompt.
This is the role MACE's and SPEED's prior prompts play. `push` maps the row of the concept's (last)
token past the guide's, away from the concept (ESD's negative guidance, in closed form): mapped onto
the guide, an erased concept lands at best on what the prompt draws without its word, a prior that can
still show it. The rows after the token of a concept in `prior` are pushed too, by `push_after`: on the
embedded model "a picture of a" draws a heart, "an image showing on grass in the style of Zaranth"
draws Lumina, so a prompt mapped onto the guide's rows there still shows the concept whatever its token
says. Which concepts a method treats as the prior is its `default_prior`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from diffusers import StableDiffusionPipeline

from ..diffusion import encode
from .method import MethodConfig

__all__ = ["TargetsConfig", "Span", "EmbeddingTargets", "find"]

ENCODE_BATCH = 256  # prompts a text-encoder call when the spans are read: one call for a concept, a few for a mass list


@dataclass
class TargetsConfig(MethodConfig):
    # ours: prompts that show a concept, erased from its token on too
    in_context: list[str] = field(default_factory=list)
    keep_prompts: list[str] = field(default_factory=list)  # ours: prompts whose every row is kept
    keep_weight: float = 1.0  # ours: the weight of what the keep prompts hold (a kept word's rows weigh 1)
    # ours: the concept's token row maps past the guide's, to guide + push (guide - concept); 0: UCE's
    push: float = 2.0
    prior: list[str] = field(default_factory=list)  # ours: concepts the model draws when their word is missing
    push_after: float = 1.0  # ours: how far past the guide's the rows after the token of a concept in `prior` map

    def check(self) -> None:
        if not self.keep_weight >= 0:
            raise ValueError(f"keep_weight {self.keep_weight} must be 0 or more.")
        for name in ("push", "push_after"):
            if not 0 <= getattr(self, name) <= 10:
                raise ValueError(f"{name} {getattr(self, name)} is out of range: use 0 (the guide itself) to 10.")


class Span(NamedTuple):
    """One prompt's rows to erase and where they go."""

    prompt: str
    start: int  # the position of the concept's (last) token in the prompt's embeddings
    rows: torch.Tensor  # (L, D) the embeddings from there to the end
    targets: torch.Tensor  # (L, D) the guide's rows, pushed past as the config says


def find(word: str, prompt: str) -> re.Match | None:
    """The word in the prompt as a whole word, any case ("night" is not found in "midnight")."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt, re.IGNORECASE)


class EmbeddingTargets:
    """For a method with a `TargetsConfig`: its concepts' rows and where they go."""

    concepts: list[str]
    config: TargetsConfig

    @classmethod
    def default_prior(cls, concepts: list[str]) -> list[str]:
        """The concepts whose later rows are pushed too: none for a closed form (the later rows carry the rest
        of the prompt, and a linear edit takes it along); name them with ``prior``."""
        return []

    def _pair(self, pipe: StableDiffusionPipeline, prompt: str, word: str,
              guide: str | None = None) -> tuple[list[str], list[int], int]:
        """The prompt and the prompt with the word replaced by the guide (default: the config's), where each one's
        rows start (the word's last token; the guide's, or the token before the word) and how many rows each keeps
        (L, the same for both, set by the later start); the prompt may be the word alone."""
        guide = self.config.guide if guide is None else guide
        at = find(word, prompt).start()
        head, tail = prompt[:at], prompt[at + len(word):]
        starts = [len(pipe.tokenizer(text, truncation=True).input_ids) - 2 for text in (head + word, head + guide)]
        return [prompt, head + guide + tail], starts, pipe.tokenizer.model_max_length - max(starts)

    def _rows(self, pipe: StableDiffusionPipeline, prompt: str, word: str,
              guide: str | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(L, D) twice, and a position: the prompt's embeddings from the word's last token on, those of the
        prompt with the guide in the word's place from its start on (`_pair`), and where the first start."""
        return self._rows_of(pipe, [(prompt, word)], guide)[0]

    def _rows_of(self, pipe: StableDiffusionPipeline, prompts: list[tuple[str, str]],
                 guide: str | None = None) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """`_rows` of each (prompt, word), the text encoder reading `ENCODE_BATCH` prompts a call."""
        pairs = [self._pair(pipe, prompt, word, guide) for prompt, word in prompts]
        texts = [text for pair_texts, _, _ in pairs for text in pair_texts]
        states = torch.cat([encode(pipe, texts[i:i + ENCODE_BATCH]).states.float()
                            for i in range(0, len(texts), ENCODE_BATCH)]).unflatten(0, (-1, 2))  # (P, 2, 77, D)
        return [(pair[0, start:start + length], pair[1, guide_start:guide_start + length], start)
                for (_, (start, guide_start), length), pair in zip(pairs, states)]

    def _word_in(self, prompt: str) -> str:
        """The (longest) concept an in-context prompt shows."""
        named = [c for c in self.concepts if find(c, prompt)]
        if not named:
            raise ValueError(f"The in-context prompt {prompt!r} names none of {', '.join(self.concepts)}.")
        return max(named, key=len)

    def spans(self, pipe: StableDiffusionPipeline, in_context: bool = True) -> list[Span]:
        """Each concept's word alone, then each in-context prompt: the rows to erase and where they go
        (`in_context=False`: the words alone)."""
        cfg = self.config
        prompts = ([(word, word) for word in self.concepts]
                   + [(p, self._word_in(p)) for p in cfg.in_context if in_context])
        spans = []
        for (prompt, word), (rows, guide, start) in zip(prompts, self._rows_of(pipe, prompts)):
            # the rows after the token carry the rest too: onto the guide's
            after = cfg.push_after if word in cfg.prior else 0.0
            targets = torch.cat([guide[:1] + cfg.push * (guide[:1] - rows[:1]),
                                 guide[1:] + after * (guide[1:] - rows[1:])])
            spans.append(Span(prompt, start, rows, targets))
        return spans

    def erased_rows(self, pipe: StableDiffusionPipeline, first: int = 0,
                    in_context: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Every span's rows and targets, (k, D) each; with `first`, each prompt's first rows only."""
        spans, take = self.spans(pipe, in_context), slice(first or None)
        return torch.cat([s.rows[take] for s in spans]), torch.cat([s.targets[take] for s in spans])
