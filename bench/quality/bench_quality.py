"""Equal-budget quality benchmark: masked diffusion vs tiger vs sasrec on one prepared dataset.

    make bench-quality DATA=data/beauty SIDS=data/beauty_sids/sids.pt BUDGET=30m
    python bench/quality/bench_quality.py --data DIR --sids SIDS --budget 30m \
        [--experiments small,tiger_cpu,sasrec_cpu] [--threads 1] [--jobs 1] [--out bench/quality]

Each experiment is trained by `madrec train` in its own process for the same training wall
time (`trainer.max_minutes`; validation time excluded, the learning rate decays over the
budget), with the same thread count, then its best checkpoint (validation Recall@5) is
evaluated on the whole test split by the same code. `--jobs 2` runs two trainings at once,
each pinned to its own core (taskset), for machines with idle cores. Writes OUT/results.md
(a row per model, most-popular and the published numbers of method.md §9 beside them) and
OUT/curves.html (validation Recall@10 against training seconds), and keeps the run folders
in OUT/runs/<experiment>.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from madrec import report  # noqa: E402
from madrec.data.dataset import load_dataset  # noqa: E402
from madrec.evaluate.metrics import most_popular, ranking_metrics  # noqa: E402

# method.md §9, test split: (R@5, N@5, R@10, N@10)
PUBLISHED = {
    "beauty": {
        "SASRec (BCE, TIGER's table)": (0.0387, 0.0249, 0.0605, 0.0318),
        "TIGER (paper)": (0.0454, 0.0321, 0.0648, 0.0384),
        "TIGER on RK-Means SIDs": (0.0429, 0.0288, 0.0659, 0.0367),
        "MaskGR": (0.0538, 0.0351, 0.0815, 0.0436),
    },
    "toys": {
        "SASRec (BCE, TIGER's table)": (0.0463, 0.0306, 0.0675, 0.0374),
        "TIGER (paper)": (0.0521, 0.0371, 0.0712, 0.0432),
        "TIGER on RK-Means SIDs": (0.0442, 0.0291, 0.0636, 0.0351),
        "MaskGR": (0.0548, 0.0375, 0.0806, 0.0455),
    },
    "ml-1m": {"TIGER on RK-Means SIDs": (0.1283, 0.0885, 0.1866, 0.1083), "MaskGR": (0.1672, 0.1112, 0.2278, 0.1306)},
}
METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def minutes(text: str) -> float:
    m = re.fullmatch(r"\s*([\d.]+)\s*(s|m|h)?\s*", text)
    if not m:
        raise SystemExit(f"--budget {text!r}: expected e.g. 30m, 1800s or 0.5h")
    return float(m[1]) * {"s": 1 / 60, "m": 1.0, "h": 60.0, None: 1.0}[m[2]]


def train_command(args, experiment: str, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "madrec.cli",
        "train",
        f"experiment={experiment}",
        f"data_dir={args.data}",
        f"sid_data_path={args.sids}",
        f"output_dir={out}",
        f"trainer.max_minutes={minutes(args.budget)}",
        "trainer.max_steps=100000000",
        f"trainer.num_threads={args.threads}",
        "trainer.progress_bar=false",
        *args.override,
    ]


def run_all(args, runs: Path) -> dict[str, dict]:
    """Train every experiment (args.jobs at a time); return experiment -> summary.json."""
    pending = list(args.experiments)
    active: list[tuple[str, subprocess.Popen, object, list[int]]] = []
    cores = sorted(os.sched_getaffinity(0))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    if args.threads:  # 0: PyTorch's default (a GPU run)
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    while pending or active:
        while pending and len(active) < args.jobs:
            exp = pending.pop(0)
            out = runs / exp
            if (out / "summary.json").is_file() and not args.rerun:
                print(f"[{exp}] reusing {out}/summary.json", flush=True)
                continue
            if out.exists():
                import shutil

                shutil.rmtree(out)
            cmd = train_command(args, exp, out)
            if args.jobs > 1:  # pin to cores no running training holds
                busy = {c for _, _, _, held in active for c in held}
                held = [c for c in cores if c not in busy][: args.threads] or cores
                cmd = ["taskset", "-c", ",".join(map(str, held)), *cmd]
            else:
                held = cores
            out.mkdir(parents=True)
            started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
            (out / "provenance.json").write_text(
                json.dumps(
                    {"commit": git_commit(), "started_utc": started, "load_average": os.getloadavg(), "cores": held}
                )
                + "\n"
            )
            log = (out / "train.log").open("w")
            print(f"[{exp}] {' '.join(cmd)}", flush=True)
            active.append((exp, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, held))
        time.sleep(5)
        for item in list(active):
            exp, proc, log, _ = item
            if proc.poll() is not None:
                log.close()
                active.remove(item)
                print(f"[{exp}] finished with exit code {proc.returncode} ({runs / exp}/train.log)", flush=True)
                if proc.returncode:
                    raise SystemExit(f"[{exp}] training failed; see {runs / exp}/train.log")
    return {exp: json.loads((runs / exp / "summary.json").read_text()) for exp in args.experiments}


def curve(run: Path, with_steps: bool = False) -> list[tuple]:
    """(training seconds, validation Recall@10) at every validation during training
    (with_steps: (step, seconds, recall)); the final best-weights pass is not a point."""
    points, seconds = [], None
    with (run / "metrics.csv").open() as fh:
        for row in csv.DictReader(fh):
            if row.get("train/seconds"):
                seconds = float(row["train/seconds"])
            if row.get("val/recall@10") and row.get("train/seconds"):
                point = (seconds, float(row["val/recall@10"]))
                points.append((int(row["step"]), *point) if with_steps else point)
    return points


def provenance_row(exp: str, run: Path) -> str:
    """Commit, start and load average of a training, as bench_quality recorded them at its start."""
    p = json.loads((run / "provenance.json").read_text()) if (run / "provenance.json").is_file() else {}
    load = p.get("load_average")
    shown = " / ".join(f"{v:.2f}" for v in load) if load else "not recorded"
    return (
        f"| {exp} | {p.get('commit', 'not recorded')} | {p.get('started_utc', 'not recorded')} | {shown} "
        f"| {','.join(map(str, p.get('cores', []))) or '–'} |"
    )


def popular_row(data_dir: str) -> dict[str, float]:
    data = load_dataset(data_dir, splits=("testing",))
    split = data.splits["testing"]
    top = most_popular(split.sequences, data.num_items, 10).expand(len(split), -1)
    import torch

    targets = torch.tensor([int(s[-1]) for s in split.sequences])
    return {k: float(v.mean()) for k, v in ranking_metrics(top, targets, (5, 10)).items()}


def dataset_key(data_dir: str) -> str | None:
    info = json.loads((Path(data_dir) / "dataset.json").read_text())
    text = json.dumps(info.get("source", "")).lower() + str(data_dir).lower()
    for key, words in (("beauty", ("beauty",)), ("toys", ("toys",)), ("ml-1m", ("ml-1m", "ml1m", "movielens"))):
        if any(w in text for w in words):
            return key
    return None


def git_commit() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def write_results(args, summaries: dict[str, dict], out: Path) -> None:
    pop = popular_row(args.data)
    lines = [
        "# Equal-budget quality benchmark",
        "",
        f"Data: `{args.data}` (test split); SIDs: `{args.sids}`. Budget: {args.budget} of training wall time "
        f"per model (validation excluded), {args.threads} thread(s) each, {args.jobs} training(s) at a time. "
        f"Machine {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}.",
        "",
        "| experiment | commit | started (UTC) | load average at start | cores |",
        "|---|---|---|---|---|",
        *[provenance_row(exp, out / "runs" / exp) for exp in summaries],
        "",
        "Command:",
        "",
        "    " + " ".join(["python", "bench/quality/bench_quality.py", *sys.argv[1:]]),
        "",
        "| model | experiment | R@5 | N@5 | R@10 | N@10 | parameters | steps | tokens seen | train s | "
        "best step | invalid | duplicates |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for exp, s in summaries.items():
        metrics = " | ".join(f"{s.get('test/' + m, float('nan')):.4f}" for m in METRICS)
        lines.append(
            f"| {s.get('model', '?')} | {exp} | {metrics} | {s['num_parameters']:,} | {s['global_step']:,} "
            f"| {int(s.get('tokens_seen', 0)):,} | {s.get('train_seconds', 0):.0f} | {s.get('best_step', '')} "
            f"| {s.get('test/invalid_sid_rate', float('nan')):.4f} | {s.get('test/duplicate_rate', float('nan')):.4f} |"
        )
    lines.append(
        f"| most popular | – | {pop['recall@5']:.4f} | {pop['ndcg@5']:.4f} | {pop['recall@10']:.4f} "
        f"| {pop['ndcg@10']:.4f} | – | – | – | – | – | – | – |"
    )
    for name, vals in PUBLISHED.get(dataset_key(args.data) or "", {}).items():
        lines.append(
            f"| published: {name} | – | " + " | ".join(f"{v:.4f}" for v in vals) + " | – | – | – | – | – | – | – |"
        )
    lines += [
        "",
        "Published numbers: method.md §9 (GPU training to convergence, other SIDs); here: equal CPU "
        "wall time. Reading and context: `README.md` beside this file.",
        "",
        "Validation Recall@10 against training seconds (every validation of each run; `curves.html`):",
        "",
        "| experiment | step | training s | val Recall@10 |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {exp} | {step} | {x:.0f} | {y:.4f} |"
        for exp in summaries
        for step, x, y in curve(out / "runs" / exp, with_steps=True)
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    series = {exp: [(round(x), y) for x, y in curve(out / "runs" / exp)] for exp in summaries}
    chart = report.xy_chart(series, "validation Recall@10", "training seconds")
    table = [{"experiment": e, "seconds": x, "val Recall@10": y} for e, pts in series.items() for x, y in pts]
    (out / "curves.html").write_text(
        report.html_page(
            "Validation Recall@10 vs training wall time", [("Curves", chart), ("Points", report.table_html(table))]
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--sids", required=True, help="sids.pt for the SID models (sasrec ignores it)")
    p.add_argument("--budget", default="30m", help="training wall time per model: 30m, 1800s, 0.5h")
    p.add_argument("--experiments", default="small,tiger_cpu,sasrec_cpu", type=lambda s: s.split(","))
    p.add_argument("--threads", type=int, default=1, help="torch threads per training")
    p.add_argument("--jobs", type=int, default=1, help="trainings at a time (each pinned to its own cores)")
    p.add_argument("--out", default=str(REPO / "bench" / "quality"), help="results.md, curves.html, runs/")
    p.add_argument("--rerun", action="store_true", help="retrain experiments that already have a summary")
    p.add_argument("override", nargs="*", help="key=value overrides for every experiment")
    args = p.parse_args()
    out = Path(args.out)
    summaries = run_all(args, out / "runs")
    write_results(args, summaries, out)
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
