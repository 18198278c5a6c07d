"""Exact k-means and residual k-means (RK-Means) for semantic IDs (docs/method.md, "Deviations": exact, seeded).

    result = residual_kmeans(embeddings, levels=3, codebook_size=256, seed=42)
    result.codes        # (L, N) int64, level-l code of every item
    result.codebooks    # (L, K, D) float32 centroids, to assign new items with `assign_codes`
    digit, sizes = dedup_digit(result.codes)   # extra digit making every SID unique

k-means is Lloyd's algorithm from a k-means++ start, run until no assignment changes,
in fp32 with a seeded CPU generator (so the same seed picks the same start on any device).
Distances are computed in row chunks, so the N x K distance matrix never exists at once.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from madrec.errors import MadrecError

log = logging.getLogger(__name__)

# Rows per distance chunk are chosen so one chunk's (rows x K) fp32 matrix stays near this size.
CHUNK_BYTES = 64 << 20


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # (K, D) fp32
    assign: torch.Tensor  # (N,) int64
    inertia: float  # sum of squared distances to the assigned centroid
    iterations: int
    converged: bool


@dataclass
class RKMeansResult:
    codes: torch.Tensor  # (L, N) int64
    codebooks: torch.Tensor  # (L, K, D) fp32
    levels: list[KMeansResult] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # wall time per level


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> the first CUDA device when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MadrecError(f"--device {device}: no CUDA device is available here; use --device cpu or auto")
    return dev


def _chunk_rows(k: int) -> int:
    return max(1024, CHUNK_BYTES // (4 * max(k, 1)))


def nearest(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest centroid (squared Euclidean; ties -> lowest index) and that distance."""
    c_sq = (centroids * centroids).sum(1)
    assign = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dist = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    step = _chunk_rows(centroids.shape[0])
    for start in range(0, x.shape[0], step):
        xc = x[start : start + step]
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is constant per row for the argmin.
        d = torch.addmm(c_sq.unsqueeze(0), xc, centroids.t(), alpha=-2.0)
        best, idx = d.min(1)
        assign[start : start + step] = idx
        dist[start : start + step] = (best + (xc * xc).sum(1)).clamp_min_(0.0)
    return assign, dist


def _sq_dist_to(x: torch.Tensor, points: torch.Tensor, x_sq: torch.Tensor) -> torch.Tensor:
    """(N, T) squared distances from every row of x to each of the T `points`."""
    d = torch.addmm((points * points).sum(1).unsqueeze(0), x, points.t(), alpha=-2.0)
    return d.add_(x_sq.unsqueeze(1)).clamp_min_(0.0)


def _sample(weights: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n indices drawn proportionally to `weights` (uniformly when all are zero)."""
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    cum = torch.cumsum(weights, 0, dtype=torch.float64)
    total = float(cum[-1])
    if total <= 0:
        return (u * weights.shape[0]).long().clamp_max_(weights.shape[0] - 1).to(weights.device)
    return torch.searchsorted(cum, (u * total).to(cum.device), right=True).clamp_max_(weights.shape[0] - 1)


def kmeans_plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding: each new centre is the best of 2 + ln(k) D^2-sampled candidates."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    step = _chunk_rows(x.shape[1])  # chunked: x * x at once would be a second N x D tensor
    x_sq = torch.cat([(xc * xc).sum(1) for xc in x.split(step)])
    first = int(torch.randint(n, (1,), generator=gen))
    centroids = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    centroids[0] = x[first]
    closest = _sq_dist_to(x, x[first : first + 1], x_sq).squeeze(1)
    for c in range(1, k):
        cand = _sample(closest, trials, gen)
        # Potential (sum of D^2) if each candidate were added; keep the lowest.
        new_closest = torch.minimum(_sq_dist_to(x, x[cand], x_sq), closest.unsqueeze(1))
        best = int(new_closest.sum(0).argmin())
        closest = new_closest[:, best]
        centroids[c] = x[cand[best]]
    return centroids


def _cluster_sums(x: torch.Tensor, assign: torch.Tensor, k: int) -> torch.Tensor:
    """Per-cluster sums of the rows of x. On CUDA a one-hot matmul replaces index_add_,
    whose float atomics would make the result depend on thread scheduling."""
    if x.device.type != "cuda":
        return torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, assign, x)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    step = _chunk_rows(k)
    for start in range(0, x.shape[0], step):
        one_hot = F.one_hot(assign[start : start + step], k).to(x.dtype)
        sums.addmm_(one_hot.t(), x[start : start + step])
    return sums


def kmeans(x: torch.Tensor, k: int, *, seed: int = 0, max_iter: int = 300) -> KMeansResult:
    """Exact k-means of the rows of x (fp32): k-means++ start, Lloyd until assignments are stable.

    An empty cluster is re-seeded with the point farthest from its centroid, so all k codes
    stay available. Deterministic for a given seed and device.
    """
    n = x.shape[0]
    if k > n:
        raise MadrecError(f"k-means: {k} clusters need at least {k} points, got {n}; use a smaller codebook size")
    x = x.float().contiguous()
    gen = torch.Generator().manual_seed(seed)
    centroids = kmeans_plus_plus(x, k, gen)
    assign, dist = nearest(x, centroids)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - `it` is reported after the loop
        counts = torch.bincount(assign, minlength=k)
        sums = _cluster_sums(x, assign, k)
        centroids = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp_min(1).unsqueeze(1).float(), centroids)
        # Re-seed empty clusters with the farthest points (none left when all points coincide).
        empty = (counts == 0).nonzero().flatten()
        far = torch.topk(dist, min(int(empty.numel()), n)).indices
        far = far[dist[far] > 0]
        centroids[empty[: far.numel()]] = x[far]
        new_assign, dist = nearest(x, centroids)
        changed = int((new_assign != assign).sum())
        assign = new_assign
        if changed == 0 and far.numel() == 0:
            converged = True
            break
    if not converged:
        log.warning("k-means stopped after %d Lloyd iterations without reaching a fixed point", max_iter)
    return KMeansResult(centroids, assign, float(dist.double().sum()), it, converged)


def _normalise_(x: torch.Tensor) -> None:
    """L2-normalise the rows of x in place (as F.normalize, without a second N x D copy)."""
    x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12))


def _subtract_(x: torch.Tensor, centroids: torch.Tensor, assign: torch.Tensor) -> None:
    """x -= centroids[assign], in row chunks so the gathered centroids never fill N x D."""
    step = _chunk_rows(x.shape[1])
    for start in range(0, x.shape[0], step):
        x[start : start + step].sub_(centroids[assign[start : start + step]])


def residual_kmeans(
    embeddings: torch.Tensor,
    levels: int = 3,
    codebook_size: int = 256,
    *,
    seed: int = 42,
    device: str | torch.device = "auto",
    max_iter: int = 300,
) -> RKMeansResult:
    """RK-Means: per level, L2-normalise the residual, fit k-means on it, subtract the centroid.

    Level l is seeded with `seed + l`. Returns codes (L, N) and codebooks (L, K, D) on the CPU.
    Memory: one fp32 copy of the embeddings plus O(chunk) work space.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise MadrecError(f"residual k-means needs a non-empty (N, D) matrix, got shape {tuple(embeddings.shape)}")
    if levels < 1 or codebook_size < 2:
        raise MadrecError(
            f"residual k-means needs levels >= 1 and codebook size >= 2, got {levels} and {codebook_size}"
        )
    dev = resolve_device(device)
    residual = embeddings.to(dev, torch.float32, copy=True)  # updated in place, level by level
    result = RKMeansResult(
        codes=torch.empty(levels, embeddings.shape[0], dtype=torch.long),
        codebooks=torch.empty(levels, codebook_size, embeddings.shape[1], dtype=torch.float32),
    )
    for level in range(levels):
        t0 = time.perf_counter()
        _normalise_(residual)
        km = kmeans(residual, codebook_size, seed=seed + level, max_iter=max_iter)
        _subtract_(residual, km.centroids, km.assign)
        result.codes[level] = km.assign.cpu()
        result.codebooks[level] = km.centroids.cpu()
        result.levels.append(KMeansResult(km.centroids.cpu(), km.assign.cpu(), km.inertia, km.iterations, km.converged))
        result.seconds.append(time.perf_counter() - t0)
        log.info(
            "RK-Means level %d/%d: %d Lloyd iterations%s, %d/%d codes used, %.1f s",
            level + 1,
            levels,
            km.iterations,
            "" if km.converged else " (not converged)",
            int(torch.unique(km.assign).numel()),
            codebook_size,
            result.seconds[-1],
        )
    return result


def assign_codes(embeddings: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Codes (L, N) of (new) items under fitted codebooks (L, K, D), same normalise-subtract rule."""
    residual = embeddings.to(codebooks.device, torch.float32, copy=True)
    codes = torch.empty(codebooks.shape[0], embeddings.shape[0], dtype=torch.long)
    for level, centroids in enumerate(codebooks):
        _normalise_(residual)
        idx, _ = nearest(residual, centroids)
        _subtract_(residual, centroids, idx)
        codes[level] = idx.cpu()
    return codes


def dedup_digit(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The de-duplication digit for (L, N) codes, and the size of each item's collision group.

    Items sharing the full L-code prefix are numbered 0..n-1 in ascending item index;
    an item with a unique prefix gets 0.
    """
    n = codes.shape[1]
    _, inverse, counts = torch.unique(codes.t(), dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)  # groups contiguous, items ascending inside
    starts = torch.cumsum(counts, 0) - counts
    digit = torch.empty(n, dtype=torch.long)
    digit[order] = torch.arange(n) - starts[inverse[order]]
    return digit, counts[inverse]
