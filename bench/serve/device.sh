#!/usr/bin/env bash
# The serving load test on a quiet machine with many cores (the shared 2-core dev machine is
# saturated by other jobs): CPU serving (1 torch thread per server, as on a small pod), then
# GPU serving. Python packages missing there are installed from wheels in .whl (see
# bench/serve/results.md); the checkpoint and prepared Beauty folder are in .benchdata.
#   bench/serve/device.sh OUT_DIR
set -uo pipefail
OUT=${1:-.}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
uptime | tee "$OUT/uptime.txt"; nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 bench/serve/load_test.py --ckpt .benchdata/beauty_tiny.ckpt --data .benchdata/beauty --device cpu \
    --max-seconds 330 --logs /tmp/logs_cpu > "$OUT/serve_cpu.json" 2> "$OUT/serve_cpu.err"
echo "cpu rc=$?"; tail -3 "$OUT/serve_cpu.err"
python3 bench/serve/load_test.py --ckpt .benchdata/beauty_tiny.ckpt --data .benchdata/beauty --device cuda \
    --requests-c1 200 --ab-requests 500 --rss-requests 3000 --rss-rounds 1 --max-seconds 150 --logs /tmp/logs_gpu > "$OUT/serve_gpu.json" 2> "$OUT/serve_gpu.err"
echo "gpu rc=$?"; tail -3 "$OUT/serve_gpu.err"
uptime | tee -a "$OUT/uptime.txt"
