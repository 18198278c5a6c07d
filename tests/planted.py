"""Synthetic prepared datasets with planted, learnable next-item rules (for training tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from madrec.data.prepare import write_prepared

# `madrec train` overrides of the training tests on planted data: small, float32, one thread,
# no time budget (so runs are a function of the seed and the steps), every user validated.
TRAIN_ARGS = [
    "trainer.max_minutes=0",
    "trainer.precision=32-true",  # exact resumption is a float32 property (auto: bf16 on CPUs that have it)
    "codebook_size=8",
    "batch_size=64",
    "max_len=30",
    "optim.scheduler.warmup_steps=20",
    "model.dropout=0",
    "trainer.num_threads=1",
    "trainer.progress_bar=false",
    "eval.val_max_users=0",
]


def random_sids(num_items: int, sid_len: int, codebook_size: int, seed: int) -> torch.Tensor:
    """(sid_len, num_items) distinct random SIDs."""
    rng = np.random.default_rng(seed)
    codes = rng.choice(codebook_size**sid_len, size=num_items, replace=False)
    digits = [(codes // codebook_size ** (sid_len - 1 - p)) % codebook_size for p in range(sid_len)]
    return torch.from_numpy(np.stack(digits)).long()


def planted_dataset(
    root: Path,
    *,
    num_items: int = 40,
    num_users: int = 300,
    sid_len: int = 3,
    codebook_size: int = 8,
    min_len: int = 5,
    max_len: int = 9,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write a prepared dataset whose users follow a fixed successor rule item -> next[item].

    Each user starts at a random item and walks the rule, so the last item of every split is
    a deterministic function of the one before it. Returns (data_dir, sids_path).
    """
    rng = np.random.default_rng(seed)
    successor = rng.permutation(num_items)
    sequences = []
    for _ in range(num_users):
        walk = [int(rng.integers(num_items))]
        for _ in range(int(rng.integers(min_len, max_len + 1)) - 1):
            walk.append(int(successor[walk[-1]]))
        sequences.append(np.asarray(walk, dtype=np.int64))
    item_ids = [f"item{i}" for i in range(num_items)]
    data_dir = root / "data"
    write_prepared(
        data_dir,
        item_ids,
        {k: f"text of {k}" for k in item_ids},
        list(range(num_users)),
        sequences,
        {"num_items": num_items},
    )
    sids_path = root / "sids.pt"
    torch.save(random_sids(num_items, sid_len, codebook_size, seed), sids_path)
    return data_dir, sids_path
