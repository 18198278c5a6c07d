"""How much of the exact ranking the SID-tree beam keeps on a large catalogue (issue #33).

    python bench/scale/tree_quality.py CKPT DATA [--users 1000] [--widths 8,16,32]

For the first --users validation users of a prepared folder: Recall@10 of the exact top-10
(every catalogue item scored, `model.large_catalogue` off) and of the tree beam at each width,
with users/s of each, one thread. The numbers of bench/scale/README.md came from a `tiny`
checkpoint trained 3 minutes on the 1M-item synthetic catalogue of bench_scale.py.
"""

from __future__ import annotations

import argparse
import time

import torch

from madrec.checkpoint import load_checkpoint
from madrec.data.dataset import load_dataset
from madrec.evaluate.decode import build_histories


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("data")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--widths", default="8,16,32")
    args = p.parse_args()
    torch.set_num_threads(1)
    loaded = load_checkpoint(args.ckpt)
    split = load_dataset(args.data, splits=("training", "evaluation")).splits["evaluation"]
    sequences = split.sequences[: args.users]
    targets = torch.tensor([int(s[-1]) for s in sequences])
    histories = build_histories(loaded.vocab, loaded.sids, sequences, loaded.max_len)  # drops each target
    model = loaded.model

    def recall(width: int | None) -> tuple[float, float]:
        model.large_catalogue = width is not None
        if width is not None:
            model.cfg.tree_width = width
        start = time.perf_counter()
        top = torch.cat([model.top_items(h, 10)[0] for h in histories.split(25)])
        return float((top == targets[:, None]).any(1).float().mean()), len(top) / (time.perf_counter() - start)

    with torch.no_grad():
        model.top_items(histories[:10], 10)  # builds the tree and its node vectors
        exact, exact_speed = recall(None)
        print(f"exact: R@10 {exact:.4f}, {exact_speed:.1f} users/s")
        for width in map(int, args.widths.split(",")):
            r, speed = recall(width)
            print(f"tree width {width}: R@10 {r:.4f} ({r / exact:.0%} of exact), {speed:.0f} users/s")


if __name__ == "__main__":
    main()
