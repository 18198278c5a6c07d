"""Collaborative item vectors from users' training sequences (docs/method.md, "Semantic IDs").

Items consumed near each other get close vectors: symmetric co-occurrence counts of item
pairs at most `window` positions apart, positive pointwise mutual information (PPMI), a
truncated SVD (rows U * sqrt(S), the classic word-vector recipe), unit-length rows. Only the
training split is read, so no validation or test target shapes the IDs.

`blend` joins them with the text embeddings, so residual k-means groups items by what they
say and by who consumes them together: the first SID digit then carries the collaborative
signal a next-item model needs (bench/train/results.md measures it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

COOCCURRENCE_WINDOW = 3  # item pairs at most this many positions apart co-occur
COOCCURRENCE_DIM = 64  # SVD rank of the PPMI matrix
# the collaborative share of build-sids' embedding distances; 0 = text only, as in the method
DEFAULT_COLLABORATIVE_WEIGHT = 0.5


PAIR_BLOCK = 1 << 24  # pair occurrences held at once while counting (~0.5 GB of working memory)


def cooccurrence_counts(
    sequences: Sequence[np.ndarray], num_items: int, window: int, block: int = PAIR_BLOCK
) -> torch.Tensor:
    """(N, N) sparse CSR symmetric float64 counts of item pairs <= `window` positions apart.

    Counted one range of rows at a time, each range holding about `block` pair occurrences, so
    memory holds the distinct pairs and one block, not every occurrence (6 per interaction at
    window 3): 100M interactions fit on a 24 GB machine."""
    flat, user = _flatten(sequences)
    per_row = np.zeros(num_items, dtype=np.int64)  # pair occurrences starting at each item
    for r, c in _pairs(flat, user, window):
        per_row += np.bincount(r, minlength=num_items) + np.bincount(c, minlength=num_items)
    bounds = np.searchsorted(np.cumsum(per_row), np.arange(block, int(per_row.sum()), block), side="right")
    cols, values, counts_per_row = [], [], np.zeros(num_items, dtype=np.int64)
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, num_items]):
        keys = []
        for first, second in _pairs(flat, user, window):
            for r, c in ((first, second), (second, first)):
                inside = (r >= lo) & (r < hi)
                keys.append((r[inside] - lo) * num_items + c[inside])
        unique, n = np.unique(np.concatenate(keys) if keys else np.zeros(0, np.int64), return_counts=True)
        counts_per_row[lo:hi] = np.bincount(unique // num_items, minlength=hi - lo)
        cols.append(unique % num_items)
        values.append(n.astype(np.float64))
    crow = np.r_[0, np.cumsum(counts_per_row)]
    return torch.sparse_csr_tensor(
        torch.from_numpy(crow),
        torch.from_numpy(np.concatenate(cols)),
        torch.from_numpy(np.concatenate(values)),
        (num_items, num_items),
        check_invariants=False,  # built sorted and in range above; the check would cost a pass over it
    )


def _flatten(sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every position's item and its sequence's number."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences] or [np.zeros(0, np.int64)])
    return flat, np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)


def _pairs(flat: np.ndarray, user: np.ndarray, window: int, chunk: int = 1 << 24):
    """(first, second) items of each pair k <= window positions apart in one sequence, a chunk of
    positions at a time."""
    for k in range(1, window + 1):
        for start in range(0, max(0, len(flat) - k), chunk):
            end = min(start + chunk, len(flat) - k)
            same = user[start:end] == user[start + k : end + k]
            yield flat[start:end][same], flat[start + k : end + k][same]


def ppmi(counts: torch.Tensor) -> torch.Tensor:
    """Positive PMI of a sparse CSR symmetric count matrix: max(0, log(n_ij * n / (n_i * n_j)))."""
    crow, col, n_ij = counts.crow_indices(), counts.col_indices(), counts.values()
    row = torch.repeat_interleave(torch.arange(counts.shape[0]), crow.diff())
    n_i = torch.zeros(counts.shape[0], dtype=torch.float64).index_add_(0, row, n_ij)
    pmi = torch.log(n_ij * n_ij.sum() / (n_i[row] * n_i[col]))
    keep = pmi > 0
    kept = torch.bincount(row[keep], minlength=counts.shape[0])
    crow = torch.cat([crow.new_zeros(1), kept.cumsum(0)])
    return torch.sparse_csr_tensor(crow, col[keep], pmi[keep], counts.shape, check_invariants=False)


def cooccurrence_embeddings(
    sequences: Sequence[np.ndarray],
    num_items: int,
    *,
    dim: int = COOCCURRENCE_DIM,
    window: int = COOCCURRENCE_WINDOW,
    seed: int = 42,
) -> torch.Tensor:
    """(N, dim) float32 unit rows (zero rows for items that co-occur with nothing)."""
    matrix = ppmi(cooccurrence_counts(sequences, num_items, window)).to(torch.float32)
    rank = min(dim, num_items)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # svd_lowrank draws a random projection
        # CSR: svd_lowrank's sparse @ dense products are ~3x faster than on COO (bench/scale)
        u, s, _ = torch.svd_lowrank(matrix, q=rank, niter=6)
    vectors = u * s.clamp_min(0).sqrt()
    return F.normalize(vectors, dim=1)


def blend(text: torch.Tensor, collaborative: torch.Tensor, weight: float) -> torch.Tensor:
    """Concatenate unit text rows and unit collaborative rows, scaled so that `weight` is the
    collaborative share of every squared distance (0: text only, 1: collaborative only).

    An item that co-occurs with nothing borrows the collaborative row of its nearest item by
    text: left at zero, all such items would crowd one corner of the space and one SID prefix."""
    text = F.normalize(text.float(), dim=1)
    collaborative = borrow_missing(collaborative, text)
    return torch.cat([text * (1.0 - weight) ** 0.5, collaborative * weight**0.5], dim=1)


def borrow_missing(collaborative: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Zero collaborative rows replaced by the row of the most text-similar item that has one."""
    missing = collaborative.norm(dim=1) == 0
    if not missing.any() or missing.all():
        return collaborative
    known = (~missing).nonzero().squeeze(1)
    nearest = (text[missing] @ text[known].t()).argmax(dim=1)
    filled = collaborative.clone()
    filled[missing] = collaborative[known[nearest]]
    return filled


def code_vectors(
    sids: torch.Tensor, item_vectors: torch.Tensor, codebook_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, V, dim) mean item vector of each SID digit's code at each position, and (H, V) bool:
    the code is used. sids: the (H, N) SID table; item_vectors: (N, dim)."""
    h, dim = sids.shape[0], item_vectors.shape[1]
    sums = torch.zeros(h, codebook_size, dim)
    counts = torch.zeros(h, codebook_size)
    for level in range(h):
        sums[level].index_add_(0, sids[level].long(), item_vectors)
        counts[level].index_add_(0, sids[level].long(), torch.ones(sids.shape[1]))
    return sums / counts.clamp_min(1)[..., None], counts > 0
