#!/usr/bin/env bash
# The equal-budget comparison on one GPU, sized for one accelerator session (the device tool:
# 15 minutes in all, start-up included): prepare Beauty, build SIDs, then train the GPU-size
# experiments (reference masked diffusion, tiger, sasrec) for MINUTES each of training wall
# time, one after another on the same GPU, evaluate each on the whole test split and write
# OUT/results.md and OUT/curves.html (bench/quality/bench_quality.py).
#   bench/quality/gpu_compare.sh [OUT_DIR]
# Environment: BEAUTY (folder with Beauty.txt + items.jsonl.gz, default ../shared/data/amazon_beauty),
# MINUTES (2.5), EXPERIMENTS (discrete_diffusion_train,tiger,sasrec), PYTHON. On the device machine
# nothing outside can be reached: carry the Beauty files and any missing wheels (device README).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/madrec-gpu-compare}
BEAUTY=${BEAUTY:-../shared/data/amazon_beauty}
MINUTES=${MINUTES:-2.5}
EXPERIMENTS=${EXPERIMENTS:-discrete_diffusion_train,tiger,sasrec}
PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU: CPU run"
[[ -d "$OUT/beauty" ]] || "$PY" -m madrec.cli prepare-data --dataset sequences --source "$BEAUTY/Beauty.txt" \
    --items "$BEAUTY/items.jsonl.gz" --out "$OUT/beauty"
[[ -f "$OUT/sids/sids.pt" ]] || "$PY" -m madrec.cli build-sids --data "$OUT/beauty" --out "$OUT/sids"
"$PY" bench/quality/bench_quality.py --data "$OUT/beauty" --sids "$OUT/sids/sids.pt" --budget "${MINUTES}m" \
    --experiments "$EXPERIMENTS" --threads 0 --out "$OUT" --rerun \
    optim.scheduler.warmup_steps=200 trainer.val_every_n_steps=300 trainer.checkpoint_every_n_steps=300 \
    trainer.early_stopping_patience=0 eval.val_max_users=5000 "$@"
