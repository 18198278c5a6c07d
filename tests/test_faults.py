"""SIGKILL during every step (issue 13), on a slice of real Amazon Beauty data: nothing a
reader would take for complete output is left behind, and re-running the same command
completes (training resumes from its last checkpoint and ends with the same weights).

Each kill is aimed at the step's write: the process is killed as soon as its temporary
output folder (or checkpoint) appears, so the final rename has not happened yet.

A local pipeline run (`madrec run-local`) killed with all its steps during training, then
re-run: the steps that had finished are reused from kfp's local step cache, the run completes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from madrec.checkpoint import load_checkpoint
from madrec.data.dataset import load_dataset
from madrec.data.prepare import prepare
from madrec.sids.format import dedup_digit, load_sids

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


def kill_when(cmd, ready, cwd, log: Path, timeout=900, group=False, poll=0.001) -> None:
    """Run `cmd`, SIGKILL it the moment `ready()` is true; fail if it finished first. With
    `group`, `cmd` runs in a process group of its own and the whole group is killed (a pipeline
    and the steps it started), and this returns once none of them is left."""
    hit = False
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env(), cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=group)
        deadline = time.time() + timeout
        try:
            while proc.poll() is None and time.time() < deadline:
                if ready():
                    if group:
                        os.killpg(proc.pid, signal.SIGKILL)
                    else:
                        proc.send_signal(signal.SIGKILL)
                    hit = True
                    break
                time.sleep(poll)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert hit and proc.returncode == -signal.SIGKILL, (
        f"not killed at the aimed point (rc {proc.returncode}):\n{log.read_text()[-3000:]}"
    )
    if group:  # the steps die with the pipeline: nothing keeps writing into the killed run
        while group_alive(proc.pid) and time.time() < deadline:
            time.sleep(0.05)
        assert not group_alive(proc.pid), f"process group {proc.pid} still alive after SIGKILL"


def group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies waiting to be reaped do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rpartition(")")[2].split()[:3]
        except OSError:
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def temp_of(final: Path):
    """The atomic writer's temporary sibling(s) of `final` (madrec.io)."""
    return list(final.parent.glob(f".{final.name}.tmp-*")) if final.parent.exists() else []


def has_files(final: Path):
    return lambda: any(p.is_file() for t in temp_of(final) for p in ([t] if t.is_file() else t.rglob("*")))


def digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


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
    cmd = madrec(
        "prepare-data",
        "--dataset",
        "sequences",
        "--source",
        root / "Beauty.txt",
        "--items",
        items,
        "--min-item-count",
        "1",
        "--out",
        out,
    )
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
    cmd = madrec(
        "build-sids",
        "--data",
        data,
        "--out",
        out,
        "--codebook-size",
        "8",
        "--levels",
        "2",
        "--device",
        "cpu",
        "--batch-size",
        "32",
    )
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


TRAIN = [
    "experiment=tiny",
    "model.n_layer=1",
    "max_len=84",
    "trainer.num_threads=1",
    "trainer.progress_bar=false",
    "model.dropout=0.1",
    "batch_size=32",
    "trainer.max_steps=24",
    "trainer.checkpoint_every_n_steps=4",
    "trainer.val_every_n_steps=12",
    "eval.val_max_users=40",
    "eval.batch_size=20",
    "test=false",
    "trainer.log_every_n_steps=1",
    "optim.scheduler.warmup_steps=4",
]


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
    run_ok(
        madrec(
            "train",
            *TRAIN,
            "trainer.max_steps=4",
            "trainer.val_every_n_steps=4",
            f"data_dir={root / 'ref'}",
            f"sid_data_path={sids_file}",
            f"output_dir={run}",
        ),
        tmp_path,
    )
    out = tmp_path / "eval"
    cmd = madrec(
        "evaluate",
        f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
        f"data_dir={root / 'ref'}",
        "split=test",
        f"output_dir={out}",
        "sweep=false",
        "compare_unconstrained=false",
        "predictions=true",
    )
    kill_when(cmd, lambda: bool(temp_of(out)), tmp_path, tmp_path / "1.log")
    assert not out.exists()
    run_ok(cmd, tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/num_users"] == USERS and (out / "report.html").exists()
    assert (out / "predictions.parquet").exists()


# `madrec run-local` with the code fingerprint pinned: the killed run and the re-run share one
# step cache even if the checkout is edited in between (shared working trees; as in test_pipeline_local)
RUN_LOCAL = (
    "import sys; from madrec.cli import main; from madrec.ops import local_run; "
    "local_run.code_fingerprint = lambda: 'test'; sys.exit(main(['run-local', *sys.argv[1:]]))"
)
PIPELINE = [
    "--param",
    "sid_levels=2",
    "--param",
    "sid_codebook_size=16",
    "--param",
    "eval_overrides.sweep=false",
    "--param",
    "eval_overrides.compare_unconstrained=false",
    "trainer.max_steps=200",
    "trainer.checkpoint_every_n_steps=4",
    "trainer.val_every_n_steps=200",
    "eval.val_max_users=40",
    "trainer.progress_bar=false",
]


def finished_tasks(run_dir: Path) -> set[str]:
    """The steps that ran to the end in `run_dir` (kfp writes executor_output.json last)."""
    return {p.name.rstrip("-0123456789") for p in run_dir.iterdir() if (p / "executor_output.json").is_file()}


def stamps(*folders: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for f in folders for p in [f, *f.rglob("*")]}


def test_kill_local_pipeline_during_training_then_rerun_reuses_finished_steps(beauty, tmp_path, monkeypatch):
    root, items = beauty
    monkeypatch.setenv("MADREC_CACHE", str(tmp_path / "cache"))  # build-sids' embeddings, inherited
    data = tmp_path / "beauty"
    data.mkdir()
    (data / "Beauty.txt").symlink_to(root / "Beauty.txt")
    (data / "items.jsonl.gz").symlink_to(items)
    out = tmp_path / "runs"
    cmd = [sys.executable, "-c", RUN_LOCAL, "--data", data, "--out", out, *PIPELINE]

    # killed (the pipeline and every step it started) once training has written a checkpoint
    kill_when(
        cmd,
        lambda: any(out.glob("*/train*/run/checkpoints/last.ckpt")),
        tmp_path,
        tmp_path / "1.log",
        group=True,
        poll=0.05,
    )
    [killed] = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert finished_tasks(killed) == {"prepare-data", "build-sids"}
    [train] = killed.glob("train*")
    assert not (train / "model").exists() and not (train / "run" / "summary.json").exists()
    assert not (out / "latest").exists()  # nothing is presented as a finished run
    # the step cache holds the two finished steps, nothing of the killed training
    entries = [p.read_text() for p in (out / ".cache").rglob("*.json")]
    assert len(entries) == 2 and all(str(train) not in e for e in entries)
    assert sum(str(killed / "prepare-data") in e for e in entries) == 1
    assert sum(str(killed / "build-sids") in e for e in entries) == 1
    before = stamps(killed / "prepare-data", killed / "build-sids")

    # the same command again: prepare-data and build-sids are served from the killed run, training
    # runs afresh in the new run (never from the half-finished folder), and the run completes
    proc = run_ok(cmd, tmp_path)
    log = proc.stdout + proc.stderr  # kfp logs a cache hit on stderr
    for step in ("prepare-data", "build-sids"):
        assert re.search(rf"Task \W*{step}\W* cache hit", log), f"{step} was not reused:\n{log[-3000:]}"
    [rerun] = [
        p for p in out.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and p != killed
    ]
    assert finished_tasks(rerun) == {"train", "evaluate", "deploy"}  # cache hits leave no step folder
    assert stamps(killed / "prepare-data", killed / "build-sids") == before  # not rewritten
    latest = out / "latest"
    assert latest.resolve() == rerun / "results"
    assert Path(os.path.realpath(latest / "dataset")) == killed / "prepare-data" / "dataset"
    assert Path(os.path.realpath(latest / "sids.pt")) == killed / "build-sids" / "sids"
    for link in latest.iterdir():  # no result comes from the killed training
        assert not Path(os.path.realpath(link)).is_relative_to(train), link
    assert Path(os.path.realpath(latest / "model.ckpt")).is_relative_to(rerun)
    assert load_checkpoint(latest / "model.ckpt").global_step > 0
    assert "global_step" in json.loads((latest / "train_run" / "summary.json").read_text())
    metrics = json.loads((latest / "metrics.json").read_text())
    users = len(load_dataset(latest / "dataset").splits["testing"].user_ids)
    assert metrics["test/num_users"] == users > 0
