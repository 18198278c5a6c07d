"""Two-process training (torchrun, gloo, CPU) ends with the weights of one process for the
same global batch (issue 13).

The noise of the masked-diffusion objective is drawn per (seed, step, rank) (madrec.train.run),
so two processes see other masks than one; the objective itself is the same. To compare
the weights, the noise is taken out: t_min = 1 - 1e-9 is t = 1.0 in float32, so every
token the masking policy may noise is masked with weight 1, and dropout is off. What is
left is exactly the data-parallel path: the global batch split over the ranks, the loss
normalised by the global weight sum, gradients averaged by DDP, one optimiser per rank.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from planted import planted_dataset

pytestmark = pytest.mark.slow

TORCHRUN = Path(sys.executable).with_name("torchrun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_end_with_the_one_process_weights(tmp_path):
    data, sids = planted_dataset(tmp_path, num_users=120)
    args = [
        "experiment=tiny",
        f"data_dir={data}",
        f"sid_data_path={sids}",
        "codebook_size=8",
        "batch_size=32",
        "max_len=30",
        "model.dropout=0",
        "diffusion.t_min=0.999999999",
        "trainer.max_steps=30",
        "trainer.precision=32-true",  # auto is bf16 on CPUs with native bf16: its rounding depends on the split
        "trainer.val_every_n_steps=30",
        "optim.scheduler.warmup_steps=5",
        "eval.val_max_users=20",
        "eval.batch_size=20",
        "trainer.num_threads=1",
        "trainer.progress_bar=false",
        "test=false",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    one = subprocess.run(
        [sys.executable, "-m", "madrec.cli", "train", *args, f"output_dir={tmp_path / 'one'}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert one.returncode == 0, one.stderr[-4000:]
    two = subprocess.run(
        [
            str(TORCHRUN),
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "madrec.cli",
            "train",
            *args,
            f"output_dir={tmp_path / 'two'}",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-4000:]

    a = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 30
    assert a["state_dict"].keys() == b["state_dict"].keys()
    worst = max(float((a["state_dict"][k].float() - b["state_dict"][k].float()).abs().max()) for k in a["state_dict"])
    moved = max(float((a["state_dict"][k].float()).abs().max()) for k in a["state_dict"])
    assert worst < 1e-4, f"largest weight difference {worst:.2e} (weights up to {moved:.2f})"
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-4, atol=1e-4)
