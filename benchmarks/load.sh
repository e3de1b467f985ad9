#!/usr/bin/env bash
# The long load run (issue #20): 20 gradio_client sessions on one app.py for 5 minutes, every image
# checked against the same call alone, resident memory before and after. Figures to
# benchmarks/results/load-<device>.json (docs/app.md quotes them). CI runs a short one
# (tests/test_load.py: 10 sessions, 60 s).
# Usage: bash benchmarks/load.sh [SESSIONS] [SECONDS]
set -eu
cd "$(dirname "$0")/.."
device=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
python -m fmn bench load --sessions "${1:-20}" --seconds "${2:-300}" --json "benchmarks/results/load-$device.json"
