"""What the components run: metrics publishing, overrides, the torchrun launch, the summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from madrec.config import Config
from madrec.config.load import _apply
from madrec.errors import MadrecError
from madrec.ops import steps
from madrec.ops.steps import metrics_table, override_arguments, publish_metrics, run_verb, scalar_metrics
from madrec.overrides import pairs


class FakeMetrics:
    """The parts of kfp.dsl.Metrics a step uses."""

    def __init__(self, path):
        self.path, self.metadata = str(path), {}

    def log_metric(self, name, value):
        self.metadata[name] = value


def test_scalar_metrics_flattens_reports():
    report = {
        "num_items": 12101,
        "collision_rate": 0.11,
        "dedup_digit_follows_rule": True,
        "encoder": "minilm",
        "positions": [{"position": 1, "usage": 1.0, "code_counts": [3, 4]}, {"position": 2, "usage": 0.5}],
        "timings_s": {"embed": 1.5, "bad": float("nan")},
    }
    assert scalar_metrics(report) == {
        "num_items": 12101.0,
        "collision_rate": 0.11,
        "positions/1/position": 1.0,
        "positions/1/usage": 1.0,
        "positions/2/position": 2.0,
        "positions/2/usage": 0.5,
        "timings_s/embed": 1.5,
    }


def test_publish_metrics_logs_and_writes_json(tmp_path):
    metrics = FakeMetrics(tmp_path / "out" / "metrics")
    flat = publish_metrics(metrics, {"test/recall@10": 0.08, "test/num_users": 22363, "note": "x"})
    assert metrics.metadata == flat == {"test/recall@10": 0.08, "test/num_users": 22363.0}
    assert json.loads((tmp_path / "out" / "metrics").read_text()) == flat


def test_override_arguments_read_back_to_the_same_typed_values():
    """A step's struct of overrides becomes its verb's arguments, and the verb's one config
    parser reads back exactly the values the struct held (KFP hands integers over as floats)."""
    assert override_arguments({}) == override_arguments(None) == []
    overrides = {
        "trainer.max_steps": 5.0,
        "model.dropout": 0.1,
        "eval.ks": [5, 10],
        "experiment": "001",
        "trainer.max_minutes": 3.0,
    }
    argv = override_arguments(overrides)
    assert argv[:4] == ["trainer.max_steps=5", "model.dropout=0.1", "eval.ks=[5, 10]", "experiment=001"]
    cfg = Config()
    _apply(cfg, pairs(argv))
    assert (cfg.trainer.max_steps, cfg.model.dropout, cfg.eval.ks, cfg.experiment) == (5, 0.1, [5, 10], "001")
    assert cfg.trainer.max_minutes == 3.0 and isinstance(cfg.trainer.max_minutes, float)
    with pytest.raises(MadrecError, match="the pipeline sets data_dir itself"):
        override_arguments({"batch_size": 8, "data_dir": "/elsewhere"})


def test_metrics_table():
    table = metrics_table(
        {
            "test/recall@10": 0.0815,
            "test/ndcg@10": 0.0436,
            "test/recall@5": 0.0538,
            "test/ndcg@5": 0.0351,
            "test/most_popular/recall@10": 0.01,
            "test/num_users": 5.0,
        }
    )
    assert table.splitlines() == [
        "| K | Recall@K | NDCG@K |",
        "|---:|---:|---:|",
        "| 5 | 0.0538 | 0.0351 |",
        "| 10 | 0.0815 | 0.0436 |",
    ]
    with pytest.raises(MadrecError, match="no recall@K / ndcg@K metrics"):
        metrics_table({"val/loss": 1.0})


def test_run_verb_uses_torchrun_for_several_gpus(monkeypatch):
    calls = []
    monkeypatch.setattr(steps.subprocess, "run", lambda cmd: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    run_verb(["train", "experiment=tiny"], nproc=4)
    assert calls == [
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=4",
            "-m",
            "madrec.cli",
            "train",
            "experiment=tiny",
        ]
    ]
    monkeypatch.setattr(steps.subprocess, "run", lambda cmd: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(SystemExit, match="madrec train failed with exit code 1"):
        run_verb(["train"], nproc=2)


def test_run_verb_in_process_fails_the_step(tmp_path, capsys):
    with pytest.raises(SystemExit, match="madrec prepare-data failed with exit code 2"):
        run_verb(["prepare-data", "--dataset", "sequences", "--out", str(tmp_path / "out")])
    assert "needs --source" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_prepare_step_passes_the_split_protocol(tmp_path, monkeypatch):
    """The pipeline's split parameters reach prepare-data (0 = unset, as a run parameter cannot be
    empty): a temporal cut-off at a quantile, an item hold-out with its seed, and the default."""
    from kfp import dsl

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from components.prepare_data import prepare_data

    rows = ["user_id,item_id,timestamp"] + [f"{u},{(u + t) % 6},{100 * t + u}" for u in range(8) for t in range(6)]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "items.csv").write_text("item_id,text\n" + "".join(f"{i},item {i}\n" for i in range(6)))
    args = dict(kind="interactions", source=str(tmp_path / "log.csv"), items=str(tmp_path / "items.csv"))

    def info(name: str, **protocol) -> dict:
        out = dsl.Dataset(uri=str(tmp_path / name))
        prepare_data.python_func(**args, min_item_count=1, dataset=out, **protocol)
        return json.loads((Path(out.path) / "dataset.json").read_text())

    assert info("loo").get("split", {"kind": "leave-one-out"})["kind"] == "leave-one-out"
    temporal = info("temporal", split="temporal", cutoff_quantile=0.5)["split"]
    assert temporal["kind"] == "temporal" and temporal["cutoff_quantile"] == 0.5
    held = info("held", holdout_items=0.34, holdout_seed=3)
    assert held["split"] == {"kind": "holdout", "holdout_items": 0.34, "seed": 3} and held["num_new_items"] == 2
