"""Markdown table: a run's own test pass (beam of its config) beside `madrec evaluate` of the
same checkpoint with a wider beam, so a beam's effect is read from files, not typed in.

    python bench/quality/beam_table.py --beam N LABEL=RUN_DIR:EVAL_DIR [LABEL=RUN_DIR:EVAL_DIR ...] [--split test]

RUN_DIR holds the run's summary.json (`madrec train`); EVAL_DIR the metrics.json of
`madrec evaluate ckpt_path=RUN_DIR/checkpoints/best.ckpt beam_size=N output_dir=EVAL_DIR`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def cells(metrics: dict, split: str) -> str:
    return f"{metrics[f'{split}/recall@10']:.4f} / {metrics[f'{split}/ndcg@10']:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pairs", nargs="+", help="LABEL=RUN_DIR:EVAL_DIR")
    p.add_argument("--beam", type=int, required=True, help="the beam_size EVAL_DIR was decoded with")
    p.add_argument("--split", default="test", choices=("test", "val"))
    a = p.parse_args()
    print(f"| run | run's own pass: {a.split} R@10 / N@10 | wider beam: {a.split} R@10 / N@10 | beams | R@10 change |")
    print("|---|---|---|---|---|")
    for pair in a.pairs:
        label, _, dirs = pair.partition("=")
        run, _, ev = dirs.partition(":")
        own = json.loads((Path(run) / "summary.json").read_text())
        wide = json.loads((Path(ev) / "metrics.json").read_text())
        beam = yaml.safe_load((Path(run) / "config.yaml").read_text())["eval"]["beam_size"]
        beams = f"{beam} → {a.beam}"
        change = wide[f"{a.split}/recall@10"] / own[f"{a.split}/recall@10"] - 1
        print(f"| {label} | {cells(own, a.split)} | {cells(wide, a.split)} | {beams} | {100 * change:+.1f}% |")


if __name__ == "__main__":
    main()
