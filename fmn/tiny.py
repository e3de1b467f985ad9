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
``sd3_pipeline("full")`` and ``flux_pipeline("full")`` have SD3-medium's and FLUX.1-dev's shapes, from the
values their diffusers configs and model cards publish (transformers of 2.0 B and 11.9 B parameters).
Weights are random: shapes and code paths are real.
"""

from __future__ import annotations

from contextlib import contextmanager
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

__all__ = ["tiny_pipeline", "sd15_pipeline", "sdxl_pipeline", "sd3_pipeline", "flux_pipeline", "sd3_transformer",
           "flux_transformer"]


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


# SD3-medium's MMDiT (diffusers' SD3Transformer2DModel config): 24 joint blocks of 24 heads x 64, 16 latent channels
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, pos_embed_max_size=192)
# FLUX.1-dev's (FluxTransformer2DModel config): 19 double-stream and 38 single-stream blocks of 24 heads x 128
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))


def sd3_transformer(device: str | torch.device = "cpu") -> SD3Transformer2DModel:
    """SD3-medium's transformer with random weights, made on `device` ("meta": shapes only, no memory)."""
    with torch.device(device):
        return SD3Transformer2DModel(**SD3_MEDIUM)


def flux_transformer(device: str | torch.device = "cpu") -> FluxTransformer2DModel:
    """FLUX.1-dev's transformer with random weights, made on `device` ("meta": shapes only, no memory)."""
    with torch.device(device):
        return FluxTransformer2DModel(**FLUX_DEV)


def _t5_xxl(tokenizer) -> T5EncoderModel:
    """T5 v1.1 XXL's encoder (4.8 B), the text tower SD3 and FLUX read; the vocabulary is T5's."""
    return T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                   feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id))


def _clip(tokenizer, width: int, layers: int, heads: int, act: str, cls=CLIPTextModelWithProjection):
    """A CLIP text tower of the given shape (ViT-L/14: 768 x 12; OpenCLIP bigG: 1280 x 32)."""
    return cls(CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=4 * width,
                              num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                              hidden_act=act, projection_dim=width, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def _vae16(scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    """SD3's and FLUX's VAE: 16 latent channels, no quant convs, 8x down."""
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, sample_size=1024,
                         block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, scaling_factor=scaling_factor,
                         shift_factor=shift_factor, use_quant_conv=False, use_post_quant_conv=False)


@contextmanager
def _made(device: str | torch.device, dtype: torch.dtype):
    """Modules made inside are made on `device` in `dtype`: FLUX in fp32 on a CPU first would not fit an H100."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(default)


def sd3_pipeline(size: str = "full", seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> StableDiffusion3Pipeline:
    """SD3-medium's architecture with random weights ("full": transformer 2.0 B, CLIP-L, CLIP-G and T5-XXL, for a
    GPU: made on `device` in `dtype`), or `tiny_pipeline("sd3")`. The embedded model's tokenizers."""
    assert size in ("full", "tiny")
    if size == "tiny":
        return tiny_pipeline("sd3", seed)
    torch.manual_seed(seed)
    tokenizer, t5_tokenizer = CLIPTokenizer.from_pretrained(EMBEDDED / "tokenizer"), build_t5_tokenizer()
    with _made(device, dtype):
        return StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**SD3_MEDIUM), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=_vae16(1.5305, 0.0609), text_encoder=_clip(tokenizer, 768, 12, 12, "quick_gelu"), tokenizer=tokenizer,
            text_encoder_2=_clip(tokenizer, 1280, 32, 20, "gelu"), tokenizer_2=tokenizer,
            text_encoder_3=_t5_xxl(t5_tokenizer), tokenizer_3=t5_tokenizer)


def flux_pipeline(size: str = "full", seed: int = 0, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> FluxPipeline:
    """FLUX.1-dev's architecture with random weights ("full": transformer 11.9 B, CLIP-L and T5-XXL, for a GPU: made
    on `device` in `dtype`), or `tiny_pipeline("flux")`. The embedded model's tokenizers."""
    assert size in ("full", "tiny")
    if size == "tiny":
        return tiny_pipeline("flux", seed)
    torch.manual_seed(seed)
    tokenizer, t5_tokenizer = CLIPTokenizer.from_pretrained(EMBEDDED / "tokenizer"), build_t5_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    with _made(device, dtype):
        return FluxPipeline(
            transformer=FluxTransformer2DModel(**FLUX_DEV), scheduler=scheduler, vae=_vae16(0.3611, 0.1159),
            text_encoder=_clip(tokenizer, 768, 12, 12, "quick_gelu", CLIPTextModel), tokenizer=tokenizer,
            text_encoder_2=_t5_xxl(t5_tokenizer), tokenizer_2=t5_tokenizer)


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
