#!/usr/bin/env bash
# Training throughput of the reference model (method.md §5, ≈7M parameters) on one GPU at
# batch 2048: tokens/s and model FLOPs utilisation, bf16 autocast, without and with
# torch.compile. Real Beauty training rows when a prepared folder and SIDs are given,
# otherwise synthetic rows with Beauty-like lengths:
#   bench/train/gpu.sh [DATA_DIR SIDS] [OUT_JSON]
# Appends rows to bench/train/results.md and JSON lines to OUT_JSON (default train_gpu.json).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python}
DATA=()
if [[ $# -ge 2 ]]; then DATA=(--data "$1" --sids "$2"); shift 2; fi
OUT=${1:-train_gpu.json}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for extra in "" "--compile"; do
    "$PY" "$HERE/bench_train.py" --model reference --batch-size 2048 --device cuda --precision bf16 \
        --steps 50 --warmup 10 ${extra} "${DATA[@]}" --json "$OUT" --append "$HERE/results.md"
done
