"""Training rows: how users' training sequences become the rows a model trains on.

A row is a window of consecutive items of one user, ending at some item, at most
`items_per_row` long (left-padded). Two ways to cut them (config key `rows`):

- `truncate`: one row per user, its most recent items (docs/method.md, "Training rows"; the reference).
- `windows`: consecutive non-overlapping windows from the most recent end, so long
  histories contribute every item once.

Rows hold item indices; the model's tokenizer turns a batch into tokens (madrec.train.run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from madrec.config import ROW_MODES
from madrec.errors import MadrecError

PAD_ITEM = -1


def step_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, step, rank, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class TrainingRows:
    """Every row as (user, end) over the concatenated training sequences; batches built on demand."""

    def __init__(self, sequences: Sequence[np.ndarray], items_per_row: int, mode: str):
        if mode not in ROW_MODES:
            raise MadrecError(f"config key rows: {mode!r} is not one of {', '.join(ROW_MODES)}")
        if items_per_row < 1:
            raise MadrecError(f"rows of {items_per_row} items cannot hold an item")
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        self.items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences] + [np.zeros(0, np.int64)])
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
        self.items_per_row, self.mode = items_per_row, mode
        # windows: ends n, n - w, n - 2w, ... > 0; truncate: n alone (vectorised: 10M users are one pass)
        counts = (lengths + items_per_row - 1) // items_per_row if mode == "windows" else (lengths > 0).astype(np.int64)
        self.row_user = np.repeat(np.arange(len(lengths)), counts)
        # rows of each user are contiguous: user u owns rows first[u] .. first[u] + counts[u] - 1
        self.first_row = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else counts
        within = np.arange(len(self.row_user)) - self.first_row[self.row_user]  # 0 = the most recent row
        self.row_end = lengths[self.row_user] - within * items_per_row  # exclusive, within the user
        self.users_with_rows = np.flatnonzero(counts)
        self.row_count = counts
        if len(self.row_end) == 0:
            raise MadrecError(
                "the training split holds no rows to train on (every user's training sequence "
                f"is too short for rows={mode})"
            )

    def __len__(self) -> int:
        return len(self.row_end)

    def batch(self, rows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, w) item indices of the given rows, left-padded with PAD_ITEM, w = the longest row."""
        rows = np.asarray(rows, dtype=np.int64)
        ends = self.row_end[rows]
        lens = np.minimum(ends, self.items_per_row)
        width = int(lens.max()) if len(rows) else 0
        offsets = np.arange(width) - width  # -width .. -1, relative to the row's end
        idx = (self.starts[self.row_user[rows]] + ends)[:, None] + offsets
        out = self.items[np.clip(idx, 0, max(len(self.items) - 1, 0))]
        out[offsets[None, :] < -lens[:, None]] = PAD_ITEM
        return torch.from_numpy(out)


class StepSampler:
    """Yields this rank's share of the global batch of every step from `start_step()` on.

    The global batch of step s is slice s % E of a permutation seeded by (seed, s // E), E =
    steps per epoch (an epoch's remainder is dropped): a batch is a fixed function of (seed,
    step), which makes resumed runs exact.
    """

    def __init__(
        self, rows: TrainingRows, batch_size: int, seed: int, rank: int, world: int, start_step: Callable[[], int]
    ):
        if len(rows) < world:
            raise MadrecError(f"{len(rows)} training rows cannot be shared by {world} processes")
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.rank, self.world, self.start_step = rank, world, start_step
        self.steps_per_epoch = max(1, len(rows) // batch_size)
        self._perm: tuple[int, torch.Tensor] | None = None

    def global_batch(self, step: int) -> torch.Tensor:
        epoch, j = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(step_seed(self.seed, epoch))
            self._perm = (epoch, torch.randperm(len(self.rows), generator=g))
        return self._perm[1][j * self.batch_size : (j + 1) * self.batch_size]

    def __iter__(self):
        step = self.start_step()
        while True:
            yield self.global_batch(step)[self.rank :: self.world]
            step += 1
