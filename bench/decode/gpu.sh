#!/usr/bin/env bash
# Decode throughput (users/s) and single-user latency on one GPU over the WHOLE Beauty test
# split, madrec's decoder at reveal 1/2/4 positions per call; the reference decoder on the
# first 2,000 users (it is slow). Needs a trained checkpoint and the prepared data:
#   bench/decode/gpu.sh CKPT DATA_DIR [OUT_JSON]
# Appends a section to bench/decode/results.md and writes OUT_JSON (default decode_gpu.json).
set -euo pipefail
CKPT=${1:?checkpoint path}
DATA=${2:?prepared Beauty folder}
OUT=${3:-decode_gpu.json}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" "$HERE/bench_decode.py" --ckpt "$CKPT" --data "$DATA" --device cuda --users 0 \
    --reference-users 2000 --batch-sizes 256,1024,4096 --reveal 1,2,4 --threads 16 \
    --json "$OUT" --append "$HERE/results.md"
