"""Training runs: `madrec train key=value ...` (docs/architecture.md, "Training").

    madrec train experiment=tiny data_dir=DIR sid_data_path=OUT/sids.pt output_dir=RUN
    madrec train ... ckpt_path=RUN/checkpoints/last.ckpt               # resume exactly
    madrec train train=false ckpt_path=RUN/checkpoints/best.ckpt data_dir=DIR output_dir=EVAL

Writes RUN/checkpoints/{best,last}.ckpt, RUN/metrics.csv, RUN/config.yaml, RUN/summary.json.

Training is a stream of optimiser steps, not epochs: the global batch of step s is a fixed
function of (seed, s) (a slice of a seeded per-epoch permutation, madrec.train.rows), split across
the ranks of a torchrun / Kubeflow Trainer job, and every step re-seeds the RNG from (seed, s,
rank) (madrec.train.module). Together with Lightning's optimiser / scheduler / loop state this
makes a resumed run continue exactly where the interrupted one stopped. This module assembles
a run: config checks, data, SIDs, rows, the module, the Lightning Trainer and its callbacks
(madrec.train.callbacks), then validation, test and RUN/summary.json.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from madrec import models
from madrec.checkpoint import load_checkpoint, model_weights, read_checkpoint
from madrec.config import Config, check_inputs, describe_keys, load_config
from madrec.data.dataset import SPLITS, PreparedDataset, Split, load_dataset
from madrec.dist import launch_layout
from madrec.errors import MadrecError
from madrec.io import fetch, write_text_atomic
from madrec.sids.cooccur import code_vectors, cooccurrence_embeddings
from madrec.sids.format import load_sids
from madrec.train.callbacks import AtomicCheckpointIO, LastCheckpoint, MetricsCSV, StepProgressBar, WeightEMA
from madrec.train.module import RecommenderModule
from madrec.train.rows import StepSampler, TrainingRows

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


class ItemRows(Dataset):
    """Indexing with a 1-D tensor of row ids gives that batch of item rows (TrainingRows.batch)."""

    def __init__(self, rows: TrainingRows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.rows.batch(index.numpy())


class OneBatch(Dataset):
    """Validation and test run the decoder over whole splits: one placeholder batch per rank."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.zeros(1)


def one_batch_loader() -> DataLoader:
    return DataLoader(OneBatch(), batch_size=None)


def auto_precision(accelerator: str) -> str:
    """bf16 autocast where the hardware computes bf16 natively (a bf16 GPU; a CPU with AVX-512
    BF16 or AMX: 1.3x the steps of float32 on a Zen 4 core, bench/train/results.md), else float32."""
    if accelerator == "gpu":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return (
        "bf16-mixed"
        if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        else "32-true"
    )


def make_trainer(cfg: Config, out: Path, resume_step: int | None, fitting: bool) -> L.Trainer:
    t = cfg.trainer
    accelerator = t.accelerator if t.accelerator != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise MadrecError("config key trainer.accelerator: gpu requested but no CUDA device is visible")
    precision = auto_precision(accelerator) if t.precision == "auto" else t.precision
    layout = launch_layout()
    devices, nodes = layout.local_world_size, layout.nodes
    callbacks, loggers = [], []
    if fitting:
        ckpt_dir = out / CHECKPOINT_DIR
        monitor = f"val/{cfg.eval.monitor}"
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor=monitor,
                mode="max",
                save_top_k=1,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            )
        )
        callbacks.append(LastCheckpoint(ckpt_dir / "last.ckpt", t.checkpoint_every_n_steps, t.val_every_n_steps))
        if t.ema_decay:
            callbacks.append(WeightEMA(t.ema_decay))
        if t.early_stopping_patience:
            callbacks.append(
                EarlyStopping(
                    monitor=monitor, mode="max", patience=t.early_stopping_patience, check_on_train_epoch_end=False
                )
            )
        loggers.append(MetricsCSV(out / "metrics.csv", resume_step))
        if importlib.util.find_spec("tensorboard"):
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(save_dir=out, name="tensorboard", version=""))
    if t.progress_bar:
        callbacks.append(StepProgressBar(refresh_rate=t.log_every_n_steps, budget_minutes=t.max_minutes))
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=nodes,
        strategy="ddp" if devices * nodes > 1 else "auto",
        precision=precision,
        max_steps=t.max_steps,
        max_epochs=-1,
        val_check_interval=t.val_every_n_steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=cfg.optim.grad_clip or None,
        callbacks=callbacks,
        logger=loggers or False,
        enable_checkpointing=fitting,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=fitting,
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=out,
    )


# --- runs ------------------------------------------------------------------------------


def _output_dir(cfg: Config) -> Path:
    out = Path(cfg.output_dir or Path("runs") / cfg.experiment).expanduser()
    ckpts = out / CHECKPOINT_DIR
    if cfg.train and cfg.ckpt_path is None and ckpts.is_dir() and any(ckpts.glob("*.ckpt")):
        raise MadrecError(
            f"output_dir {out} already holds a run's checkpoints; resume it with "
            f"ckpt_path={ckpts / 'last.ckpt'} or choose another output_dir"
        )
    return out


def _eval_splits(cfg: Config, data) -> dict[str, Split]:
    splits = {"val": data.splits["evaluation"].sample(cfg.eval.val_max_users, cfg.seed)}
    if "testing" in data.splits:
        splits["test"] = data.splits["testing"]
    return splits


def _load_sids(cfg: Config, spec: models.Recommender, num_items: int, resume: dict | None) -> torch.Tensor:
    """The (H, N) table the model's tokens use: the SID file, or the item index itself (sasrec)."""
    if not spec.uses_sids:
        return spec.sid_table(None, num_items)
    if cfg.sid_data_path is None:
        return resume["madrec"]["sids"]
    sids = load_sids(fetch(cfg.sid_data_path), num_items=num_items, codebook_size=cfg.codebook_size)
    if resume is not None and not torch.equal(sids, resume["madrec"]["sids"]):
        raise MadrecError(
            f"sid_data_path={cfg.sid_data_path} differs from the SID table inside "
            f"ckpt_path={cfg.ckpt_path}; resume with the SIDs the run started with"
        )
    return sids


def resolve_max_len(cfg: Config, sequences: list[np.ndarray], sid_len: int) -> int:
    """max_len in tokens; 0 (auto) sizes rows from the data: the training histories of 90% of
    users fit whole, plus the next item, capped at `auto_max_items` items (docs/method.md)."""
    if cfg.max_len:
        items = cfg.max_len // sid_len
    else:
        lengths = np.array([len(s) for s in sequences] or [1])
        items = min(cfg.auto_max_items, int(np.ceil(np.percentile(lengths, 90))) + 1)
    if items < 2:
        raise MadrecError(
            f"config key max_len: {cfg.max_len} tokens hold less than one history item plus "
            f"the next item at {sid_len} tokens per item"
        )
    return items * sid_len


# model.dropout=auto: (training interactions per item, dropout) at the sparse and the dense end,
# log-linear between and flat beyond (docs/method.md): the fewer times an item is seen, the sooner
# its vectors overfit. 0.5 and 0.2 are also SASRec's published values for Amazon and MovieLens-1M.
AUTO_DROPOUT = ((10.0, 0.5), (300.0, 0.2))


def resolve_dropout(cfg: Config, sequences: list[np.ndarray], num_items: int) -> Config:
    """cfg with model.dropout=auto replaced by the value of the rule above for these sequences."""
    if cfg.model.dropout != "auto":
        return cfg
    per_item = sum(len(s) for s in sequences) / max(num_items, 1)
    (sparse, high), (dense, low) = AUTO_DROPOUT
    where = np.clip(np.log(max(per_item, 1e-9) / sparse) / np.log(dense / sparse), 0.0, 1.0)
    dropout = round(round(float(high + where * (low - high)) / 0.05) * 0.05, 2)  # no finer than it was measured
    log.info("model.dropout auto: %.2f (%.1f training interactions per item)", dropout, per_item)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=dropout))


def _check_resumable(cfg: Config, resume: dict) -> None:
    saved = resume["madrec"]["config"]
    for group in ("model", "diffusion"):
        if saved[group] != cfg.to_dict()[group]:
            raise MadrecError(
                f"ckpt_path={cfg.ckpt_path} was trained with {group}={saved[group]}, the config "
                f"now says {cfg.to_dict()[group]}; a resumed run keeps the {group} settings"
            )
    if (
        saved["max_len"] != cfg.max_len
        or saved["codebook_size"] != cfg.codebook_size
        or saved.get("rows", "windows") != cfg.rows
    ):
        raise MadrecError(f"ckpt_path={cfg.ckpt_path}: max_len / codebook_size / rows differ from the checkpoint's")


def fit(cfg: Config, out: Path) -> tuple[RecommenderModule, L.Trainer, dict]:
    """Train (or resume) and return the module with the best weights loaded, and run facts."""
    # A remote checkpoint is downloaded once and checked (weights_only); only that local copy is
    # handed on, so Lightning never fetches the URL again with its own, unchecked loader.
    resume_from = str(fetch(cfg.ckpt_path)) if cfg.ckpt_path else None
    resume = read_checkpoint(cfg.ckpt_path) if cfg.ckpt_path else None  # the cached copy: no second download
    # test=false (the pipeline's evaluate step owns the test split): testing/ is not read at all
    data = load_dataset(cfg.data_dir, splits=SPLITS if cfg.test else ("training", "evaluation"))
    cfg = resolve_dropout(cfg, data.splits["training"].sequences, data.num_items)
    if resume is not None:
        _check_resumable(cfg, resume)
    module, rows = _build_module(cfg, data, resume)
    trainer = make_trainer(cfg, out, int(resume["global_step"]) if resume is not None else None, fitting=True)
    layout = launch_layout()
    sampler = StepSampler(
        rows, cfg.batch_size, cfg.seed, layout.rank, layout.world_size, start_step=lambda: trainer.global_step
    )
    loader = DataLoader(ItemRows(rows), sampler=sampler, batch_size=None, pin_memory=torch.cuda.is_available())
    if trainer.is_global_zero:
        _start_run_folder(cfg, out, module, rows, sampler, trainer)
    start = time.time()
    _fit_quietly(trainer, module, loader, resume_from)
    facts = {
        "train_wall_s": time.time() - start,
        "global_step": trainer.global_step,
        "num_parameters": parameter_count(module.model),
        "world_size": trainer.world_size,
        "train_rows": len(rows),
        "train_seconds": module.train_seconds,
        "tokens_seen": module.tokens_seen,
        "max_len": module.max_len,
        "model": cfg.model.name,
    }
    return module, trainer, {**facts, **_load_best(trainer, module)}


def _build_module(cfg: Config, data: PreparedDataset, resume: dict | None) -> tuple[RecommenderModule, TrainingRows]:
    """SIDs, vocabulary, row length and training rows; the seeded module around a fresh model."""
    spec = models.get(cfg.model.name)
    sids = _load_sids(cfg, spec, data.num_items, resume)
    vocab = spec.vocab(sids, cfg.codebook_size)
    training = data.splits["training"].sequences
    max_len = resolve_max_len(cfg, training, vocab.sid_len)
    rows = TrainingRows(training, max_len // vocab.sid_len, cfg.rows)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = RecommenderModule(cfg, vocab, sids, data.item_ids, max_len, _eval_splits(cfg, data))
    if cfg.model.embedding_init == "cooccurrence" and resume is None:
        init_from_cooccurrence(module.model, vocab, sids, training)
    head = getattr(module.model, "head", None)
    if head is not None:  # the catalogue head samples candidates by training popularity
        counts = np.bincount(np.concatenate(training), minlength=data.num_items) if training else None
        head.set_popularity(torch.as_tensor(counts[: data.num_items] if training else np.zeros(data.num_items)))
    return module, rows


@torch.no_grad()
def init_from_cooccurrence(model: torch.nn.Module, vocab, sids: torch.Tensor, sequences) -> None:
    """Digit tokens start at their code's mean co-occurrence vector (madrec.sids.cooccur), scaled to
    the random init's norm, plus a quarter of that random init so equal means stay apart; item-id
    embeddings (model.item_embedding) start at their item's own vector the same way."""
    weight = model.embed.weight
    dim = weight.shape[1]
    items = cooccurrence_embeddings(sequences, sids.shape[1], dim=dim)
    items = torch.nn.functional.pad(items, (0, dim - items.shape[1]))  # a catalogue smaller than dim
    means, used = code_vectors(sids, items, vocab.codebook_size)
    digits = weight[: vocab.sid_len * vocab.block].view(vocab.sid_len, vocab.block, dim)[:, : vocab.codebook_size]
    digits[used] = dim**0.5 * means[used] + 0.25 * digits[used]
    ids = model.item  # every network (blocks.TokenTransformer) has one, None without model.item_embedding
    if ids is not None:
        ids.embed.weight[1:] = dim**0.5 * items + 0.25 * ids.embed.weight[1:]


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _start_run_folder(cfg: Config, out: Path, module, rows, sampler, trainer) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log.info(
        "model %s: %s parameters; %d training rows (%s) of <= %d tokens; %d steps per data epoch; world size %d",
        cfg.model.name,
        f"{parameter_count(module.model):,}",
        len(rows),
        cfg.rows,
        module.max_len,
        sampler.steps_per_epoch,
        trainer.world_size,
    )


def _fit_quietly(trainer: L.Trainer, module: RecommenderModule, loader: DataLoader, ckpt_path: str | None) -> None:
    """trainer.fit without the warnings that do not apply to a step stream."""
    with warnings.catch_warnings():
        # the step stream resumes mid-"epoch" by design; small loaders need no workers
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # _output_dir already refused a fresh run into a folder holding checkpoints
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=one_batch_loader(), ckpt_path=ckpt_path)


def _load_best(trainer: L.Trainer, module: RecommenderModule) -> dict:
    """Load the best checkpoint's weights into the module; its path and step (none: {})."""
    best = trainer.checkpoint_callback.best_model_path
    if not best:
        return {}
    ckpt = read_checkpoint(best)
    module.model.load_state_dict(model_weights(ckpt))
    return {"best_checkpoint": str(best), "best_step": int(ckpt["global_step"])}


def evaluate_only(cfg: Config, out: Path) -> tuple[RecommenderModule, L.Trainer, dict]:
    """train=false: the checkpoint's model, SIDs and max_len on this config's data."""
    loaded = load_checkpoint(cfg.ckpt_path)
    data = load_dataset(cfg.data_dir)
    if data.num_items != loaded.sids.shape[1]:
        raise MadrecError(
            f"data_dir={cfg.data_dir} has {data.num_items} items but ckpt_path={cfg.ckpt_path} "
            f"was trained on {loaded.sids.shape[1]}; evaluate with the dataset it was trained on"
        )
    run_cfg = loaded.config
    run_cfg.eval = cfg.eval  # decoding settings come from the command line
    module = RecommenderModule(
        run_cfg, loaded.vocab, loaded.sids, loaded.item_ids, loaded.max_len, _eval_splits(cfg, data)
    )
    module.model.load_state_dict(loaded.model.state_dict())
    trainer = make_trainer(cfg, out, None, fitting=False)
    return (
        module,
        trainer,
        {
            "checkpoint": str(cfg.ckpt_path),
            "global_step": loaded.global_step,
            "num_parameters": parameter_count(module.model),
            "world_size": trainer.world_size,
        },
    )


def lightning_logs_once() -> None:
    """Lightning's records through the root logger only, in madrec's format: its own stderr
    handlers on `lightning` / `lightning.pytorch` printed every line a second time beside it."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True


def run(cfg: Config) -> dict:
    """Train (cfg.train) and/or evaluate; write RUN/summary.json; return the summary."""
    check_inputs(cfg)
    lightning_logs_once()
    out = _output_dir(cfg)
    threads = torch.get_num_threads()
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    try:
        return _run(cfg, out)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: Config, out: Path) -> dict:
    start = time.time()
    module, trainer, facts = fit(cfg, out) if cfg.train else evaluate_only(cfg, out)
    module.results = {}
    trainer.validate(module, dataloaders=one_batch_loader(), verbose=False)
    if cfg.test and "test" in module.splits:
        trainer.test(module, dataloaders=one_batch_loader(), verbose=False)
    summary = {
        **dict(sorted(module.results.items())),
        **facts,
        "wall_s": time.time() - start,
        "experiment": cfg.experiment,
        "output_dir": str(out),
    }
    if trainer.is_global_zero:
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        log.info(
            "run summary (%s):\n%s",
            out / "summary.json",
            "\n".join(f"  {k:<24} {v:.4f}" if isinstance(v, float) else f"  {k:<24} {v}" for k, v in summary.items()),
        )
    return summary


def cli(argv: list[str]) -> int:
    """`madrec train key=value ...`."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.split("\n\n")[1] if __doc__ else "")
        print("keys (key=value; dotted for nested groups):\n" + describe_keys())
        return 0
    run(load_config(argv))
    return 0
