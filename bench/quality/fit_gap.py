"""Where checkpoints differ: how well each fits its training data, and whom it recommends well.

    python bench/quality/fit_gap.py --data DIR LABEL=CKPT [LABEL=CKPT ...] [--fit-users 4000] \
        [--beam 20] [--out fit_gap.md]

For each checkpoint, on the same prepared dataset:
- fit: Recall@10 / NDCG@10 of each of the first --fit-users users' last *training* item given the
  training items before it (a transition the model was trained on), beside the whole validation
  split's (transitions it never saw); fit / validation is how much it memorised;
- validation Recall@10 by history length and by the target's popularity in the training split
  (which users and items one model serves better than another).
Writes a markdown report (stdout, and --out if given). One thread unless OMP_NUM_THREADS says more.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from madrec.checkpoint import load_checkpoint  # noqa: E402
from madrec.data.dataset import Split, load_dataset  # noqa: E402
from madrec.evaluate.metrics import ranking_metrics  # noqa: E402
from madrec.evaluate.run import predict_split  # noqa: E402
from madrec.io import write_text_atomic  # noqa: E402

HISTORY_EDGES = (1, 4, 5, 7, 10, 15, 20)  # bucket lower bounds (items before the target)
POPULARITY_EDGES = (0, 5, 10, 20, 50, 100)  # the target's training-split occurrences


def per_user(loaded, split: Split, beam: int) -> dict[str, torch.Tensor]:
    """(U,) Recall@10 and NDCG@10 of every user of `split` (its last item the target)."""
    preds = predict_split(
        loaded.model,
        loaded.vocab,
        loaded.sids,
        split,
        loaded.max_len,
        top_k=beam,
        beam_size=beam,
        batch_size=64,
        progress=False,
    )
    return ranking_metrics(preds.items, preds.targets, ks=(10,))


def buckets(values: np.ndarray, edges: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
    bounds = list(edges) + [None]
    return [
        (f"{lo}+" if hi is None else f"{lo}-{hi - 1}", (values >= lo) & (True if hi is None else values < hi))
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="prepared dataset folder the checkpoints were trained on")
    p.add_argument("checkpoints", nargs="+", help="LABEL=PATH of a checkpoint written by `madrec train`")
    p.add_argument("--fit-users", type=int, default=4000, help="users whose last training item measures the fit")
    p.add_argument("--beam", type=int, default=20, help="list length decoded (>= 10)")
    p.add_argument("--out", help="also write the report here")
    args = p.parse_args()
    if any("=" not in c for c in args.checkpoints):
        raise SystemExit("checkpoints: give each as LABEL=PATH, e.g. small=runs/small/checkpoints/best.ckpt")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    data = load_dataset(args.data)
    training, validation = data.splits["training"], data.splits["evaluation"]
    keep = [i for i, s in enumerate(training.sequences) if len(s) >= 2]  # a target and a history
    fit = Split("fit", training.user_ids[keep], [training.sequences[i] for i in keep]).first(args.fit_users)
    popularity = np.bincount(np.concatenate(training.sequences), minlength=data.num_items)
    history = np.array([len(s) - 1 for s in validation.sequences])
    target_pop = popularity[[int(s[-1]) for s in validation.sequences]]

    lines = [
        f"Data: `{args.data}`; fit: the last training item of the first {len(fit)} users; validation: "
        f"{len(validation)} users; lists of {args.beam}.",
        "",
        "| checkpoint | fit R@10 / N@10 | validation R@10 / N@10 | fit / validation R@10 |",
        "|---|---|---|---|",
    ]
    val_hits = {}
    for label, path in (c.split("=", 1) for c in args.checkpoints):
        loaded = load_checkpoint(path, map_location="cpu")
        f, v = per_user(loaded, fit, args.beam), per_user(loaded, validation, args.beam)
        val_hits[label] = v["recall@10"].numpy()
        fr, vr = float(f["recall@10"].mean()), float(v["recall@10"].mean())
        lines.append(
            f"| {label} | {fr:.4f} / {float(f['ndcg@10'].mean()):.4f} | {vr:.4f} / "
            f"{float(v['ndcg@10'].mean()):.4f} | {fr / max(vr, 1e-9):.1f} |"
        )
        print(lines[-1], flush=True)
    for title, values, edges in (
        ("history length (items)", history, HISTORY_EDGES),
        ("target's training occurrences", target_pop, POPULARITY_EDGES),
    ):
        lines += ["", f"Validation Recall@10 by {title}:", ""]
        lines += ["| bucket | users | " + " | ".join(val_hits) + " |", "|---|---|" + "---|" * len(val_hits)]
        for name, rows in buckets(values, edges):
            cells = " | ".join(f"{hits[rows].mean():.4f}" for hits in val_hits.values())
            lines.append(f"| {name} | {int(rows.sum())} | {cells} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        write_text_atomic(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
