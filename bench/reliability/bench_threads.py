"""Evaluation throughput (users/s) with and without a concurrent CPU-bound process, with
torch's default thread count ("before") and with madrec.threads sizing ("after").

    python bench/reliability/bench_threads.py --data DIR [--sids sids.pt] [--seconds 8]

DIR is a prepared Amazon Beauty folder (madrec prepare-data). The model is the `tiny`
experiment's architecture, randomly initialised (decoding cost does not depend on the
weights), on the real SID table when --sids is given, else on random distinct SIDs of the
same shape (H=4, V=256). Each scenario is a fresh process (thread pools are sized once per
process) that warms up on 16 users and then decodes test users in batches of 16 (the CPU
default) for --seconds. The "hog" is one single-threaded busy loop at normal priority; the
"quota" scenarios put the evaluating process into a cgroup v1 with a 1-CPU CFS quota (what a
Kubernetes `limits: cpu: 1` does), which needs root and a writable /sys/fs/cgroup/cpu.
Prints one JSON line per scenario and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup/cpu")
SCENARIOS = [  # (name, threads mode, hog, 1-CPU quota)
    ("idle", "default", False, False),
    ("idle", "sized", False, False),
    ("idle", "explicit1", False, False),
    ("hog", "default", True, False),
    ("hog", "sized", True, False),
    ("hog", "explicit1", True, False),
    ("quota 1 CPU", "default", False, True),
    ("quota 1 CPU", "sized", False, True),
    ("quota 1 CPU + hog", "default", True, True),
    ("quota 1 CPU + hog", "sized", True, True),
]


def child(args) -> None:
    import torch

    if args.mode == "sized":
        from madrec import threads

        threads.configure()
    from madrec.checkpoint import load_checkpoint
    from madrec.data.dataset import load_dataset
    from madrec.evaluate.decode import SIDIndex
    from madrec.evaluate.run import predict_split

    loaded = load_checkpoint(args.ckpt)
    split = load_dataset(args.data, splits=("testing",)).splits["testing"]
    index = SIDIndex(loaded.sids, loaded.vocab.codebook_size)
    kw = dict(top_k=10, beam_size=10, batch_size=16, progress=False, index=index)
    predict_split(loaded.model, loaded.vocab, loaded.sids, split.first(16), loaded.max_len, **kw)
    users, start, lo = 0, time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds:
        chunk = type(split)(split.name, split.user_ids[lo : lo + 32], split.sequences[lo : lo + 32])
        predict_split(loaded.model, loaded.vocab, loaded.sids, chunk, loaded.max_len, **kw)
        users, lo = users + len(chunk), (lo + 32) % (len(split) - 32)
    elapsed = time.perf_counter() - start
    from madrec.threads import cgroup_cpu_limit

    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "users": users,
                "seconds": round(elapsed, 2),
                "users_per_s": round(users / elapsed, 1),
                "cgroup_quota_cpus": cgroup_cpu_limit(),
            }
        )
    )


def make_checkpoint(path: Path, data: str, sids_path: str | None) -> None:
    import torch

    from madrec.checkpoint import WEIGHTS_PREFIX, payload
    from madrec.config import load_config
    from madrec.data.dataset import load_dataset
    from madrec.models.maskgr import MaskedDiffusionLM
    from madrec.models.tokens import SIDVocab

    ds = load_dataset(data, splits=("testing",))
    cfg = load_config(["experiment=tiny", f"data_dir={data}", "sid_data_path=/unused"])
    if sids_path:
        sids = torch.load(sids_path, weights_only=True).long()
    else:
        g = torch.Generator().manual_seed(0)
        codes = torch.randint(0, 256, (ds.num_items * 2, 4), generator=g).unique(dim=0)
        sids = codes[torch.randperm(len(codes), generator=g)[: ds.num_items]].t().contiguous()
    vocab = SIDVocab(sids.shape[0], cfg.codebook_size)
    max_len = cfg.max_len or 21 * vocab.sid_len  # tiny sizes rows from the data: at most 20 items + the next
    torch.manual_seed(0)
    model = MaskedDiffusionLM(cfg.model, vocab.size, vocab.pad_id, vocab.sid_len)
    torch.save(
        {
            "state_dict": {WEIGHTS_PREFIX + k: v for k, v in model.state_dict().items()},
            "madrec": payload(cfg, vocab, sids, ds.item_ids, max_len),
            "global_step": 0,
        },
        path,
    )


def run_scenario(args, ckpt: Path, mode: str, hog: bool, quota: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MADREC_NUM_THREADS")}
    if mode == "explicit1":
        env["MADREC_NUM_THREADS"] = "1"
    child_mode = "default" if mode == "default" else "sized"
    group = None
    if quota:
        group = CGROUP / f"madrec_bench_{os.getpid()}"
        group.mkdir(exist_ok=True)
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("100000")
    hog_proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if hog else None
    try:

        def enter():  # runs in the child before exec: join the quota cgroup
            if group is not None:
                (group / "cgroup.procs").write_text(str(os.getpid()))

        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--mode",
            child_mode,
            "--ckpt",
            str(ckpt),
            "--data",
            args.data,
            "--seconds",
            str(args.seconds),
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=enter, timeout=300)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if hog_proc is not None:
            hog_proc.kill()
            hog_proc.wait()
        if group is not None:
            group.rmdir()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--sids", default=None)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--only", default="", help="comma-separated scenario numbers (1-based) to run")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="default", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    print(f"# load average before: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "tiny.ckpt"
        make_checkpoint(ckpt, args.data, args.sids)
        rows = []
        wanted = {int(x) for x in args.only.split(",") if x}
        for i, (name, mode, hog, quota) in enumerate(SCENARIOS, 1):
            if wanted and i not in wanted:
                continue
            if quota and not os.access(CGROUP, os.W_OK):
                print(f"# skipped {name}: {CGROUP} not writable")
                continue
            r = run_scenario(args, ckpt, mode, hog, quota)
            r.update(scenario=name, threads_mode=mode)
            rows.append(r)
            print(json.dumps(r), flush=True)
    print("\n| scenario | threads | torch threads | users/s |\n|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['scenario']} | {r['threads_mode']} | {r['threads']} | {r['users_per_s']} |")


if __name__ == "__main__":
    main()
