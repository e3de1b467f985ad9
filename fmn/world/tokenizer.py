"""Builds a CLIP tokenizer (``vocab.json`` + ``merges.txt``) for the shapes world, offline, and a T5-style one.

The layout is CLIP's own: the 256 byte symbols, the same with the end-of-word mark
``</w>``, one entry per learned merge, then the two special tokens. Because every byte
is in the vocabulary, any text tokenizes (unknown words fall apart into pieces, never
into an error). Merges are learned with the `tokenizers` BPE trainer on world captions.

`build_t5_tokenizer` makes the SentencePiece-style (Unigram, ``▁`` marks a word's start) tokenizer that
SD3's and FLUX's T5 encoders read, for the tiny random pipelines: the world's words are pieces of their own,
and any other word falls apart into single characters.
"""

from __future__ import annotations

import json
import math
import random
import re
import string
from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer, T5Tokenizer

from .scenes import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, caption, sample_scene

__all__ = ["build_tokenizer", "build_t5_tokenizer"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Common English words learned as whole tokens, so that prompts outside the world
# still tokenize into words (their embeddings are untrained, which the tests rely on).
EXTRA_WORDS = (
    "a an the of in on at with and or is are photo picture image painting drawing showing there "
    "dog cat car house tree person man woman church van gogh nude naked art style night day"
).split()


def _corpus(n: int = 20000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = [caption(sample_scene(rng, "any"), rng.choice(TRAIN_TEMPLATES + HELDOUT_TEMPLATES), rng) for _ in range(n)]
    return [line.lower() for line in lines] + EXTRA_WORDS * 20


def build_tokenizer(out_dir: str | Path, merges: int = 400) -> CLIPTokenizer:
    """Trains the merges, writes vocab.json + merges.txt + tokenizer config to out_dir, and loads them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    clip = CLIPTokenizer().backend_tokenizer  # an empty CLIP tokenizer: its text splitting, no merges
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer, bpe.pre_tokenizer = clip.normalizer, clip.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=2 * len(alphabet) + merges,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer)
    learned = json.loads(bpe.to_str())["model"]["merges"]  # [[left, right], ...] in rank order
    byte_symbols = sorted(alphabet, key=lambda c: ord(c))
    vocab = byte_symbols + [c + "</w>" for c in byte_symbols]
    seen = set(vocab)
    for left, right in learned:
        if left + right not in seen:
            vocab.append(left + right)
            seen.add(left + right)
    vocab += [BOS, EOS]
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in learned) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(out_dir, model_max_length=77)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_t5_tokenizer() -> T5Tokenizer:
    """A Unigram tokenizer in T5's layout (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2): one piece per word of the
    world's captions, scored by its frequency, then every printable character, so that any text tokenizes."""
    counts = Counter(w for line in _corpus() for w in re.findall(r"\w+|[^\w\s]", line))
    total = sum(counts.values())
    words = [("\u2581" + w, math.log(n / total)) for w, n in counts.most_common()]
    chars = [(c, -20.0) for c in ["\u2581", *string.ascii_letters, *string.digits, *string.punctuation]]
    return T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *words, *chars], extra_ids=0)
