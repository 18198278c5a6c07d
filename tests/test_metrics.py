"""Recall@K / NDCG@K against hand-computed values, and the most-popular baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from madrec.errors import MadrecError
from madrec.evaluate.metrics import hits_at_k, most_popular, ranking_metrics

RANKED = torch.tensor([[3, 1, 2, 8], [5, 6, 7, 4], [9, 0, 0, 4], [2, 2, 7, 1]])
TARGETS = torch.tensor([1, 9, 4, 2])


def test_rank_of_target_first_occurrence():
    assert hits_at_k(RANKED, TARGETS).tolist() == [2, 0, 4, 1]


def test_recall_and_ndcg_hand_computed():
    m = ranking_metrics(RANKED, TARGETS, ks=(1, 2, 4))
    assert m["recall@1"].tolist() == [0, 0, 0, 1]
    assert m["recall@2"].tolist() == [1, 0, 0, 1]
    assert m["recall@4"].tolist() == [1, 0, 1, 1]
    assert m["ndcg@1"].tolist() == [0, 0, 0, 1]
    assert m["ndcg@2"].tolist() == pytest.approx([1 / math.log2(3), 0, 0, 1])
    assert m["ndcg@4"].tolist() == pytest.approx([1 / math.log2(3), 0, 1 / math.log2(5), 1])
    assert float(m["recall@4"].mean()) == 0.75


def test_k_beyond_list_length_is_an_error():
    with pytest.raises(MadrecError, match=r"ks=\[5\].*\[1, 4\].*wider beam"):
        ranking_metrics(RANKED, TARGETS, ks=(5,))
    with pytest.raises(MadrecError, match="targets"):
        hits_at_k(RANKED, TARGETS[:2])


def test_most_popular_counts_histories_only():
    seqs = [np.array([1, 2, 2, 7]), np.array([2, 3, 7]), np.array([3, 1, 7])]
    # histories: [1, 2, 2], [2, 3], [3, 1] -> 2 x3, 1 x2, 3 x2 (tie -> smaller index), targets (7) not counted
    assert most_popular(seqs, num_items=8, k=3).tolist() == [2, 1, 3]
    assert most_popular(seqs, num_items=8, k=2, drop_last=False).tolist() == [2, 7]
    assert most_popular(seqs, num_items=8, k=5).tolist() == [2, 1, 3, 0, 4]
