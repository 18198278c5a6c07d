#!/usr/bin/env bash
# GPU parity run of the reference configuration (method.md §5–6) on Amazon Beauty, sized for one
# accelerator session (the device tool: 15 minutes in all): prepare Beauty, build SIDs, train
# experiment=discrete_diffusion_train in bf16 for MINUTES of wall time (the LR warms up over
# WARMUP steps and decays over the time budget), evaluate the whole test split, print
# Recall/NDCG@5/10, tokens/s and MFU.
#   bench/quality/gpu.sh [OUT_DIR] [key=value ...]      # overrides go to `madrec train`, e.g.
#   COLLABORATIVE_WEIGHT=0.5 bench/quality/gpu.sh /tmp/g model.embedding_init=cooccurrence
#   (the CPU runs' SIDs and token-table start: on a CPU they took the reference objective from
#   0.015 to 0.0545 validation Recall@10 in 30 minutes, bench/train/results.md)
# Environment: BEAUTY (folder with Beauty.txt + items.jsonl.gz, default ../shared/data/amazon_beauty),
# MINUTES (8), WARMUP (300), COMPILE (false), PEAK_TFLOPS (989: H100/H200 dense bf16), PYTHON.
# On the device machine nothing outside can be reached: carry the Beauty files and any missing
# wheels in the working tree (see /work/.library/device/README.md); madrec runs from src/.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/madrec-gpu}; shift $(( $# > 0 ? 1 : 0 ))
BEAUTY=${BEAUTY:-../shared/data/amazon_beauty}
MINUTES=${MINUTES:-8}
WARMUP=${WARMUP:-300}
COMPILE=${COMPILE:-false}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
MADREC=("$PY" -m madrec.cli)
mkdir -p "$OUT"
start=$(date +%s)
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU: CPU run"
[[ -d "$OUT/beauty" ]] || "${MADREC[@]}" prepare-data --dataset sequences --source "$BEAUTY/Beauty.txt" \
    --items "$BEAUTY/items.jsonl.gz" --out "$OUT/beauty"
# the reference: SIDs from item text only, as in the method (the CPU defaults add co-occurrence)
[[ -f "$OUT/sids/sids.pt" ]] || "${MADREC[@]}" build-sids --data "$OUT/beauty" --out "$OUT/sids" \
    --collaborative-weight "${COLLABORATIVE_WEIGHT:-0}"
echo "data and SIDs ready after $(( $(date +%s) - start )) s"
rm -rf "$OUT/run"
"${MADREC[@]}" train experiment=discrete_diffusion_train data_dir="$OUT/beauty" sid_data_path="$OUT/sids/sids.pt" \
    output_dir="$OUT/run" trainer.max_minutes="$MINUTES" trainer.max_steps=1000000 \
    optim.scheduler.warmup_steps="$WARMUP" trainer.compile="$COMPILE" trainer.val_every_n_steps=500 \
    trainer.checkpoint_every_n_steps=500 trainer.early_stopping_patience=0 eval.val_max_users=5000 \
    trainer.progress_bar=false "$@" 2>&1 | grep --line-buffered -v "^decode\|it/s\]$" || true
"$PY" - "$OUT/run" "$PEAK_TFLOPS" <<'PYEOF'
import csv, json, sys
from pathlib import Path
from madrec.checkpoint import load_checkpoint
run, peak = Path(sys.argv[1]), float(sys.argv[2])
s = json.loads((run / "summary.json").read_text())
rows = list(csv.DictReader((run / "metrics.csv").open()))
tps = [float(r["train/tokens_per_s"]) for r in rows if r.get("train/tokens_per_s")]
model = load_checkpoint(run / "checkpoints" / "best.ckpt").model
flops = model.flops_per_token(s["max_len"]) * s["tokens_seen"] / max(s["train_seconds"], 1e-9)
print("\n| metric | value |\n|---|---|")
for k in ("test/recall@5", "test/ndcg@5", "test/recall@10", "test/ndcg@10", "test/invalid_sid_rate", "test/duplicate_rate"):
    print(f"| {k} | {s.get(k, float('nan')):.4f} |")
print(f"| steps | {s['global_step']} (best {s.get('best_step')}) |")
print(f"| training seconds | {s['train_seconds']:.0f} |")
print(f"| tokens/s (median of logged windows) | {sorted(tps)[len(tps) // 2] if tps else float('nan'):,.0f} |")
print(f"| model TFLOP/s (real tokens, 6N + attention) | {flops / 1e12:.2f} |")
print(f"| MFU vs {peak:g} TFLOP/s | {flops / 1e12 / peak:.2%} |")
PYEOF
echo "total wall time $(( $(date +%s) - start )) s"
