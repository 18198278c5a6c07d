"""Markdown table of training runs read from their run folders (metrics.csv, summary.json,
config.yaml), so results.md rows are generated rather than typed in.

    python bench/train/runs_table.py RUN_DIR [RUN_DIR ...] [--label NAME ...] \
        [--plot curves.html [--flat "most-popular=0.016"]]

One row per run: its label, the overrides that matter (model, rows, masking, SIDs), steps,
training seconds, validation Recall@10 at every validation (step: value) and, when the run
was tested, test Recall@10 / NDCG@10. --plot also writes the validation curves (Recall@10
against training seconds) as an HTML page, with flat reference lines from --flat.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import yaml

from madrec.io import write_text_atomic
from madrec.report import html_page, xy_chart


def validations(run: Path) -> list[tuple[int, float, float]]:
    """(step, training seconds, val Recall@10) at every validation during training."""
    points, seconds = [], None
    with (run / "metrics.csv").open() as fh:
        for row in csv.DictReader(fh):
            seconds = float(row["train/seconds"]) if row.get("train/seconds") else seconds
            if row.get("val/recall@10") and row.get("train/seconds"):
                points.append((int(row["step"]), seconds, float(row["val/recall@10"])))
    return points


def setup(run: Path) -> str:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    m, d = cfg["model"], cfg["diffusion"]
    parts = [
        cfg.get("experiment", "?"),
        f"{m['name']} {m['n_layer']}x{m['n_embd']}",
        f"batch {cfg['batch_size']}",
        f"rows {cfg['rows']} (max_len {cfg['max_len']}, auto {cfg.get('auto_max_items')})",
    ]
    if m["name"] == "maskgr":
        parts.append(f"masking {d['masking']}")
    if m.get("item_embedding"):
        parts.append("item emb.")
    if m.get("pool_history"):
        parts.append("pooled history")
    if m.get("catalogue_head"):
        parts.append("catalogue head")
    if m.get("pool_slot"):
        parts.append("pooled slot")
    if m.get("slot_reads_previous"):
        parts.append("slot reads previous item")
    if m["name"] == "maskgr" and d.get("t_min", 1e-3) != 1e-3:
        parts.append(f"t_min {d['t_min']}")
    if d.get("item_loss_weight"):
        parts.append(f"item loss x{d['item_loss_weight']}")
    if d.get("next_item_copies", 1) > 1:
        parts.append(f"{d['next_item_copies']} copies")
    if m["name"] == "maskgr" and d.get("loss_weight", "elbo") != "elbo":
        parts.append(f"{d['loss_weight']} loss weight")
    parts.append(f"dropout {m['dropout']}")
    wd = cfg.get("optim", {}).get("optimizer", {}).get("weight_decay")
    if wd is not None:
        parts.append(f"weight decay {wd}")
    if d.get("history_item_prob"):
        parts.append(f"history items masked w.p. {d['history_item_prob']}")
    if m.get("embedding_init", "random") != "random":
        parts.append(f"init {m['embedding_init']}")
    if cfg.get("eval", {}).get("beam_size", 10) != 10:
        parts.append(f"beam {cfg['eval']['beam_size']}")
    t = cfg["trainer"]
    if t.get("ema_decay"):
        parts.append(f"EMA {t['ema_decay']}")
    if t.get("precision", "auto") != "auto" or t.get("length_buckets", 1) != 4:
        parts.append(f"precision {t.get('precision')}, buckets {t.get('length_buckets')}")
    parts.append(f"SIDs {Path(cfg['sid_data_path']).parent.name}" if cfg.get("sid_data_path") else "no SIDs")
    return ", ".join(parts)


def row(run: Path, label: str) -> str:
    points = validations(run)
    curve = " / ".join(f"{v:.4f} ({s:.0f} s)" for _, s, v in points)
    if not (run / "summary.json").exists():  # stopped before the end: what its validations say
        step, seconds = (points[-1][0], points[-1][1]) if points else (0, 0.0)
        return f"| {label} | {setup(run)} | {step:,} (stopped) | {seconds:.0f} | {curve} | – |"
    summary = json.loads((run / "summary.json").read_text())
    test = summary.get("test/recall@10")
    tested = f"{test:.4f} / {summary['test/ndcg@10']:.4f}" if test is not None else "–"
    return (
        f"| {label} | {setup(run)} | {summary['global_step']:,} | {summary['train_seconds']:.0f} | {curve} | {tested} |"
    )


def plot(runs: list[Path], labels: list[str], flat: list[str], out: Path) -> None:
    series = {label: [(s, v) for _, s, v in validations(run)] for run, label in zip(runs, labels)}
    end = max((s for pts in series.values() for s, _ in pts), default=1.0)
    for item in flat:
        name, value = item.split("=", 1)
        series[name] = [(0.0, float(value)), (end, float(value))]
    chart = xy_chart(series, "validation Recall@10", "training seconds")
    write_text_atomic(out, html_page("Validation curves", [("Validation Recall@10", chart)]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--label", nargs="*", default=[], help="row labels, in order (default: folder names)")
    p.add_argument("--plot", type=Path, help="also write the validation curves to this HTML file")
    p.add_argument("--flat", nargs="*", default=[], help="NAME=VALUE horizontal lines on the plot")
    a = p.parse_args(argv)
    labels = a.label + [r.name for r in a.runs[len(a.label) :]]
    print("| run | setup | steps | train s | val R@10 at training s | test R@10 / N@10 |")
    print("|---|---|---|---|---|---|")
    for run, label in zip(a.runs, labels):
        print(row(run, label))
    if a.plot:
        plot(a.runs, labels, a.flat, a.plot)


if __name__ == "__main__":
    main()
