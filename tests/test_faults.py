"""SIGKILL during every step (issue 13), on a slice of real Amazon Beauty data: nothing a
reader would take for complete output is left behind, and re-running the same command
completes (training resumes from its last checkpoint and ends with the same weights).

Each kill is aimed at the step's write: the process is killed as soon as its temporary
output folder (or checkpoint) appears, so the final rename has not happened yet.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from madrec.data import load_dataset
from madrec.prepare import prepare
from madrec.sids import dedup_digit, load_sids

pytestmark = pytest.mark.slow

USERS = 400  # the slice: the first users of Beauty.txt


def env():
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return e


def madrec(*argv) -> list[str]:
    return [sys.executable, "-m", "madrec.cli", *map(str, argv)]


def run_ok(cmd, cwd):
    proc = subprocess.run(cmd, env=env(), cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def kill_when(cmd, ready, cwd, log: Path, timeout=900) -> None:
    """Run `cmd`, SIGKILL it the moment `ready()` is true; fail if it finished first."""
    hit = False
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env(), cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        try:
            while proc.poll() is None and time.time() < deadline:
                if ready():
                    proc.send_signal(signal.SIGKILL)
                    hit = True
                    break
                time.sleep(0.001)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert hit and proc.returncode == -signal.SIGKILL, \
        f"not killed at the aimed point (rc {proc.returncode}):\n{log.read_text()[-3000:]}"


def temp_of(final: Path):
    """The atomic writer's temporary sibling(s) of `final` (madrec.io)."""
    return list(final.parent.glob(f".{final.name}.tmp-*")) if final.parent.exists() else []


def has_files(final: Path):
    return lambda: any(p.is_file() for t in temp_of(final) for p in ([t] if t.is_file() else t.rglob("*")))


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def visible(folder: Path) -> list[str]:
    """What a reader listing `folder` sees (the writers' temporaries are dot-files)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def beauty(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    lines = (shared_data / "amazon_beauty" / "Beauty.txt").read_text().splitlines()[:USERS]
    (root / "Beauty.txt").write_text("\n".join(lines) + "\n")
    items = shared_data / "amazon_beauty" / "items.jsonl.gz"
    prepare("sequences", str(root / "Beauty.txt"), root / "ref", items=str(items), min_item_count=1)
    return root, items


def test_kill_prepare_data(beauty, tmp_path):
    root, items = beauty
    out = tmp_path / "data"
    cmd = madrec("prepare-data", "--dataset", "sequences", "--source", root / "Beauty.txt", "--items", items,
                 "--min-item-count", "1", "--out", out)
    kill_when(cmd, has_files(out), tmp_path, tmp_path / "1.log")
    assert not out.exists() and visible(tmp_path) == ["1.log"]  # only the hidden temporary is left
    run_ok(cmd, tmp_path)
    assert digest(out) == digest(root / "ref")  # the re-run is complete and byte-identical
    # killed while replacing a complete earlier output: the earlier output stays as it was
    kill_when(cmd, has_files(out), tmp_path, tmp_path / "2.log")
    assert digest(out) == digest(root / "ref")
    load_dataset(out)


def random_sids(num_items: int, seed: int = 0) -> torch.Tensor:
    codes = torch.randint(0, 256, (3, num_items), generator=torch.Generator().manual_seed(seed))
    return torch.cat([codes, dedup_digit(codes)[0].unsqueeze(0)])


def test_kill_ingest_sids(beauty, tmp_path):
    root, _ = beauty
    data = root / "ref"
    n = load_dataset(data, splits=()).num_items
    torch.save(random_sids(n), tmp_path / "grid.pt")
    out = tmp_path / "sids"
    cmd = madrec("ingest-sids", "--source", tmp_path / "grid.pt", "--data", data, "--out", out)
    kill_when(cmd, lambda: bool(temp_of(out)), tmp_path, tmp_path / "1.log")
    assert not out.exists()
    run_ok(cmd, tmp_path)
    assert torch.equal(load_sids(out / "sids.pt", n, 256), random_sids(n))
    assert json.loads((out / "sid_report.json").read_text())["num_items"] == n


def test_kill_build_sids(beauty, tmp_path):
    root, items = beauty
    lines = (root / "Beauty.txt").read_text().splitlines()[:8]  # ~60 items: embedding stays cheap
    (tmp_path / "small.txt").write_text("\n".join(lines) + "\n")
    data = tmp_path / "data"
    prepare("sequences", str(tmp_path / "small.txt"), data, items=str(items), min_item_count=1)
    out = tmp_path / "sids"
    cmd = madrec("build-sids", "--data", data, "--out", out, "--codebook-size", "8", "--levels", "2",
                 "--device", "cpu", "--batch-size", "32")
    # killed after the embeddings are written, during k-means: nothing at OUT
    kill_when(cmd, lambda: any((t / "embeddings.pt").exists() for t in temp_of(out)), tmp_path, tmp_path / "1.log")
    assert not out.exists()
    run_ok(cmd, tmp_path)
    first = load_sids(out / "sids.pt")
    report = json.loads((out / "sid_report.json").read_text())
    assert report["num_items"] == first.shape[1] and first.shape[0] == 3
    # killed while replacing it: the complete earlier output stays
    before = digest(out)
    kill_when(cmd, has_files(out), tmp_path, tmp_path / "2.log")
    assert digest(out) == before


TRAIN = ["experiment=tiny", "model.n_layer=1", "max_len=84", "trainer.num_threads=1", "trainer.progress_bar=false", "model.dropout=0.1",
         "batch_size=32", "trainer.max_steps=24", "trainer.checkpoint_every_n_steps=4", "trainer.val_every_n_steps=12",
         "eval.val_max_users=40", "eval.batch_size=20", "test=false", "trainer.log_every_n_steps=1",
         "optim.scheduler.warmup_steps=4"]


@pytest.fixture(scope="module")
def sids_file(beauty):
    root, _ = beauty
    path = root / "sids.pt"
    if not path.exists():
        torch.save(random_sids(load_dataset(root / "ref", splits=()).num_items), path)
    return path


def test_kill_training_then_resume_gives_the_same_weights(beauty, sids_file, tmp_path):
    root, _ = beauty
    args = [*TRAIN, f"data_dir={root / 'ref'}", f"sid_data_path={sids_file}"]
    run_ok(madrec("train", *args, f"output_dir={tmp_path / 'full'}"), tmp_path)

    killed = tmp_path / "killed"
    last = killed / "checkpoints" / "last.ckpt"
    # killed while its first checkpoint is being written (before the rename), then at the first complete one
    kill_when(madrec("train", *args, f"output_dir={killed}"), has_files(last), tmp_path, tmp_path / "1.log")
    assert not last.exists() and not (killed / "summary.json").exists()
    if (killed / "checkpoints").exists():
        assert not list((killed / "checkpoints").glob("*.ckpt"))
    # the same command again starts afresh (no complete checkpoint to resume from) ...
    kill_when(madrec("train", *args, f"output_dir={killed}"), last.exists, tmp_path, tmp_path / "2.log")
    assert not (killed / "summary.json").exists()  # an interrupted run is not reported as finished
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    assert 0 < stopped_at < 24

    # ... and resuming from the last complete checkpoint ends where the uninterrupted run did
    run_ok(madrec("train", *args, f"output_dir={killed}", f"ckpt_path={last}"), tmp_path)
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["global_step"] == b["global_step"] == 24
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert json.loads((killed / "summary.json").read_text())["global_step"] == 24


def test_kill_evaluate(beauty, sids_file, tmp_path):
    root, _ = beauty
    run = tmp_path / "run"
    run_ok(madrec("train", *TRAIN, "trainer.max_steps=4", "trainer.val_every_n_steps=4",
                  f"data_dir={root / 'ref'}", f"sid_data_path={sids_file}", f"output_dir={run}"), tmp_path)
    out = tmp_path / "eval"
    cmd = madrec("evaluate", f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", f"data_dir={root / 'ref'}",
                 "split=test", f"output_dir={out}", "sweep=false", "compare_unconstrained=false", "predictions=true")
    kill_when(cmd, lambda: bool(temp_of(out)), tmp_path, tmp_path / "1.log")
    assert not out.exists()
    run_ok(cmd, tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/num_users"] == USERS and (out / "report.html").exists()
    assert (out / "predictions.parquet").exists()
