"""A counting baseline: recommend the items that most often followed the user's last item.

    python bench/quality/transition_baseline.py --data PREPARED_DIR [--exclude-history]

First-order transition counts over the training sequences (the same split every model trains
on); ties and short lists are filled with the most popular training items. With
--exclude-history, items already in the user's history are skipped (none of the shared data
sets repeats an item, so this only removes wasted slots). Prints Recall@10 / NDCG@10 on the
validation and test splits beside most-popular: a yardstick of how much of a data set is
first-order item-to-item signal, which a next-item model has to learn from scratch.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter, defaultdict

import numpy as np

from madrec.data.dataset import load_dataset


def transitions(sequences) -> tuple[dict[int, Counter], Counter]:
    follow: dict[int, Counter] = defaultdict(Counter)
    popular: Counter = Counter()
    for seq in sequences:
        popular.update(seq.tolist())
        for a, b in zip(seq[:-1].tolist(), seq[1:].tolist()):
            follow[a][b] += 1
    return follow, popular


def top10(history: np.ndarray, follow, popular_list, exclude: bool) -> list[int]:
    seen = set(history.tolist()) if exclude else set()
    ranked = [i for i, _ in follow.get(int(history[-1]), Counter()).most_common()]
    out: list[int] = []
    for item in ranked + popular_list:
        if item not in seen and item not in out:
            out.append(item)
        if len(out) == 10:
            break
    return out


def scores(sequences, follow, popular_list, exclude: bool) -> tuple[float, float]:
    recall = ndcg = 0.0
    for seq in sequences:
        recs = top10(seq[:-1], follow, popular_list, exclude)
        if int(seq[-1]) in recs:
            rank = recs.index(int(seq[-1]))
            recall += 1
            ndcg += 1 / math.log2(rank + 2)
    return recall / len(sequences), ndcg / len(sequences)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--exclude-history", action="store_true")
    a = p.parse_args(argv)
    data = load_dataset(a.data, splits=("training", "evaluation", "testing"))
    follow, popular = transitions(data.splits["training"].sequences)
    popular_list = [i for i, _ in popular.most_common(200)]
    for split in ("evaluation", "testing"):
        seqs = data.splits[split].sequences
        r, n = scores(seqs, follow, popular_list, a.exclude_history)
        pop = sum(int(s[-1]) in popular_list[:10] for s in seqs) / len(seqs)
        print(f"{a.data} {split}: transitions R@10 {r:.4f} N@10 {n:.4f} | most-popular R@10 {pop:.4f}")


if __name__ == "__main__":
    main()
