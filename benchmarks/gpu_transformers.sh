#!/usr/bin/env bash
# A lent GPU's work for issue #41 (SD3 and FLUX) in one call of the device tool; every stage is bounded, so a stage
# that runs long or fails leaves the later ones their time (what it printed stays in log.txt):
#   1. python -m fmn bench speed --arch sd3 --random-weights: SD3-medium's shapes in bf16, every method that runs
#      on transformers (esd-x, uce, rece, text-map), and one image's generation without and with the heatmap trace;
#   2. the same on FLUX.1-dev's shapes (targets: the closed forms <= 2 s, the trace <= 20 %), the trained methods
#      for 20 steps (the table's per-step time projects their defaults).
# The closed forms run first: a trained method that runs out of memory or time leaves their rows written.
# Usage (device tool, repo root; .whl holds the pinned diffusers/transformers/peft wheels):
#   bash benchmarks/gpu_transformers.sh [SECONDS]          # OUT is the device tool's output folder
# A CPU dry run on the tiny models:  TINY=-tiny STEPS=2 OUT=/tmp/out bash benchmarks/gpu_transformers.sh 600
set -u
budget=${1:-540}
steps=${STEPS:+--steps $STEPS}
methods=uce,rece,text-map,esd-x
source "$(dirname "$0")/gpu_prelude.sh"

stage "1. bench speed: SD3-medium's shapes"
timeout 200 python3 -m fmn bench speed --arch "sd3${TINY:-}" --random-weights --methods "$methods" $steps \
    --json "$OUT/speed-sd3.json" --out "$OUT/sd3"

stage "2. bench speed: FLUX.1-dev's shapes"
timeout $(($(left) - 5)) python3 -m fmn bench speed --arch "flux${TINY:-}" --random-weights --methods "$methods" \
    --steps "${STEPS:-20}" --json "$OUT/speed-flux.json" --out "$OUT/flux"
stage "done"
sleep 1  # lets tee finish the log
