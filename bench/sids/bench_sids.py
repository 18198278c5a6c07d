"""Semantic-ID benchmarks: quality on a real catalogue vs random SIDs, and RK-Means speed/memory.

# quality: rebuild SIDs (reusing a previous run's embeddings) and compare with random SIDs
python bench/sids/bench_sids.py quality --data data/beauty --embeddings data/beauty_sids/embeddings.pt
# RK-Means wall time + peak memory, each case in a fresh process (clean peak RSS)
python bench/sids/bench_sids.py speed --embeddings data/beauty_sids/embeddings.pt
# both, written to bench/sids/results.json (summarised by hand in bench/sids/RESULTS.md)
python bench/sids/bench_sids.py all --data data/beauty --embeddings data/beauty_sids/embeddings.pt
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from madrec.data.dataset import read_items
from madrec.sids.build import build_sids
from madrec.sids.format import sid_report
from madrec.sids.rkmeans import dedup_digit, residual_kmeans

HERE = Path(__file__).resolve().parent


def nn_prefix_agreement(emb: torch.Tensor, sids: torch.Tensor, chunk: int = 2048) -> list[float]:
    """Share of items whose nearest other item (cosine) shares their first l digits, l = 1..H-1."""
    x = F.normalize(emb.float(), dim=1)
    nn = torch.empty(x.shape[0], dtype=torch.long)
    for s in range(0, x.shape[0], chunk):
        sim = x[s : s + chunk] @ x.t()
        sim[torch.arange(sim.shape[0]), torch.arange(s, s + sim.shape[0])] = -2.0
        nn[s : s + chunk] = sim.argmax(1)
    return [float((sids[:h] == sids[:h, nn]).all(0).double().mean()) for h in range(1, sids.shape[0])]


def category_purity(texts: list[str], codes: torch.Tensor) -> float | None:
    """Item-weighted share of each level-1 code's most common category path (Amazon texts only)."""
    cats = [m.group(1).split(" | ")[0] if (m := re.search(r"Categories: (.*)$", t)) else None for t in texts]
    if sum(c is not None for c in cats) < len(texts) // 2:
        return None
    majority = 0
    for code in torch.unique(codes):
        members = [cats[i] for i in (codes == code).nonzero().flatten().tolist()]
        majority += max(members.count(c) for c in set(members))
    return majority / len(texts)


def quality_row(name: str, sids: torch.Tensor, emb: torch.Tensor, texts: list[str], k: int) -> dict:
    rep = sid_report(sids, k)
    return {
        "sids": name,
        "collision_rate": rep["collision_rate"],
        "items_in_collisions": rep["items_in_collisions"],
        "largest_collision_group": rep["largest_collision_group"],
        "codes_used": [p["codes_used"] for p in rep["positions"]],
        "entropy_bits": [round(p["entropy_bits"], 3) for p in rep["positions"]],
        "nn_shares_prefix_len_1_2_3": [round(v, 4) for v in nn_prefix_agreement(emb, sids)],
        "level1_category_purity": category_purity(texts, sids[0]),
    }


def quality(data: str, embeddings: str | None, levels: int, k: int, seed: int) -> dict:
    """Build SIDs (embedding cache reused when given) and compare them with uniform random codes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sids"
        if embeddings and Path(embeddings).is_file():
            out.mkdir()
            shutil.copy(embeddings, out / "embeddings.pt")
        report = build_sids(data, out, levels=levels, codebook_size=k, seed=seed, device="cpu")
        sids = torch.load(out / "sids.pt")
        emb = torch.load(out / "embeddings.pt", weights_only=True)["embeddings"]
    _, texts = read_items(data)
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, k, (levels, sids.shape[1]), generator=g)
    random_sids = torch.cat([codes, dedup_digit(codes)[0].unsqueeze(0)])
    return {
        "data": data,
        "num_items": sids.shape[1],
        "levels": levels,
        "codebook_size": k,
        "seed": seed,
        "encoder": report["encoder"],
        "embeddings_reused": report["embeddings_reused"],
        "rkmeans_s": report["timings_s"]["rkmeans"],
        "rows": [
            quality_row("RK-Means (build-sids)", sids, emb, texts, k),
            quality_row("random, same shape", random_sids, emb, texts, k),
        ],
    }


def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":")) / 1024


def speed_case(case: str, embeddings: str | None, n: int, dim: int, levels: int, k: int, threads: int) -> dict:
    """One RK-Means run in this process: wall and CPU time per level, Lloyd iterations, peak RSS.

    The peak is reset after the input is made, so it covers RK-Means (plus the input it holds).
    """
    torch.set_num_threads(threads)
    if case == "beauty":
        x = torch.load(embeddings, weights_only=True)["embeddings"]
    else:
        # A mixture of 2,000 Gaussian blobs: clustered like text embeddings, not uniform noise.
        g = torch.Generator().manual_seed(0)
        centres = torch.randn(2000, dim, generator=g)
        x = centres[torch.randint(0, 2000, (n,), generator=g)]
        x.add_(torch.randn(n, dim, generator=g), alpha=0.5)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS)
    rss_before = _proc_status_mb("VmRSS")
    load_before = os.getloadavg()[0]
    cpu0, t0 = time.process_time(), time.perf_counter()
    res = residual_kmeans(x, levels, k, seed=42, device="cpu")
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = _proc_status_mb("VmHWM")
    return {
        "case": case,
        "shape": list(x.shape),
        "levels": levels,
        "codebook_size": k,
        "torch_threads": threads,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "level_s": [round(s, 2) for s in res.seconds],
        "iterations": [lv.iterations for lv in res.levels],
        "converged": [lv.converged for lv in res.levels],
        "input_mb": round(x.numel() * 4 / 2**20, 1),
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_over_start_mb": round(peak - rss_before, 1),
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def speed(embeddings: str, n: int, cases: list[str]) -> list[dict]:
    """Each case (name:threads) in a fresh interpreter so the peak RSS belongs to that case alone."""
    rows = []
    for spec in cases:
        case, threads = spec.split(":")
        cmd = [
            sys.executable,
            __file__,
            "speed-case",
            "--case",
            case,
            "--threads",
            threads,
            "--embeddings",
            embeddings,
            "--n",
            str(n),
        ]
        print("running", " ".join(cmd), flush=True)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    return rows


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem = next(int(ln.split()[1]) for ln in open("/proc/meminfo") if ln.startswith("MemTotal")) / 2**20
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    return {
        "commit": commit,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem, 1),
        "gpu": torch.cuda.is_available(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_1min_at_start": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["quality", "speed", "speed-case", "all"])
    p.add_argument("--data", default="data/beauty", help="prepared Amazon Beauty folder")
    p.add_argument(
        "--embeddings",
        default="data/beauty_sids/embeddings.pt",
        help="embeddings.pt of a build-sids run on --data (reused when present)",
    )
    p.add_argument("--case", choices=["beauty", "synthetic"], default="beauty")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--codebook-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="speed-case: torch threads")
    p.add_argument(
        "--cases", nargs="+", default=["beauty:2", "beauty:1", "synthetic:2"], help="speed: CASE:THREADS runs"
    )
    p.add_argument("--results", default=str(HERE / "results.json"))
    a = p.parse_args()
    if a.what == "speed-case":
        print(json.dumps(speed_case(a.case, a.embeddings, a.n, a.dim, a.levels, a.codebook_size, a.threads)))
        return
    result = {"machine": machine()}
    if a.what in ("quality", "all"):
        result["quality"] = quality(a.data, a.embeddings, a.levels, a.codebook_size, a.seed)
        print(json.dumps(result["quality"], indent=1), flush=True)
    if a.what in ("speed", "all"):
        result["speed"] = speed(a.embeddings, a.n, a.cases)
    Path(a.results).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", a.results)


if __name__ == "__main__":
    main()
