"""`madrec evaluate key=value ...`: a checkpoint on a split, with baselines, sweep and report.

    madrec evaluate ckpt_path=RUN/checkpoints/best.ckpt data_dir=DATA split=test output_dir=EVAL

Decodes the split with the checkpoint (madrec.evaluate.run, users sharded over the processes of a
torchrun launch), adds the most-popular baseline, unconstrained decoding and a sweep over the
number of model calls per item on the split's first `compare_users` users, and writes
metrics.json, report.html and, with predictions=true, predictions.parquet (madrec.evaluate.report).
"""

from __future__ import annotations

import json
import logging

import torch

from madrec.config import EvaluateConfig, describe_keys, load_evaluate_config
from madrec.data.dataset import SPLIT_NAMES, Split
from madrec.dist import launch_layout, rank_and_world, resolve_device
from madrec.errors import MadrecError
from madrec.evaluate.decode import SIDIndex
from madrec.evaluate.metrics import ranking_metrics
from madrec.evaluate.run import Predictions, default_batch_size, predict_split, summarize

log = logging.getLogger(__name__)


def _init_distributed(device: str) -> torch.device:
    """Join the process group torchrun describes (WORLD_SIZE > 1); pick this process's device."""
    layout = launch_layout()
    dev = resolve_device(device, layout.local_rank)
    cuda = dev.type == "cuda"
    if layout.world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(dev)
    return dev


def evaluate_checkpoint(args: EvaluateConfig) -> dict[str, float]:
    """Decode `args.split` with the checkpoint; write metrics.json, report.html (rank 0) and,
    when asked, predictions.parquet into `args.output_dir`; return the metrics."""
    device = _init_distributed(args.device)
    rank, world = rank_and_world()
    loaded, data, split = _load(args, device)
    prefix = "test" if split.name == "testing" else "val"
    decoder = _Decoder(args, loaded, device)
    log.info(
        "evaluating %s on %s/%s: %d users, beam %d, %d process(es)",
        args.ckpt_path,
        args.data_dir,
        split.name,
        len(split),
        args.beam_size,
        world,
    )
    decoder(split.first(16), progress=False)  # warm-up: users/s then measures steady decoding
    main = decoder(split)
    metrics = summarize(main, args.ks, prefix)
    pop_items = _most_popular(split, data.num_items, args.beam_size, main, args.ks, prefix, metrics)
    compared, sweep = _comparisons(args, decoder, split.first(args.compare_users), main, prefix, metrics)
    if rank == 0:
        _write_outputs(args, loaded, split, prefix, main, pop_items, compared, sweep, metrics)
    return metrics


def _load(args: EvaluateConfig, device: torch.device):
    """The checkpoint, the prepared data and the split; refuses data of another catalogue."""
    from madrec.checkpoint import load_checkpoint
    from madrec.data.dataset import load_dataset

    loaded = load_checkpoint(args.ckpt_path, map_location=device)
    data = load_dataset(args.data_dir, splits=(SPLIT_NAMES[args.split],))
    if data.num_items != loaded.sids.shape[1] or ("item_ids" in data.info and data.item_ids != loaded.item_ids):
        raise MadrecError(
            f"data_dir={args.data_dir}: its {data.num_items} items are not the catalogue the checkpoint "
            f"{args.ckpt_path} was trained on ({loaded.sids.shape[1]} items); evaluate with the dataset it was "
            "trained on"
        )
    return loaded, data, data.splits[SPLIT_NAMES[args.split]].sample(args.max_users, args.seed)


class _Decoder:
    """predict_split with the checkpoint and this run's decoding settings (one SID index)."""

    def __init__(self, args: EvaluateConfig, loaded, device: torch.device):
        self.loaded, self.sids = loaded, loaded.sids.to(device)
        self.settings = dict(
            top_k=args.beam_size,
            beam_size=args.beam_size,
            order=args.order,
            reveal_per_step=args.reveal_per_step,
            batch_size=args.batch_size or default_batch_size(device),
            device=device,
            seed=args.seed,
            amp=args.amp,
            index=SIDIndex(self.sids, loaded.vocab.codebook_size),
        )

    def __call__(self, split: Split, **overrides) -> Predictions:
        loaded = self.loaded
        return predict_split(
            loaded.model, loaded.vocab, self.sids, split, loaded.max_len, **{**self.settings, **overrides}
        )


def _most_popular(
    split: Split, num_items: int, beam_size: int, main: Predictions, ks, prefix: str, metrics: dict
) -> torch.Tensor:
    """The most-popular baseline's lists (counted over the split's histories), into `metrics`."""
    from madrec.evaluate.metrics import most_popular

    pop_items = most_popular(split.sequences, num_items, beam_size).expand(len(split), -1)
    for name, v in ranking_metrics(pop_items, main.targets, ks).items():
        metrics[f"{prefix}/most_popular/{name}"] = float(v.mean())
    return pop_items


def _comparisons(
    args: EvaluateConfig, decoder: _Decoder, few: Split, main: Predictions, prefix: str, metrics: dict
) -> tuple[dict, dict]:
    """Unconstrained decoding, and the same decoder with fewer model calls per item (a causal
    model reveals one position per call, and a catalogue-head model ranks every item in one, so
    neither has a sweep); metrics go into `metrics`."""
    compared, sweep = {}, {}
    if args.compare_unconstrained:
        compared["unconstrained"] = decoder(few, constrained=False)
        metrics.update(summarize(compared["unconstrained"], args.ks, f"{prefix}/unconstrained"))
    model = decoder.loaded.model
    if args.sweep and not model.causal and not model.ranks_catalogue:
        H = decoder.loaded.vocab.sid_len
        for calls in sorted({-(-H // k) for k in range(1, H + 1)}, reverse=True):
            if calls == main.model_calls:
                sweep[calls] = _take(main, args.compare_users)
            else:
                sweep[calls] = decoder(few, reveal_per_step=-(-H // calls))
            metrics.update(summarize(sweep[calls], args.ks, f"{prefix}/steps_{calls}"))
    return compared, sweep


def _take(preds: Predictions, n: int) -> Predictions:
    if n <= 0 or n >= len(preds.targets):
        return preds
    return Predictions(
        preds.user_ids[:n],
        preds.targets[:n],
        preds.items[:n],
        preds.scores[:n],
        preds.seconds * n / len(preds.targets),
        preds.model_calls,
    )


def _write_outputs(args, loaded, split, prefix, main, pop_items, compared, sweep, metrics) -> None:
    from madrec.evaluate.report import build_report, write_predictions
    from madrec.io import atomic_dir, write_text_atomic

    with atomic_dir(args.output_dir) as out:
        write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        if args.predictions:
            write_predictions(out / "predictions.parquet", main, loaded.item_ids)
        write_text_atomic(
            out / "report.html", build_report(args, loaded, split, prefix, main, pop_items, compared, sweep, metrics)
        )
    log.info(
        "wrote %s:\n%s",
        args.output_dir,
        "\n".join(f"  {k:<40} {v:.4f}" for k, v in metrics.items() if "/steps_" not in k),
    )


def cli(argv: list[str]) -> int:
    """`madrec evaluate ckpt_path=... data_dir=... split=test output_dir=... [key=value ...]`."""
    if any(a in ("-h", "--help") for a in argv):
        print(cli.__doc__)
        print("keys (key=value):\n" + describe_keys(EvaluateConfig))
        return 0
    evaluate_checkpoint(load_evaluate_config(argv))
    return 0
