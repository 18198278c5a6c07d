"""bench/train/bench_train.py: the throughput benchmark runs the real training step and profiles it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "train" / "bench_train.py"


@pytest.fixture(scope="module")
def bench_train():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_writes_the_timed_steps_top_operators(bench_train, tmp_path):
    """--profile: the operators of the timed steps (a transformer's matmuls among them), with the command."""
    out = tmp_path / "profile.txt"
    argv = ["--model", "tiny", "--steps", "2", "--warmup", "1", "--threads", "1", "--batch-size", "8"]
    result = bench_train.main([*argv, "--override", "model.pool_slot=true", "--profile", str(out)])
    assert result["steps"] == 2 and result["ms_per_step"] > 0
    text = out.read_text()
    assert text.startswith("bench_train.py --model tiny") and "model.pool_slot=true" in text
    assert "aten::" in text and ("aten::mm" in text or "aten::addmm" in text)
