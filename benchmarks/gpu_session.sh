#!/usr/bin/env bash
# A lent GPU's work (issue #21) in one call of the device tool; every stage is bounded, so a stage
# that runs long or fails leaves the later ones their time. In order:
#   1. the quality gate of the shipped model (python -m fmn.recipe check --n 240);
#   2. python -m fmn bench speed --arch sd15 --random-weights: every method, both recipes;
#   3. a torch.profiler profile of FMN's erasure;
#   4. the denoiser goes on from the shipped weights for the minutes left, on more two-object scenes;
#   5. the same check on the new model; the model, the grids and the log go to OUT as model.tgz.
# Usage (device tool, repo root; .whl holds the pinned diffusers/transformers/peft wheels):
#   bash benchmarks/gpu_session.sh [SECONDS]          # OUT is the device tool's output folder
# A CPU dry run of the same stages, small:
#   ARCH=tiny CHECK_N=40 N_SCENES=400 UNET_BATCH=32 MINUTES=0.2 OUT=/tmp/out bash benchmarks/gpu_session.sh 900
set -u
budget=${1:-560}
arch=${ARCH:-sd15}
work=${WORK:-/tmp/gpu-session}
mkdir -p "$work"
source "$(dirname "$0")/gpu_prelude.sh"

stage "1. check, shipped model"
timeout 120 python3 -m fmn.recipe check --n "${CHECK_N:-240}" --grid "$work/check-before.png"

stage "2. bench speed"
timeout 300 python3 -m fmn bench speed --arch "$arch" --random-weights --reference-steps 10 \
    --json "$OUT/speed.json" --out "$OUT"

stage "3. profile fmn"
timeout 75 python3 -m fmn bench profile --arch "$arch" --random-weights --method fmn --steps 8 --out "$OUT/profile-fmn.txt" \
    > /dev/null

stage "4. train"
# what the training command spends besides its steps: render, tokenize, encode, export, quick check (~100 s);
# then the check after (~40 s) and the archive
minutes=${MINUTES:-$(python3 -c "print(max(0.5, ($(left) - 150) / 60))")}
cp -r assets/fmn-shapes-judge "$work/fmn-shapes-judge"
timeout $(($(left) - 60)) python3 -m fmn.recipe train --init-from assets/fmn-shapes --out "$work/fmn-shapes" \
    --judge-out "$work/fmn-shapes-judge" --work "$work/run" --n-scenes "${N_SCENES:-24000}" --two-objects 0.5 \
    --threads 16 --unet-batch "${UNET_BATCH:-1024}" --unet-lr 3e-4 --warmup 100 --unet-minutes "$minutes" \
    --export-every 1000000 --checkpoint-every 1000000

stage "5. check, new model"
timeout $(($(left) - 10)) python3 -m fmn.recipe check --model "$work/fmn-shapes" --judge "$work/fmn-shapes-judge" \
    --n "${CHECK_N:-240}" --grid "$work/check-after.png"
cp "$work"/run/config.json "$work/train-config.json" 2>/dev/null
tar czf "$OUT/model.tgz" -C "$work" fmn-shapes fmn-shapes-judge train-config.json \
    check-before.png check-before.txt check-after.png check-after.txt
stage "done"
sleep 1  # lets tee finish the log
