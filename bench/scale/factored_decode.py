"""Can a catalogue-head model decode at a cost flat in N? Its score of item i is h . e_i with
e_i = (sum of i's SID token embeddings) / H + i's id embedding, so the SID part is a sum over
digits: a beam over the SID tree on the per-digit scores h . E[token] / H (one (B, vocab)
product, then at most `width` x V children per level, each checked against the catalogue's
tree's real children) finds candidates without scoring every item, and the `width`
leaves are re-ranked by the full score. This measures, on a checkpoint and its test split,
Recall / NDCG@10 and users/s of that decoder against the exact full-catalogue ranking.

    .venv/bin/python bench/scale/factored_decode.py --ckpt RUN/checkpoints/best.ckpt --data DIR \
        [--users 2000 --widths 16,64,256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from madrec.checkpoint import load_checkpoint
from madrec.data.dataset import load_dataset
from madrec.evaluate.decode import build_histories
from madrec.evaluate.metrics import ranking_metrics

ROOT = Path(__file__).resolve().parents[2]


def slot_state(model, vocab, histories: torch.Tensor) -> torch.Tensor:
    """(B, C) the scaled slot state h of BlockDiffusionLM's catalogue head for an all-MASK slot."""
    slot = torch.full((histories.shape[0], vocab.sid_len), vocab.mask_id)
    tokens = torch.cat([histories, slot], 1)
    tail = model._tail_positions(tokens)
    slots = tokens[tail].view(tokens.shape[0], 1, vocab.sid_len)
    return model._slot_vector(model._slot_states(tokens, slots)[:, 0])


class PrefixTree:
    """The catalogue's SID tree: per depth k, its nodes (prefixes of k + 1 digits, grouped by
    parent), each parent's children as a padded table, and the item of every leaf."""

    def __init__(self, sids: torch.Tensor):
        digits = sids.t().long()  # (N, H)
        self.H = digits.shape[1]
        self.children, self.codes = [], []  # per depth: (parents, max children) node ids / digits, -1 pad
        parent_of_item = torch.zeros(len(digits), dtype=torch.long)  # the root
        for k in range(self.H):
            rows, node_of_item = torch.unique(digits[:, : k + 1], dim=0, return_inverse=True)  # lexicographic
            parent = torch.zeros(len(rows), dtype=torch.long).scatter_(0, node_of_item, parent_of_item)
            first = torch.searchsorted(parent, parent)  # nodes are grouped by parent: slot = rank in group
            slot = torch.arange(len(rows)) - first
            width = int(slot.max()) + 1
            table = torch.full((int(parent.max()) + 1, width), -1, dtype=torch.long)
            table[parent, slot] = torch.arange(len(rows))
            self.children.append(table)
            self.codes.append(torch.where(table >= 0, rows[:, k][table.clamp_min(0)], -1))
            parent_of_item = node_of_item
        leaves = torch.empty(len(digits), dtype=torch.long)
        self.item_of_leaf = leaves.scatter_(0, parent_of_item, torch.arange(len(digits)))


def tree_beam(digit_scores: torch.Tensor, tree: PrefixTree, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """digit_scores (B, H, V): h . E[digit v at position k] / H -> (B, width) candidate items
    (-1 pad) and their SID-part scores: a beam of `width` nodes per depth, expanding only the
    children the catalogue has (cost: width x children per node, whatever N is)."""
    b = digit_scores.shape[0]
    nodes = torch.zeros(b, 1, dtype=torch.long)  # the root
    scores = torch.zeros(b, 1)
    for k in range(tree.H):
        alive = nodes >= 0
        child = tree.children[k][nodes.clamp_min(0)]  # (B, W, C)
        code = tree.codes[k][nodes.clamp_min(0)]
        gain = digit_scores[:, k].gather(1, code.clamp_min(0).flatten(1)).view_as(code)
        total = (scores[:, :, None] + gain).masked_fill((child < 0) | ~alive[:, :, None], float("-inf")).flatten(1)
        top = total.topk(min(width, total.shape[1]), dim=1)
        nodes = child.flatten(1).gather(1, top.indices).masked_fill(top.values == float("-inf"), -1)
        scores = top.values
    return torch.where(nodes >= 0, tree.item_of_leaf[nodes.clamp_min(0)], -1), scores


def decode(loaded, histories: torch.Tensor, tree: PrefixTree, width: int | None, top_k: int = 10):
    """(B, top_k) items: exact full-catalogue ranking (width None), else the tree beam + re-rank."""
    model, vocab = loaded.model, loaded.vocab
    h = slot_state(model, vocab, histories)
    if width is None:
        return (h @ model._catalogue().t()).topk(top_k, dim=1).indices
    digit_rows = model.embed.weight[: vocab.sid_len * vocab.block].view(vocab.sid_len, vocab.block, -1)
    table = digit_rows[:, : vocab.codebook_size]  # (H, V, C): digit v at position k
    digit_scores = torch.einsum("bc,hvc->bhv", h, table) / vocab.sid_len
    items, _ = tree_beam(digit_scores, tree, width)
    item_tokens = vocab.item_tokens(loaded.sids)[items.clamp_min(0)]  # (B, W, H)
    full = (h[:, None, :] * model._pool(item_tokens)).sum(-1).masked_fill(items < 0, float("-inf"))
    return items.gather(1, full.topk(min(top_k, full.shape[1]), dim=1).indices)


def measure(loaded, split, tree, width, users: int, batch: int = 64) -> dict:
    hist = build_histories(loaded.vocab, loaded.sids, split.sequences[:users], loaded.max_len)
    targets = torch.tensor([int(s[-1]) for s in split.sequences[:users]])
    start, ranked = time.perf_counter(), []
    with torch.inference_mode():
        for i in range(0, len(hist), batch):
            ranked.append(decode(loaded, hist[i : i + batch], tree, width))
    seconds = time.perf_counter() - start
    m = ranking_metrics(torch.cat(ranked), targets, (10,))
    return {"width": width, "recall@10": float(m["recall@10"].mean()), "ndcg@10": float(m["ndcg@10"].mean()),
            "users_per_s": users / seconds}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--widths", default="16,64,256")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "scale" / "factored_decode.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    loaded = load_checkpoint(args.ckpt)
    split = load_dataset(args.data, splits=("testing",)).splits["testing"]
    tree = PrefixTree(loaded.sids)
    rows = [measure(loaded, split, tree, None, args.users)]
    rows += [measure(loaded, split, tree, int(w), args.users) for w in args.widths.split(",")]
    for r in rows:
        print(json.dumps(r), flush=True)
    write(args, loaded, rows)


def write(args, loaded, rows) -> None:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"\n## {loaded.config.experiment}, {loaded.sids.shape[1]:,} items, commit {head.strip()}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"`bench/scale/factored_decode.py --ckpt {args.ckpt} --data {args.data} --users {args.users}`; "
        f"one thread, load average at the end {load}.",
        "",
        "| decoder | test Recall@10 | NDCG@10 | users/s |",
        "|---|---|---|---|",
    ]
    for r in rows:
        name = "full catalogue (exact)" if r["width"] is None else f"SID-tree beam, width {r['width']}, re-ranked"
        lines.append(f"| {name} | {r['recall@10']:.4f} | {r['ndcg@10']:.4f} | {r['users_per_s']:.0f} |")
    with args.out.open("a") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
