#!/usr/bin/env bash
# A lent GPU's work for issue #17 (robust and mass erasure) in one call of the device tool; every stage is
# bounded, so a stage that runs long leaves the later ones their time (what it printed stays in log.txt):
#   1. python -m fmn bench speed --arch sd15 --random-weights --recipe ours: RECE, and FMN and the
#      text-encoder method plain and in adversarial mode;
#   2. the same for a mass erasure: 8 concepts in one patch, UCE and RECE;
#   3. python -m fmn bench quality --mass on the embedded model (UCE, RECE, text-encoder, FMN, ESD-x).
# Usage (device tool, repo root; .whl holds the pinned diffusers/transformers/peft wheels):
#   bash benchmarks/gpu_robust.sh [SECONDS]          # OUT is the device tool's output folder
# A CPU dry run, small:  ARCH=tiny STEPS=2 PROMPTS=1 OUT=/tmp/out bash benchmarks/gpu_robust.sh 900
set -u
budget=${1:-540}
arch=${ARCH:-sd15}
steps=${STEPS:+--steps $STEPS}
source "$(dirname "$0")/gpu_prelude.sh"

stage "1. bench speed: rece, adversarial mode"
timeout 210 python3 -m fmn bench speed --arch "$arch" --random-weights --recipe ours --methods rece,fmn,text-encoder \
    --adversarial $steps --json "$OUT/speed-robust.json" --out "$OUT/robust"

stage "2. bench speed: mass erasure, 8 concepts"
timeout 100 python3 -m fmn bench speed --arch "$arch" --random-weights --recipe ours --methods uce,rece \
    --concept triangle,heart,Tobble,Lumina,Vellor,Brusk,night,star --json "$OUT/speed-mass.json" --out "$OUT/mass"

stage "3. bench quality --mass (embedded model)"
timeout $(($(left) - 5)) python3 -m fmn bench quality --mass --methods uce,rece,text-encoder,fmn,esd-x \
    ${PROMPTS:+--prompts $PROMPTS --quick} --out "$OUT/quality"
stage "done"
sleep 1  # lets tee finish the log
