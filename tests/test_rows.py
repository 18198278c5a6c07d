"""Training rows (madrec.rows): the three ways to cut histories, and the step sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from madrec.errors import MadrecError
from madrec.rows import PAD_ITEM, StepSampler, TrainingRows

P = PAD_ITEM
SEQS = [np.array([10, 11, 12, 13, 14, 15, 16]), np.array([20, 21]), np.array([30])]


def all_rows(rows: TrainingRows) -> list[list[int]]:
    return rows.batch(np.arange(len(rows))).tolist()


def test_truncate_keeps_each_users_most_recent_items():
    rows = TrainingRows(SEQS, items_per_row=3, mode="truncate")
    assert all_rows(rows) == [[14, 15, 16], [P, 20, 21], [P, P, 30]]


def test_windows_cover_every_item_once_from_the_recent_end():
    rows = TrainingRows(SEQS, items_per_row=3, mode="windows")
    assert all_rows(rows) == [[14, 15, 16], [11, 12, 13], [P, P, 10], [P, 20, 21], [P, P, 30]]


def test_sliding_ends_a_row_at_every_item_with_a_history():
    rows = TrainingRows(SEQS, items_per_row=3, mode="sliding")
    assert all_rows(rows) == [
        [P, 10, 11],
        [10, 11, 12],
        [11, 12, 13],
        [12, 13, 14],
        [13, 14, 15],
        [14, 15, 16],
        [P, 20, 21],
    ]  # the one-item user has no transition to learn


def test_sliding_samples_users_uniformly_not_rows():
    long_user = np.arange(1000)
    rows = TrainingRows([long_user, np.array([5, 6]), np.array([7, 8])], items_per_row=4, mode="sliding")
    g = torch.Generator().manual_seed(0)
    picked = rows.sample(6000, g).numpy()
    users = rows.row_user[picked]
    share = np.bincount(users, minlength=3) / len(users)
    assert np.allclose(share, 1 / 3, atol=0.03)  # by rows the long user would get 999/1001
    ends = rows.row_end[picked[users == 0]]
    assert ends.min() >= 2 and ends.max() <= 1000 and len(np.unique(ends)) > 800  # ~2,000 draws over 999 rows


def test_unknown_mode_and_empty_rows_are_named_errors():
    with pytest.raises(MadrecError, match="rows.*'random'"):
        TrainingRows(SEQS, 3, "random")
    with pytest.raises(MadrecError, match="no rows"):
        TrainingRows([np.array([1]), np.array([2])], 3, "sliding")


def test_step_sampler_shards_global_batches_and_covers_each_epoch():
    rows = TrainingRows([np.arange(103)], items_per_row=1, mode="windows")  # 103 rows
    shards = [StepSampler(rows, 20, seed=1, rank=r, world=2, start_step=lambda: 0) for r in range(2)]
    one = StepSampler(rows, 20, seed=1, rank=0, world=1, start_step=lambda: 0)
    assert one.steps_per_epoch == 5
    epoch = [one.global_batch(s) for s in range(5)]
    assert len(set(torch.cat(epoch).tolist())) == 100  # disjoint batches; 3 rows left out this epoch
    assert not torch.equal(one.global_batch(5), epoch[0])  # next epoch: a new permutation
    for step, (a, b) in enumerate(zip(*(iter(s) for s in shards))):
        if step == 7:
            break
        assert len(a) == len(b) == 10
        assert sorted(torch.cat([a, b]).tolist()) == sorted(one.global_batch(step).tolist())
    resumed = StepSampler(rows, 20, seed=1, rank=0, world=1, start_step=lambda: 6)
    assert torch.equal(next(iter(resumed)), one.global_batch(6))


def test_sliding_batches_are_a_function_of_seed_and_step():
    rows = TrainingRows(SEQS * 10, items_per_row=3, mode="sliding")
    a = StepSampler(rows, 8, seed=3, rank=0, world=1, start_step=lambda: 0)
    b = StepSampler(rows, 8, seed=3, rank=0, world=1, start_step=lambda: 4)
    assert torch.equal(a.global_batch(4), next(iter(b)))
    assert not torch.equal(a.global_batch(4), a.global_batch(5))
