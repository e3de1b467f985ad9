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

from ..diffusion import encode, text_segments
from ..models import is_transformer
from .joint import joint_inputs
from .method import MethodConfig

__all__ = ["TargetsConfig", "Span", "EmbeddingTargets", "find", "text_rows"]


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
    positions: torch.Tensor  # (L,) where the rows sit: from the concept's (last) token on, per encoder
    rows: torch.Tensor  # (L, D) the embeddings there
    targets: torch.Tensor  # (L, D) the guide's rows, pushed past as the config says


def find(word: str, prompt: str) -> re.Match | None:
    """The word in the prompt as a whole word, any case ("night" is not found in "midnight")."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt, re.IGNORECASE)


def text_rows(pipe: StableDiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    """The rows the edited layers read for the prompts, (B, positions, D) in float32: the text encoders' states on a
    UNet (every cross-attention layer reads them); on SD3 and FLUX each joint block's own text-side input, the
    blocks side by side (`joint.py`)."""
    return joint_inputs(pipe, prompts) if is_transformer(pipe) else encode(pipe, prompts).states.float()


def _last_token(tokenizer, text: str, length: int) -> int:
    """The position of the text's last token (CLIP's follow a start token, T5's have none; both end with one);
    0 for a row no tokenizer reads (text-map's pooled row)."""
    if tokenizer is None:
        return 0
    return max(0, len(tokenizer(text, truncation=True, max_length=length).input_ids) - 2)


class EmbeddingTargets:
    """For a method with a `TargetsConfig`: its concepts' rows and where they go."""

    concepts: list[str]
    config: TargetsConfig

    @classmethod
    def default_prior(cls, concepts: list[str]) -> list[str]:
        """The concepts whose later rows are pushed too: none for a closed form (the later rows carry the rest
        of the prompt, and a linear edit takes it along); name them with ``prior``."""
        return []

    def reads(self, pipe: StableDiffusionPipeline, prompts: list[str]) -> torch.Tensor:
        """The rows the method's edit reads for the prompts: `text_rows`."""
        return text_rows(pipe, prompts)

    def segments(self, pipe: StableDiffusionPipeline) -> list[tuple[object, int, int]]:
        """Where each encoder's rows sit among those `reads` gives: `text_segments`."""
        return text_segments(pipe)

    def _rows(self, pipe: StableDiffusionPipeline, prompt: str, word: str,
              guide: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L, D) twice, (L,) twice: the prompt's rows (`reads`) from the word's last token on, those of the prompt
        with the word replaced by the guide (default: the config's) from the guide's last token (or the token before
        the word) on, which of them are the word's token row, and where the first sit. On SD3 each encoder of the text
        sequence (CLIP's, T5's) gives its own such rows, one after the other (`segments`); a segment without a
        tokenizer (text-map's pooled row) is one row after the token. L is the same for both, set by the later
        start; the prompt may be the word alone."""
        guide = self.config.guide if guide is None else guide
        at = find(word, prompt).start()
        head, tail = prompt[:at], prompt[at + len(word):]
        states = self.reads(pipe, [prompt, head + guide + tail])
        rows, guides, token, positions = [], [], [], []
        for tokenizer, begin, length in self.segments(pipe):
            starts = [begin + _last_token(tokenizer, text, length) for text in (head + word, head + guide)]
            n = begin + length - max(starts)
            rows.append(states[0, starts[0]:starts[0] + n])
            guides.append(states[1, starts[1]:starts[1] + n])
            token.append((torch.arange(n) == 0) & (tokenizer is not None))
            positions.append(torch.arange(starts[0], starts[0] + n))
        return torch.cat(rows), torch.cat(guides), torch.cat(token), torch.cat(positions)

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
        for prompt, word in prompts:
            rows, guide, token, positions = self._rows(pipe, prompt, word)
            # the token's row past the guide's by push; the rows after it carry the rest too: onto the guide's
            after = cfg.push_after if word in cfg.prior else 0.0
            scale = torch.where(token, cfg.push, after)[:, None].to(rows)  # (L, 1)
            spans.append(Span(prompt, positions, rows, guide + scale * (guide - rows)))
        return spans

    def erased_rows(self, pipe: StableDiffusionPipeline, first: int = 0,
                    in_context: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Every span's rows and targets, (k, D) each; with `first`, each prompt's first rows only."""
        spans, take = self.spans(pipe, in_context), slice(first or None)
        return torch.cat([s.rows[take] for s in spans]), torch.cat([s.targets[take] for s in spans])
