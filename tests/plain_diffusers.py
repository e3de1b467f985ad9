"""What a user does in plain diffusers, importing nothing from fmn: load the model with no arguments,
generate, and load an exported erasure (LoRA, kohya LoRA, merged folder, single file).

    python tests/plain_diffusers.py MODEL_FOLDER --out DIR [--half] [--lora F] [--kohya F] [--merged DIR]
        [--single-file F]

Writes DIR/<variant>-<seed>.png for the base model (``half``: loaded with torch_dtype=torch.float16,
as on a GPU) and each variant given, with the settings
`python -m fmn generate` uses by default (25 steps, guidance 5, one CPU generator per seed).
"""

import argparse
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline


def draw(pipe, prompt, seeds, out, name):
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    images = pipe([prompt] * len(seeds), num_inference_steps=25, guidance_scale=5.0, generator=generators).images
    for seed, image in zip(seeds, images):
        image.save(out / f"{name}-{seed}.png")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--out", required=True)
    parser.add_argument("--prompt", default="a red circle")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--half", action="store_true")
    parser.add_argument("--lora")
    parser.add_argument("--kohya")
    parser.add_argument("--merged")
    parser.add_argument("--single-file")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    pipe = StableDiffusionPipeline.from_pretrained(args.model)  # no other argument
    draw(pipe, args.prompt, args.seeds, out, "base")
    if args.half:
        draw(StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float16), args.prompt, args.seeds,
             out, "half")
    for name, lora in (("lora", args.lora), ("kohya", args.kohya)):
        if lora:
            pipe.load_lora_weights(lora)
            draw(pipe, args.prompt, args.seeds, out, name)
            pipe.unload_lora_weights()
    if args.merged:
        draw(StableDiffusionPipeline.from_pretrained(args.merged), args.prompt, args.seeds, out, "merged")
    if args.single_file:
        single = StableDiffusionPipeline.from_single_file(args.single_file, config=args.model, local_files_only=True)
        draw(single, args.prompt, args.seeds, out, "single-file")


if __name__ == "__main__":
    main()
