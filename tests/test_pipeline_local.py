"""The committed pipeline runs end to end with kfp's local runner on a real slice of Beauty.

First run: prepare -> build SIDs -> train -> evaluate (the `make run` path). Second run, with
the SIDs of the first as `--sid-uri`: the ingest branch, with prepare-data served from the
local cache.
"""

from __future__ import annotations

import json
import math
import os

import pyarrow.parquet as pq
import pytest
import torch

from madrec.checkpoint import load_checkpoint
from madrec.data.dataset import load_dataset
from madrec.ops import local_run
from madrec.ops.local_run import RESULT_LINKS, cli
from madrec.sids.format import load_sids

SLICE_USERS = 1000  # lines of Beauty.txt; the >= 5 interactions filter leaves a few hundred users
FAST = [
    "--param",
    "sid_levels=2",
    "--param",
    "sid_codebook_size=64",
    "--param",
    "eval_overrides.sweep=false",
    "--param",
    "eval_overrides.compare_unconstrained=false",
    "trainer.max_steps=10",
    "trainer.val_every_n_steps=10",
    "trainer.checkpoint_every_n_steps=10",
    "eval.val_max_users=100",
]


def _tasks(run_dir):
    return {p.name.rstrip("-0123456789") for p in run_dir.iterdir() if (p / "executor_output.json").is_file()}


def _check_metrics(metrics: dict, num_users: int) -> None:
    for k in (5, 10):
        recall, ndcg = metrics[f"test/recall@{k}"], metrics[f"test/ndcg@{k}"]
        assert 0.0 <= ndcg <= recall <= 1.0
        assert math.isclose(recall * num_users, round(recall * num_users), abs_tol=1e-6)  # hits / users
    assert metrics["test/recall@5"] <= metrics["test/recall@10"]
    assert metrics["test/num_users"] == num_users
    assert metrics["test/invalid_sid_rate"] == 0.0 and metrics["test/duplicate_rate"] == 0.0


def beauty_slice(shared_data, tmp_path):
    """A folder with the first SLICE_USERS lines of Beauty.txt and the items file."""
    data = tmp_path / "beauty"
    data.mkdir()
    lines = (shared_data / "amazon_beauty" / "Beauty.txt").read_text().splitlines()[:SLICE_USERS]
    (data / "Beauty.txt").write_text("\n".join(lines) + "\n")
    (data / "items.jsonl.gz").symlink_to(shared_data / "amazon_beauty" / "items.jsonl.gz")
    return data


@pytest.mark.slow
def test_local_pipeline_on_beauty_slice(shared_data, tmp_path, capsys, monkeypatch):
    # one cache for both runs even if the checkout is edited meanwhile (shared working trees)
    monkeypatch.setattr(local_run, "code_fingerprint", lambda: "test")
    monkeypatch.setenv("MADREC_CACHE", str(tmp_path / "cache"))  # the steps inherit it
    data = beauty_slice(shared_data, tmp_path)
    out = tmp_path / "runs"

    assert cli(["--data", str(data), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    results = (out / "latest").resolve()
    first_run = results.parent
    assert _tasks(first_run) == {"prepare-data", "build-sids", "train", "evaluate", "deploy"}
    assert sorted(p.name for p in results.iterdir()) == sorted(RESULT_LINKS)

    dataset = load_dataset(results / "dataset")
    users = len(dataset.splits["testing"].user_ids)
    assert 100 < users < SLICE_USERS and dataset.num_items > 100
    # local inputs reach the pipeline as content-addressed aliases (cache keys follow content)
    assert os.path.realpath(dataset.info["source"]) == str(data / "Beauty.txt")
    sids = load_sids(results / "sids.pt", num_items=dataset.num_items, codebook_size=64)
    assert sids.shape == (3, dataset.num_items)  # 2 levels + the de-dup digit
    assert (results / "sid_report.html").read_text().lstrip().lower().startswith("<!doctype html")
    # the KFP Metrics outputs are JSON files too (kfp's local cache needs them on disk)
    sid_metrics = json.loads((first_run / "build-sids" / "sid_metrics").read_text())
    assert sid_metrics and all(isinstance(v, float) for v in sid_metrics.values())

    loaded = load_checkpoint(results / "model.ckpt")
    assert torch.equal(loaded.sids, sids) and loaded.item_ids == dataset.item_ids
    run = results / "train_run"
    assert (run / "metrics.csv").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "best.ckpt").read_bytes() == (results / "model.ckpt").read_bytes()
    assert "val/recall@5" in json.loads((run / "summary.json").read_text())

    metrics = json.loads((results / "metrics.json").read_text())
    _check_metrics(metrics, users)
    assert (results / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert not (results / "report.html").is_symlink()  # a page a browser opens as HTML (link_results)
    predictions = pq.read_table(results / "predictions.parquet")
    assert predictions.num_rows == users * 10
    summary = (results / "summary.md").read_text()
    assert f"| 10 | {metrics['test/recall@10']:.4f} | {metrics['test/ndcg@10']:.4f} |" in summary
    assert summary in printed and f"{out / 'latest'}" in printed

    # the ingest branch, fed the SIDs just built; prepare-data comes from the cache
    assert cli(["--data", str(data), "--out", str(out), "--sid-uri", str(results / "sids.pt"), *FAST]) == 0
    second = (out / "latest").resolve()
    assert second.parent != first_run
    assert _tasks(second.parent) == {"ingest-sids", "train", "evaluate", "deploy"}
    assert os.path.realpath(second / "dataset") == os.path.realpath(results / "dataset")
    assert torch.equal(load_sids(second / "sids.pt"), sids)
    # same data, same SIDs, same seed: the same model and the same metrics
    assert json.loads((second / "metrics.json").read_text()) | {"test/users_per_s": 0} == (
        metrics | {"test/users_per_s": 0}
    )


@pytest.mark.slow
def test_local_pipeline_compares_models_on_beauty_slice(shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MADREC_CACHE", str(tmp_path / "cache"))
    data = beauty_slice(shared_data, tmp_path)
    out = tmp_path / "runs"
    experiments = ["tiny", "tiger_cpu", "sasrec_cpu"]

    assert cli(["--data", str(data), "--out", str(out), "--param", f"experiments={','.join(experiments)}", *FAST]) == 0
    printed = capsys.readouterr().out
    results = (out / "latest").resolve()
    run_dir = results.parent
    # the ParallelFor's steps run in one folder per iteration
    tasks = {p.parent.name.rstrip("-0123456789") for p in run_dir.rglob("executor_output.json")}
    assert tasks == {"prepare-data", "build-sids", "plan-experiments", "train", "evaluate", "compare-models"}
    assert len(list(run_dir.glob("for-loop-*/train*/executor_output.json"))) == len(experiments)
    # one evaluation per experiment, each on the same users, each a different model
    evaluated = {}
    for output in run_dir.glob("for-loop-*/evaluate*/executor_output.json"):
        artifacts = json.loads(output.read_text())["artifacts"]
        summary = open(artifacts["summary"]["artifacts"][0]["uri"]).read()
        name = next(e for e in experiments if f"experiment `{e}`" in summary)
        evaluated[name] = json.loads(open(artifacts["metrics"]["artifacts"][0]["uri"]).read())
    assert sorted(evaluated) == sorted(experiments)
    users = {m["test/num_users"] for m in evaluated.values()}
    assert len(users) == 1
    for metrics in evaluated.values():
        _check_metrics(metrics, int(next(iter(users))))
    table = (results / "comparison.md").read_text()
    comparison = json.loads((results / "comparison.json").read_text())
    for name, metrics in evaluated.items():
        assert comparison[f"{name}/test/recall@10"] == pytest.approx(metrics["test/recall@10"])
        assert (
            f"| {name} | {metrics['test/recall@5']:.4f} | {metrics['test/ndcg@5']:.4f} | "
            f"{metrics['test/recall@10']:.4f} |" in table
        )
    assert "| most popular |" in table and table in printed
    assert (results / "comparison.html").read_text().lstrip().lower().startswith("<!doctype html")


def interactions_table(folder, users: int = 150, items: int = 100, seed: int = 0):
    """A user's own logs: a Parquet user_id,item_id,timestamp table and an items.csv of texts,
    with string ids and users who favour neighbouring items (something to learn)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    words = ["red", "blue", "soft", "matte", "gloss", "travel", "mini", "rose", "mint", "gold", "clear", "dark"]
    folder.mkdir(parents=True)
    rows = {"user_id": [], "item_id": [], "timestamp": []}
    for u in range(users):
        start = int(rng.integers(0, items))
        for t in range(int(rng.integers(5, 12))):
            rows["user_id"].append(f"user-{u}")
            rows["item_id"].append(f"SKU{(start + t + int(rng.integers(0, 3))) % items:04d}")
            rows["timestamp"].append(1_700_000_000 + 3600 * t + u)
    pq.write_table(pa.table(rows), folder / "logs.parquet")
    lines = ["item_id,text"] + [f"SKU{i:04d},{' '.join(rng.choice(words, 3))} item {i}" for i in range(items)]
    (folder / "items.csv").write_text("\n".join(lines) + "\n")
    return folder / "logs.parquet", folder / "items.csv"


@pytest.mark.slow
def test_local_pipeline_on_an_interactions_table(tmp_path, capsys, monkeypatch):
    """`make run DATA=logs.parquet ITEMS=items.csv`: the interactions kind of prepare-data."""
    monkeypatch.setenv("MADREC_CACHE", str(tmp_path / "cache"))
    logs, items = interactions_table(tmp_path / "mine")
    out = tmp_path / "runs"
    assert (
        cli(
            [
                "--data",
                str(logs),
                "--items",
                str(items),
                "--out",
                str(out),
                *FAST,
                "--param",
                "sid_codebook_size=16",
                "--min-item-count",
                "3",
            ]
        )
        == 0
    )
    assert "interactions: " in capsys.readouterr().out
    results = (out / "latest").resolve()
    dataset = load_dataset(results / "dataset")
    assert dataset.info["dataset"] == "interactions" and dataset.info["min_item_count"] == 3
    assert all(i.startswith("SKU") for i in dataset.item_ids)
    users = len(dataset.splits["testing"].user_ids)
    _check_metrics(json.loads((results / "metrics.json").read_text()), users)
    predictions = pq.read_table(results / "predictions.parquet")
    assert set(predictions.column("item_id").to_pylist()) <= set(dataset.item_ids)
