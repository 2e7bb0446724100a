#!/usr/bin/env bash
# The one prepared command for a lent GPU (see tools/gpu_run.py for the plan and its sizes).
#   here, once:      python tools/gpu_run.py --dry-run && python tools/gpu_run.py --prepare
#   on the GPU:      device run: command "bash tools/gpu_run.sh", carry [".gpu-data"], timeout_s 600
#   afterwards:      commit $OUT's results under data/reference/gpu-<device>-<date>/ with its GPU_RUN.md
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f .gpu-data/manifest.json ]; then
    echo "error: .gpu-data is missing; run 'python tools/gpu_run.py --prepare' on the CPU machine first" >&2
    exit 2
fi
nvidia-smi -L || true
exec python3 tools/gpu_run.py --execute --out "${OUT:-gpu-out}"
