"""Training rows (madrec.train.rows): the three ways to cut histories, and the step sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from madrec.errors import MadrecError
from madrec.train.rows import PAD_ITEM, StepSampler, TrainingRows

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


def test_unknown_mode_and_empty_rows_are_named_errors():
    with pytest.raises(MadrecError, match="rows.*'random'"):
        TrainingRows(SEQS, 3, "random")
    with pytest.raises(MadrecError, match="rows.*'sliding'"):  # removed: no experiment used it
        TrainingRows(SEQS, 3, "sliding")
    with pytest.raises(MadrecError, match="no rows"):
        TrainingRows([np.array([]), np.array([])], 3, "truncate")


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
