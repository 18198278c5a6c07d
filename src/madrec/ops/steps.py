"""What the pipeline's components run inside their containers.

Each step runs the same `madrec` CLI verb a user would run, then publishes what the verb
wrote as typed KFP artifacts: scalar metrics logged for the KFP UI *and* saved as JSON at
`metrics.path` (kfp's local cache treats a missing output file as a miss), reports copied
into HTML artifacts, and a short Markdown summary. Artifacts are duck-typed (`.path`,
`.uri`, `.metadata`, `.log_metric`), so this module never imports kfp.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from madrec.config import as_arguments
from madrec.errors import MadrecError
from madrec.io import content_digest, default_cache_dir, write_text_atomic
from madrec.overrides import refuse_keys

# Keys of `madrec train` / `madrec evaluate` that the pipeline's steps set themselves.
PIPELINE_KEYS = ("data_dir", "sid_data_path", "output_dir", "ckpt_path", "split")


def run_verb(argv: list[str], nproc: int = 1) -> None:
    """Run `madrec VERB ...` in this process, or under torchrun with one process per GPU."""
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "madrec.cli",
            *argv,
        ]
        print("+", shlex.join(cmd), flush=True)
        code = subprocess.run(cmd).returncode
    else:
        from madrec.cli import main

        print("+ madrec", shlex.join(argv), flush=True)
        code = main(argv)
    if code != 0:
        raise SystemExit(f"madrec {argv[0]} failed with exit code {code} (its error is above)")


def override_arguments(overrides: dict) -> list[str]:
    """A step's typed overrides ({key: value}) -> `key=value` arguments of its verb; refuses
    keys the pipeline sets."""
    return refuse_keys(as_arguments(overrides or {}), PIPELINE_KEYS, "the pipeline")


def scalar_metrics(values: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested dict, keys joined with '/'. Lists of dicts are numbered
    from 1 (as SID positions and k-means levels are); lists of numbers are distributions,
    not scalars, and are left to the HTML reports."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(scalar_metrics(value, f"{name}/"))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value, start=1):
                out.update(scalar_metrics(item, f"{name}/{i}/"))
    return out


def publish_metrics(artifact, values: dict) -> dict[str, float]:
    """Log every scalar in `values` on a KFP Metrics artifact and write them as JSON at its path."""
    flat = scalar_metrics(values)
    for name, value in flat.items():
        artifact.log_metric(name, value)
    write_text_atomic(artifact.path, json.dumps(flat, indent=1, sort_keys=True) + "\n")
    return flat


def _copy(src: Path, dst: str) -> None:
    if not src.is_file():
        raise MadrecError(f"{src}: expected the step to write this file, but it is missing")
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def prepare_step(
    kind: str, source: str, items: str, min_item_count: int, dataset, protocol: dict | None = None, seed: int = 0
) -> dict:
    """`madrec prepare-data` into the Dataset artifact's folder; counts go into its metadata.
    `protocol`: split (leave-one-out | temporal) and cutoff, cutoff_quantile, holdout_items, 0 = unset
    (a run parameter cannot be empty)."""
    argv = ["prepare-data", "--dataset", kind, "--min-item-count", str(min_item_count), "--out", dataset.path]
    protocol = protocol or {}
    argv += ["--split", protocol.get("split") or "leave-one-out"]
    for key in ("cutoff", "cutoff_quantile", "holdout_items"):
        if protocol.get(key):
            argv += [f"--{key.replace('_', '-')}", repr(float(protocol[key]))]
    if protocol.get("holdout_items"):
        argv += ["--seed", str(seed)]
    if source:
        argv += ["--source", source]
    if items:
        argv += ["--items", items]
    run_verb(argv)
    info = json.loads((Path(dataset.path) / "dataset.json").read_text())
    dataset.metadata.update({k: info[k] for k in ("dataset", "source", "num_users", "num_items", "num_interactions")})
    return info


def _publish_sids(out: Path, sids, report, metrics) -> None:
    from madrec.sids.format import load_sids

    _copy(out / "sids.pt", sids.path)
    _copy(out / "sid_report.html", report.path)
    publish_metrics(metrics, json.loads((out / "sid_report.json").read_text()))
    table = load_sids(sids.path)
    sids.metadata.update(
        {
            "sid_len": int(table.shape[0]),
            "num_items": int(table.shape[1]),
            "format": "torch (H, N) int64",
            "sid_report": report.uri,
        }
    )


def ingest_sids_step(source: str, dataset_path: str, sids, report, metrics) -> None:
    """`madrec ingest-sids` of a GRID file; the validated tensor becomes the SID artifact."""
    with tempfile.TemporaryDirectory(prefix="madrec-sids-") as tmp:
        run_verb(["ingest-sids", "--source", source, "--data", dataset_path, "--out", tmp])
        _publish_sids(Path(tmp), sids, report, metrics)
    sids.metadata["source"] = source


def build_sids_step(
    dataset_path: str,
    encoder: str,
    levels: int,
    codebook_size: int,
    seed: int,
    collaborative_weight: float,
    sids,
    codebooks,
    report,
    metrics,
) -> None:
    """`madrec build-sids` from the items' text; codebooks are kept to assign new items later."""
    # Kept between runs for the same item texts: build-sids reuses its embeddings.pt (the
    # expensive part) when only the k-means settings or the code changed.
    out = default_cache_dir() / "build-sids" / content_digest(Path(dataset_path) / "items")[:16]
    argv = [
        "build-sids",
        "--data",
        dataset_path,
        "--out",
        str(out),
        "--levels",
        str(levels),
        "--codebook-size",
        str(codebook_size),
        "--seed",
        str(seed),
        "--collaborative-weight",
        str(collaborative_weight),
    ]
    if encoder:
        argv += ["--encoder", encoder]
    run_verb(argv)
    _publish_sids(out, sids, report, metrics)
    _copy(out / "codebooks.pt", codebooks.path)
    sids.metadata.update(
        {
            "encoder": encoder or "default",
            "levels": levels,
            "codebook_size": codebook_size,
            "seed": seed,
            "collaborative_weight": collaborative_weight,
        }
    )


def train_step(dataset, sids, experiment: str, overrides: dict, num_gpus: int, model, metrics, run) -> None:
    """`madrec train` (under torchrun when num_gpus > 1) writing its run folder into `run`
    (metrics.csv, summary.json, checkpoints/last.ckpt to resume from); a copy of the best
    checkpoint becomes the Model artifact."""
    run_dir = Path(run.path)
    # test=false: the evaluate step owns the test split (full decoder, report, predictions)
    argv = [
        "train",
        f"experiment={experiment}",
        "test=false",
        f"data_dir={dataset.path}",
        f"sid_data_path={sids.path}",
        f"output_dir={run_dir}",
        *override_arguments(overrides),
    ]
    run_verb(argv, nproc=num_gpus)
    _copy(run_dir / "checkpoints" / "best.ckpt", model.path)
    summary = json.loads((run_dir / "summary.json").read_text())
    publish_metrics(metrics, summary)
    # Lineage, shown on the model in the KFP UI; `madrec run-local` follows it to the files.
    model.metadata.update(
        {
            "experiment": experiment,
            "overrides": overrides,
            "num_gpus": num_gpus,
            "dataset": dataset.uri,
            "sids": sids.uri,
            "sid_report": sids.metadata.get("sid_report", ""),
            "run": run.uri,
        }
    )


_METRIC_KEY = re.compile(r"^(?P<split>[a-z]+)/(?P<name>recall|ndcg)@(?P<k>\d+)$")


def metrics_table(values: dict[str, float]) -> str:
    """Markdown table `K | Recall@K | NDCG@K` from keys like `test/recall@10`."""
    rows: dict[int, dict[str, float]] = {}
    for key, value in values.items():
        m = _METRIC_KEY.match(key)
        if m:
            rows.setdefault(int(m["k"]), {})[m["name"]] = value
    if not rows:
        raise MadrecError(f"no recall@K / ndcg@K metrics among {sorted(values)}")
    lines = ["| K | Recall@K | NDCG@K |", "|---:|---:|---:|"]
    for k in sorted(rows):
        r, n = rows[k].get("recall", float("nan")), rows[k].get("ndcg", float("nan"))
        lines.append(f"| {k} | {r:.4f} | {n:.4f} |")
    return "\n".join(lines)


def summary_markdown(dataset_info: dict, model_meta: dict, split: str, values: dict[str, float]) -> str:
    """The run's one-screen summary: data, model, and the metrics table."""
    source = dataset_info.get("source") or dataset_info.get("dataset")
    return "\n".join(
        [
            f"### madrec — {split} split",
            "",
            f"- data: `{source}` ({dataset_info['num_users']:,} users, {dataset_info['num_items']:,} items, "
            f"{dataset_info['num_interactions']:,} interactions)",
            f"- model: experiment `{model_meta.get('experiment', '?')}`"
            + (
                f", overrides `{' '.join(as_arguments(model_meta['overrides']))}`"
                if model_meta.get("overrides")
                else ""
            ),
            "",
            metrics_table(values),
            "",
        ]
    )


def evaluate_step(
    model, dataset, split: str, overrides: dict, num_gpus: int, metrics, report, predictions, summary
) -> dict[str, float]:
    """`madrec evaluate` of the checkpoint on `split`; metrics, report, predictions and summary."""
    with tempfile.TemporaryDirectory(prefix="madrec-eval-") as tmp:
        out = Path(tmp)
        argv = [
            "evaluate",
            f"ckpt_path={model.path}",
            f"data_dir={dataset.path}",
            f"split={split}",
            f"output_dir={out}",
            "predictions=true",
            *override_arguments(overrides),
        ]
        run_verb(argv, nproc=num_gpus)
        values = publish_metrics(metrics, json.loads((out / "metrics.json").read_text()))
        _copy(out / "report.html", report.path)
        _copy(out / "predictions.parquet", predictions.path)
    info = json.loads((Path(dataset.path) / "dataset.json").read_text())
    write_text_atomic(summary.path, summary_markdown(info, model.metadata, split, values))
    lineage = {k: model.metadata.get(k, "") for k in ("sids", "sid_report", "run")}
    summary.metadata.update(
        {**lineage, "dataset": dataset.uri, "model": model.uri, "experiment": model.metadata.get("experiment", "")}
    )
    return values


def experiment_list(text: str) -> list[str]:
    """`a,b, c` -> ["a", "b", "c"]; every name must be a known experiment (checked up front)."""
    from madrec.config import experiment_path

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise MadrecError("experiments: expected comma-separated experiment names, e.g. small,tiger_cpu,sasrec_cpu")
    if len(set(names)) != len(names):
        raise MadrecError(f"experiments={text!r}: an experiment is listed twice")
    for name in names:
        experiment_path(name)
    return names


COMPARED = ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "num_users", "invalid_sid_rate", "duplicate_rate")


def comparison_rows(entries: list[tuple[str, dict[str, float]]]) -> list[dict]:
    """One row per experiment (test metrics) plus the most-popular baseline, best Recall@10 first."""
    rows = [
        {"experiment": name, **{k: values.get(f"test/{k}", float("nan")) for k in COMPARED}} for name, values in entries
    ]
    rows.sort(key=lambda r: -r["recall@10"])
    if entries:
        pop = entries[0][1]
        rows.append(
            {"experiment": "most popular", **{k: pop.get(f"test/most_popular/{k}", float("nan")) for k in COMPARED[:4]}}
        )
    return rows


def compare_step(summaries, metrics, table, report, comparison) -> list[dict]:
    """The comparison branch's last step: a Markdown and an HTML table, and flat metrics."""
    from madrec import report as html

    entries = []
    for summary, values in zip(summaries, metrics):
        # the summary names its experiment (summary_markdown): "model: experiment `NAME`"
        found = re.search(r"experiment `([^`]+)`", Path(summary.path).read_text())
        name = summary.metadata.get("experiment") or (found[1] if found else Path(summary.path).parent.name)
        entries.append((name, json.loads(Path(values.path).read_text())))
    rows = comparison_rows(entries)
    head = ["experiment", *COMPARED[:4]]
    lines = [
        "### madrec — models compared on the test split",
        "",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join([r["experiment"]] + [f"{r.get(k, float('nan')):.4f}" for k in head[1:]]) + " |")
    write_text_atomic(table.path, "\n".join(lines) + "\n")
    write_text_atomic(report.path, html.html_page("madrec: models compared", [("Test split", html.table_html(rows))]))
    flat = {
        f"{r['experiment']}/test/{k}": r[k] for r in rows if r["experiment"] != "most popular" for k in COMPARED[:4]
    }
    publish_metrics(comparison, flat)
    return rows
