"""Semantic-ID tables: the file format, its validation, loading, and quality numbers.

File format (interoperable with GRID; docs/architecture.md, "Data flow"): `torch.save` of an int64 tensor (H, N),
row = SID position, column = item index; the last row is the de-duplication digit, so all
columns are distinct; every digit is in [0, codebook size).

    sids = load_sids("OUT/sids.pt", num_items=12101, codebook_size=256)   # every consumer

Making the files: madrec.sids.build (`build_sids` from item text, `ingest_sids` of GRID's);
their verbs `madrec build-sids` / `madrec ingest-sids`: madrec.sids.cli.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from madrec.errors import MadrecError
from madrec.io import fetch
from madrec.sids.rkmeans import dedup_digit
from madrec.torchfile import load_torch_file

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
            "digit (items sharing a prefix get an extra digit 0..n-1; madrec build-sids adds it)"
        )
    return sids


def load_sids(path: str | Path, num_items: int | None = None, codebook_size: int | None = None) -> torch.Tensor:
    """Load and validate a SID file (local path or gs:// / http(s) URI) -> LongTensor (H, N)."""
    local = fetch(str(path))
    obj = load_torch_file(path, local, "SID file", "made by torch.save of an int64 tensor (H, N) (GRID, build-sids)")
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
        positions.append(
            {
                "position": row + 1,
                "role": "dedup" if row == h - 1 else "code",
                "codes_used": int((counts > 0).sum()),
                "usage": float((counts > 0).sum()) / codebook_size,
                "entropy_bits": float(-(p * p.log2()).sum()),
                "max_entropy_bits": math.log2(min(codebook_size, n)),
                "largest_code_share": float(counts.max()) / n,
                "code_counts": counts.tolist(),
            }
        )
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
