"""Every probe of the security and hardening review, run against this checkout: the crafted
files, requests and interruptions that once ran code, took the model down, answered 500, printed
a traceback, were accepted silently or left temporaries behind. Writes a table probe -> expected
-> outcome to bench/reliability/results.md (with commit, machine, date and load).

    .venv/bin/python bench/reliability/probes.py [--out bench/reliability/results.md]

About 2 minutes on 2 cores: one 10-step training of the `tiny` experiment on a planted dataset
(its checkpoint is served and evaluated), a resume from a loopback URL, a loopback server, CLI
subprocesses. Exit status 1 when any probe did not behave as expected.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # the planted dataset and the switching server of the tests

import torch  # noqa: E402
from test_remote_resume import SwitchingSource, _RunsCode  # noqa: E402

from madrec.config import load_config  # noqa: E402
from madrec.train.run import run as train_run  # noqa: E402

from planted import TRAIN_ARGS, planted_dataset  # noqa: E402

MADREC = [sys.executable, "-m", "madrec.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MADREC_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


@dataclass
class Row:
    item: str
    probe: str
    expected: str
    outcome: str
    ok: bool


ROWS: list[Row] = []


def record(item: str, probe: str, expected: str, outcome: str, ok: bool) -> None:
    ROWS.append(Row(item, probe, expected, outcome, ok))
    print(f"[{'ok' if ok else 'FAIL'}] {item} {probe}: {outcome}", flush=True)


def cli(*args: str, timeout: float = 300) -> tuple[int, list[str]]:
    """Run `madrec ARGS` in a fresh process; (exit code, stderr lines that are not log records)."""
    done = subprocess.run([*MADREC, *args], capture_output=True, text=True, env=ENV, timeout=timeout)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not re.match(r"^\d{4}-\d\d-\d\d \d", ln)]
    return done.returncode, lines


def one_line_error(item: str, probe: str, args: list[str], says: str) -> None:
    rc, err = cli(*args)
    ok = rc == 2 and len(err) == 1 and says in err[0] and "Traceback" not in "\n".join(err)
    shown = err[0] if len(err) == 1 else f"{len(err)} stderr lines, last: {err[-1] if err else ''}"
    record(item, probe, f"exit 2, one line naming `{says}`", f"exit {rc}: {shown[:160]}", ok)


# --- fixtures: a trained checkpoint and its data ------------------------------------------


def train_checkpoint(work: Path) -> tuple[Path, Path, Path, list[str]]:
    data, sids = planted_dataset(work / "planted")
    base = ["experiment=tiny", *TRAIN_ARGS, f"data_dir={data}", f"sid_data_path={sids}", "trainer.val_every_n_steps=10"]
    train_run(load_config([*base, f"output_dir={work / 'run'}", "trainer.max_steps=10"]))
    return work / "run" / "checkpoints" / "last.ckpt", data, sids, base


# --- item 1: resume from a URL ------------------------------------------------------------


def probe_remote_resume(work: Path, ckpt: Path, base: list[str]) -> None:
    import http.server

    good = ckpt.read_bytes()
    marker = work / "code-ran"
    hostile = io.BytesIO()
    torch.save({**torch.load(io.BytesIO(good), weights_only=True), "payload": _RunsCode(str(marker))}, hostile)
    SwitchingSource.payloads, SwitchingSource.hits = [good, hostile.getvalue()], 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SwitchingSource)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/m.ckpt"
    os.environ["MADREC_CACHE"] = str(work / "cache")
    try:
        train_run(load_config([*base, f"output_dir={work / 'resumed'}", "trainer.max_steps=20", f"ckpt_path={url}"]))
    finally:
        httpd.shutdown()
        httpd.server_close()
    ran = marker.exists()
    record(
        "1",
        "`train ckpt_path=http://…` from a server whose 2nd answer is a code-running pickle",
        "fetched once, checked, resumed; no code runs",
        f"GETs: {SwitchingSource.hits}; marker file {'created: code ran' if ran else 'absent'}",
        not ran and SwitchingSource.hits == 1,
    )


# --- the server: items 2, 4, 6 (requests), 7 ----------------------------------------------


class Server:
    """`madrec serve` on 127.0.0.1 in a subprocess, its log in a file."""

    def __init__(self, ckpt: Path, log: Path, *flags: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = log
        argv = [*MADREC, "serve", "--ckpt", str(ckpt), "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen([*argv, "--threads", "1", *flags], stderr=log.open("w"), env=ENV)
        deadline = time.time() + 120
        while self.call("GET", "/v2/health/ready")[0] != 200:
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the server did not start; see {log}")
            time.sleep(0.5)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method)
        req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def probe_repository(ckpt: Path, work: Path) -> None:
    server = Server(ckpt, work / "serve-default.log")
    try:
        unload = server.call("POST", "/v2/repository/models/madrec/unload")[0]
        ready = server.call("GET", "/v2/health/ready")[0]
        record(
            "2",
            "POST …/unload without credentials (default server)",
            "403; still ready",
            f"{unload}; ready {ready}",
            unload == 403 and ready == 200,
        )
    finally:
        server.stop()
    server = Server(ckpt, work / "serve-repo.log", "--enable-model-repository")
    try:
        unload = server.call("POST", "/v2/repository/models/madrec/unload")[0]
        ready, live = server.call("GET", "/v2/health/ready")[0], server.call("GET", "/v2/health/live")[0]
        load = server.call("POST", "/v2/repository/models/madrec/load")[0]
        again = server.call("GET", "/v2/health/ready")[0]
        record(
            "2",
            "with --enable-model-repository: unload, health, load, health",
            "unload 200, ready/live 503, load 200, ready 200",
            f"unload {unload}, ready {ready}, live {live}, load {load}, ready {again}",
            (unload, ready, live, load, again) == (200, 503, 503, 200, 200),
        )
    finally:
        server.stop()


def _history(item_ids: list[str], n: int) -> list[str]:
    return [item_ids[i % len(item_ids)] for i in range(n)]


def probe_requests(ckpt: Path, work: Path, item_ids: list[str]) -> None:
    server = Server(ckpt, work / "serve-requests.log")
    v1, v2 = "/v1/models/madrec:predict", "/v2/models/madrec/infer"
    h = [item_ids[0], item_ids[1]]
    deep = '{"instances": ' + "[" * 1000 + "]" * 1000 + "}"
    cases = [
        ("4", 'V1 `"parameters": "ab"`', v1, {"instances": [h], "parameters": "ab"}, 400),
        ("4", 'V1 `"parameters": 5`', v1, {"instances": [h], "parameters": 5}, 400),
        ("4", 'V1 `"parameters": [1, 2]`', v1, {"instances": [h], "parameters": [1, 2]}, 400),
        ("4", 'V1 `"next_items": 2` on a catalogue-head model', v1, {"instances": [h], "next_items": 2}, 400),
        ("4", "V1 `instances` nested 1,000 deep", v1, deep, 400),
        ("6", "V1 unknown key inside `parameters`", v1, {"instances": [h], "parameters": {"topk": 3}}, 400),
        (
            "6",
            "V2 INT64 history data `1.5`",
            v2,
            {"inputs": [{"name": "history", "datatype": "INT64", "shape": [1, 1], "data": [1.5]}]},
            400,
        ),
    ]
    try:
        for item, probe, path, body, want in cases:
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            status, answer = server.call("POST", path, raw)
            record(
                item,
                probe,
                f"{want}, a JSON error",
                f"{status}: {answer[:90].decode(errors='replace')}",
                status == want,
            )
        window_probe(server, v1, v2, item_ids)
        flood_probe(server, v1)
    finally:
        server.stop()


def window_probe(server: Server, v1: str, v2: str, item_ids: list[str]) -> None:
    long = _history(item_ids, 200)
    status, answer = server.call("POST", v1, json.dumps({"instances": [long]}).encode())
    dropped = json.loads(answer)["predictions"][0].get("dropped_history_items") if status == 200 else None
    record(
        "6",
        "V1 history of 200 items, beyond the model's window",
        "200, `dropped_history_items` > 0",
        f"{status}, dropped_history_items={dropped}",
        status == 200 and bool(dropped),
    )
    body = {"inputs": [{"name": "history", "datatype": "BYTES", "shape": [1, len(long)], "data": long}]}
    status, answer = server.call("POST", v2, json.dumps(body).encode())
    names = [o["name"] for o in json.loads(answer)["outputs"]] if status == 200 else []
    record(
        "6",
        "V2 history of 200 items",
        "200, an INT64 output `dropped_history_items`",
        f"{status}, outputs {names}",
        "dropped_history_items" in names,
    )


def flood_probe(server: Server, v1: str) -> None:
    before = server.log.stat().st_size
    huge = "x" * 20_000_000
    status, answer = server.call("POST", v1, json.dumps({"instances": [[huge]]}).encode())
    record(
        "7",
        "V1 history holding one 20 MB id",
        "400 quoting a bounded prefix",
        f"{status}, {len(answer):,} bytes",
        status == 400 and len(answer) < 2000,
    )
    for _ in range(50):
        server.call("POST", v1, json.dumps({"instances": [["nope"]]}).encode())
    time.sleep(0.5)
    grown = server.log.read_text(errors="replace")[before:]
    lines = [ln for ln in grown.splitlines() if ln.strip()]
    said = [ln for ln in lines if re.search(r" (WARNING|ERROR|CRITICAL) ", ln)]
    tracebacks = grown.count("Traceback")
    record(
        "7",
        "server log after 51 bad requests (one a 20 MB id)",
        "one WARNING line each (beside KServe's access / timing lines), no traceback",
        f"{len(said)} warning/error lines of at most {max(map(len, said), default=0)} chars; {len(lines)} lines, "
        f"{len(grown):,} bytes in all; {tracebacks} tracebacks",
        tracebacks == 0 and len(said) == 51 and max(map(len, said), default=0) < 1000 and len(grown) < 100_000,
    )


# --- item 3: log handler and a closed stream -----------------------------------------------


def probe_logging() -> None:
    script = (
        "import io, logging, sys\nfrom madrec.cli import configure_logging\n"
        "a = io.StringIO(); sys.stderr = a; configure_logging(); logging.getLogger('m').info('one'); a.close()\n"
        "b = io.StringIO(); sys.stderr = b; configure_logging(); logging.getLogger('m').info('two')\n"
        "sys.stderr = sys.__stderr__; print('two' in b.getvalue())"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=60)
    errors = done.stderr.count("Logging error")
    record(
        "3",
        "log after the first stderr was swapped and closed (pytest capture)",
        "written to the current stderr",
        f"'Logging error' x{errors}; written: {done.stdout.strip()}",
        errors == 0 and done.stdout.strip() == "True",
    )


# --- items 5 and 6: CLI input -----------------------------------------------------------------


def probe_cli(ckpt: Path, data: Path, work: Path) -> None:
    files = work / "files"
    files.mkdir()
    (files / "zero.pt").write_bytes(b"")
    (files / "text.pt").write_text("hello\n")
    (files / "header.csv").write_text("user_id,item_id,timestamp\n")
    (files / "log.csv").write_text("user_id,item_id,timestamp\nu,1,5\nu,2,1e400\n")
    (files / "one.csv").write_text("user_id,item_id,timestamp\nu,1,5\n")
    (files / "items.jsonl").write_text('{"item_id": 1, "text": "a"}\n{"item_id": 2, "text": "b"}\n')
    (files / "dup.jsonl").write_text('{"item_id": 1, "text": "a"}\n{"item_id": 1, "text": "b"}\n')
    (files / "null.jsonl").write_text('{"item_id": 1, "text": null}\n')
    (files / "folder").mkdir()
    out = str(work / "out")
    ingest = ["ingest-sids", "--data", str(data), "--out", out, "--source"]
    inter = ["prepare-data", "--dataset", "interactions", "--out", out, "--source"]
    for item, probe, args, says in [
        ("5", '`recommend --history ""`', ["recommend", "--ckpt", str(ckpt), "--history", ""], "--history is empty"),
        (
            "5",
            "`recommend --history 99999 --skip-unknown`",
            ["recommend", "--ckpt", str(ckpt), "--history", "99999", "--skip-unknown"],
            "empty after skipping",
        ),
        ("5", "`ingest-sids --source` a zero-byte file", [*ingest, str(files / "zero.pt")], "not a readable SID file"),
        ("5", "`ingest-sids --source` a text file", [*ingest, str(files / "text.pt")], "not a readable SID file"),
        (
            "5",
            "`prepare-data --dataset interactions` on a header-only CSV",
            [*inter, str(files / "header.csv"), "--items", str(files / "items.jsonl")],
            "header but no rows",
        ),
        (
            "5",
            "`prepare-data --source` a folder",
            [*inter, str(files / "folder"), "--items", str(files / "items.jsonl")],
            "--source is a folder",
        ),
        (
            "6",
            "items file with one id twice, two texts",
            [*inter, str(files / "one.csv"), "--items", str(files / "dup.jsonl")],
            "appears again with a different text",
        ),
        (
            "6",
            'items file with `"text": null`',
            [*inter, str(files / "one.csv"), "--items", str(files / "null.jsonl")],
            "has text null",
        ),
        (
            "6",
            "interactions with timestamp `1e400`",
            [*inter, str(files / "log.csv"), "--items", str(files / "items.jsonl")],
            "not a finite number",
        ),
        (
            "6",
            "`recommend --device tpu`",
            ["recommend", "--ckpt", str(ckpt), "--history", "1", "--device", "tpu"],
            "device 'tpu': not a device",
        ),
        ("6", "`serve --device tpu`", ["serve", "--ckpt", str(ckpt), "--device", "tpu"], "device 'tpu': not a device"),
    ]:
        one_line_error(item, probe, args, says)


# --- item 8: leftovers -----------------------------------------------------------------------


def probe_leftovers(ckpt: Path, data: Path, work: Path) -> None:
    root = work / "killed"
    root.mkdir()
    kill = (
        "import os, signal, sys\nfrom madrec.io import atomic_dir\n"
        f"with atomic_dir({str(root / 'ev')!r}) as tmp:\n"
        "    (tmp / 'metrics.json').write_text('{}')\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", kill], env=ENV, timeout=60)
    before = sorted(p.name for p in root.iterdir())
    rc, _ = cli(
        "evaluate", f"ckpt_path={ckpt}", f"data_dir={data}", "split=test", f"output_dir={root / 'ev'}", "device=cpu"
    )
    after = sorted(p.name for p in root.iterdir())
    record(
        "8",
        "`evaluate` re-run after a SIGKILLed writer of the same output",
        "the dead writer's .tmp removed",
        f"before {before}; after (exit {rc}) {after}",
        rc == 0 and after == ["ev"],
    )
    race(work)


RACE = """
import sys, time
from madrec.errors import MadrecError
from madrec.io import atomic_dir
start = float(sys.argv[2])
try:
    with atomic_dir(sys.argv[1]) as tmp:
        for k in range(200):
            (tmp / f"part-{k}").write_text(sys.argv[3])
        while time.time() < start:
            time.sleep(0.001)
except MadrecError as exc:
    print("refused:", str(exc)[:120]); sys.exit(3)
"""


def race(work: Path) -> None:
    final, outcomes, complete, leftovers = work / "race" / "out", [], 0, []
    final.parent.mkdir()
    for _ in range(5):
        start = time.time() + 2.0
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", RACE, str(final), str(start), f"w{i}"],
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(6)
        ]
        outcomes += [(p.wait(60), p.stderr.read()) for p in procs]
        texts = {f.read_text() for f in final.iterdir()}
        complete += len(list(final.iterdir())) == 200 and len(texts) == 1
        leftovers += [p.name for p in final.parent.iterdir() if p.name != "out"]
    codes = sorted({rc for rc, _ in outcomes})
    crashed = [err.strip().splitlines()[-1] for rc, err in outcomes if rc not in (0, 3)]
    record(
        "8",
        "6 writers finishing into one output at once, 5 rounds",
        "each a clean win or a MadrecError; no leftovers",
        f"exit codes {codes}; complete outputs {complete}/5; leftovers {leftovers[:3]}; crashes {crashed[:1]}",
        not crashed and complete == 5 and not leftovers,
    )


# --- the record -------------------------------------------------------------------------------


def header() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True, cwd=ROOT)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"Commit {commit.stdout.strip()}{' (+ uncommitted src changes)' if dirty.stdout.strip() else ''}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs ({cpu}), "
        f"Python {platform.python_version()}, torch {torch.__version__}; load average at the end {load}."
    )


def write(out: Path, seconds: float) -> None:
    ok = sum(r.ok for r in ROWS)
    lines = [
        "# Hardening probes: crafted files, requests and interruptions -> outcome",
        "",
        "Regenerated by `.venv/bin/python bench/reliability/probes.py` (items as numbered in the security and",
        "hardening review; each also has a test under `tests/`). " + header(),
        f"{ok} of {len(ROWS)} probes as expected, in {seconds:.0f} s.",
        "",
        "| item | probe | expected | outcome | ok |",
        "|---|---|---|---|---|",
    ]
    cell: Callable[[str], str] = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines += [
        f"| {r.item} | {cell(r.probe)} | {cell(r.expected)} | {cell(r.outcome)} | {'yes' if r.ok else 'NO'} |"
        for r in ROWS
    ]
    out.write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("results.md"))
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt, data, _, base = train_checkpoint(work)
        item_ids = [str(i) for i in torch.load(ckpt, weights_only=True)["madrec"]["item_ids"]]
        probe_remote_resume(work, ckpt, base)
        probe_repository(ckpt, work)
        probe_requests(ckpt, work, item_ids)
        probe_logging()
        probe_cli(ckpt, data, work)
        probe_leftovers(ckpt, data, work)
    write(args.out, time.time() - t0)
    print(f"wrote {args.out}")
    return 0 if all(r.ok for r in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
