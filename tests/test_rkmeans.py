"""Exact k-means, residual k-means and the de-dup digit (madrec.sids.rkmeans)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from madrec.errors import MadrecError
from madrec.sids import rkmeans
from madrec.sids.rkmeans import assign_codes, dedup_digit, kmeans, nearest, residual_kmeans


def planted(k: int = 12, per: int = 40, dim: int = 24, noise: float = 0.05, seed: int = 0):
    """Points around k random unit centres, shuffled; returns (points, true labels)."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, dim, generator=g), dim=1) * 3
    labels = torch.arange(k).repeat_interleave(per)
    x = centres[labels] + noise * torch.randn(k * per, dim, generator=g)
    perm = torch.randperm(k * per, generator=g)
    return x[perm], labels[perm]


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    pairs = torch.unique(torch.stack([a, b], 1), dim=0)
    return pairs.shape[0] == torch.unique(a).numel() == torch.unique(b).numel()


def test_kmeans_recovers_planted_clusters():
    x, labels = planted()
    for seed in range(3):
        res = kmeans(x, 12, seed=seed)
        assert res.converged
        assert same_partition(res.assign, labels), f"seed {seed}: clusters not recovered"
        # Centroids are the cluster means.
        for c in range(12):
            torch.testing.assert_close(res.centroids[c], x[res.assign == c].mean(0), atol=1e-5, rtol=0)


def test_kmeans_fixed_point_and_inertia():
    x = torch.randn(600, 8, generator=torch.Generator().manual_seed(1))
    res = kmeans(x, 10, seed=3)
    assert res.converged and res.iterations > 1
    assign, dist = nearest(x, res.centroids)
    assert torch.equal(assign, res.assign)  # Lloyd stopped at a fixed point
    assert res.inertia == pytest.approx(float(((x - res.centroids[res.assign]) ** 2).sum()), rel=1e-4)
    # Better than the k-means++ start alone.
    start = rkmeans.kmeans_plus_plus(x, 10, torch.Generator().manual_seed(3))
    assert res.inertia < float(nearest(x, start)[1].sum())


def test_chunked_distances_match_unchunked(monkeypatch):
    x = torch.randn(3000, 16, generator=torch.Generator().manual_seed(2))
    whole = kmeans(x, 20, seed=5)
    monkeypatch.setattr(rkmeans, "CHUNK_BYTES", 20 * 4 * 7)  # forces 1024-row chunks
    chunked = kmeans(x, 20, seed=5)
    assert torch.equal(whole.assign, chunked.assign)


def test_more_clusters_than_distinct_points_and_too_few_points():
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).repeat(10, 1)
    res = kmeans(x, 5, seed=0)
    assert res.converged and torch.unique(res.assign).numel() == 2
    with pytest.raises(MadrecError, match="at least 30 points"):
        kmeans(torch.randn(20, 3), 30)


def test_residual_kmeans_deterministic_and_seed_sensitive():
    emb = torch.randn(800, 32, generator=torch.Generator().manual_seed(4))
    a = residual_kmeans(emb, 3, 16, seed=7, device="cpu")
    b = residual_kmeans(emb, 3, 16, seed=7, device="cpu")
    c = residual_kmeans(emb, 3, 16, seed=8, device="cpu")
    assert a.codes.shape == (3, 800) and a.codebooks.shape == (3, 16, 32)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.codebooks, b.codebooks)
    assert not torch.equal(a.codes, c.codes)


def test_residual_kmeans_normalises_every_level():
    x, _ = planted(k=8, per=30, dim=16)
    res = residual_kmeans(x, 2, 8, seed=1, device="cpu")
    # Row scale is irrelevant: the residual is L2-normalised before every level.
    scale = torch.rand(x.shape[0], 1, generator=torch.Generator().manual_seed(9)) * 10 + 0.1
    assert torch.equal(residual_kmeans(x * scale, 2, 8, seed=1, device="cpu").codes, res.codes)
    # Level-1 centroids are means of unit vectors; level 2 is fit on normalised residuals.
    assert float(res.codebooks[0].norm(dim=1).max()) <= 1 + 1e-5
    r1 = F.normalize(F.normalize(x, dim=1) - res.codebooks[0][res.codes[0]], dim=1)
    for c in range(8):
        members = r1[res.codes[1] == c]
        if len(members):
            torch.testing.assert_close(res.codebooks[1][c], members.mean(0), atol=1e-5, rtol=0)
    # The stored codebooks reproduce the codes (new items can be assigned the same way).
    assert torch.equal(assign_codes(x, res.codebooks), res.codes)


def test_dedup_digit_numbering():
    codes = torch.tensor(
        [
            [0, 2, 0, 0, 2, 5, 0],
            [1, 3, 1, 1, 3, 5, 2],
        ]
    )
    digit, group = dedup_digit(codes)
    # (0,1) at items 0,2,3 -> 0,1,2; (2,3) at 1,4 -> 0,1; unique prefixes (5,5) and (0,2) -> 0.
    assert digit.tolist() == [0, 0, 1, 2, 1, 0, 0]
    assert group.tolist() == [3, 2, 3, 3, 2, 1, 1]
    full = torch.cat([codes, digit.unsqueeze(0)])
    assert torch.unique(full.t(), dim=0).shape[0] == codes.shape[1]


def test_device_validation():
    assert rkmeans.resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(MadrecError, match="no CUDA device"):
            rkmeans.resolve_device("cuda")
