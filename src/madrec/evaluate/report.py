"""What `madrec evaluate` writes besides metrics.json: predictions.parquet and report.html."""

from __future__ import annotations

import numpy as np
import torch

from madrec import report
from madrec.evaluate.metrics import ranking_metrics
from madrec.evaluate.run import Predictions
from madrec.io import atomic_file


def write_predictions(path, preds: Predictions, item_ids: list[str]) -> None:
    """predictions.parquet: one row per (user, rank) with the original item id and the score."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    U, K = preds.items.shape
    items = preds.items.reshape(-1).numpy()
    ids = np.asarray(item_ids, dtype=object)
    table = pa.table(
        {
            "user": pa.array(np.repeat(preds.user_ids, K), pa.int64()),
            "rank": pa.array(np.tile(np.arange(1, K + 1), U), pa.int32()),
            "item_id": pa.array([ids[i] if i >= 0 else None for i in items], pa.string()),
            "item": pa.array(items, pa.int64()),
            "score": pa.array(preds.scores.reshape(-1).numpy(), pa.float32()),
        }
    )
    with atomic_file(path) as fh:
        pq.write_table(table, fh)


def build_report(
    args,
    loaded,
    split,
    prefix: str,
    main: Predictions,
    pop_items: torch.Tensor,
    compared: dict,
    sweep: dict,
    metrics: dict,
) -> str:
    """report.html: summary table, Recall/NDCG vs K, quality vs decoding steps, setup."""
    summary = report.table_html(_summary_rows(args, loaded, prefix, main, compared, metrics))
    if compared or sweep:  # said beside the rows it concerns, not as a section of its own
        n = len(next(iter({**compared, **sweep}.values())).targets)
        summary += f"<p>Unconstrained decoding and the decoding-steps sweep use {n} of the {len(split)} users.</p>"
    sections = [("Metrics", summary), ("Recall@K and NDCG@K", _metrics_by_k(args.beam_size, main, pop_items))]
    if sweep:
        sections.append(("Quality vs number of decoding steps", _steps_sweep(args, loaded, prefix, sweep, metrics)))
    sections.append(("Setup", report.table_html(_setup_rows(args, loaded, split, main))))
    return report.html_page(f"madrec evaluation: {split.name}", sections)


def _summary_rows(args, loaded, prefix, main, compared, metrics) -> list[dict]:
    def row(name: str, key: str) -> dict:
        r = {"method": name}
        for k in args.ks:
            r[f"Recall@{k}"] = metrics.get(f"{key}/recall@{k}", float("nan"))
            r[f"NDCG@{k}"] = metrics.get(f"{key}/ndcg@{k}", float("nan"))
        r["invalid SIDs"] = metrics.get(f"{key}/invalid_sid_rate", "")
        r["duplicates"] = metrics.get(f"{key}/duplicate_rate", "")
        r["users/s"] = metrics.get(f"{key}/users_per_s", "")
        return r

    model = loaded.config.model.name
    rows = [row(f"{model} (constrained, {args.order}, {main.model_calls} model calls)", prefix)]
    if "unconstrained" in compared:
        rows.append(row(f"{model} unconstrained", f"{prefix}/unconstrained"))
    rows.append(row("most popular", f"{prefix}/most_popular"))
    return rows


def _metrics_by_k(beam_size: int, main: Predictions, pop_items: torch.Tensor) -> str:
    cut = list(range(1, beam_size + 1))
    ours = ranking_metrics(main.items, main.targets, cut)
    pop = ranking_metrics(pop_items, main.targets, cut)
    curve = {
        "madrec Recall@K": [float(ours[f"recall@{k}"].mean()) for k in cut],
        "madrec NDCG@K": [float(ours[f"ndcg@{k}"].mean()) for k in cut],
        "most popular Recall@K": [float(pop[f"recall@{k}"].mean()) for k in cut],
        "most popular NDCG@K": [float(pop[f"ndcg@{k}"].mean()) for k in cut],
    }
    return report.line_chart(cut, curve, "metric", "K")


def _steps_sweep(args, loaded, prefix: str, sweep: dict, metrics: dict) -> str:
    calls = sorted(sweep)
    series = {
        f"{m}@{k}": [metrics[f"{prefix}/steps_{c}/{m.lower()}@{k}"] for c in calls]
        for m in ("Recall", "NDCG")
        for k in args.ks
    }
    table = [
        {
            "model calls": c,
            "positions per call": -(-loaded.vocab.sid_len // c),
            **{name: vals[i] for name, vals in series.items()},
            "users/s": metrics[f"{prefix}/steps_{c}/users_per_s"],
        }
        for i, c in enumerate(calls)
    ]
    chart = report.line_chart(calls, series, "metric", f"model calls per item (SID length {loaded.vocab.sid_len})")
    return chart + report.table_html(table)


def _setup_rows(args, loaded, split, main: Predictions) -> list[dict]:
    return [
        {"key": k, "value": v}
        for k, v in [
            ("checkpoint", args.ckpt_path),
            ("global step", loaded.global_step),
            ("dataset", args.data_dir),
            ("split", split.name),
            ("users", len(split)),
            ("items", loaded.sids.shape[1]),
            ("SID length", loaded.vocab.sid_len),
            ("codebook size", loaded.vocab.codebook_size),
            ("max_len", loaded.max_len),
            ("parameters", sum(p.numel() for p in loaded.model.parameters())),
            ("beam size", args.beam_size),
            ("order", args.order),
            ("reveal per step", args.reveal_per_step),
            ("decode wall time (s)", round(main.seconds, 2)),
            ("device", str(next(loaded.model.parameters()).device)),
        ]
    ]
