"""The exponential moving average of the weights (trainer.ema_decay), at a cost per step that does
not grow with the catalogue: a parameter whose gradient is sparse (the item-id table beyond
model.head_candidates, updated lazily by train.optim.LazyAdamW) is averaged row by row, only
where a step touches it.

A row that no step touches keeps its value v, so k steps of `avg <- d avg + (1 - d) v` leave
`P avg + (1 - P) v` with P the product of those steps' decays: each row remembers the log of
that product at its last update (`synced`), and is brought up to date with its unchanged value
just before a step changes it, and every row before the average is read. The result is the
average of updating every row every step (tests/test_catalogue_scale.py)."""

from __future__ import annotations

import math

import torch
from torch import nn


def ema_decay_at(updates: int, decay: float) -> float:
    """The decay of update number `updates` (0-based): ramps up as (1 + n) / (10 + n) over the first
    updates, so the average soon forgets the early weights (as TensorFlow's ExponentialMovingAverage does)."""
    return min((1 + updates) / (10 + updates), decay)


def ema_update(average: torch.Tensor, current: torch.Tensor, updates: torch.Tensor, decay: float) -> torch.Tensor:
    """One EMA step of a dense tensor."""
    d = torch.clamp((1 + updates) / (10 + updates), max=decay).to(average.dtype)
    return average * d + current * (1 - d)


class RowLazyEMA:
    """The average of `model`'s parameters kept in `average` (a module of the same structure):
    `before_step` ahead of each optimiser step, `update` after it, `flush` before reading."""

    def __init__(self, decay: float):
        self.decay = decay
        self.updates = 0  # steps averaged so far
        self.log_p = 0.0  # log of the product of every decay applied so far
        self.synced: dict[int, torch.Tensor] = {}  # lazy parameter index -> (rows,) log_p of its last update
        self.touched: dict[int, torch.Tensor] = {}  # lazy parameter index -> rows the coming step changes

    def before_step(self, model: nn.Module, average: nn.Module) -> None:
        """Note the rows each sparse gradient will change and bring them up to date first."""
        self.touched = {}
        for i, (p, avg) in enumerate(zip(model.parameters(), average.parameters())):
            if p.grad is not None and p.grad.is_sparse and self.updates:
                rows = p.grad.coalesce().indices()[0]
                self._catch_up(i, p, avg, rows)
                self.touched[i] = rows

    def update(self, model: nn.Module, average: nn.Module) -> None:
        """One step of the average: every dense parameter, the touched rows of the lazy ones."""
        if self.updates == 0:  # the first weights are the average
            for avg, p in zip(average.parameters(), model.parameters()):
                avg.detach().copy_(p.detach())
        else:
            d = ema_decay_at(self.updates, self.decay)
            for i, (p, avg) in enumerate(zip(model.parameters(), average.parameters())):
                p, avg = p.detach(), avg.detach()
                if i in self.synced and i not in self.touched:
                    continue  # a lazy table this step left alone: its rows wait in `synced`
                if i in self.touched:
                    rows = self.touched[i]
                    avg[rows] = avg[rows] * d + p[rows] * (1 - d)
                else:
                    avg.mul_(d).add_(p, alpha=1 - d)
            self.log_p += math.log(d)
            for i, rows in self.touched.items():
                self.synced[i][rows] = self.log_p
        self.updates += 1
        self.touched = {}

    def flush(self, model: nn.Module, average: nn.Module) -> None:
        """Bring every row of every lazy parameter up to date (before the average is read)."""
        for i, (p, avg) in enumerate(zip(model.parameters(), average.parameters())):
            if i in self.synced:
                self._catch_up(i, p, avg, None)

    def _catch_up(self, i: int, p: torch.Tensor, avg: torch.Tensor, rows: torch.Tensor | None) -> None:
        """Apply the decays a lazy parameter's rows (None: all) missed, with their unchanged values."""
        synced = self.synced.setdefault(i, torch.full((len(p),), self.log_p, dtype=torch.float64))
        at = slice(None) if rows is None else rows
        keep = torch.exp(self.log_p - synced[at]).to(avg.dtype)  # P of the decays missed
        keep = keep.view(-1, *([1] * (p.dim() - 1)))
        p, avg = p.detach(), avg.detach()
        avg[at] = avg[at] * keep + p[at] * (1 - keep)
        synced[at] = self.log_p
