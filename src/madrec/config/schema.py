"""The run configuration's schema: every key `madrec train` and `madrec evaluate` read, with
its type and default. The defaults are the reference configuration (experiment
`discrete_diffusion_train`; docs/method.md). Decoding settings (`DecodeConfig`) are one
definition shared by training's validation (`eval.*`) and `madrec evaluate` (`EvaluateConfig`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from madrec.models.blocks import ModelConfig
from madrec.models.diffusion import DiffusionConfig

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
ACCELERATORS = ("auto", "cpu", "gpu")
ROW_MODES = ("truncate", "windows")  # how training sequences become rows (madrec.train.rows)
ORDERS = ("confidence", "left_to_right", "random")  # which masked SID position a decoding call reveals


def _opt(default, help: str):
    """A field with the one line `--help` shows for it."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class OptimizerConfig:
    """AdamW."""

    lr: float = 3e-3
    weight_decay: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class SchedulerConfig:
    """Linear warm-up to lr, then linear decay to min_lr_ratio * lr at trainer.max_steps."""

    warmup_steps: int = 10_000
    min_lr_ratio: float = 0.0


@dataclass
class OptimConfig:
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    grad_clip: float = 1.0


@dataclass
class TrainerConfig:
    """Loop control. Steps are optimiser steps; validation and checkpoints are every n steps."""

    max_steps: int = 100_000
    val_every_n_steps: int = 1000
    checkpoint_every_n_steps: int = 1000
    early_stopping_patience: int = 10  # validations without a better monitored metric; 0 = off
    log_every_n_steps: int = 50
    accelerator: str = "auto"
    precision: str = "auto"  # auto: bf16-mixed where the GPU or CPU computes bf16 natively, else 32-true
    compile: bool = False
    progress_bar: bool = True
    num_threads: int = 0  # CPU threads for PyTorch; 0 = sized from the CPUs this process may use (madrec.threads)
    max_minutes: float = 0.0  # training wall-time budget (validation excluded); 0 = max_steps only
    length_buckets: int = 1  # split each batch into this many groups of similar row length (less padding)
    ema_decay: float = 0.0  # validate, checkpoint and test an exponential moving average of the weights; 0 = off


@dataclass
class DecodeConfig:
    """Constrained beam decoding (madrec.evaluate.decode): validation during training (`eval.*`)
    and `madrec evaluate`."""

    beam_size: int = _opt(10, "beam width; also the length of every top-K list")
    ks: list[int] = _opt([5, 10], "cut-offs K of Recall@K / NDCG@K, each <= beam_size, e.g. ks=[5,10]")
    batch_size: int = _opt(0, "users per decoding batch per process; 0 = auto (256 on GPU, 16 on CPU)")


@dataclass
class EvalConfig(DecodeConfig):
    """Validation during training (madrec.evaluate.run)."""

    monitor: str = _opt("recall@5", "validation metric for the best checkpoint and early stopping")
    val_max_users: int = _opt(0, "validate on a fixed random subset of this many users; 0 = all")


@dataclass
class EvaluateConfig(DecodeConfig):
    """`madrec evaluate key=value ...`; required: ckpt_path, data_dir, output_dir."""

    ckpt_path: str = _opt("", "checkpoint written by `madrec train` (local path, http(s) or gs://)")
    data_dir: str = _opt("", "prepared dataset folder (`madrec prepare-data --out`)")
    output_dir: str = _opt("", "gets metrics.json, report.html and, with predictions=true, predictions.parquet")
    split: str = _opt("test", "test | val")
    max_users: int = _opt(0, "decode a fixed random subset of this many users (seeded by `seed`); 0 = all")
    predictions: bool = _opt(False, "write predictions.parquet (user, rank, item_id, item, score)")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N (under torchrun: one GPU per process)")
    order: str = _opt("confidence", f"unmasking order: {' | '.join(ORDERS)}")
    reveal_per_step: int = _opt(1, "SID positions revealed per model call")
    sweep: bool = _opt(True, "also decode with fewer model calls per item (quality vs steps)")
    compare_unconstrained: bool = _opt(True, "also decode without the catalogue constraint (invalid-SID rate)")
    compare_users: int = _opt(2000, "users (the split's first) for the unconstrained comparison and the sweep; 0 = all")
    seed: int = _opt(0, "seed of the random unmasking order and of max_users' subset")
    amp: bool = _opt(True, "bf16 autocast on CUDA (scores stay fp32)")


@dataclass
class Config:
    """Everything a training or evaluation run reads; saved whole inside every checkpoint."""

    experiment: str = "discrete_diffusion_train"
    data_dir: str | None = None
    sid_data_path: str | None = None
    output_dir: str | None = None  # default: runs/<experiment>
    ckpt_path: str | None = None  # resume from it (train=true) or evaluate it (train=false)
    train: bool = True
    test: bool = True
    seed: int = 42
    batch_size: int = 2048  # sequences per optimiser step, over all processes together
    max_len: int = 120  # tokens per sequence, history plus the next item; 0 = from the data (auto)
    auto_max_items: int = 50  # max_len=0: rows of at most this many items
    rows: str = "truncate"  # how training sequences become rows: truncate | windows (madrec.train.rows)
    codebook_size: int = 256
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
