"""A trained model with a known next-item rule, for decoding benchmarks where Recall@10 means
something on a CPU budget: a planted dataset (tests/planted.py: users walk a fixed successor
permutation over the items) and `madrec train experiment=tiny` on it.

    .venv/bin/python bench/decode/make_planted.py OUT [--items 40 --users 300 --steps 600]
    # -> OUT/data (prepared dataset), OUT/sids.pt, OUT/run/checkpoints/best.ckpt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from madrec.config import load_config  # noqa: E402
from madrec.train.run import run  # noqa: E402

from planted import planted_dataset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--items", type=int, default=40)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--sid-len", type=int, default=3)
    p.add_argument("--codebook-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=600)
    args = p.parse_args()
    data, sids = planted_dataset(
        args.out, num_items=args.items, num_users=args.users, sid_len=args.sid_len, codebook_size=args.codebook_size
    )
    cfg = load_config(
        [
            "experiment=tiny",
            f"data_dir={data}",
            f"sid_data_path={sids}",
            f"output_dir={args.out / 'run'}",
            f"codebook_size={args.codebook_size}",
            "batch_size=64",
            "max_len=30",
            "model.dropout=0",
            "optim.scheduler.warmup_steps=20",
            f"trainer.max_steps={args.steps}",
            f"trainer.val_every_n_steps={args.steps}",
            f"trainer.checkpoint_every_n_steps={args.steps}",
            "trainer.progress_bar=false",
            "eval.val_max_users=0",
            "trainer.num_threads=1",
        ]
    )
    summary = run(cfg)
    print({k: v for k, v in summary.items() if "recall" in k})


if __name__ == "__main__":
    main()
