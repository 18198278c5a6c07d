"""Evaluating a model on a split: decode every user's next item, gather, score (method.md §7–8).

    metrics = evaluate_split(model, vocab, sids, data.splits["testing"], max_len, prefix="test")
    # {"test/recall@5": ..., "test/ndcg@5": ..., "test/recall@10": ..., ...}

Under torch.distributed each rank decodes every world_size-th user and the per-user results are
all-gathered before averaging, so the numbers do not depend on the number of processes nor on
the batch size. `madrec evaluate` (cli) adds the most-popular baseline, the unconstrained
comparison, a sweep over decoding steps, metrics.json, predictions.parquet and report.html.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from madrec.data import Split
from madrec.decode import ORDERS, SIDIndex, beam_search, build_histories
from madrec.errors import MadrecError
from madrec.metrics import ranking_metrics
from madrec.tokens import SIDVocab

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Top-K lists of every user of a split, in the split's user order."""

    user_ids: np.ndarray  # (U,)
    targets: torch.Tensor  # (U,) item indices
    items: torch.Tensor  # (U, K) item indices, -1 = not a catalogue item
    scores: torch.Tensor  # (U, K) fp32 sums of log-probs
    seconds: float  # decoding wall time (slowest process)
    model_calls: int  # forward passes per batch: ceil(H / reveal_per_step)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


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
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise MadrecError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(s) < 1 for s in split.sequences):
        raise MadrecError(f"split {split.name}: some users have an empty sequence (no target item to predict)")
    device = torch.device(device) if device is not None else _model_device(model)
    model.to(device)
    was_training = model.training
    model.eval()
    rank, world = _dist()
    sids = sids.to(device)
    index = index if index is not None else SIDIndex(sids, vocab.codebook_size)
    generator = torch.Generator(device=device).manual_seed(seed + rank) if order == "random" else None
    mine = np.arange(rank, len(split), world)
    # similar lengths together keep padding small; results do not depend on the grouping
    mine = mine[np.argsort([-len(split.sequences[i]) for i in mine], kind="stable")]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else contextlib.nullcontext()
    )
    items = torch.full((len(mine), top_k), -1, dtype=torch.long)
    scores = torch.full((len(mine), top_k), float("-inf"))
    start = time.perf_counter()
    bar = tqdm(total=len(mine), desc=f"decode {split.name}", unit="user", disable=not progress or rank != 0)
    try:
        for lo in range(0, len(mine), batch_size):
            batch = mine[lo:lo + batch_size]
            hist = build_histories(vocab, sids, [split.sequences[i] for i in batch], max_len).to(device)
            with autocast:
                res = beam_search(
                    model, vocab, sids, hist, beam_size=beam_size, top_k=top_k, order=order,
                    reveal_per_step=reveal_per_step, constrained=constrained, generator=generator, index=index,
                )
            items[lo:lo + len(batch)] = res.items.cpu()
            scores[lo:lo + len(batch)] = res.scores.cpu()
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - start
    if world > 1:
        parts: list = [None] * world
        torch.distributed.all_gather_object(parts, (mine, items.numpy(), scores.numpy(), seconds))
        mine = np.concatenate([p[0] for p in parts])
        items = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        scores = torch.from_numpy(np.concatenate([p[2] for p in parts]))
        seconds = max(p[3] for p in parts)
    inverse = torch.from_numpy(np.argsort(mine, kind="stable"))
    targets = torch.tensor([int(s[-1]) for s in split.sequences], dtype=torch.long)
    return Predictions(
        split.user_ids, targets, items[inverse], scores[inverse], seconds,
        -(-vocab.sid_len // reveal_per_step),
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
    preds = predict_split(
        model, vocab, sids, split, max_len, top_k=max(ks), beam_size=beam_size,
        batch_size=batch_size, device=device, **decode_kw,
    )
    return summarize(preds, ks, prefix)


# --- `madrec evaluate`: a checkpoint on a split, with baselines, sweep and report -------------

SPLIT_NAMES = {"test": "testing", "testing": "testing", "val": "evaluation", "validation": "evaluation",
               "evaluation": "evaluation"}


def _opt(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class EvaluateArgs:
    """`madrec evaluate key=value ...`; required: ckpt_path, data_dir, output_dir."""

    ckpt_path: str = _opt("", "checkpoint written by `madrec train` (local path, http(s) or gs://)")
    data_dir: str = _opt("", "prepared dataset folder (`madrec prepare-data --out`)")
    output_dir: str = _opt("", "gets metrics.json, report.html and, with predictions=true, predictions.parquet")
    split: str = _opt("test", "test | val")
    beam_size: int = _opt(10, "beam width; also the length of every top-K list")
    ks: tuple = _opt((5, 10), "cut-offs K of Recall@K / NDCG@K, each <= beam_size, e.g. ks=[5,10]")
    predictions: bool = _opt(False, "write predictions.parquet (user, rank, item_id, item, score)")
    batch_size: int = _opt(0, "users per decoding batch per process; 0 = auto (256 on GPU, 16 on CPU)")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N (under torchrun: one GPU per process)")
    order: str = _opt("confidence", "unmasking order: confidence | left_to_right | random")
    reveal_per_step: int = _opt(1, "SID positions revealed per model call")
    sweep: bool = _opt(True, "also decode with fewer model calls per item (quality vs steps)")
    compare_unconstrained: bool = _opt(True, "also decode without the catalogue constraint (invalid-SID rate)")
    compare_users: int = _opt(2000, "users (the split's first) for the unconstrained comparison and the sweep; "
                                    "0 = all")
    seed: int = _opt(0, "seed of the random unmasking order")
    amp: bool = _opt(True, "bf16 autocast on CUDA (scores stay fp32)")


def parse_args(argv: list[str]) -> EvaluateArgs:
    """key=value arguments -> EvaluateArgs; unknown keys and bad values are clear errors."""
    import yaml

    args = EvaluateArgs()
    fields = {f.name: f for f in dataclasses.fields(EvaluateArgs)}
    for item in argv:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or key not in fields:
            raise MadrecError(f"argument {item!r}: expected key=value with key one of {', '.join(fields)}")
        default = getattr(EvaluateArgs, key)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, tuple):
            parts = value if isinstance(value, list) else str(value).strip("[]()").split(",")
            try:
                value = tuple(int(p) for p in parts)
                ok = len(value) > 0 and min(value) > 0
            except (TypeError, ValueError):
                ok = False
        else:
            value, ok = raw, True
        if not ok:
            raise MadrecError(f"argument {item!r}: {key} expects {type(default).__name__}, e.g. {key}={default!r}")
        setattr(args, key, value)
    missing = [k for k in ("ckpt_path", "data_dir", "output_dir") if not getattr(args, k)]
    if missing:
        raise MadrecError(f"missing {', '.join(f'{k}=...' for k in missing)} "
                          "(e.g. madrec evaluate ckpt_path=RUN/checkpoints/best.ckpt data_dir=DATA split=test "
                          "output_dir=EVAL)")
    if args.order not in ORDERS:
        raise MadrecError(f"order={args.order}: expected one of {', '.join(ORDERS)}")
    if args.split not in SPLIT_NAMES:
        raise MadrecError(f"split={args.split}: expected one of {', '.join(SPLIT_NAMES)}")
    if max(args.ks) > args.beam_size:
        raise MadrecError(f"ks={list(args.ks)} goes beyond beam_size={args.beam_size}: a beam search returns "
                          f"beam_size items; widen the beam (beam_size={max(args.ks)})")
    for key in ("beam_size", "reveal_per_step"):
        if getattr(args, key) < 1:
            raise MadrecError(f"{key} must be >= 1, got {getattr(args, key)}")
    if args.batch_size < 0:
        raise MadrecError(f"batch_size must be >= 0 (0 = auto), got {args.batch_size}")
    return args


def default_batch_size(device: torch.device) -> int:
    """Users per decoding batch: large on a GPU; small on a CPU, where a batch of 16 users x 10
    beams keeps the activations in cache and decodes 2-3x faster than 256 users."""
    return 256 if device.type == "cuda" else 16


def _init_distributed(device: str) -> torch.device:
    """Join the process group torchrun describes (WORLD_SIZE > 1); pick this process's device."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise MadrecError(f"device={device}: CUDA is not available on this machine; use device=cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device(device if ":" in device else f"cuda:{local}")
        torch.cuda.set_device(dev)
        return dev
    return torch.device("cpu")


def _subset(split: Split, n: int) -> Split:
    if n <= 0 or n >= len(split):
        return split
    return Split(split.name, split.user_ids[:n], split.sequences[:n])


def _take(preds: Predictions, n: int) -> Predictions:
    if n <= 0 or n >= len(preds.targets):
        return preds
    return Predictions(preds.user_ids[:n], preds.targets[:n], preds.items[:n], preds.scores[:n],
                       preds.seconds * n / len(preds.targets), preds.model_calls)


def evaluate_checkpoint(args: EvaluateArgs) -> dict[str, float]:
    """Decode `args.split` with the checkpoint; write metrics.json, report.html (rank 0) and,
    when asked, predictions.parquet into `args.output_dir`; return the metrics."""
    from madrec.checkpoint import load_checkpoint
    from madrec.data import load_dataset
    from madrec.io import atomic_dir, write_text_atomic
    from madrec.metrics import most_popular

    device = _init_distributed(args.device)
    rank, world = _dist()
    loaded = load_checkpoint(args.ckpt_path, map_location=device)
    data = load_dataset(args.data_dir, splits=(SPLIT_NAMES[args.split],))
    split = data.splits[SPLIT_NAMES[args.split]]
    prefix = "test" if split.name == "testing" else "val"
    if data.num_items != loaded.sids.shape[1] or ("item_ids" in data.info and data.item_ids != loaded.item_ids):
        raise MadrecError(
            f"data_dir={args.data_dir}: its {data.num_items} items are not the catalogue the checkpoint "
            f"{args.ckpt_path} was trained on ({loaded.sids.shape[1]} items); evaluate with the dataset it was "
            "trained on"
        )
    vocab, sids, H = loaded.vocab, loaded.sids.to(device), loaded.vocab.sid_len
    index = SIDIndex(sids, vocab.codebook_size)
    decode = dict(beam_size=args.beam_size, batch_size=args.batch_size or default_batch_size(device),
                  device=device, seed=args.seed, amp=args.amp, index=index)
    log.info("evaluating %s on %s/%s: %d users, beam %d, %d process(es)", args.ckpt_path, args.data_dir,
             split.name, len(split), args.beam_size, world)
    # warm-up (thread pools, kernels, index tables) so users/s measures steady decoding
    predict_split(loaded.model, vocab, sids, _subset(split, 16), loaded.max_len, top_k=args.beam_size,
                  order=args.order, reveal_per_step=args.reveal_per_step, progress=False, **decode)
    main = predict_split(loaded.model, vocab, sids, split, loaded.max_len, top_k=args.beam_size, order=args.order,
                         reveal_per_step=args.reveal_per_step, **decode)
    metrics = summarize(main, args.ks, prefix)
    popular = most_popular(split.sequences, data.num_items, args.beam_size)
    pop_items = popular.expand(len(split), -1)
    for name, v in ranking_metrics(pop_items, main.targets, args.ks).items():
        metrics[f"{prefix}/most_popular/{name}"] = float(v.mean())

    few = _subset(split, args.compare_users)
    compared = {}
    if args.compare_unconstrained:
        free = predict_split(loaded.model, vocab, sids, few, loaded.max_len, top_k=args.beam_size, order=args.order,
                             reveal_per_step=args.reveal_per_step, constrained=False, **decode)
        compared["unconstrained"] = free
        metrics.update(summarize(free, args.ks, f"{prefix}/unconstrained"))
    sweep = {}
    if args.sweep and not getattr(loaded.model, "causal", False):  # a causal model reveals one position per call
        for calls in sorted({-(-H // k) for k in range(1, H + 1)}, reverse=True):
            k = -(-H // calls)
            if calls == main.model_calls:
                sweep[calls] = _take(main, args.compare_users)
                continue
            sweep[calls] = predict_split(loaded.model, vocab, sids, few, loaded.max_len, top_k=args.beam_size,
                                         order=args.order, reveal_per_step=k, **decode)
        for calls, preds in sweep.items():
            metrics.update(summarize(preds, args.ks, f"{prefix}/steps_{calls}"))

    if rank == 0:
        with atomic_dir(args.output_dir) as out:
            write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            if args.predictions:
                write_predictions(out / "predictions.parquet", main, loaded.item_ids)
            html = build_report(args, loaded, split, prefix, main, pop_items, compared, sweep, metrics)
            write_text_atomic(out / "report.html", html)
        log.info("wrote %s:\n%s", args.output_dir,
                 "\n".join(f"  {k:<40} {v:.4f}" for k, v in metrics.items() if "/steps_" not in k))
    return metrics


def write_predictions(path, preds: Predictions, item_ids: list[str]) -> None:
    """predictions.parquet: one row per (user, rank) with the original item id and the score."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from madrec.io import atomic_file

    U, K = preds.items.shape
    items = preds.items.reshape(-1).numpy()
    ids = np.asarray(item_ids, dtype=object)
    table = pa.table({
        "user": pa.array(np.repeat(preds.user_ids, K), pa.int64()),
        "rank": pa.array(np.tile(np.arange(1, K + 1), U), pa.int32()),
        "item_id": pa.array([ids[i] if i >= 0 else None for i in items], pa.string()),
        "item": pa.array(items, pa.int64()),
        "score": pa.array(preds.scores.reshape(-1).numpy(), pa.float32()),
    })
    with atomic_file(path) as fh:
        pq.write_table(table, fh)


def build_report(args, loaded, split, prefix, main, pop_items, compared, sweep, metrics) -> str:
    """report.html: summary table, Recall/NDCG vs K, quality vs decoding steps, setup."""
    from madrec import report

    K = args.beam_size
    cut = list(range(1, K + 1))
    ours = ranking_metrics(main.items, main.targets, cut)
    pop = ranking_metrics(pop_items, main.targets, cut)
    curve = {
        "madrec Recall@K": [float(ours[f"recall@{k}"].mean()) for k in cut],
        "madrec NDCG@K": [float(ours[f"ndcg@{k}"].mean()) for k in cut],
        "most popular Recall@K": [float(pop[f"recall@{k}"].mean()) for k in cut],
        "most popular NDCG@K": [float(pop[f"ndcg@{k}"].mean()) for k in cut],
    }

    def row(name: str, key: str) -> dict:
        r = {"method": name}
        for k in args.ks:
            r[f"Recall@{k}"] = metrics.get(f"{key}/recall@{k}", float("nan"))
            r[f"NDCG@{k}"] = metrics.get(f"{key}/ndcg@{k}", float("nan"))
        r["invalid SIDs"] = metrics.get(f"{key}/invalid_sid_rate", "")
        r["duplicates"] = metrics.get(f"{key}/duplicate_rate", "")
        r["users/s"] = metrics.get(f"{key}/users_per_s", "")
        return r

    rows = [row(f"{loaded.config.model.name} (constrained, {args.order}, {main.model_calls} model calls)", prefix)]
    if "unconstrained" in compared:
        rows.append(row(f"{loaded.config.model.name} unconstrained", f"{prefix}/unconstrained"))
    rows.append(row("most popular", f"{prefix}/most_popular"))
    sections = [("Metrics", report.table_html(rows)),
                ("Recall@K and NDCG@K", report.line_chart(cut, curve, "metric", "K"))]
    if compared or sweep:
        n = len(next(iter({**compared, **sweep}.values())).targets)
        sections.append(("Comparisons", f"<p>Unconstrained decoding and the decoding-steps sweep use "
                                        f"{n} of the {len(split)} users.</p>"))
    if sweep:
        calls = sorted(sweep)
        ks = list(args.ks)
        series = {f"{m}@{k}": [metrics[f"{prefix}/steps_{c}/{m.lower()}@{k}"] for c in calls]
                  for m in ("Recall", "NDCG") for k in ks}
        table = [{"model calls": c, "positions per call": -(-loaded.vocab.sid_len // c),
                  **{name: vals[i] for name, vals in series.items()},
                  "users/s": metrics[f"{prefix}/steps_{c}/users_per_s"]} for i, c in enumerate(calls)]
        sections.append(("Quality vs number of decoding steps",
                         report.line_chart(calls, series, "metric", "model calls per item (SID length "
                                           f"{loaded.vocab.sid_len})") + report.table_html(table)))
    setup = [{"key": k, "value": v} for k, v in [
        ("checkpoint", args.ckpt_path), ("global step", loaded.global_step), ("dataset", args.data_dir),
        ("split", split.name), ("users", len(split)), ("items", loaded.sids.shape[1]),
        ("SID length", loaded.vocab.sid_len), ("codebook size", loaded.vocab.codebook_size),
        ("max_len", loaded.max_len), ("parameters", sum(p.numel() for p in loaded.model.parameters())),
        ("beam size", args.beam_size), ("order", args.order), ("reveal per step", args.reveal_per_step),
        ("decode wall time (s)", round(main.seconds, 2)), ("device", str(next(loaded.model.parameters()).device)),
    ]]
    sections.append(("Setup", report.table_html(setup)))
    return report.html_page(f"madrec evaluation: {split.name}", sections)


def cli(argv: list[str]) -> int:
    """`madrec evaluate ckpt_path=... data_dir=... split=test output_dir=... [key=value ...]`."""
    if any(a in ("-h", "--help") for a in argv):
        print(cli.__doc__)
        for f in dataclasses.fields(EvaluateArgs):
            print(f"  {f.name}={f.default!r}: {f.metadata['help']}")
        return 0
    evaluate_checkpoint(parse_args(argv))
    return 0
