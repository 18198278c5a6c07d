"""Load test of `madrec serve` on 127.0.0.1: throughput, latency percentiles, errors, memory.

Starts the servers itself (loopback only), sends real user histories (the test split's
histories, original item ids, the held-out item removed) with a bounded async client, and
prints one JSON document:

- requests/s and p50/p95/p99 latency at concurrency 1, 8 and 32 (V1 :predict, k=10);
- the error rate (any answer other than 200, or a connection error);
- the server's RSS after warm-up and after each of two runs of 10,000 requests at concurrency 32;
- dynamic batching on vs off at concurrency 32: two servers, measured in alternating rounds
  in the same run, so a shared machine's load changes hit both alike.

    python bench/serve/load_test.py --ckpt RUN/checkpoints/best.ckpt --data PREPARED_DIR \\
        [--requests-c1 300 --requests-c8 1000 --requests-c32 2000 --rss-requests 10000]

Every count is bounded, and the whole run stops after --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the server's process: SIGTERM it when this process dies (a killed run leaves no server)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    def __init__(self, ckpt: str, log: Path, *extra: str, threads: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "madrec.cli", "serve", "--ckpt", ckpt, "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--threads", str(threads), *extra]
        self.proc = subprocess.Popen(
            cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
        )
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("server not ready after 300 s")

    def rss_mib(self) -> float:
        proc = psutil.Process(self.proc.pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def histories(data_dir: str, n: int, seed: int = 0, max_items: int = 50) -> list[list[str]]:
    from madrec.data.dataset import load_dataset

    data = load_dataset(data_dir)
    seqs = [s for s in data.splits["testing"].sequences if len(s) >= 2]
    rng = random.Random(seed)
    picked = [seqs[rng.randrange(len(seqs))] for _ in range(n)]
    return [[data.item_ids[i] for i in s[:-1][-max_items:]] for s in picked]


async def run_load(url: str, bodies: list[bytes], concurrency: int, deadline: float) -> dict:
    """Send every body once, `concurrency` at a time; latencies of the answered ones."""
    latencies, errors, statuses = [], 0, {}
    queue = iter(bodies)
    timeout = aiohttp.ClientTimeout(total=60)

    async def worker(session):
        nonlocal errors
        for body in queue:
            if time.time() > deadline:
                return
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                    if resp.status != 200:
                        errors += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                errors += 1
                statuses["connection"] = statuses.get("connection", 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    sent = len(latencies) + errors
    ms = np.asarray(latencies) * 1000
    pct = (lambda q: round(float(np.percentile(ms, q)), 1)) if len(ms) else (lambda q: None)
    return {
        "concurrency": concurrency,
        "requests": sent,
        "ok": len(latencies),
        "errors": errors,
        "error_rate": errors / max(sent, 1),
        "statuses": {str(k): v for k, v in statuses.items()},
        "seconds": round(wall, 2),
        "requests_per_s": round(sent / wall, 1) if wall else None,
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
    }


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True, help="prepared data folder (histories from its test split)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--requests-c1", type=int, default=300)
    p.add_argument("--requests-c8", type=int, default=1000)
    p.add_argument("--requests-c32", type=int, default=2000)
    p.add_argument("--rss-requests", type=int, default=10000)
    p.add_argument("--rss-rounds", type=int, default=2, help="runs of --rss-requests, RSS after each")
    p.add_argument("--ab-rounds", type=int, default=3, help="alternating batching on/off rounds at c=32")
    p.add_argument("--ab-requests", type=int, default=1000, help="requests per server per round")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-batch-wait-ms", type=float, default=5.0)
    p.add_argument("--max-seconds", type=float, default=1500, help="hard stop for the whole run")
    p.add_argument("--device", default="cpu", help="the servers' --device (cpu | cuda)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server (default 1)")
    p.add_argument("--logs", default="/tmp/madrec-serve-bench")
    args = p.parse_args()
    deadline = time.time() + args.max_seconds
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    hist = histories(args.data, 4096)
    bodies = [json.dumps({"instances": [h], "k": args.k}).encode() for h in hist]

    def take(n: int, offset: int = 0) -> list[bytes]:
        return [bodies[(offset + i) % len(bodies)] for i in range(n)]

    import platform

    import torch

    out = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        },
        "device": args.device,
        "server_threads": args.threads,
        "histories": {"count": len(hist), "mean_len": round(float(np.mean([len(h) for h in hist])), 1)},
        "k": args.k,
        "max_batch_size": args.max_batch_size,
        "max_batch_wait_ms": args.max_batch_wait_ms,
    }
    common = ["--device", args.device]
    on = Server(
        args.ckpt,
        logs / "batching_on.log",
        "--max-batch-size",
        str(args.max_batch_size),
        "--max-batch-wait-ms",
        str(args.max_batch_wait_ms),
        *common,
        threads=args.threads,
    )
    off = None
    try:
        url = on.url + "/v1/models/madrec:predict"
        out["rss_mib_at_start"] = round(on.rss_mib(), 1)
        asyncio.run(run_load(url, take(200), 8, deadline))  # warm-up
        out["rss_mib_after_warmup"] = round(on.rss_mib(), 1)
        out["load"] = []
        for c, n in ((1, args.requests_c1), (8, args.requests_c8), (32, args.requests_c32)):
            calls0 = metric(on.url, "madrec_batch_histories_count")
            res = asyncio.run(run_load(url, take(n, 1000 * c), c, deadline))
            calls = metric(on.url, "madrec_batch_histories_count") - calls0
            res["histories_per_model_call"] = round(res["requests"] / calls, 2) if calls else None
            out["load"].append(res)
            print(json.dumps(res), file=sys.stderr)
        out["rss_runs"] = []
        for r in range(args.rss_rounds):  # 10,000 requests each; RSS after each (a plateau, or growth?)
            rss = asyncio.run(run_load(url, take(args.rss_requests, 7 + 5000 * r), 32, deadline))
            rss["rss_mib_after"] = round(on.rss_mib(), 1)
            out["rss_runs"].append(rss)
            print(json.dumps(rss), file=sys.stderr)

        off = Server(args.ckpt, logs / "batching_off.log", "--no-batching", *common, threads=args.threads)
        off_url = off.url + "/v1/models/madrec:predict"
        asyncio.run(run_load(off_url, take(200), 8, deadline))  # warm-up
        # one at a time without batching: no --max-batch-wait-ms spent waiting for company
        out["no_batching_c1"] = asyncio.run(run_load(off_url, take(args.requests_c1, 1000), 1, deadline))
        rounds = []
        for r in range(args.ab_rounds):
            pair = {}
            for name, u in (("on", url), ("off", off_url)) if r % 2 == 0 else (("off", off_url), ("on", url)):
                pair[name] = asyncio.run(run_load(u, take(args.ab_requests, 100 * r), 32, deadline))
            rounds.append(pair)
            print(json.dumps(pair), file=sys.stderr)
        on_rps = [p["on"]["requests_per_s"] for p in rounds]
        off_rps = [p["off"]["requests_per_s"] for p in rounds]
        out["batching_ab"] = {
            "rounds": rounds,
            "on_rps_median": float(np.median(on_rps)),
            "off_rps_median": float(np.median(off_rps)),
            "ratio_on_over_off": round(float(np.median(on_rps) / np.median(off_rps)), 2),
        }
    finally:
        on.stop()
        if off:
            off.stop()
    out["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
