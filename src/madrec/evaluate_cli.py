"""`madrec evaluate key=value ...`: a checkpoint on a split, with baselines, sweep and report.

    madrec evaluate ckpt_path=RUN/checkpoints/best.ckpt data_dir=DATA split=test output_dir=EVAL

Decodes the split with the checkpoint (madrec.evaluate, users sharded over the processes of a
torchrun launch), adds the most-popular baseline, unconstrained decoding and a sweep over the
number of model calls per item on the split's first `compare_users` users, and writes
metrics.json, report.html and, with predictions=true, predictions.parquet (madrec.evaluate_report).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass

import torch

from madrec.data import Split
from madrec.decode import ORDERS, SIDIndex, check_beam_width
from madrec.dist import launch_layout, rank_and_world, resolve_device
from madrec.errors import MadrecError
from madrec.evaluate import Predictions, default_batch_size, predict_split, summarize
from madrec.metrics import ranking_metrics
from madrec.overrides import pairs, yaml_value

log = logging.getLogger(__name__)

SPLIT_NAMES = {
    "test": "testing",
    "testing": "testing",
    "val": "evaluation",
    "validation": "evaluation",
    "evaluation": "evaluation",
}


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
    compare_users: int = _opt(2000, "users (the split's first) for the unconstrained comparison and the sweep; 0 = all")
    seed: int = _opt(0, "seed of the random unmasking order")
    amp: bool = _opt(True, "bf16 autocast on CUDA (scores stay fp32)")


def parse_args(argv: list[str]) -> EvaluateArgs:
    """key=value arguments -> EvaluateArgs; unknown keys and bad values are clear errors."""
    args = EvaluateArgs()
    fields = [f.name for f in dataclasses.fields(EvaluateArgs)]
    for key, raw in pairs(argv, what="argument", example="beam_size=20"):
        if key not in fields:
            raise MadrecError(f"argument {key}={raw}: unknown key; valid keys: {', '.join(fields)}")
        setattr(args, key, _typed(key, raw, getattr(EvaluateArgs, key)))
    _check(args)
    return args


def _typed(key: str, raw: str, default):
    """`raw` as the type of the key's default (bool, int, tuple of positive ints, or text)."""
    value = yaml_value(raw)
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
        raise MadrecError(f"argument {key}={raw}: {key} expects {type(default).__name__}, e.g. {key}={default!r}")
    return value


def _check(args: EvaluateArgs) -> None:
    missing = [k for k in ("ckpt_path", "data_dir", "output_dir") if not getattr(args, k)]
    if missing:
        raise MadrecError(
            f"missing {', '.join(f'{k}=...' for k in missing)} "
            "(e.g. madrec evaluate ckpt_path=RUN/checkpoints/best.ckpt data_dir=DATA split=test "
            "output_dir=EVAL)"
        )
    if args.order not in ORDERS:
        raise MadrecError(f"order={args.order}: expected one of {', '.join(ORDERS)}")
    if args.split not in SPLIT_NAMES:
        raise MadrecError(f"split={args.split}: expected one of {', '.join(SPLIT_NAMES)}")
    for key in ("beam_size", "reveal_per_step"):
        if getattr(args, key) < 1:
            raise MadrecError(f"{key} must be >= 1, got {getattr(args, key)}")
    check_beam_width(args.beam_size, max(args.ks), "max(ks)")
    if args.batch_size < 0:
        raise MadrecError(f"batch_size must be >= 0 (0 = auto), got {args.batch_size}")


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


def evaluate_checkpoint(args: EvaluateArgs) -> dict[str, float]:
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


def _load(args: EvaluateArgs, device: torch.device):
    """The checkpoint, the prepared data and the split; refuses data of another catalogue."""
    from madrec.checkpoint import load_checkpoint
    from madrec.data import load_dataset

    loaded = load_checkpoint(args.ckpt_path, map_location=device)
    data = load_dataset(args.data_dir, splits=(SPLIT_NAMES[args.split],))
    if data.num_items != loaded.sids.shape[1] or ("item_ids" in data.info and data.item_ids != loaded.item_ids):
        raise MadrecError(
            f"data_dir={args.data_dir}: its {data.num_items} items are not the catalogue the checkpoint "
            f"{args.ckpt_path} was trained on ({loaded.sids.shape[1]} items); evaluate with the dataset it was "
            "trained on"
        )
    return loaded, data, data.splits[SPLIT_NAMES[args.split]]


class _Decoder:
    """predict_split with the checkpoint and this run's decoding settings (one SID index)."""

    def __init__(self, args: EvaluateArgs, loaded, device: torch.device):
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
    from madrec.metrics import most_popular

    pop_items = most_popular(split.sequences, num_items, beam_size).expand(len(split), -1)
    for name, v in ranking_metrics(pop_items, main.targets, ks).items():
        metrics[f"{prefix}/most_popular/{name}"] = float(v.mean())
    return pop_items


def _comparisons(
    args: EvaluateArgs, decoder: _Decoder, few: Split, main: Predictions, prefix: str, metrics: dict
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
    from madrec.evaluate_report import build_report, write_predictions
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
        for f in dataclasses.fields(EvaluateArgs):
            print(f"  {f.name}={f.default!r}: {f.metadata['help']}")
        return 0
    evaluate_checkpoint(parse_args(argv))
    return 0
