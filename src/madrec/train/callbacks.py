"""Lightning plumbing of a training run: atomic checkpoint files, last.ckpt on a schedule,
an exponential moving average of the weights, a progress bar over optimiser steps, and
RUN/metrics.csv."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Checkpoint, TQDMProgressBar, WeightAveraging
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from madrec.errors import MadrecError
from madrec.io import atomic_file, is_remote, write_text_atomic
from madrec.train.ema import RowLazyEMA


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed: a kill never leaves half a file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_file(path) as fh:
            torch.save(checkpoint, fh)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        """Resume only from a local file, and load only tensors and plain types: a URL here would be
        downloaded again by torch.hub and unpickled in full (madrec.train.run fetches and checks it first)."""
        if is_remote(str(path)):
            raise MadrecError(f"{path}: resume from a local checkpoint (madrec.io.fetch it first), not a URL")
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class LastCheckpoint(Checkpoint):
    """RUN/checkpoints/last.ckpt every n steps and after every validation (Lightning's save points)."""

    def __init__(self, path: Path, every_n_steps: int, val_every_n_steps: int):
        self.path, self.every, self.val_every = path, every_n_steps, val_every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        validating_now = step % self.val_every == 0 or step >= trainer.max_steps
        if step % self.every == 0 and not validating_now:
            # Lightning logs this step's metrics only after this hook: log them first, so a kill
            # right after the checkpoint cannot lose the row that the resumed run will not redo
            # (MetricsCSV merges the second logging of the same step).
            trainer._logger_connector.update_train_step_metrics()
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            trainer.save_checkpoint(self.path, weights_only=False)


class WeightEMA(WeightAveraging):
    """trainer.ema_decay: validation, checkpoints (their state_dict; the raw weights ride along
    for resuming) and test use an exponential moving average of the weights, updated after
    every optimiser step (train.ema: a sparse item table row by row, where steps touch it).
    Buffers are constants in these models and are not averaged."""

    def __init__(self, decay: float):
        super().__init__(use_buffers=False)
        self.ema = RowLazyEMA(decay)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._average_model is not None:
            self.ema.before_step(pl_module, self._average_model.module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._average_model is not None and trainer.global_step > self._latest_update_step:
            self.ema.update(pl_module, self._average_model.module)
            self._average_model.n_averaged += 1
            self._latest_update_step = trainer.global_step

    def _read(self, pl_module) -> None:
        if self._average_model is not None:
            self.ema.flush(pl_module, self._average_model.module)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._read(pl_module)
        super().on_validation_epoch_start(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._read(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_train_end(self, trainer, pl_module) -> None:
        self._read(pl_module)
        super().on_train_end(trainer, pl_module)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # a checkpoint holds every row up to date (on_save_checkpoint): only the count carries on
        self.ema.updates = int(self._average_model.n_averaged) if self._average_model is not None else 0


class StepProgressBar(TQDMProgressBar):
    """One bar over optimiser steps, not per epoch: steps of max_steps with rate and ETA, or under
    a time budget (`trainer.max_minutes`) the steps so far, elapsed time of the budget and steps/s
    (an ETA for max_steps, which the budget never reaches, would say hours for a 3-minute run)."""

    def __init__(self, refresh_rate: int, budget_minutes: float = 0.0):
        super().__init__(refresh_rate=refresh_rate)
        self.budget_minutes = budget_minutes

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        if self.budget_minutes:
            bar.reset()
            bar.total = None  # reset(total=None) would keep the old total
            bar.unit = "step"
            bar.set_description(f"train steps, budget {self.budget_minutes:g} min")
        else:
            bar.reset(total=trainer.max_steps)
            bar.set_description("train steps")
        bar.initial = bar.n = trainer.global_step

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
                self.rows = [{**r, "step": int(r["step"])} for r in csv.DictReader(fh) if int(r["step"]) < resume_step]

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
        row = {"step": step, **{k: float(v) for k, v in metrics.items() if k != "epoch"}}
        if self.rows and self.rows[-1]["step"] == step:
            self.rows[-1].update(row)  # the same step logged again (LastCheckpoint flushes early)
        else:
            self.rows.append(row)

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
