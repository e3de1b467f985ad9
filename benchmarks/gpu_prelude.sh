# Sourced by the GPU scripts (gpu_session.sh, gpu_robust.sh, gpu_transformers.sh): a time budget that every stage is bounded by,
# the log to OUT/log.txt, and the pinned diffusers/transformers/peft wheels (.whl) where the device
# machine's image lacks them. Expects `budget` (seconds) and OUT (the device tool's output folder).
start=$(date +%s)
left() { echo $((budget - ($(date +%s) - start))); }
stage() { echo "=== $1 (at $(($(date +%s) - start)) s, $(left) s left)"; }
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1

if ! python3 -c "import diffusers" 2>/dev/null; then  # the device machine's image: no diffusers, other versions of the rest
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())" || exit 1
