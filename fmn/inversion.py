"""Textual inversion: learn new input embeddings for a concept's words from images of it.

Two uses share this module: Forget-Me-Not's optional first stage (an embedding that
captures the uploaded images, whose attention is then re-steered) and the concept-inversion
attack (an embedding that brings an erased concept back, learned against the erased model).

The learned vectors replace the input embeddings of the concept's own tokens wherever they
occur in a prompt (`inverted`), in every text encoder's table, each on its own tokenizer's ids
(SD3's and FLUX's T5 has its own vocabulary), so prompts are written as usual and the model's
vocabulary, tokenizers and weights are never changed. On SD3 and FLUX the loss is the flow-matching
one, read as noise (`fmn.diffusion.denoise`). Only the vectors train, on the ordinary denoising
loss of the images' latents under prompts that name the concept (Gal et al. 2022). Given a
`score` (as diffusers' textual-inversion script validates by sampling images every few steps),
the vectors that scored best, the starting ones included, are the result.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import StableDiffusionPipeline
from transformers import T5EncoderModel

from .diffusion import denoise, encode, noisy
from .models import is_transformer

__all__ = ["InversionConfig", "Inverted", "inverted", "invert"]

TEMPLATES = ("a photo of {}", "a picture of {}", "an image of {}", "{}", "a painting of {}")


@dataclass
class InversionConfig:
    steps: int = 100
    lr: float = 5e-3  # textual inversion's usual step size for one embedding
    batch: int = 4
    seed: int = 0
    score_every: int = 0  # with a `score`: steps between scorings (0: only the start and the end)


@dataclass
class Inverted:
    """Learned input embeddings for the tokens of a concept's name: per text encoder, its own tokenizer's ids and
    their rows of its table (SDXL's two encoders, of different widths, read the same ids; SD3's and FLUX's T5 has
    its own vocabulary)."""

    token_ids: list[list[int]]  # per text encoder
    vectors: list[torch.Tensor]  # per text encoder, (len(its token_ids), D)


def text_encoders(pipe: StableDiffusionPipeline) -> list[torch.nn.Module]:
    return [getattr(pipe, name) for name in text_encoder_components(pipe)]


def text_encoder_components(pipe: StableDiffusionPipeline) -> list[str]:
    """The pipeline's text encoders by component name (SDXL: two; SD3: CLIP-L, CLIP-G, T5; FLUX: CLIP-L, T5), as
    patches name them."""
    return [c for c in ("text_encoder", "text_encoder_2", "text_encoder_3") if getattr(pipe, c, None) is not None]


def input_table(encoder: torch.nn.Module) -> torch.nn.Embedding:
    """The embedding layer the encoder's forward reads its ids through: T5's stack holds its own, tied to `shared`
    (which ``get_input_embeddings`` returns)."""
    return encoder.encoder.embed_tokens if isinstance(encoder, T5EncoderModel) else encoder.get_input_embeddings()


def concept_token_ids(pipe: StableDiffusionPipeline, concept: str) -> list[list[int]]:
    """Per text encoder, its tokenizer's ids of the concept's name."""
    return [getattr(pipe, c.replace("text_encoder", "tokenizer"))(concept, add_special_tokens=False).input_ids
            for c in text_encoder_components(pipe)]


@contextmanager
def inverted(pipe: StableDiffusionPipeline, learned: Inverted):
    """Inside the block every occurrence of the concept's tokens reads the learned vectors."""
    handles = []
    for encoder, token_ids, vectors in zip(text_encoders(pipe), learned.token_ids, learned.vectors):
        table = input_table(encoder)
        ids = torch.tensor(token_ids, device=table.weight.device)

        def swap(module, inputs, output, ids=ids, vectors=vectors):
            input_ids = inputs[0]
            for token, vector in zip(ids, vectors):
                output = torch.where((input_ids == token)[..., None], vector.to(output), output)
            return output

        handles.append(table.register_forward_hook(swap))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def only_vectors_learn(pipe: StableDiffusionPipeline):
    """Inside the block no weight of the UNet (SD3's, FLUX's transformer) or the text encoders takes gradients; after
    it each is as it was (an adversarial erasure inverts between its own training steps, with its adapter trainable)."""
    denoiser = pipe.transformer if is_transformer(pipe) else pipe.unet
    params = [*denoiser.parameters(), *(p for encoder in text_encoders(pipe) for p in encoder.parameters())]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def invert(pipe: StableDiffusionPipeline, concept: str, latents: torch.Tensor,
           config: InversionConfig = InversionConfig(),
           on_step=None, score: Callable[[Inverted], float] | None = None, prompts: list[str] | None = None,
           start: Inverted | None = None) -> Inverted:
    """Learns vectors for the concept's tokens so that prompts naming it denoise `latents` (N, 4, h, w).

    Starts from the tokens' own embeddings (or from `start`'s); runs on the pipeline as it is now (with whatever
    patches are active), which is what the attack wants. `on_step(step, total, loss)`.
    `prompts` name the concept while it trains (default: TEMPLATES around its name).
    `score(learned)`, higher is better, picks the result among the start, every
    `config.score_every` steps and the end; without it the result is the last step's.
    """
    with only_vectors_learn(pipe):
        token_ids = concept_token_ids(pipe, concept)
        tables = [encoder.get_input_embeddings().weight for encoder in text_encoders(pipe)]
        vectors = [(table[ids] if start is None else begun).detach().clone().float().requires_grad_(True)
                   for table, ids, begun in zip(tables, token_ids, start.vectors if start is not None else tables)]
        learned = Inverted(token_ids, vectors)
        prompts = prompts or [t.format(concept) for t in TEMPLATES]
        scored: list[tuple[float, Inverted]] = []

        def keep_score(step: int) -> None:
            if score and (step in (0, config.steps) or (config.score_every and step % config.score_every == 0)):
                snapshot = Inverted(token_ids, [v.detach().clone() for v in vectors])
                with torch.no_grad():
                    scored.append((score(snapshot), snapshot))

        optimizer = torch.optim.AdamW(vectors, lr=config.lr, weight_decay=0.0)
        generator = torch.Generator("cpu").manual_seed(config.seed)
        keep_score(0)
        for step in range(1, config.steps + 1):
            idx = torch.randint(0, len(latents), (config.batch,), generator=generator)
            batch_prompts = [prompts[int(k)]
                             for k in torch.randint(0, len(prompts), (config.batch,), generator=generator)]
            zt, noise, t = noisy(pipe, latents[idx], generator)
            with inverted(pipe, learned):
                pred = denoise(pipe, zt, t, encode(pipe, batch_prompts))
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step:
                on_step(step, config.steps, loss.item())
            keep_score(step)
        if scored:
            return max(scored, key=lambda pair: pair[0])[1]
        return Inverted(token_ids, [v.detach() for v in vectors])
