"""Benchmark: `madrec prepare-data` on ML-1M (wall time and peak memory).

The official ratings.dat is not in ../shared/data, so this rebuilds a full-size archive in
its format from `sequences_chrono.txt` (1,000,209 ratings, original ids and order; timestamps
increase along each user's sequence) and times both input paths:

    .venv/bin/python bench/prepare_ml1m.py [--shared ../shared/data] [--append bench/results.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_archive(shared: Path, dest: Path) -> Path:
    lines = []
    for row in (shared / "movielens_1m/sequences_chrono.txt").read_text().splitlines():
        user, *items = row.split()
        lines += [f"{user}::{m}::4::{978300000 + k}" for k, m in enumerate(items)]
    archive = dest / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-1m/ratings.dat", "\n".join(lines) + "\n")
        zf.write(shared / "movielens_1m/movies.dat", "ml-1m/movies.dat")
    return archive


def timed(args: list[str]) -> tuple[float, float, str]:
    """Run a command; return (wall seconds, peak RSS MiB of the child, last stdout line)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read().strip().splitlines()[-1]
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    wall = time.perf_counter() - start
    if status:
        raise SystemExit(f"{args} failed with status {status}")
    return wall, usage.ru_maxrss / 1024, out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--append", type=Path, help="append a result block to this Markdown file")
    args = p.parse_args()
    madrec = str(Path(sys.executable).with_name("madrec"))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive = build_archive(args.shared, tmp)
        runs = {
            "ml-1m (official zip format, 1,000,209 ratings)": [
                madrec,
                "prepare-data",
                "--dataset",
                "ml-1m",
                "--source",
                str(archive),
                "--out",
                str(tmp / "a"),
            ],
            "sequences (sequences_chrono.txt + movies.dat)": [
                madrec,
                "prepare-data",
                "--dataset",
                "sequences",
                "--source",
                str(args.shared / "movielens_1m/sequences_chrono.txt"),
                "--items",
                str(args.shared / "movielens_1m/movies.dat"),
                "--out",
                str(tmp / "b"),
            ],
        }
        rows = []
        for name, cmd in runs.items():
            wall, peak, summary = timed(cmd)
            rows.append(f"| {name} | {wall:.2f} | {peak:.0f} | {summary.split(': ', 1)[1].split('; dropped')[0]} |")
    block = "\n".join(
        [
            f"### prepare-data ML-1M — {datetime.date.today()} — commit {commit}",
            f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "",
            "| input | wall s | peak RSS MiB | result |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )
    print(block)
    if args.append:
        with open(args.append, "a") as fh:
            fh.write(block + "\n")


if __name__ == "__main__":
    main()
