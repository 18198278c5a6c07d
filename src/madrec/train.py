"""Training and checkpoint evaluation: `madrec train key=value ...` (contract 3).

    madrec train experiment=tiny data_dir=DIR sid_data_path=OUT/sids.pt output_dir=RUN
    madrec train ... ckpt_path=RUN/checkpoints/last.ckpt               # resume exactly
    madrec train train=false ckpt_path=RUN/checkpoints/best.ckpt data_dir=DIR output_dir=EVAL

Writes RUN/checkpoints/{best,last}.ckpt, RUN/metrics.csv, RUN/config.yaml, RUN/summary.json.

Training is a stream of optimiser steps, not epochs: the global batch of step s is a fixed
function of (seed, s) (a slice of a seeded per-epoch permutation), split across the ranks of
a torchrun / Kubeflow Trainer job, and every step re-seeds the RNG from (seed, s, rank).
Together with Lightning's optimiser / scheduler / loop state this makes a resumed run
continue exactly where the interrupted one stopped. The loss is normalised by the weight sum
of the whole global batch, so any number of processes computes the same objective.
"""
from __future__ import annotations

import csv
import functools
import importlib.util
import io
import json
import logging
import os
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from madrec import models
from madrec.checkpoint import load_checkpoint, model_weights, payload, read_checkpoint
from madrec.config import Config, check_inputs, describe_keys, load_config
from madrec.data import Split, load_dataset
from madrec.errors import MadrecError
from madrec.evaluate import default_batch_size, evaluate_split
from madrec.io import atomic_file, fetch, write_text_atomic
from madrec.rows import StepSampler, TrainingRows, step_seed
from madrec.sids import load_sids
from madrec.tokens import SIDVocab

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


def item_tokenizer(vocab: SIDVocab, sids: torch.Tensor) -> torch.Tensor:
    """(N + 1, H) token table: row i holds item i's SID tokens, the last row (PAD_ITEM) PADs."""
    return torch.cat([vocab.item_tokens(sids), torch.full((1, vocab.sid_len), vocab.pad_id)])


class ItemRows(Dataset):
    """Indexing with a 1-D tensor of row ids gives that batch of item rows (TrainingRows.batch)."""

    def __init__(self, rows: TrainingRows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.rows.batch(index.numpy())


def subset(split: Split, max_users: int, seed: int) -> Split:
    """A fixed random subset of a split's users (all of them when max_users is 0 or larger)."""
    if not max_users or max_users >= len(split):
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split), size=max_users, replace=False))
    return Split(split.name, split.user_ids[keep], [split.sequences[i] for i in keep])


class OneBatch(Dataset):
    """Validation and test run the decoder over whole splits: one placeholder batch per rank."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.zeros(1)


def one_batch_loader() -> DataLoader:
    return DataLoader(OneBatch(), batch_size=None)


# --- the Lightning module --------------------------------------------------------------

def lr_factor(step: int, warmup: int, max_steps: float, min_ratio: float, progress: float | None = None) -> float:
    """Linear warm-up over `warmup` steps, then linear decay to `min_ratio` at `max_steps`.

    With `progress` (the share of a time budget spent, trainer.max_minutes) the decay follows
    it instead of the step count: 1 - progress of the way from 1 to min_ratio.
    """
    if step < warmup:
        return (step + 1) / warmup
    if progress is not None:
        remaining = max(0.0, 1.0 - progress)
    else:
        remaining = max(0, max_steps - step) / max(1, max_steps - warmup)
    return min_ratio + (1.0 - min_ratio) * remaining


class RecommenderModule(L.LightningModule):
    """Training of any madrec.models recommender on item rows; validation/test by decoding."""

    def __init__(self, cfg: Config, vocab: SIDVocab, sids: torch.Tensor, item_ids: list[str], max_len: int,
                 splits: dict[str, Split]):
        super().__init__()
        self.cfg, self.vocab, self.item_ids, self.max_len = cfg, vocab, item_ids, max_len
        self.register_buffer("sids", sids.long(), persistent=False)
        self.register_buffer("tokenizer", item_tokenizer(vocab, sids.long()), persistent=False)
        self.splits = splits  # "val" and, when there is a testing split, "test"
        self.results: dict[str, float] = {}  # the latest evaluation, unrounded (self.log keeps float32)
        self.model, self.objective = models.build(cfg, vocab)
        # a function, not a registered submodule: the state dict keeps the plain `model.` keys
        self.train_forward = torch.compile(self.model.forward) if cfg.trainer.compile else self.model.forward
        self._tokens_since, self._time_since = 0.0, None
        self.train_seconds = 0.0  # training wall time so far (validation excluded): trainer.max_minutes
        self.tokens_seen = 0.0  # real (non-PAD) tokens of all training batches so far, every process

    # training
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        torch.manual_seed(step_seed(self.cfg.seed, self.global_step, self.global_rank))
        tokens = self.tokenizer[batch].flatten(1)  # item rows (PAD_ITEM = -1 -> PAD tokens)
        total = norm = 0.0
        for chunk in self._length_buckets(tokens):
            chunk_total, chunk_norm = self.objective.loss_terms(self.train_forward, chunk)
            total, norm = total + chunk_total, norm + chunk_norm
        local = torch.stack([total.detach(), norm.detach(), (tokens != self.vocab.pad_id).sum().to(norm.dtype)])
        glob = self.trainer.strategy.reduce(local.clone(), reduce_op="sum") if self.trainer.world_size > 1 else local
        # DDP averages gradients over ranks: scale so the result is the global batch's gradient
        loss = total * self.trainer.world_size / glob[1].clamp_min(torch.finfo(glob.dtype).tiny)
        self._log_step(glob)
        return loss

    def _length_buckets(self, tokens: torch.Tensor):
        """The batch's rows by length in `trainer.length_buckets` groups, each trimmed to its
        longest row: the same loss sums (the objective normalises over the whole batch) for
        far fewer PAD positions when row lengths vary (sliding rows)."""
        lengths = (tokens != self.vocab.pad_id).sum(1)
        order = torch.argsort(lengths, stable=True)
        for part in order.tensor_split(min(self.cfg.trainer.length_buckets, len(order))):
            width = max(int(lengths[part].max()), 1)
            yield tokens[part, -width:]

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._time_since is None:
            self._time_since = now
        self._step_started = now

    def _log_step(self, glob: torch.Tensor) -> None:
        now = time.perf_counter()
        self._tokens_since += float(glob[2])
        self.tokens_seen += float(glob[2])
        self.log("train/loss", glob[0] / glob[1].clamp_min(torch.finfo(glob.dtype).tiny), prog_bar=True)
        self.log("lr", self.lr_schedulers().get_last_lr()[0])
        every = self.cfg.trainer.log_every_n_steps
        if (self.global_step + 1) % every == 0 and now > self._time_since:
            self.log("train/tokens_per_s", self._tokens_since / (now - self._time_since), prog_bar=True)
            self._tokens_since, self._time_since = 0.0, now

    def budget_spent(self) -> float:
        """Share of the training budget used: steps or minutes, whichever runs out first."""
        t = self.cfg.trainer
        by_steps = self.global_step / t.max_steps
        by_time = self.train_seconds / (60.0 * t.max_minutes) if t.max_minutes else 0.0
        return max(by_steps, by_time)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.train_seconds += time.perf_counter() - self._step_started
        if self.global_step >= self.trainer.max_steps or self.budget_spent() >= 1.0:
            self.trainer.should_stop = True  # makes Lightning validate after the final step too

    def configure_optimizers(self):
        o = self.cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [  # nanoGPT: decay matrices and embeddings, not biases or LayerNorm gains
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": o.optimizer.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # Lightning clips gradients itself under mixed precision, which a fused AdamW does not allow
        fused = (self.device.type == "cuda" and not self.cfg.optim.grad_clip) or None
        optimizer = torch.optim.AdamW(groups, lr=o.optimizer.lr, betas=tuple(o.optimizer.betas),
                                      eps=o.optimizer.eps, fused=fused)
        warmup, min_ratio = o.scheduler.warmup_steps, o.scheduler.min_lr_ratio
        if self.cfg.trainer.max_minutes:  # decay over the time budget (or max_steps, if sooner)
            def factor(step: int) -> float:
                return lr_factor(step, warmup, 1.0, min_ratio, progress=self.budget_spent())
        else:
            factor = functools.partial(lr_factor, warmup=warmup, max_steps=self.cfg.trainer.max_steps,
                                       min_ratio=min_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_validation_start(self) -> None:
        self._tokens_since, self._time_since = 0.0, None  # tokens/s measures training only
        if self.trainer.training or self.trainer.state.fn == TrainerFn.FITTING:
            self.log("train/seconds", self.train_seconds)  # x axis of quality-vs-compute curves

    # evaluation: the decoder's evaluate_split shards users over ranks and gathers the results
    def _evaluate(self, split: Split, prefix: str) -> None:
        e = self.cfg.eval
        metrics = evaluate_split(self.model, self.vocab, self.sids, split, self.max_len, ks=tuple(e.ks),
                                 beam_size=e.beam_size, batch_size=e.batch_size or default_batch_size(self.device),
                                 device=self.device)
        metrics = {f"{prefix}/{k}": float(v) for k, v in metrics.items()}
        self.results.update(metrics)
        # identical on every rank already; sync_dist averages equal numbers (exact) and keeps Lightning quiet
        self.log_dict(metrics, sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(self.splits["val"], "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(self.splits["test"], "test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["madrec"] = payload(self.cfg, self.vocab, self.sids, self.item_ids, self.max_len)
        checkpoint["madrec"].update(train_seconds=self.train_seconds, tokens_seen=self.tokens_seen)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("madrec", {})
        self.train_seconds = float(meta.get("train_seconds", 0.0))
        self.tokens_seen = float(meta.get("tokens_seen", 0.0))


# --- Lightning plumbing ----------------------------------------------------------------

class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed: a kill never leaves half a file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_file(path) as fh:
            torch.save(checkpoint, fh)


class LastCheckpoint(Checkpoint):
    """RUN/checkpoints/last.ckpt every n steps and after every validation (Lightning's save points)."""

    def __init__(self, path: Path, every_n_steps: int, val_every_n_steps: int):
        self.path, self.every, self.val_every = path, every_n_steps, val_every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        validating_now = step % self.val_every == 0 or step >= trainer.max_steps
        if step % self.every == 0 and not validating_now:
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            trainer.save_checkpoint(self.path, weights_only=False)


class StepProgressBar(TQDMProgressBar):
    """One bar over optimiser steps up to max_steps (rate and ETA), not per epoch."""

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.initial = bar.n = trainer.global_step
        bar.set_description("train steps")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, trainer.global_step - 1)


class MetricsCSV(Logger):
    """RUN/metrics.csv: one row per logging step; a resumed run keeps the rows up to its checkpoint."""

    def __init__(self, path: Path, resume_step: int | None):
        super().__init__()
        self.path = path
        self.rows: list[dict] = []
        if resume_step is not None and path.is_file():
            with path.open(newline="") as fh:
                # rows logged before the checkpoint have step < its global_step (Lightning's counter)
                self.rows = [r for r in csv.DictReader(fh) if int(r["step"]) < resume_step]

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return ""

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """The config is written to RUN/config.yaml and into every checkpoint instead."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        # Lightning adds "epoch"; the step stream has no epochs worth logging
        self.rows.append({"step": step, **{k: float(v) for k, v in metrics.items() if k != "epoch"}})

    @rank_zero_only
    def save(self) -> None:
        if not self.rows:
            return
        keys = ["step"] + sorted({k for r in self.rows for k in r} - {"step"})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.path, buf.getvalue())


def distributed_layout() -> tuple[int, int]:
    """(devices per node, nodes) from the environment torchrun / Kubeflow Trainer sets."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if world % local:
        raise MadrecError(f"WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={local}")
    return local, world // local


def auto_precision(accelerator: str) -> str:
    """bf16 autocast where the hardware computes bf16 natively (a bf16 GPU; a CPU with AVX-512
    BF16 or AMX: 1.3x the steps of float32 on a Zen 4 core, bench/train/results.md), else float32."""
    if accelerator == "gpu":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() \
        else "32-true"


def make_trainer(cfg: Config, out: Path, resume_step: int | None, fitting: bool) -> L.Trainer:
    t = cfg.trainer
    accelerator = t.accelerator if t.accelerator != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise MadrecError("config key trainer.accelerator: gpu requested but no CUDA device is visible")
    precision = auto_precision(accelerator) if t.precision == "auto" else t.precision
    devices, nodes = distributed_layout()
    callbacks, loggers = [], []
    if fitting:
        ckpt_dir = out / CHECKPOINT_DIR
        monitor = f"val/{cfg.eval.monitor}"
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="max",
                                         save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False))
        callbacks.append(LastCheckpoint(ckpt_dir / "last.ckpt", t.checkpoint_every_n_steps, t.val_every_n_steps))
        if t.early_stopping_patience:
            callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=t.early_stopping_patience,
                                           check_on_train_epoch_end=False))
        loggers.append(MetricsCSV(out / "metrics.csv", resume_step))
        if importlib.util.find_spec("tensorboard"):
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(save_dir=out, name="tensorboard", version=""))
    if t.progress_bar:
        callbacks.append(StepProgressBar(refresh_rate=t.log_every_n_steps))
    return L.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=nodes,
        strategy="ddp" if devices * nodes > 1 else "auto",
        precision=precision, max_steps=t.max_steps, max_epochs=-1,
        val_check_interval=t.val_every_n_steps, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps, gradient_clip_val=cfg.optim.grad_clip or None,
        callbacks=callbacks, logger=loggers or False, enable_checkpointing=fitting,
        enable_progress_bar=t.progress_bar, enable_model_summary=fitting, use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()], default_root_dir=out,
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
    splits = {"val": subset(data.splits["evaluation"], cfg.eval.val_max_users, cfg.seed)}
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
        raise MadrecError(f"sid_data_path={cfg.sid_data_path} differs from the SID table inside "
                          f"ckpt_path={cfg.ckpt_path}; resume with the SIDs the run started with")
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
        raise MadrecError(f"config key max_len: {cfg.max_len} tokens hold less than one history item plus "
                          f"the next item at {sid_len} tokens per item")
    return items * sid_len


def _check_resumable(cfg: Config, resume: dict) -> None:
    saved = resume["madrec"]["config"]
    for group in ("model", "diffusion"):
        if saved[group] != cfg.to_dict()[group]:
            raise MadrecError(f"ckpt_path={cfg.ckpt_path} was trained with {group}={saved[group]}, the config "
                              f"now says {cfg.to_dict()[group]}; a resumed run keeps the {group} settings")
    if saved["max_len"] != cfg.max_len or saved["codebook_size"] != cfg.codebook_size or saved.get("rows", "windows") != cfg.rows:
        raise MadrecError(f"ckpt_path={cfg.ckpt_path}: max_len / codebook_size / rows differ from the checkpoint's")


def fit(cfg: Config, out: Path) -> tuple[RecommenderModule, L.Trainer, dict]:
    """Train (or resume) and return the module with the best weights loaded, and run facts."""
    resume = read_checkpoint(cfg.ckpt_path) if cfg.ckpt_path else None
    if resume is not None:
        _check_resumable(cfg, resume)
    data = load_dataset(cfg.data_dir)
    spec = models.get(cfg.model.name)
    sids = _load_sids(cfg, spec, data.num_items, resume)
    vocab = spec.vocab(sids, cfg.codebook_size)
    training = data.splits["training"].sequences
    max_len = resolve_max_len(cfg, training, vocab.sid_len)
    rows = TrainingRows(training, max_len // vocab.sid_len, cfg.rows)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = RecommenderModule(cfg, vocab, sids, data.item_ids, max_len, _eval_splits(cfg, data))
    resume_step = int(resume["global_step"]) if resume is not None else None
    trainer = make_trainer(cfg, out, resume_step, fitting=True)
    sampler = StepSampler(rows, cfg.batch_size, cfg.seed, int(os.environ.get("RANK", "0")),
                          int(os.environ.get("WORLD_SIZE", "1")), start_step=lambda: trainer.global_step)
    loader = DataLoader(ItemRows(rows), sampler=sampler, batch_size=None, pin_memory=torch.cuda.is_available())
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        log.info("model %s: %s parameters; %d training rows (%s) of <= %d tokens; %d steps per data epoch; "
                 "world size %d", cfg.model.name, f"{module.model.num_parameters():,}", len(rows), cfg.rows,
                 max_len, sampler.steps_per_epoch, trainer.world_size)
    start = time.time()
    with warnings.catch_warnings():
        # the step stream resumes mid-"epoch" by design; small loaders need no workers
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # _output_dir already refused a fresh run into a folder holding checkpoints
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=one_batch_loader(), ckpt_path=cfg.ckpt_path)
    facts = {"train_wall_s": time.time() - start, "global_step": trainer.global_step,
             "num_parameters": module.model.num_parameters(), "world_size": trainer.world_size,
             "train_rows": len(rows), "train_seconds": module.train_seconds, "tokens_seen": module.tokens_seen,
             "max_len": max_len,
             "model": cfg.model.name}
    best = trainer.checkpoint_callback.best_model_path
    if best:
        ckpt = read_checkpoint(best)
        module.model.load_state_dict(model_weights(ckpt))
        facts.update(best_checkpoint=str(best), best_step=int(ckpt["global_step"]))
    return module, trainer, facts


def evaluate_only(cfg: Config, out: Path) -> tuple[RecommenderModule, L.Trainer, dict]:
    """train=false: the checkpoint's model, SIDs and max_len on this config's data."""
    loaded = load_checkpoint(cfg.ckpt_path)
    data = load_dataset(cfg.data_dir)
    if data.num_items != loaded.sids.shape[1]:
        raise MadrecError(f"data_dir={cfg.data_dir} has {data.num_items} items but ckpt_path={cfg.ckpt_path} "
                          f"was trained on {loaded.sids.shape[1]}; evaluate with the dataset it was trained on")
    run_cfg = loaded.config
    run_cfg.eval = cfg.eval  # decoding settings come from the command line
    module = RecommenderModule(run_cfg, loaded.vocab, loaded.sids, loaded.item_ids, loaded.max_len,
                                   _eval_splits(cfg, data))
    module.model.load_state_dict(loaded.model.state_dict())
    trainer = make_trainer(cfg, out, None, fitting=False)
    return module, trainer, {"checkpoint": str(cfg.ckpt_path), "global_step": loaded.global_step,
                             "num_parameters": module.model.num_parameters(), "world_size": trainer.world_size}


def run(cfg: Config) -> dict:
    """Train (cfg.train) and/or evaluate; write RUN/summary.json; return the summary."""
    check_inputs(cfg)
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
    summary = {**dict(sorted(module.results.items())), **facts,
               "wall_s": time.time() - start, "experiment": cfg.experiment, "output_dir": str(out)}
    if trainer.is_global_zero:
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        log.info("run summary (%s):\n%s", out / "summary.json",
                 "\n".join(f"  {k:<24} {v:.4f}" if isinstance(v, float) else f"  {k:<24} {v}"
                           for k, v in summary.items()))
    return summary


def cli(argv: list[str]) -> int:
    """`madrec train key=value ...`."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.split("\n\n")[1] if __doc__ else "")
        print("keys (key=value; dotted for nested groups):\n" + describe_keys())
        return 0
    run(load_config(argv))
    return 0
