"""Random-weight Stable Diffusion pipelines built from configs, for tests and the speed benchmark.

``tiny_pipeline("sd15")`` mirrors SD 1.x (epsilon prediction, conv projections in the
transformer blocks); ``tiny_pipeline("sd2")`` mirrors SD 2.x (v-prediction, linear
projections, per-block head dims); ``tiny_pipeline("sdxl")`` mirrors SDXL (two text encoders
whose hidden states are concatenated, the second's pooled projection and the image size as
added conditioning, several transformer layers per block); ``tiny_pipeline("sd3")`` mirrors Stable Diffusion 3
(an MMDiT whose joint attention reads two CLIP encoders' states side by side and T5's after them, flow matching)
and ``tiny_pipeline("flux")`` FLUX.1-dev (double-stream blocks reading T5's states, then single-stream blocks,
CLIP's pooled output and a distilled guidance as conditioning, rotary positions, packed 2x2 latents).
``sd15_pipeline("full")`` has SD 1.5's exact shapes
(UNet 860 M, CLIP ViT-L/14 text encoder 123 M, VAE 84 M parameters): speed does not
depend on weight values, so it times an erasure at full size without a download.
Weights are random: shapes and code paths are real.
"""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

from .models import EMBEDDED
from .world.tokenizer import build_t5_tokenizer, build_tokenizer

__all__ = ["tiny_pipeline", "sd15_pipeline", "sdxl_pipeline"]


def _tiny_text_config(tokenizer, width: int, hidden_act: str, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, hidden_act=hidden_act, **extra)


def _tiny_vae(**extra) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32, block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=8, **extra,
    )


def _tiny_t5(tokenizer, width: int) -> T5EncoderModel:
    """In eval mode, as `from_pretrained` gives it: T5's dropout (0.1) would make its states random."""
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=2 * width, num_layers=2,
                                   num_heads=4, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id)).eval()


def tiny_pipeline(kind: str = "sd15", seed: int = 0):
    """A random-weight pipeline of the kind ("sd15", "sd2", "sdxl", "sd3", "flux") that generates 32x32 images
    in about a second."""
    assert kind in ("sd15", "sd2", "sdxl", "sd3", "flux")
    torch.manual_seed(seed)
    with TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp), merges=200)
    if kind in ("sdxl", "sd3", "flux"):
        return {"sdxl": _tiny_sdxl, "sd3": _tiny_sd3, "flux": _tiny_flux}[kind](tokenizer)
    width = 32
    text_encoder = CLIPTextModel(_tiny_text_config(tokenizer, width, "gelu" if kind == "sd2" else "quick_gelu"))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width, norm_num_groups=8,
        attention_head_dim=(2, 4) if kind == "sd2" else 2,
        use_linear_projection=kind == "sd2",
    )
    return _pipeline(_tiny_vae(), text_encoder, tokenizer, unet, "v_prediction" if kind == "sd2" else "epsilon")


def _tiny_sdxl(tokenizer: CLIPTokenizer) -> StableDiffusionXLPipeline:
    """SDXL's layout in small: the UNet's cross-attention reads both encoders' hidden states side by side
    (32 + 48: of different widths, as SDXL's, which is how single-file loading tells them apart), its added
    embedding the second encoder's pooled projection (32) and six size numbers."""
    text_encoder = CLIPTextModel(_tiny_text_config(tokenizer, 32, "quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config(tokenizer, 48, "gelu", projection_dim=32))
    time_width = 8
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), use_linear_projection=True,
        cross_attention_dim=80, norm_num_groups=8, addition_embed_type="text_time",
        addition_time_embed_dim=time_width, projection_class_embeddings_input_dim=6 * time_width + 32,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=_scheduler("epsilon"), force_zeros_for_empty_prompt=True,
    )


def _tiny_sd3(tokenizer: CLIPTokenizer) -> StableDiffusion3Pipeline:
    """SD3's layout in small: both CLIP encoders' penultimate states side by side (32 + 32), zero-padded to T5's
    width (64), then T5's states after them in the joint sequence; their pooled projections (32 + 32) and the
    step condition the blocks. The VAE's scale and shift are SD3's."""
    t5_tokenizer = build_t5_tokenizer()
    clip = [CLIPTextModelWithProjection(_tiny_text_config(tokenizer, 32, "gelu", projection_dim=32)) for _ in "ab"]
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=16,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_vae(scaling_factor=1.5305, shift_factor=0.0609), text_encoder=clip[0], tokenizer=tokenizer,
        text_encoder_2=clip[1], tokenizer_2=tokenizer, text_encoder_3=_tiny_t5(t5_tokenizer, 64),
        tokenizer_3=t5_tokenizer,
    )


def _tiny_flux(tokenizer: CLIPTokenizer) -> FluxPipeline:
    """FLUX.1-dev's layout in small: two double-stream blocks (text and image tokens, each with its own
    projections, in one joint attention), one single-stream block, T5's states (64 wide) as the text tokens,
    CLIP's pooled output (32) and the distilled guidance as conditioning; latents packed 2x2 (4 channels -> 16).
    The VAE's scale and shift and the scheduler's resolution-dependent shift are FLUX's."""
    t5_tokenizer = build_t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(
        transformer=transformer, scheduler=scheduler, vae=_tiny_vae(scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=CLIPTextModel(_tiny_text_config(tokenizer, 32, "quick_gelu")), tokenizer=tokenizer,
        text_encoder_2=_tiny_t5(t5_tokenizer, 64), tokenizer_2=t5_tokenizer,
    )


def sd15_pipeline(size: str = "full", seed: int = 0) -> StableDiffusionPipeline:
    """SD 1.5's architecture with random weights: "full" at SD 1.5's exact size, "tiny" as `tiny_pipeline`.

    The tokenizer is the embedded model's (its ids are below CLIP's vocabulary size).
    """
    assert size in ("full", "tiny")
    if size == "tiny":
        return tiny_pipeline("sd15", seed)
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(EMBEDDED / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(  # CLIP ViT-L/14's text tower
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=512, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
    )
    return _pipeline(vae, text_encoder, tokenizer, unet, "epsilon")


def sdxl_pipeline(size: str = "full", seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL base's architecture with random weights ("full": UNet 2.6 B, CLIP ViT-L/14 and OpenCLIP ViT-bigG
    text encoders; about 14 GB in fp32, for a GPU), or `tiny_pipeline("sdxl")`. The embedded model's tokenizer."""
    assert size in ("full", "tiny")
    if size == "tiny":
        return tiny_pipeline("sdxl", seed)
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(EMBEDDED / "tokenizer")
    ids = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                num_attention_heads=12, hidden_act="quick_gelu", **ids))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu",
        projection_dim=1280, **ids))
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), use_linear_projection=True, cross_attention_dim=2048,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=1024, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
        scaling_factor=0.13025,
    )
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
                                     scheduler=_scheduler("epsilon"))


def _scheduler(prediction_type: str) -> DDIMScheduler:
    """DDIM on SD's noise schedule."""
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )


def _pipeline(vae, text_encoder, tokenizer, unet, prediction_type: str) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_scheduler(prediction_type),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
