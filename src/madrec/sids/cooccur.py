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


def cooccurrence_counts(sequences: Sequence[np.ndarray], num_items: int, window: int) -> torch.Tensor:
    """(N, N) sparse, coalesced, symmetric float64 counts of item pairs <= `window` positions apart."""
    rows, cols = [], []
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64)
        for k in range(1, min(window, len(seq) - 1) + 1):
            rows.append(seq[:-k])
            cols.append(seq[k:])
    r = torch.from_numpy(np.concatenate(rows)) if rows else torch.zeros(0, dtype=torch.long)
    c = torch.from_numpy(np.concatenate(cols)) if cols else torch.zeros(0, dtype=torch.long)
    index = torch.stack([torch.cat([r, c]), torch.cat([c, r])])
    values = torch.ones(index.shape[1], dtype=torch.float64)
    return torch.sparse_coo_tensor(index, values, (num_items, num_items), check_invariants=True).coalesce()


def ppmi(counts: torch.Tensor) -> torch.Tensor:
    """Positive PMI of a sparse symmetric count matrix: max(0, log(n_ij * n / (n_i * n_j)))."""
    index, n_ij = counts.indices(), counts.values()
    n_i = torch.zeros(counts.shape[0], dtype=torch.float64).index_add_(0, index[0], n_ij)
    pmi = torch.log(n_ij * n_ij.sum() / (n_i[index[0]] * n_i[index[1]]))
    keep = pmi > 0
    return torch.sparse_coo_tensor(index[:, keep], pmi[keep], counts.shape, check_invariants=True).coalesce()


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
        u, s, _ = torch.svd_lowrank(matrix.to_sparse_csr(), q=rank, niter=6)
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
