"""Do two revisions of madrec train to the same metrics? Each shipped experiment is trained for a
fixed number of steps (no time budget, so a run is a function of the seed and the steps, whatever
the load) by the code of REV (a git worktree) and by the working tree, on the same data and SIDs;
the validation metrics are printed side by side and appended to bench/layout/results.md.

    .venv/bin/python bench/layout/same_metrics.py --rev 70172be --data DIR --sids SIDS.pt [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ("tiny", "small", "tiger_cpu", "sasrec_cpu", "discrete_diffusion_train")
# the reference is sized for GPUs: a CPU-sized batch and rows keep its objective and network
SHRINK = {"discrete_diffusion_train": ["batch_size=64", "max_len=40", "model.n_layer=2", "trainer.accelerator=cpu"]}


def train(src: Path, experiment: str, data: str, sids: str, steps: int, out: Path) -> dict:
    args = [f"experiment={experiment}", f"data_dir={data}", f"sid_data_path={sids}", f"output_dir={out}"]
    args += ["trainer.max_minutes=0", f"trainer.max_steps={steps}", f"trainer.val_every_n_steps={steps}"]
    args += [f"trainer.checkpoint_every_n_steps={steps}", "trainer.early_stopping_patience=0", "test=false"]
    args += [
        "eval.val_max_users=1000",
        "trainer.progress_bar=false",
        "trainer.num_threads=1",
        *SHRINK.get(experiment, []),
    ]
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "madrec.cli", "train", *args], check=True, env=env, cwd=src.parent,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    return {k: summary[k] for k in ("val/recall@10", "val/ndcg@10", "global_step") if k in summary}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--sids", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--experiments", default=",".join(EXPERIMENTS))
    args = p.parse_args()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.rev], check=True, cwd=ROOT,
                       capture_output=True)  # fmt: skip
        try:
            for exp in args.experiments.split(","):
                before = train(tree / "src", exp, args.data, args.sids, args.steps, Path(tmp) / f"{exp}-before")
                after = train(ROOT / "src", exp, args.data, args.sids, args.steps, Path(tmp) / f"{exp}-after")
                rows.append((exp, before, after))
                print(exp, before, after, flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    write(args, head, rows)
    return 0 if all(b == a for _, b, a in rows) else 1


def write(args, head: str, rows) -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"\n## {args.rev} against {head} (+ working tree), {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"`bench/layout/same_metrics.py --rev {args.rev} --data {args.data} --sids {args.sids} --steps {args.steps}`:"
        f" {args.steps} steps each, no time budget, one thread, validation on 1,000 users;"
        f" load average at the end {load}.",
        "",
        "| experiment | before val R@10 / N@10 | after val R@10 / N@10 | identical |",
        "|---|---|---|---|",
    ]
    for exp, b, a in rows:
        fmt = lambda r: f"{r.get('val/recall@10', float('nan')):.4f} / {r.get('val/ndcg@10', float('nan')):.4f}"  # noqa: E731
        lines.append(f"| {exp} | {fmt(b)} | {fmt(a)} | {'yes' if b == a else 'NO'} |")
    out = Path(__file__).with_name("results.md")
    if not out.exists():
        out.write_text("# The same code path before and after a refactor\n")
    with out.open("a") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
