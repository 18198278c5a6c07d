"""Wall time of the embedded default, `make run`, end to end and per step.

    .venv/bin/python bench/pipeline/bench_run_local.py --data ../shared/data/amazon_beauty
    .venv/bin/python bench/pipeline/bench_run_local.py            # no --data: ML-1M from GroupLens

Runs `make run DATA=... ARGS=--no-cache` with an empty MADREC_CACHE, as a first run on a
fresh machine (every step executes, nothing is reused or already downloaded; the artifacts
stay in runs/local/latest), then appends a row to bench/pipeline/results.md: commit, machine, date,
load average before the run (the development machine is shared), wall time per step, peak
RSS of a step, test metrics. Arguments after `--` are added to ARGS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cpu_model() -> str:
    """The CPU's model name (a 3-minute budget buys ~2x the steps on one machine kind as on another)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


RESULTS = Path(__file__).with_name("results.md")
STEP_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - INFO - (?:Executing task '([^']+)'|Task '([^']+)' finished)")
HEADER = (
    "| date | commit | machine | load before | data | total | prepare | SIDs | train | evaluate "
    "| peak RSS MiB | test R@10 | test N@10 | most-popular R@10 | × most-popular |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def _seconds(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def step_times(log: str) -> dict[str, float]:
    """Seconds per step from kfp's local-runner log lines (task names without the -N suffixes)."""
    started, took = {}, {}
    for line in re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines():
        m = STEP_LINE.match(line)
        if m and m[2]:
            started[m[2]] = _seconds(m[1])
        elif m:
            took[m[3].rstrip("-0123456789")] = _seconds(m[1]) - started[m[3]]
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="as `make run DATA=...`; default: MovieLens-1M from GroupLens")
    p.add_argument("--label", help="name in the results table (default: the folder name)")
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "runs" / "local",
        help="the run's pipeline root (make run's --out); separate ones let runs go side by side",
    )
    args, extra = p.parse_known_args()
    extra = [a for a in extra if a != "--"]
    label = args.label or (Path(args.data).name if args.data else "ml-1m (GroupLens)")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    load = os.getloadavg()[0]
    cmd = [
        "make",
        "-s",
        "run",
        *([f"DATA={args.data}"] if args.data else []),
        f"ARGS=--no-cache --out {args.out} {' '.join(extra)}",
    ]
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-madrec-cache-") as cache:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "MADREC_CACHE": cache})
    wall = time.perf_counter() - start
    print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n")
    if proc.returncode != 0:
        sys.exit(f"make run failed ({proc.returncode})")
    latest = args.out / "latest"
    metrics = json.loads((latest / "metrics.json").read_text())
    info = json.loads((latest / "dataset" / "dataset.json").read_text())
    steps = step_times(proc.stdout)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    popular = metrics["test/most_popular/recall@10"]
    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    sid_step = steps.get("build-sids", steps.get("ingest-sids", float("nan")))
    row = (
        f"| {date.today()} | {commit} | {machine} | {load:.1f} | {label} ({info['num_users']:,} users, "
        f"{info['num_items']:,} items) | {wall / 60:.1f} min | {steps.get('prepare-data', float('nan')):.0f} s "
        f"| {sid_step:.0f} s | {steps.get('train', float('nan')):.0f} s | {steps.get('evaluate', float('nan')):.0f} s "
        f"| {peak:.0f} | {metrics['test/recall@10']:.4f} | {metrics['test/ndcg@10']:.4f} "
        f"| {popular:.4f} | {metrics['test/recall@10'] / max(popular, 1e-12):.1f}× |\n"
    )
    if not RESULTS.exists():
        RESULTS.write_text(
            "# `madrec run-local` (make run): wall time on CPU\n\n"
            "Experiment `tiny`, every step executed (`--no-cache`), empty MADREC_CACHE (a first "
            "run). Produced by `bench/pipeline/bench_run_local.py`.\n\n" + HEADER
        )
    if HEADER not in RESULTS.read_text():
        with RESULTS.open("a") as fh:
            fh.write("\n" + HEADER)
    with RESULTS.open("a") as fh:
        fh.write(row)
    print(row, end="")


if __name__ == "__main__":
    main()
