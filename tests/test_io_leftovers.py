"""Atomic outputs and the temporaries of writers that died or raced: a SIGKILLed writer's hidden
folder goes on the next run, a live writer's is kept, and writers finishing into one output at
once end with one complete folder or a MadrecError, never an OSError and never leftovers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from madrec import io as mio
from madrec.errors import MadrecError

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # reaped: no process has this pid (until the system reuses it)


def test_a_sigkilled_writers_temporary_is_removed_by_the_next_write(tmp_path):
    script = f"""
        import os, signal
        from madrec.io import atomic_dir
        with atomic_dir({str(tmp_path / "ev")!r}) as tmp:
            (tmp / "metrics.json").write_text("{{}}")
            os.kill(os.getpid(), signal.SIGKILL)
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=ENV, timeout=120)
    assert done.returncode == -9
    assert len(_hidden(tmp_path)) == 1 and _hidden(tmp_path)[0].startswith(".ev.tmp-")
    with mio.atomic_dir(tmp_path / "ev") as tmp:
        (tmp / "metrics.json").write_text("{}")
    assert _hidden(tmp_path) == [] and (tmp_path / "ev" / "metrics.json").is_file()


def test_dead_writers_leftovers_go_live_and_unrelated_ones_stay(tmp_path):
    dead, host = _dead_pid(), mio._host()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for name in (f".out.tmp-{host}.{dead}-abc", f".out.old-{host}.{dead}-0", f".out.tmp-{host}.{live.pid}-xyz"):
            (tmp_path / name).mkdir()
        (tmp_path / f".out.tmp-{host}.{dead}-file").write_text("half")
        (tmp_path / ".out.tmp-oldnaming").mkdir()  # an older madrec's name, recent: whose it is cannot be told
        ancient = tmp_path / ".out.tmp-0123abcd.77-q"  # another host's, two days old
        ancient.mkdir()
        os.utime(ancient, (time.time() - 2 * 86400,) * 2)
        (tmp_path / ".other.tmp-x").mkdir()  # another output's
        (tmp_path / ".out.tmp-not-madrec's").mkdir()  # a name no madrec writes, however old
        os.utime(tmp_path / ".out.tmp-not-madrec's", (time.time() - 2 * 86400,) * 2)
        with mio.atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a").write_text("1")
        kept = [".other.tmp-x", ".out.tmp-oldnaming", ".out.tmp-not-madrec's", f".out.tmp-{host}.{live.pid}-xyz"]
        assert _hidden(tmp_path) == sorted(kept)
    finally:
        live.kill()
        live.wait()
    (tmp_path / f".log.txt.tmp-{host}.{dead}-q").write_text("half")
    with mio.atomic_file(tmp_path / "log.txt") as fh:  # a file output cleans the same way
        fh.write(b"x")
    assert f".log.txt.tmp-{host}.{dead}-q" not in _hidden(tmp_path) and (tmp_path / "log.txt").read_bytes() == b"x"


RACER = """
import os, sys
from madrec.errors import MadrecError
from madrec.io import atomic_dir, atomic_file
kind, final, go, me = sys.argv[1:5]
try:
    if kind == "dir":
        with atomic_dir(final) as tmp:
            for k in range(100):
                (tmp / f"part-{k}").write_text(me)
            gate = os.open(go, os.O_RDONLY)
            open(go + "." + me, "w").close()  # ready
            os.read(gate, 1)  # blocks until the test closes the FIFO: every writer wakes at once
    else:
        with atomic_file(final, "w") as fh:
            fh.write(me * 10000)
            fh.flush()
            gate = os.open(go, os.O_RDONLY)
            open(go + "." + me, "w").close()
            os.read(gate, 1)
except MadrecError as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
"""


def _race(tmp_path: Path, kind: str, final: Path, writers: int = 8) -> list[tuple[int, str]]:
    """Start `writers` processes writing into `final`, wait until each has written its temporary,
    then wake them all at once (closing a FIFO they block on); the (exit status, stderr) of each."""
    gates = tmp_path / "gates"
    gates.mkdir(exist_ok=True)
    go = gates / f"go-{time.monotonic_ns()}"
    os.mkfifo(go)
    held = os.open(go, os.O_RDWR)  # the one writer end: the racers' reads block until it is closed
    try:
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", RACER, kind, str(final), str(go), f"w{i}"],
                env=ENV,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(writers)
        ]
        deadline = time.monotonic() + 60
        while len(list(gates.glob(f"{go.name}.w*"))) < writers and time.monotonic() < deadline:
            assert all(r.poll() is None for r in racers), "a racer ended before the start"
            time.sleep(0.01)
        time.sleep(0.05)  # the last one said it is ready; let it get into read()
    finally:
        os.close(held)
    results = [(r.wait(120), r.stderr.read()) for r in racers]
    shutil.rmtree(gates)
    assert all(rc in (0, 3) for rc, _ in results), [err.strip().splitlines()[-1:] for _, err in results]
    assert all("other writers replaced this output at the same time" in err for rc, err in results if rc == 3)
    return results


@pytest.mark.slow
def test_writers_finishing_into_one_output_at_once_win_cleanly_or_are_refused(tmp_path):
    final = tmp_path / "out"
    for _ in range(4):
        _race(tmp_path, "dir", final)
        parts = sorted(final.iterdir())
        assert len(parts) == 100 and len({p.read_text() for p in parts}) == 1, "not one writer's complete output"
        assert _hidden(tmp_path) == []


@pytest.mark.slow
def test_file_writers_finishing_at_once_leave_one_complete_file(tmp_path):
    final = tmp_path / "out.txt"
    for _ in range(2):
        results = _race(tmp_path, "file", final)
        assert all(rc == 0 for rc, _ in results)  # renaming a file onto a file cannot collide
        text = final.read_text()
        assert len(text) == 20000 and text == text[:2] * 10000
        assert _hidden(tmp_path) == []


def test_threads_of_one_process_finishing_at_once_do_not_collide(tmp_path):
    final, errors = tmp_path / "out", []
    barrier = threading.Barrier(8)

    def write(me: str) -> None:
        try:
            with mio.atomic_dir(final) as tmp:
                (tmp / "a").write_text(me)
                (tmp / "b").write_text(me)
                barrier.wait(10)
        except MadrecError:
            pass
        except BaseException as exc:  # any other is a failure
            errors.append(exc)

    for _ in range(5):
        threads = [threading.Thread(target=write, args=(f"t{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert (final / "a").read_text() == (final / "b").read_text() and sorted(os.listdir(final)) == ["a", "b"]
        assert _hidden(tmp_path) == []


def test_a_rename_race_lost_every_time_is_a_madrec_error_and_leaves_nothing(tmp_path, monkeypatch):
    final = tmp_path / "out"
    real = os.replace

    def competitor_arrives_first(src, dst):
        if Path(dst) == final and Path(src).name.startswith(".out.tmp-"):
            final.mkdir(exist_ok=True)
            (final / "theirs").write_text("x")
        return real(src, dst)

    monkeypatch.setattr(mio.os, "replace", competitor_arrives_first)
    with pytest.raises(MadrecError, match=r"out: other writers replaced this output at the same time, 5 times"):
        with mio.atomic_dir(final) as tmp:
            (tmp / "mine").write_text("y")
    assert _hidden(tmp_path) == []


def test_a_failed_rename_puts_the_previous_output_back(tmp_path, monkeypatch):
    final = tmp_path / "out"
    with mio.atomic_dir(final) as tmp:
        (tmp / "v1").write_text("1")
    real = os.replace

    def no_space(src, dst):
        if Path(dst) == final and Path(src).name.startswith(".out.tmp-"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(mio.os, "replace", no_space)
    with pytest.raises(OSError, match="No space left"):
        with mio.atomic_dir(final) as tmp:
            (tmp / "v2").write_text("2")
    assert os.listdir(final) == ["v1"] and _hidden(tmp_path) == []
