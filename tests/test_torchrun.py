"""`madrec train` under torchrun: 2 CPU processes (gloo), rendezvous from the environment.

Kubeflow Trainer's torch plugin sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
PET_MASTER_ADDR and PET_MASTER_PORT on each node and runs `torchrun -m madrec.cli train ...`
(madrec.ops.trainjob.COMMAND); torchrun reads them as its defaults and hands every process RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. This test does exactly that on one node.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from madrec.checkpoint import load_checkpoint
from madrec.data.dataset import load_dataset
from madrec.evaluate.run import evaluate_split
from madrec.ops.trainjob import COMMAND

from planted import planted_dataset

pytestmark = pytest.mark.slow  # trains under torchrun with two processes

TORCHRUN = Path(sys.executable).with_name("torchrun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_training_matches_single_process_evaluation(tmp_path):
    data, sids = planted_dataset(tmp_path, num_users=120)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(
        PET_NNODES="1",
        PET_NPROC_PER_NODE="2",
        PET_NODE_RANK="0",
        PET_MASTER_ADDR="127.0.0.1",
        PET_MASTER_PORT=str(free_port()),
        OMP_NUM_THREADS="1",
    )
    assert COMMAND[:3] == ("torchrun", "-m", "madrec.cli")
    cmd = [
        str(TORCHRUN),
        "--nproc_per_node",
        "2",
        *COMMAND[1:],
        "experiment=tiny",
        f"data_dir={data}",
        f"sid_data_path={sids}",
        f"output_dir={out}",
        "codebook_size=8",
        "batch_size=32",
        "max_len=30",
        "model.dropout=0",
        "trainer.max_steps=40",
        "trainer.val_every_n_steps=20",
        "optim.scheduler.warmup_steps=5",
        "eval.val_max_users=0",
        "eval.batch_size=16",
        "trainer.num_threads=1",
        "trainer.progress_bar=false",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 40
    # users are sharded over the two processes and gathered: the metrics equal a
    # single-process evaluation of the same checkpoint, to the last bit
    loaded = load_checkpoint(out / "checkpoints" / "best.ckpt")
    splits = load_dataset(data).splits
    for name, prefix in (("evaluation", "val"), ("testing", "test")):
        single = evaluate_split(
            loaded.model, loaded.vocab, loaded.sids, splits[name], loaded.max_len, batch_size=7, progress=False
        )
        for key in ("recall@5", "recall@10", "ndcg@5", "ndcg@10"):
            assert summary[f"{prefix}/{key}"] == single[key], (prefix, key)
        assert summary[f"{prefix}/num_users"] == 120
