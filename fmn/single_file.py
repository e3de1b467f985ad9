"""Writes a pipeline as one original-layout (CompVis/A1111, or Stability's for SDXL) ``.safetensors`` checkpoint.

diffusers reads such files with `from_single_file`; this is the way back, so that an
edited model can be used in tools that take single files, and so that the single-file
loading path is tested offline. SD 1.x layout: UNet under ``model.diffusion_model``,
VAE under ``first_stage_model``, CLIP under ``cond_stage_model.transformer``. SDXL: the same
UNet and VAE names (its added-embedding MLP as ``label_emb``), the first text encoder under
``conditioner.embedders.0.transformer``, the second in OpenCLIP's layout under
``conditioner.embedders.1.model`` (q, k, v fused into ``in_proj``, the projection transposed).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import save_file

__all__ = ["original_state_dict", "save_single_file"]

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(key: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        key = key.replace(f".{new}.", f".{old}.")
    return key


def _unet_prefixes(config) -> dict[str, str]:
    """diffusers module prefix -> original prefix, from the UNet's block layout."""
    n_layers = config.layers_per_block
    step = n_layers + 1
    table = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
             "mid_block.resnets.1": "middle_block.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    for i in range(len(config.block_out_channels)):
        for j in range(n_layers):
            table[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{1 + i * step + j}.0"
            table[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{1 + i * step + j}.1"
        table[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * step}.0.op"
        has_attention = "CrossAttn" in config.up_block_types[i]
        for j in range(step):
            table[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{i * step + j}.0"
            table[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{i * step + j}.1"
        table[f"up_blocks.{i}.upsamplers.0.conv"] = (f"output_blocks.{i * step + n_layers}."
                                                     f"{2 if has_attention else 1}.conv")
    return table


def _vae_prefixes(config) -> dict[str, str]:
    n = len(config.block_out_channels)
    table = {}
    for part in ("encoder", "decoder"):
        table |= {f"{part}.mid_block.resnets.0": f"{part}.mid.block_1",
                  f"{part}.mid_block.attentions.0": f"{part}.mid.attn_1",
                  f"{part}.mid_block.resnets.1": f"{part}.mid.block_2", f"{part}.conv_norm_out": f"{part}.norm_out"}
    for i in range(n):
        for j in range(config.layers_per_block + 1):
            table[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
            table[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{n - 1 - i}.block.{j}"
        table[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        table[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{n - 1 - i}.upsample.conv"
    return table


def _move(state: dict[str, torch.Tensor], prefixes: dict[str, str], resnet: dict[str, str],
          attention: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Renames layers inside resnets (and attentions), then moves each module to its original prefix."""
    out = {}
    for key, value in state.items():
        if ".resnets." in key:
            key = _rename(key, resnet)
        elif attention and ".attentions." in key:
            key = _rename(key, attention)
        match = max((p for p in prefixes if key.startswith(p + ".")), key=len, default=None)
        out[prefixes[match] + key[len(match):] if match else key] = value
    return out


def _clip(encoder) -> dict[str, torch.Tensor]:
    """A CLIP text model's weights under ``text_model.`` (recent transformers drop that level)."""
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in encoder.state_dict().items()}


def _open_clip(encoder) -> dict[str, torch.Tensor]:
    """A CLIP text model with projection in OpenCLIP's layout, as SDXL's checkpoints hold its second encoder."""
    sd = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
    out = {"token_embedding.weight": sd["embeddings.token_embedding.weight"],
           "positional_embedding": sd["embeddings.position_embedding.weight"],
           "ln_final.weight": sd["final_layer_norm.weight"], "ln_final.bias": sd["final_layer_norm.bias"],
           "text_projection": sd["text_projection.weight"].T}
    for i in range(encoder.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([sd[f"{src}self_attn.{x}_proj.{kind}"] for x in "qkv"])
            for new, old in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{dst}{new}.{kind}"] = sd[f"{src}{old}.{kind}"]
    return out


def original_state_dict(pipe: StableDiffusionPipeline | StableDiffusionXLPipeline) -> dict[str, torch.Tensor]:
    """The pipeline's weights under the original key names (SD 1.x, or SDXL's)."""
    unet = _move(pipe.unet.state_dict(), _unet_prefixes(pipe.unet.config), UNET_RESNET)
    vae = _move(pipe.vae.state_dict(), _vae_prefixes(pipe.vae.config), VAE_RESNET, VAE_ATTENTION)
    vae = {k: v[..., None, None] if ".attn_1." in k and k.endswith("weight") and v.ndim == 2 else v
           for k, v in vae.items()}
    state = {f"model.diffusion_model.{k}": v for k, v in unet.items()}
    state |= {f"first_stage_model.{k}": v for k, v in vae.items()}
    if isinstance(pipe, StableDiffusionXLPipeline):
        state |= {f"conditioner.embedders.0.transformer.{k}": v for k, v in _clip(pipe.text_encoder).items()}
        state |= {f"conditioner.embedders.1.model.{k}": v for k, v in _open_clip(pipe.text_encoder_2).items()}
    else:
        state |= {f"cond_stage_model.transformer.{k}": v for k, v in _clip(pipe.text_encoder).items()}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_single_file(pipe: StableDiffusionPipeline, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    path = Path(path)
    save_file(original_state_dict(pipe), path, metadata={"format": "pt", **(metadata or {})})
    return path
