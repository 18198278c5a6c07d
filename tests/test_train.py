"""Training end to end on synthetic data with planted rules; checkpoints; exact resume."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from madrec.checkpoint import load_checkpoint
from madrec.config import config_from_dict, load_config
from madrec.data.dataset import load_dataset
from madrec.errors import MadrecError
from madrec.evaluate.run import evaluate_split
from madrec.models.tokens import SIDVocab

from planted import TRAIN_ARGS, planted_dataset

# small and single-threaded: the planted rule is learned in well under a minute on a shared CPU
ARGS = ["experiment=tiny", *TRAIN_ARGS]


def run(cfg):
    """madrec.train.run.run, imported when a test trains (Lightning takes seconds to import)."""
    from madrec.train.run import run as train_run

    return train_run(cfg)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_dataset(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def trained(planted, tmp_path_factory):
    data, sids = planted
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = load_config(
        [
            *ARGS,
            f"data_dir={data}",
            f"sid_data_path={sids}",
            f"output_dir={out}",
            "trainer.max_steps=700",
            "trainer.val_every_n_steps=350",
        ]
    )
    return cfg, run(cfg)


@pytest.mark.slow
def test_planted_next_item_rule_is_learned(trained):
    _, summary = trained
    assert summary["val/recall@10"] >= 0.9
    assert summary["test/recall@10"] >= 0.8
    assert summary["val/invalid_sid_rate"] == 0.0


@pytest.mark.slow
def test_run_writes_checkpoints_logs_and_summary(trained):
    cfg, summary = trained
    out = cfg.output_dir
    with open(f"{out}/metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = set(rows[0])
    assert {
        "step",
        "train/loss",
        "lr",
        "train/tokens_per_s",
        "val/recall@5",
        "val/ndcg@10",
        "test/recall@10",
    } <= columns
    losses = [float(r["train/loss"]) for r in rows if r["train/loss"]]
    assert len(losses) == 700 // cfg.trainer.log_every_n_steps and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert sum(bool(r["val/recall@5"]) for r in rows) == 3  # steps 350, 700, then the final best-weights pass
    assert json.loads(open(f"{out}/summary.json").read()) == summary
    assert summary["global_step"] == 700 and summary["best_step"] in (350, 700)
    assert summary["best_checkpoint"] == f"{out}/checkpoints/best.ckpt"
    assert config_from_dict(yaml.safe_load(open(f"{out}/config.yaml")), "config.yaml") == cfg


@pytest.mark.slow
def test_checkpoint_is_self_contained(trained, planted):
    cfg, summary = trained
    loaded = load_checkpoint(f"{cfg.output_dir}/checkpoints/best.ckpt")
    data = load_dataset(planted[0])
    assert not loaded.model.training and loaded.config == cfg and loaded.max_len == 30
    assert loaded.vocab == SIDVocab(sid_len=3, codebook_size=8)
    assert torch.equal(loaded.sids, torch.load(planted[1])) and loaded.item_ids == data.item_ids
    metrics = evaluate_split(
        loaded.model, loaded.vocab, loaded.sids, data.splits["evaluation"], loaded.max_len, progress=False
    )
    assert metrics["recall@10"] == summary["val/recall@10"] and metrics["ndcg@5"] == summary["val/ndcg@5"]


@pytest.mark.slow
def test_train_false_evaluates_the_checkpoint_only(trained, planted, tmp_path):
    cfg, summary = trained
    ckpt = f"{cfg.output_dir}/checkpoints/best.ckpt"
    result = run(
        load_config([*ARGS, f"data_dir={planted[0]}", "train=false", f"ckpt_path={ckpt}", f"output_dir={tmp_path}"])
    )
    for key in ("val/recall@5", "val/recall@10", "test/recall@10", "test/ndcg@10"):
        assert result[key] == summary[key]
    assert json.loads((tmp_path / "summary.json").read_text())["checkpoint"] == ckpt
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_inconsistent_runs_are_refused(trained, planted, tmp_path):
    cfg, _ = trained
    data, sids = planted
    base = [*ARGS, f"data_dir={data}", f"sid_data_path={sids}"]
    with pytest.raises(MadrecError, match="already holds a run"):
        run(load_config([*base, f"output_dir={cfg.output_dir}"]))
    last = f"{cfg.output_dir}/checkpoints/last.ckpt"
    with pytest.raises(MadrecError, match="model"):
        run(load_config([*base, f"output_dir={tmp_path}", f"ckpt_path={last}", "model.n_layer=3"]))
    other = tmp_path / "other_sids.pt"
    torch.save(torch.load(sids).flip(1), other)
    with pytest.raises(MadrecError, match="differs from the SID table"):
        run(load_config([*base, f"output_dir={tmp_path}", f"ckpt_path={last}", f"sid_data_path={other}"]))
    with pytest.raises(MadrecError, match="does not exist"):
        run(load_config([*base, f"output_dir={tmp_path}", f"ckpt_path={tmp_path}/missing.ckpt"]))


def _rows(path, columns):
    with open(path, newline="") as fh:
        return [{c: r.get(c) for c in columns} for r in csv.DictReader(fh)]


@pytest.mark.slow
@pytest.mark.parametrize("ema_decay, dropout, candidates", [(0.0, "0.2", 64), (0.9, "auto", 64), (0.9, "0", 16)])
def test_resume_after_kill_gives_the_same_weights(planted, tmp_path, ema_decay, dropout, candidates):
    """candidates 16 (the 40 items > 2 x 16): a sampled head, a sparse item table, lazy optimiser rows and
    weight average resume exactly too."""
    data, sids = planted
    args = [
        *ARGS,
        f"model.head_candidates={candidates}",
        f"trainer.ema_decay={ema_decay}",
        f"data_dir={data}",
        f"sid_data_path={sids}",
        "trainer.max_steps=40",
        f"model.dropout={dropout}",
        "test=false",
        "eval.val_max_users=50",
        "trainer.val_every_n_steps=15",
        "trainer.checkpoint_every_n_steps=3",
        "trainer.log_every_n_steps=1",
    ]
    run(load_config([*args, f"output_dir={tmp_path / 'full'}"]))

    killed = tmp_path / "killed"
    last = killed / "checkpoints" / "last.ckpt"
    # The worst moment for a kill: the process dies the instant its first last.ckpt is on disk.
    die_after_first_checkpoint = (
        "import os, sys\n"
        "from madrec.train import callbacks as tc\n"
        "save = tc.AtomicCheckpointIO.save_checkpoint\n"
        "def save_then_die(self, *a, **k):\n"
        "    save(self, *a, **k)\n"
        "    os._exit(137)\n"
        "tc.AtomicCheckpointIO.save_checkpoint = save_then_die\n"
        "from madrec.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.run(
            [sys.executable, "-c", die_after_first_checkpoint, "train", *args, f"output_dir={killed}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    assert proc.returncode == 137 and last.exists(), (tmp_path / "killed.log").read_text()[-3000:]
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    assert 0 < stopped_at < 40

    run(load_config([*args, f"output_dir={killed}", f"ckpt_path={last}"]))
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["global_step"] == b["global_step"] == 40
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    if ema_decay:  # state_dict holds the average; the raw weights ride along and resume exactly too
        assert a["current_model_state"].keys() == a["state_dict"].keys()
        for key, value in a["current_model_state"].items():
            assert torch.equal(value, b["current_model_state"][key]), key
        differ = [k for k, v in a["state_dict"].items() if not torch.equal(v, a["current_model_state"][k])]
        assert any("embed.weight" in k for k in differ)
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    # the logged history matches too: same losses at the same steps, the killed tail replaced
    columns = ("step", "train/loss", "lr", "val/recall@10")
    assert _rows(tmp_path / "full" / "metrics.csv", columns) == _rows(killed / "metrics.csv", columns)


def test_ema_forgets_the_first_weights_then_averages_at_the_configured_decay():
    from madrec.train.ema import ema_update

    avg, cur = torch.zeros(3), torch.ones(3)
    first = ema_update(avg, cur, torch.tensor(1), decay=0.999)  # decay (1 + 1) / (10 + 1)
    assert torch.allclose(first, torch.full((3,), 9 / 11))
    late = ema_update(avg, cur, torch.tensor(100_000), decay=0.999)  # the ramp is past 0.999
    assert torch.allclose(late, torch.full((3,), 0.001))


def test_lr_schedule_warms_up_then_decays_linearly():
    from madrec.train.module import lr_factor

    f = [lr_factor(s, warmup=10, max_steps=110, min_ratio=0.1) for s in range(0, 121)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.1 + 0.9 * 0.5) and f[110] == pytest.approx(0.1) and f[120] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "per_item, dropout",
    # the ends and the geometric middle; Beauty, Toys and MovieLens-1M (docs/method.md)
    [(2, 0.5), (10, 0.5), (54.77, 0.35), (150, 0.25), (300, 0.2), (5000, 0.2), (12.7, 0.5), (10.8, 0.5), (289.1, 0.2)],
)
def test_auto_dropout_follows_interactions_per_item(per_item, dropout):
    from madrec.train.run import resolve_dropout

    num_items = 1000
    sequences = [np.arange(10)] * int(round(per_item * num_items / 10))
    cfg = load_config([*ARGS, "data_dir=/d", "sid_data_path=/s", "model.dropout=auto"])
    assert resolve_dropout(cfg, sequences, num_items).model.dropout == pytest.approx(dropout, abs=0.005)
    fixed = load_config([*ARGS, "data_dir=/d", "sid_data_path=/s", "model.dropout=0.1"])
    assert resolve_dropout(fixed, sequences, num_items) is fixed


def test_no_network_is_built_before_auto_dropout_is_resolved():
    from madrec import models

    cfg = load_config([*ARGS, "data_dir=/d", "sid_data_path=/s", "model.dropout=auto"])
    with pytest.raises(MadrecError, match="model.dropout: 'auto' is set from the training data"):
        models.build(cfg, SIDVocab(sid_len=3, codebook_size=8), torch.zeros(3, 5, dtype=torch.long))


@pytest.mark.parametrize("budget", [0.0, 0.03])
def test_the_progress_bar_shows_the_budget_not_an_eta_for_max_steps(planted, tmp_path, capfd, budget):
    data, sids = planted
    steps = "trainer.max_steps=1000000" if budget else "trainer.max_steps=30"
    cfg = load_config(
        [*ARGS, f"data_dir={data}", f"sid_data_path={sids}", f"output_dir={tmp_path / 'run'}", steps]
        + [f"trainer.max_minutes={budget}", "trainer.progress_bar=true", "trainer.log_every_n_steps=5", "test=false"]
    )
    run(cfg)
    captured = capfd.readouterr()
    bar = [line for line in (captured.out + captured.err).replace("\r", "\n").splitlines() if "train steps" in line]
    assert bar, "no progress bar"
    if budget:  # steps so far, elapsed time and steps/s; no total of a million steps, no ETA
        assert all("budget 0.03 min" in line and "1000000" not in line for line in bar), bar[-1]
        assert "step/s" in bar[-1] or "s/step" in bar[-1], bar[-1]
    else:
        assert "/30" in bar[-1], bar[-1]


def test_test_false_never_reads_the_test_split(planted, tmp_path):
    """The pipeline's train step runs test=false (evaluate owns the test split): testing/ is not
    decoded at all, so a corrupt one stops only a run that tests (bench/scale: load time at 100k)."""
    import shutil

    data, sids = planted
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    for shard in (copy / "testing").iterdir():
        shard.write_bytes(b"not a tfrecord")
    base = [*ARGS, f"data_dir={copy}", f"sid_data_path={sids}", "trainer.max_steps=2", "trainer.val_every_n_steps=2"]
    summary = run(load_config([*base, f"output_dir={tmp_path / 'a'}", "test=false"]))
    assert summary["global_step"] == 2 and not any(k.startswith("test/") for k in summary)
    with pytest.raises(MadrecError, match="testing"):
        run(load_config([*base, f"output_dir={tmp_path / 'b'}", "test=true"]))


def test_each_lightning_log_line_is_printed_once(planted, tmp_path):
    """`madrec train` in a fresh interpreter: Lightning's own stderr handlers printed every one of
    its lines a second time beside madrec's."""
    data, sids = planted
    argv = [*ARGS, f"data_dir={data}", f"sid_data_path={sids}", f"output_dir={tmp_path / 'run'}"]
    argv += ["trainer.max_steps=2", "trainer.val_every_n_steps=2", "trainer.progress_bar=false", "test=false"]
    done = subprocess.run([sys.executable, "-m", "madrec.cli", "train", *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if "GPU available" in line]
    assert len(lines) == 1 and " INFO lightning.pytorch" in lines[0], lines
