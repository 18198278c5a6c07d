"""Making SID files: `build_sids` from item text (frozen encoder, residual k-means, de-dup
digit) and `ingest_sids` of a file made elsewhere (GRID); both write OUT/ atomically with
sids.pt and the quality report (sid_report.json / .html); build also writes codebooks.pt and
embeddings.pt (reused by a re-run on the same item texts and encoder).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from madrec.data.dataset import load_info, read_items
from madrec.errors import MadrecError
from madrec.io import atomic_dir
from madrec.report import bar_chart, html_page, table_html
from madrec.sids.cooccur import DEFAULT_COLLABORATIVE_WEIGHT
from madrec.sids.format import MAX_SID_LEN, check_collapse, load_sids, sid_report, validate_sids
from madrec.sids.rkmeans import dedup_digit, residual_kmeans, resolve_device

log = logging.getLogger(__name__)


def report_html(report: dict, title: str) -> str:
    """sid_report.html: summary, code usage per level, items per code, collision-group sizes."""
    positions = report["positions"]
    summary = [
        {
            "items": report["num_items"],
            "SID length H": report["sid_len"],
            "codebook size": report["codebook_size"],
            "collision rate": report["collision_rate"],
            "items in collisions": report["items_in_collisions"],
            "largest group": report["largest_collision_group"],
        }
    ]
    per_level = [
        {k: p[k] for k in ("position", "role", "codes_used", "usage", "entropy_bits", "largest_code_share")}
        for p in positions
    ]
    sections = [
        ("Summary", table_html(summary)),
        (
            "Codebook usage per position",
            bar_chart(
                [f"{p['position']} ({p['role']})" for p in positions],
                [p["usage"] for p in positions],
                "codes used / codebook size",
                "SID position",
            )
            + table_html(per_level),
        ),
    ]
    for p in positions:
        counts = sorted(p["code_counts"], reverse=True)[: p["codes_used"]]
        sections.append(
            (
                f"Items per code, position {p['position']} ({p['role']})",
                bar_chart([str(i + 1) for i in range(len(counts))], counts, "items", "code rank (most used first)"),
            )
        )
    sizes = sorted(report["collision_group_sizes"].items(), key=lambda kv: int(kv[0]))
    sections.append(
        (
            "Collision-group sizes (before the de-dup digit)",
            bar_chart([s for s, _ in sizes], [c for _, c in sizes], "groups", "items sharing a prefix"),
        )
    )
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
    collaborative_weight: float = DEFAULT_COLLABORATIVE_WEIGHT,
) -> dict:
    """Embed item texts (blended with co-occurrence vectors of the training sequences when
    `collaborative_weight` > 0), run RK-Means, add the de-dup digit; write OUT atomically;
    return the report."""
    from madrec.sids.embed import cached_embeddings, resolve_encoder, save_embeddings

    if not 1 <= levels <= MAX_SID_LEN - 1:
        raise MadrecError(f"--levels {levels}: must be 1..{MAX_SID_LEN - 1} (the de-dup digit adds one position)")
    if codebook_size < 2:
        raise MadrecError(f"--codebook-size {codebook_size}: must be at least 2")
    if not 0.0 <= collaborative_weight <= 1.0:
        raise MadrecError(f"--collaborative-weight {collaborative_weight}: must be in [0, 1] (0 = text only)")
    data, out = Path(data), Path(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with _timed(timings, "read_items"):
        texts = _item_texts(data, codebook_size)
    spec, dev = resolve_encoder(encoder), resolve_device(device)
    with atomic_dir(out) as tmp:
        with _timed(timings, "embed"):
            emb, key, cached = cached_embeddings(texts, spec, out / "embeddings.pt", device=dev, batch_size=batch_size)
        save_embeddings(tmp / "embeddings.pt", emb, key, spec)
        text_dim, collaborative = int(emb.shape[1]), {"used": False}
        if collaborative_weight > 0:
            with _timed(timings, "cooccurrence"):
                emb, collaborative = _blend_collaborative(emb, data, collaborative_weight, seed)
        weight_used = collaborative_weight if collaborative["used"] else 0.0
        collab_meta = {"collaborative_weight": weight_used, "text_dim": text_dim}
        with _timed(timings, "rkmeans"):
            rk = residual_kmeans(emb, levels, codebook_size, seed=seed, device=dev, max_iter=max_iter)
        timings.update({f"rkmeans_level_{level + 1}": s for level, s in enumerate(rk.seconds)})
        check_collapse(rk.codes, codebook_size, f"build-sids on {data}")
        with _timed(timings, "dedup"):
            sids = _append_dedup_digit(rk.codes, codebook_size, data)
        report = sid_report(sids, codebook_size)
        timings["total"] = time.perf_counter() - t0
        report.update(
            {
                "source": "build-sids",
                "data": str(data),
                "encoder": spec.name,
                "embedding_dim": text_dim,
                "embeddings_reused": cached,
                "collaborative_weight": weight_used,
                "collaborative": collaborative,
                "seed": seed,
                "device": str(dev),
                "kmeans": [
                    {"level": i + 1, "iterations": km.iterations, "converged": km.converged, "inertia": km.inertia}
                    for i, km in enumerate(rk.levels)
                ],
                "timings_s": timings,
            }
        )
        # codebooks live in the blended space: the first embedding_dim columns are the text part
        # scaled by sqrt(1 - collaborative_weight) (madrec.sids.cooccur.blend)
        torch.save({"codebooks": rk.codebooks, "encoder": spec.name, "seed": seed, **collab_meta}, tmp / "codebooks.pt")
        _write_outputs(tmp, sids, report, f"Semantic IDs: {data.name} ({spec.name}, {levels}x{codebook_size})")
    return report


def _blend_collaborative(text: torch.Tensor, data: Path, weight: float, seed: int) -> tuple[torch.Tensor, dict]:
    """Text embeddings joined with co-occurrence vectors of DATA's training sequences; text
    alone (and a warning) for a catalogue without a training split (items only)."""
    from madrec.data.dataset import load_dataset
    from madrec.sids.cooccur import COOCCURRENCE_DIM, COOCCURRENCE_WINDOW, blend, cooccurrence_embeddings

    if not (data / "training").is_dir():
        log.warning("%s has no training split: SIDs from item text only (collaborative weight %s unused)", data, weight)
        return text, {"used": False, "why": "no training split: item text only"}
    train = load_dataset(data, splits=("training",)).splits["training"]
    vectors = cooccurrence_embeddings(train.sequences, len(text), seed=seed)
    covered = float((vectors.norm(dim=1) > 0).float().mean())
    info = {"used": True, "window": COOCCURRENCE_WINDOW, "dim": COOCCURRENCE_DIM, "items_with_cooccurrences": covered}
    return blend(text, vectors, weight), info


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    """Record the wall time of the block as timings[stage] (seconds)."""
    start = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - start


def _item_texts(data: Path, codebook_size: int) -> list[str]:
    """The prepared items' texts, checked against dataset.json and the codebook size."""
    info = _check_data_dir(data)
    _, texts = read_items(data)
    if info.get("num_items", len(texts)) != len(texts):
        raise MadrecError(
            f"{data / 'dataset.json'}: num_items is {info['num_items']} but items/ holds {len(texts)} records; "
            "re-run `madrec prepare-data`"
        )
    if codebook_size > len(texts):
        raise MadrecError(f"--codebook-size {codebook_size}: larger than the number of items ({len(texts)})")
    return texts


def _append_dedup_digit(codes: torch.Tensor, codebook_size: int, data: Path) -> torch.Tensor:
    """The (L, N) codes plus the de-dup digit row: a validated (L + 1, N) SID table."""
    digit, group = dedup_digit(codes)
    if int(group.max()) > codebook_size:
        prefix = tuple(codes[:, int(group.argmax())].tolist())
        raise MadrecError(
            f"{data}: {int(group.max())} items share the SID prefix {prefix}, more than the de-dup digit can "
            f"number with codebook size {codebook_size}; use more --levels or a larger --codebook-size"
        )
    return validate_sids(torch.cat([codes, digit.unsqueeze(0)]), "build-sids", codes.shape[1], codebook_size)


def ingest_sids(source: str, data: str | Path, out: str | Path, *, codebook_size: int = 256) -> dict:
    """Validate a SID file made elsewhere (e.g. GRID) against DATA; write OUT atomically; return the report."""
    data, out = Path(data), Path(out)
    t0 = time.perf_counter()
    info = _check_data_dir(data)
    num_items = int(info["num_items"]) if "num_items" in info else len(read_items(data)[1])
    sids = load_sids(source, num_items, codebook_size)
    check_collapse(sids[:-1], codebook_size, source)
    report = sid_report(sids, codebook_size)
    report.update(
        {
            "source": "ingest-sids",
            "source_uri": source,
            "data": str(data),
            "timings_s": {"total": time.perf_counter() - t0},
        }
    )
    with atomic_dir(out) as tmp:
        _write_outputs(tmp, sids, report, f"Semantic IDs: {data.name} (ingested from {source})")
    return report
