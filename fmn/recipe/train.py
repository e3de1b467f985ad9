"""The recipe that trains the embedded model and its judge, resumable at every stage.

    python -m fmn.recipe train [--out assets/fmn-shapes] [--work runs/fmn-shapes]

Stages, each skipped when its result exists in the work folder, each checkpointed:
1. render the training scenes;  2. build the tokenizer;  3. train the VAE;
4. encode the scenes to latents;  5. train the judge on renders and VAE reconstructions;
6. train the text encoder and UNet together (classifier-free guidance by dropped captions),
   exporting the diffusers folder every `export_every` steps so a usable model always exists.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..world.judge import Judge, JudgeNet, scene_targets
from ..world.render import render
from ..world.scenes import TRAIN_TEMPLATES, Scene, caption, describe_world, sample_scene
from ..world.tokenizer import build_tokenizer
from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["TrainConfig", "train"]


@dataclass
class TrainConfig:
    out: str = "assets/fmn-shapes"  # the shipped diffusers folder
    judge_out: str = "assets/fmn-shapes-judge"
    work: str = "runs/fmn-shapes"  # data and checkpoints, not shipped
    seed: int = 0
    n_scenes: int = 40_000
    two_objects: float = 0.3  # share of training scenes with two objects (held-out prompts: 0.3)
    vae_steps: int = 3_000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    judge_steps: int = 1_000
    judge_batch: int = 64
    judge_lr: float = 2e-3
    unet_steps: int = 2_400
    unet_batch: int = 32
    unet_lr: float = 4e-4  # from scratch; warm-up then cosine to 10 %
    unet_minutes: float = 0.0  # > 0: a time budget that sets unet_steps from the measured speed (printed, to re-run)
    captions_per_scene: int = 8  # tokenized once, so a training step does no text work on the CPU
    warmup: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # for classifier-free guidance
    checkpoint_every: int = 250
    export_every: int = 800
    threads: int = 2
    init_from: str = ""  # a shipped model folder to go on training from (its VAE, tokenizer, judge and weights)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _log(stage: str, step: int, total: int, loss: float, start: float) -> None:
    print(f"[{stage}] step {step}/{total} loss {loss:.4f} elapsed {time.time() - start:.0f}s", flush=True)


# 1. Data ------------------------------------------------------------------------------

def _render_one(args: tuple[int, int, float]) -> tuple[np.ndarray, dict]:
    seed, index, two_objects = args
    scene = sample_scene(random.Random(seed * 1_000_003 + index), "train", two_objects)
    image, _ = render(scene, seed=index)
    return np.asarray(image), scene.to_dict()


def render_dataset(cfg: TrainConfig, work: Path) -> tuple[np.ndarray, list[Scene]]:
    images_path, scenes_path = work / "images.safetensors", work / "scenes.json"
    if not scenes_path.exists():
        print(f"[data] rendering {cfg.n_scenes} scenes", flush=True)
        with Pool(cfg.threads) as pool:
            rows = pool.map(_render_one, [(cfg.seed, i, cfg.two_objects) for i in range(cfg.n_scenes)], chunksize=256)
        save_file({"images": torch.from_numpy(np.stack([r[0] for r in rows]))}, images_path)
        scenes_path.write_text(json.dumps([r[1] for r in rows]))
    images = load_file(images_path)["images"].numpy()
    return images, [Scene.from_dict(d) for d in json.loads(scenes_path.read_text())]


def _to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, 64, 64, 3) -> float (B, 3, 64, 64) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


# 3. VAE -------------------------------------------------------------------------------

def make_vae() -> AutoencoderKL:
    """Stable Diffusion's AutoencoderKL, small: 64x64x3 <-> 16x16x4."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
    )


def train_loop(name, cfg, work, params, total, lr, step_fn, modules, start_lr_schedule=None):
    """The one training loop of the recipe: AdamW, checkpoints, resume, logging.

    ``step_fn(step, rng)`` returns the loss; ``modules`` maps names to the nn.Modules whose
    state is checkpointed. Returns when ``total`` steps are done.
    """
    ckpt = work / f"{name}.ckpt.safetensors"
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    step = 0
    if ckpt.exists():
        tensors, info = load_checkpoint(ckpt, opt)
        for key, module in modules.items():
            module.load_state_dict({k[len(key) + 1:]: v for k, v in tensors.items() if k.startswith(key + ".")})
        step = info["step"]
        print(f"[{name}] resumed at step {step}", flush=True)
    rng = np.random.default_rng(cfg.seed + step)
    start = time.time()
    while step < total:
        for group in opt.param_groups:
            group["lr"] = lr * (start_lr_schedule(step) if start_lr_schedule else 1.0)
        loss = step_fn(step, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        yield step  # the caller's per-step work (EMA, export) runs here, before the checkpoint
        if step % 50 == 0:
            _log(name, step, total, loss.item(), start)
        if step % cfg.checkpoint_every == 0 or step == total:
            tensors = {f"{key}.{k}": v for key, m in modules.items() for k, v in m.state_dict().items()}
            save_checkpoint(ckpt, tensors, opt, {"step": step})


def train_vae(cfg: TrainConfig, work: Path, images: np.ndarray) -> AutoencoderKL:
    out = work / "vae"
    if (out / "config.json").exists():
        return AutoencoderKL.from_pretrained(out).float()
    device = _device()
    vae = make_vae().to(device).train()

    def step_fn(step, rng):
        x = _to_unit(images[rng.integers(0, len(images), cfg.vae_batch)]).to(device)
        posterior = vae.encode(x).latent_dist
        # the mean, not a sample: converges far faster, and only means are used
        recon = vae.decode(posterior.mean).sample
        return (recon - x).abs().mean() + (recon - x).pow(2).mean() + 1e-6 * posterior.kl().mean()

    lr = lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / cfg.vae_steps))  # noqa: E731  cosine to 10 %
    for _ in train_loop("vae", cfg, work, list(vae.parameters()), cfg.vae_steps, cfg.vae_lr, step_fn, {"vae": vae},
                         lr):
        pass
    vae.eval().cpu().save_pretrained(out)
    return vae


# 4. Latents ---------------------------------------------------------------------------

@torch.no_grad()
def encode_dataset(work: Path, vae: AutoencoderKL, images: np.ndarray) -> tuple[torch.Tensor, float]:
    """Latent means of every scene and the scaling factor that gives them unit std."""
    path = work / "latents.safetensors"
    if not path.exists():
        vae = vae.to(_device()).eval()
        means = [vae.encode(_to_unit(chunk).to(vae.device)).latent_dist.mean.cpu()
                 for chunk in np.array_split(images, max(1, len(images) // 256))]
        latents = torch.cat(means).contiguous()
        save_file({"latents": latents, "scale": torch.tensor(1.0 / latents.std().item())}, path)
    data = load_file(path)
    return data["latents"], float(data["scale"])


@torch.no_grad()
def reconstruct(work: Path, vae: AutoencoderKL, latents: torch.Tensor) -> np.ndarray:
    """VAE reconstructions of the scenes, so the judge learns what generated images look like."""
    path = work / "recon.safetensors"
    if not path.exists():
        vae = vae.to(_device()).eval()
        recon = [vae.decode(chunk.to(vae.device)).sample.cpu() for chunk in latents.split(256)]
        rgb = ((torch.cat(recon).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
        save_file({"recon": rgb.contiguous()}, path)
    return load_file(path)["recon"].numpy()


# 5. Judge -----------------------------------------------------------------------------

def train_judge(cfg: TrainConfig, work: Path, images: np.ndarray, recon: np.ndarray, scenes: list[Scene]) -> Judge:
    out = work / "judge"
    if (out / "config.json").exists():
        return Judge.load(out)
    device = _device()
    net = JudgeNet().to(device).train()
    targets = [scene_targets(s) for s in scenes]

    def step_fn(step, rng):
        idx = rng.integers(0, len(images), cfg.judge_batch)
        use_recon = rng.random(cfg.judge_batch) < 0.5
        batch = np.where(use_recon[:, None, None, None], recon[idx], images[idx])
        x = _to_unit(batch)
        x = x + 0.03 * torch.randn_like(x)  # a little noise: generated images are not clean
        t = {k: torch.stack([targets[i][k] for i in idx]).to(device) for k in targets[0]}
        return net.loss(x.to(device), t)

    lr = lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.judge_steps))  # noqa: E731
    for _ in train_loop("judge", cfg, work, list(net.parameters()), cfg.judge_steps, cfg.judge_lr, step_fn,
                         {"judge": net}, lr):
        pass
    judge = Judge(net.cpu())
    judge.save(out)
    return judge


# 6. Text encoder + UNet ---------------------------------------------------------------

def make_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A small CLIP text encoder (3 layers, width 128) over the world's vocabulary."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def make_unet() -> UNet2DConditionModel:
    """Stable Diffusion's UNet layout, small: cross-attention down/up blocks and mid block at 8x8 and 4x4."""
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=128, attention_head_dim=4, norm_num_groups=16,
    )


def make_scheduler() -> DDPMScheduler:
    """Stable Diffusion's noise schedule (scaled linear, 0.00085 to 0.012, 1000 steps)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False)


def export(cfg: TrainConfig, vae, text_encoder, tokenizer, unet, scale: float, judge_dir: Path) -> Path:
    """Writes the diffusers folder (fp16 safetensors), world.json beside it, and the judge."""
    out = Path(cfg.out)
    vae.register_to_config(scaling_factor=scale)
    scheduler = DDIMScheduler.from_config(make_scheduler().config, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)  # half the bytes in the repository
    pipe.to(torch.float32)
    # transformers loads a model in the dtype its config records, diffusers in fp32: record fp32, so that a
    # plain `StableDiffusionPipeline.from_pretrained(out)` gets one dtype throughout
    te_config = out / "text_encoder" / "config.json"
    te_config.write_text(json.dumps(json.loads(te_config.read_text()) | {"dtype": "float32"}, indent=2, sort_keys=True)
                         + "\n")
    (out / "world.json").write_text(json.dumps(describe_world(), indent=1))
    Judge.load(judge_dir).save(cfg.judge_out)
    return out


def caption_bank(scenes: list[Scene], tokenizer: CLIPTokenizer, per_scene: int, seed: int) -> torch.Tensor:
    """Token ids of `per_scene` captions of every scene, (scenes, per_scene, 77): tokenizing once, not every step,
    keeps a GPU step from waiting on the CPU. Templates, synonyms and night wordings vary between the captions."""
    rng = random.Random(seed)
    texts = [caption(scene, rng.choice(TRAIN_TEMPLATES), rng) for scene in scenes for _ in range(per_scene)]
    ids = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt").input_ids
    return ids.view(len(scenes), per_scene, -1)


def _steps_in(minutes: float, step_fn, params, batches: int = 20) -> int:
    """How many training steps fit in `minutes`, from the time of a few forward-backward passes (not applied)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    rng = np.random.default_rng(0)
    step_fn(0, rng).backward()  # warm-up: kernels, allocator
    sync()
    start = time.time()
    for _ in range(batches):
        step_fn(0, rng).backward()
    sync()
    for p in params:
        p.grad = None
    per_step = (time.time() - start) / batches * 1.15  # + the optimizer step and the EMA
    return max(1, int(minutes * 60 / per_step))


def train_denoiser(cfg, work, tokenizer, vae, latents, scale, scenes, judge_dir) -> None:
    device = _device()
    text_encoder = make_text_encoder(tokenizer).to(device).train()
    unet = make_unet().to(device).train()
    if cfg.init_from and not (work / "denoiser.ckpt.safetensors").exists():  # continue a shipped model
        text_encoder.load_state_dict(
            CLIPTextModel.from_pretrained(Path(cfg.init_from) / "text_encoder").float().state_dict())
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(Path(cfg.init_from) / "unet").float().state_dict())
        print(f"[denoiser] starting from the weights in {cfg.init_from}", flush=True)
    ema = {f"te.{k}": v.detach().clone() for k, v in text_encoder.state_dict().items()}
    ema |= {f"unet.{k}": v.detach().clone() for k, v in unet.state_dict().items()}
    ema_holder = torch.nn.Module()
    for i, (k, v) in enumerate(ema.items()):
        ema_holder.register_buffer(f"b{i}", v)
    alphas = make_scheduler().alphas_cumprod.to(device)
    latents = (latents * scale).to(device)
    bank = caption_bank(scenes, tokenizer, cfg.captions_per_scene, cfg.seed).to(device)
    empty = tokenizer([""], padding="max_length", return_tensors="pt").input_ids.to(device)
    params = list(text_encoder.parameters()) + list(unet.parameters())
    live = list(text_encoder.state_dict().values()) + list(unet.state_dict().values())
    shadow = list(ema_holder.buffers())
    floats = [i for i, s in enumerate(shadow) if s.dtype.is_floating_point]

    def step_fn(step, rng):
        n = cfg.unet_batch
        idx = torch.from_numpy(rng.integers(0, len(latents), n)).to(device)
        which = torch.from_numpy(rng.integers(0, cfg.captions_per_scene, n)).to(device)
        dropped = torch.from_numpy(rng.random(n) < cfg.caption_dropout).to(device)
        ids = torch.where(dropped[:, None], empty, bank[idx, which])
        z0 = latents[idx]
        noise = torch.randn_like(z0)
        t = torch.randint(0, 1000, (n,), device=device)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        pred = unet(zt, t, text_encoder(ids).last_hidden_state).sample
        return (pred - noise).pow(2).mean()

    if cfg.unet_minutes > 0:
        cfg.unet_steps = _steps_in(cfg.unet_minutes, step_fn, params)
        print(f"[denoiser] {cfg.unet_minutes:g} min on {device} at batch {cfg.unet_batch}: "
              f"--unet-steps {cfg.unet_steps}", flush=True)

    def schedule(step):
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / (cfg.unet_steps - cfg.warmup)))

    modules = {"te": text_encoder, "unet": unet, "ema": ema_holder}
    for step in train_loop("denoiser", cfg, work, params, cfg.unet_steps, cfg.unet_lr, step_fn, modules, schedule):
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_([shadow[i] for i in floats], [live[i] for i in floats], 1 - decay)
        if step % cfg.export_every == 0 or step == cfg.unet_steps:
            _export_ema(cfg, vae, tokenizer, text_encoder, unet, shadow, scale, judge_dir, step)


def _export_ema(cfg, vae, tokenizer, text_encoder, unet, shadow, scale, judge_dir, step) -> None:
    """Exports a copy of the models holding the EMA weights, then reports a quick quality check."""
    te_ema, unet_ema = make_text_encoder(tokenizer), make_unet()
    n_te = len(text_encoder.state_dict())
    te_ema.load_state_dict(dict(zip(text_encoder.state_dict(), [s.cpu() for s in shadow[:n_te]])))
    unet_ema.load_state_dict(dict(zip(unet.state_dict(), [s.cpu() for s in shadow[n_te:]])))
    out = export(cfg, vae.cpu().eval(), te_ema.eval(), tokenizer, unet_ema.eval(), scale, judge_dir)
    print(f"[denoiser] exported step {step} to {out}", flush=True)
    from .check import run_check

    run_check(out, cfg.judge_out, n_prompts=60, seed=step, grid_path=Path(cfg.work) / f"grid-{step}.png")


def train(cfg: TrainConfig) -> None:
    """Runs every stage of the recipe, resuming whatever was done before."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 on a GPU: fp32 weights, tensor-core speed
    work = Path(cfg.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    if cfg.init_from:  # reuse the shipped VAE, tokenizer and judge instead of training them again
        for part, source in (("vae", Path(cfg.init_from) / "vae"), ("tokenizer", Path(cfg.init_from) / "tokenizer"),
                             ("judge", Path(cfg.judge_out))):
            if not (work / part).exists():
                shutil.copytree(source, work / part)
    images, scenes = render_dataset(cfg, work)  # 1
    tokenizer = build_tokenizer(work / "tokenizer") if not (work / "tokenizer" / "vocab.json").exists() \
        else CLIPTokenizer.from_pretrained(work / "tokenizer")  # 2
    vae = train_vae(cfg, work, images)  # 3
    latents, scale = encode_dataset(work, vae, images)  # 4
    train_judge(cfg, work, images, reconstruct(work, vae, latents), scenes)  # 5
    train_denoiser(cfg, work, tokenizer, vae, latents, scale, scenes, work / "judge")  # 6
    print("[done] the embedded model is in", cfg.out, flush=True)
