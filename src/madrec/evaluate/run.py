"""Evaluating a model on a split: decode every user's next item, gather, score.

    metrics = evaluate_split(model, vocab, sids, data.splits["testing"], max_len, prefix="test")
    # {"test/recall@5": ..., "test/ndcg@5": ..., "test/recall@10": ..., ...}

Under torch.distributed each rank decodes every world_size-th user and the per-user results are
all-gathered before averaging, so the numbers do not depend on the number of processes nor on
the batch size. `madrec evaluate` (madrec.evaluate.cli) adds the most-popular baseline, the
unconstrained comparison, a sweep over decoding steps, metrics.json, predictions.parquet and
report.html (madrec.evaluate.report).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from madrec.data.dataset import Split
from madrec.dist import rank_and_world
from madrec.errors import MadrecError
from madrec.evaluate.decode import SIDIndex, beam_search, build_histories
from madrec.evaluate.metrics import ranking_metrics
from madrec.models.tokens import SIDVocab


@dataclass
class Predictions:
    """Top-K lists of every user of a split, in the split's user order."""

    user_ids: np.ndarray  # (U,)
    targets: torch.Tensor  # (U,) item indices
    items: torch.Tensor  # (U, K) item indices, -1 = not a catalogue item
    scores: torch.Tensor  # (U, K) fp32 sums of log-probs
    seconds: float  # decoding wall time (slowest process)
    model_calls: int  # forward passes per batch: ceil(H / reveal_per_step); 1 for a catalogue head


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def predict_split(
    model: torch.nn.Module,
    vocab: SIDVocab,
    sids: torch.Tensor,
    split: Split,
    max_len: int,
    *,
    top_k: int = 10,
    beam_size: int = 10,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    order: str = "confidence",
    reveal_per_step: int = 1,
    constrained: bool = True,
    seed: int = 0,
    amp: bool = True,
    progress: bool = True,
    index: SIDIndex | None = None,
) -> Predictions:
    """Decode the top-`top_k` next items of every user of `split` (last item = target).

    `device` moves the model there (default: where its parameters are). Users are decoded in
    batches of similar history length; `amp` uses bf16 autocast on CUDA (scores stay fp32).
    """
    _check_split(split, batch_size)
    device = torch.device(device) if device is not None else _model_device(model)
    rank, world = rank_and_world()
    sids = sids.to(device)
    index = index if index is not None else SIDIndex(sids, vocab.codebook_size)
    generator = torch.Generator(device=device).manual_seed(seed + rank) if order == "random" else None
    decode = dict(beam_size=beam_size, top_k=top_k, order=order, reveal_per_step=reveal_per_step)
    decode.update(constrained=constrained, index=index, generator=generator)
    mine = _my_users(split, rank, world)
    start = time.perf_counter()
    with _eval_mode(model, device):
        items, scores = _decode_users(
            model,
            vocab,
            sids,
            split,
            mine,
            max_len,
            batch_size,
            decode,
            amp=amp and device.type == "cuda",
            progress=progress and rank == 0,
        )
    mine, items, scores, seconds = _gather(mine, items, scores, time.perf_counter() - start, world)
    inverse = torch.from_numpy(np.argsort(mine, kind="stable"))  # back to the split's user order
    targets = torch.tensor([int(s[-1]) for s in split.sequences], dtype=torch.long)
    return Predictions(
        split.user_ids, targets, items[inverse], scores[inverse], seconds, _model_calls(model, vocab, reveal_per_step)
    )


def _model_calls(model: torch.nn.Module, vocab: SIDVocab, reveal_per_step: int) -> int:
    return 1 if model.ranks_catalogue else -(-vocab.sid_len // reveal_per_step)


def _check_split(split: Split, batch_size: int) -> None:
    if batch_size < 1:
        raise MadrecError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(s) < 1 for s in split.sequences):
        raise MadrecError(f"split {split.name}: some users have an empty sequence (no target item to predict)")


def _my_users(split: Split, rank: int, world: int) -> np.ndarray:
    """This process's users (every world-th), longest histories first: similar lengths together
    keep padding small; the results do not depend on the grouping."""
    mine = np.arange(rank, len(split), world)
    return mine[np.argsort([-len(split.sequences[i]) for i in mine], kind="stable")]


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module, device: torch.device):
    """The model on `device` in eval mode; its training flag is restored afterwards."""
    was_training = model.training
    model.to(device).eval()
    try:
        yield
    finally:
        model.train(was_training)


def _decode_users(
    model, vocab, sids, split, mine, max_len, batch_size, decode: dict, *, amp: bool, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(mine), top_k) items and scores of the users `mine`, decoded batch by batch."""
    from tqdm.auto import tqdm

    top_k = decode["top_k"]
    items = torch.full((len(mine), top_k), -1, dtype=torch.long)
    scores = torch.full((len(mine), top_k), float("-inf"))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with tqdm(total=len(mine), desc=f"decode {split.name}", unit="user", disable=not progress) as bar:
        for lo in range(0, len(mine), batch_size):
            batch = mine[lo : lo + batch_size]
            hist = build_histories(vocab, sids, [split.sequences[i] for i in batch], max_len).to(sids.device)
            with autocast:
                res = beam_search(model, vocab, sids, hist, **decode)
            items[lo : lo + len(batch)] = res.items.cpu()
            scores[lo : lo + len(batch)] = res.scores.cpu()
            bar.update(len(batch))
    return items, scores


def _gather(mine: np.ndarray, items: torch.Tensor, scores: torch.Tensor, seconds: float, world: int):
    """Every process's users, items and scores, concatenated on every process; the slowest time."""
    if world == 1:
        return mine, items, scores, seconds
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, (mine, items.numpy(), scores.numpy(), seconds))
    return (
        np.concatenate([p[0] for p in parts]),
        torch.from_numpy(np.concatenate([p[1] for p in parts])),
        torch.from_numpy(np.concatenate([p[2] for p in parts])),
        max(p[3] for p in parts),
    )


def list_quality(items: torch.Tensor) -> dict[str, float]:
    """Share of top-K entries that are not catalogue items, and of repeated items in a list."""
    valid = items >= 0
    srt = torch.sort(items, dim=1).values
    repeated = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    n = max(items.numel(), 1)
    return {"invalid_sid_rate": float((~valid).sum()) / n, "duplicate_rate": float(repeated.sum()) / n}


def summarize(preds: Predictions, ks=(5, 10), prefix: str = "") -> dict[str, float]:
    """Mean Recall/NDCG@K over all users of `preds`, plus list quality and users per second."""
    per_user = ranking_metrics(preds.items, preds.targets, ks)
    out = {name: float(v.mean()) for name, v in per_user.items()}
    out.update(list_quality(preds.items))
    out["num_users"] = float(len(preds.targets))
    out["users_per_s"] = len(preds.targets) / max(preds.seconds, 1e-9)
    return {f"{prefix}/{k}" if prefix else k: v for k, v in out.items()}


def evaluate_split(
    model: torch.nn.Module,
    vocab: SIDVocab,
    sids: torch.Tensor,
    split: Split,
    max_len: int,
    *,
    ks=(5, 10),
    beam_size: int = 10,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    prefix: str = "",
    **decode_kw,
) -> dict[str, float]:
    """Recall@K / NDCG@K (K in `ks`) averaged over every user of `split`, exact under DDP.

    Keys are `recall@K`, `ndcg@K`, `invalid_sid_rate`, `duplicate_rate`, `num_users`,
    `users_per_s`, each prefixed by `prefix + "/"` when `prefix` is given. `decode_kw` go to
    `predict_split` (order, reveal_per_step, constrained, ...). Every rank gets the same dict.
    """
    ks = tuple(int(k) for k in ks)
    settings = dict(top_k=max(ks), beam_size=beam_size, batch_size=batch_size, device=device)
    preds = predict_split(model, vocab, sids, split, max_len, **settings, **decode_kw)
    return summarize(preds, ks, prefix)


def default_batch_size(device: torch.device) -> int:
    """Users per decoding batch: large on a GPU; small on a CPU, where a batch of 16 users x 10
    beams keeps the activations in cache and decodes 2-3x faster than 256 users."""
    return 256 if device.type == "cuda" else 16
