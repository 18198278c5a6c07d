"""Ranking metrics per user, and the most-popular baseline.

One target per user. Recall@K = 1 if the target is among the top K (hit rate); NDCG@K =
1 / log2(rank + 1) for a target at rank <= K, else 0. Values are returned per user so that
callers average once over all users of a split, after gathering them from every process.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from madrec.errors import MadrecError


def hits_at_k(ranked: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) 1-based rank of each target in its (B, K) ranked list (first occurrence), 0 if absent."""
    if ranked.dim() != 2 or targets.shape != ranked.shape[:1]:
        raise MadrecError(
            f"ranked must be (B, K) and targets (B,); got {tuple(ranked.shape)} and {tuple(targets.shape)}"
        )
    match = ranked == targets[:, None].to(ranked.device)
    first = match.int().argmax(1) + 1
    return torch.where(match.any(1), first, torch.zeros_like(first))


def ranking_metrics(
    ranked: torch.Tensor, targets: torch.Tensor, ks: Iterable[int] = (5, 10)
) -> dict[str, torch.Tensor]:
    """Per-user `{"recall@K": (B,), "ndcg@K": (B,)}` for every K in `ks` (float64)."""
    ks = list(ks)
    if not ks or min(ks) < 1 or max(ks) > ranked.shape[1]:
        raise MadrecError(
            f"ks={ks}: every K must be in [1, {ranked.shape[1]}] (the length of the ranked lists); "
            "decode longer lists (a wider beam) for a larger K"
        )
    rank = hits_at_k(ranked, targets).double()
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hit = (rank >= 1) & (rank <= k)
        out[f"recall@{k}"] = hit.double()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(rank + 1), torch.zeros_like(rank))
    return out


def most_popular(sequences: Sequence[np.ndarray], num_items: int, k: int, *, drop_last: bool = True) -> torch.Tensor:
    """(k,) the items seen most often in the users' histories (ties: smaller index first).

    With `drop_last` (evaluation and testing splits) each sequence's last item is its target
    and is not counted, so the baseline uses exactly the interactions before the targets.
    """
    seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
    seqs = [s[:-1] for s in seqs] if drop_last else seqs
    counts = np.bincount(np.concatenate(seqs + [np.zeros(0, np.int64)]), minlength=num_items)
    order = np.argsort(-counts, kind="stable")[:k]
    return torch.from_numpy(order.astype(np.int64))
