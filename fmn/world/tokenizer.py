"""Builds a CLIP tokenizer (``vocab.json`` + ``merges.txt``) for the shapes world, offline.

The layout is CLIP's own: the 256 byte symbols, the same with the end-of-word mark
``</w>``, one entry per learned merge, then the two special tokens. Because every byte
is in the vocabulary, any text tokenizes (unknown words fall apart into pieces, never
into an error). Merges are learned with the `tokenizers` BPE trainer on world captions.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer

from .scenes import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, caption, sample_scene

__all__ = ["build_tokenizer"]

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
