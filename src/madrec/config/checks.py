"""The run configuration's checks across keys and ranges, before any data loads; a rule that
a model part owns (the network shape, the diffusion settings) is asked of it (`models.check`)."""

from __future__ import annotations

from pathlib import Path

from madrec.config.schema import ACCELERATORS, ORDERS, PRECISIONS, ROW_MODES, Config, DecodeConfig, EvaluateConfig
from madrec.data.dataset import SPLIT_NAMES
from madrec.dist import launch_layout
from madrec.errors import MadrecError
from madrec.io import is_remote


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise MadrecError(f"config key {key}: {message}")


def validate(cfg: Config) -> None:
    """Checks across keys and ranges; file checks are `check_inputs`."""
    m, o, t, e = cfg.model, cfg.optim, cfg.trainer, cfg.eval
    from madrec import models

    _require(
        m.dropout == "auto" or (not isinstance(m.dropout, str) and 0.0 <= m.dropout < 1.0),
        "model.dropout",
        f"must be in [0, 1) or auto (from the training data), got {m.dropout!r}",
    )
    _require(cfg.rows in ROW_MODES, "rows", f"{cfg.rows!r} is not one of {', '.join(ROW_MODES)}")
    _require(cfg.max_len >= 0, "max_len", f"must be >= 0 (0 = sized from the data), got {cfg.max_len}")
    _require(0 <= t.ema_decay < 1, "trainer.ema_decay", f"must be in [0, 1) (0 = off, e.g. 0.999), got {t.ema_decay}")
    _require(t.max_minutes >= 0, "trainer.max_minutes", f"must be >= 0 (0 = no time budget), got {t.max_minutes}")
    _require(
        cfg.model.embedding_init in ("random", "cooccurrence"),
        "model.embedding_init",
        f"{cfg.model.embedding_init!r} is not one of random, cooccurrence",
    )
    for key in (
        "model.n_layer",
        "model.n_embd",
        "model.n_head",
        "model.d_ff",
        "model.head_candidates",
        "model.tree_width",
        "batch_size",
        "codebook_size",
        "trainer.max_steps",
        "trainer.val_every_n_steps",
        "trainer.checkpoint_every_n_steps",
        "trainer.log_every_n_steps",
        "trainer.length_buckets",
        "auto_max_items",
    ):
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        _require(obj > 0, key, f"must be positive, got {obj}")
    _require(m.rope_base > 1.0, "model.rope_base", f"must be > 1, got {m.rope_base}")
    _require(0.0 < cfg.diffusion.t_min < 1.0, "diffusion.t_min", f"must be in (0, 1), got {cfg.diffusion.t_min}")
    _require(o.optimizer.lr > 0, "optim.optimizer.lr", f"must be positive, got {o.optimizer.lr}")
    _require(o.optimizer.weight_decay >= 0, "optim.optimizer.weight_decay", "must be >= 0")
    _require(
        len(o.optimizer.betas) == 2 and all(0 <= b < 1 for b in o.optimizer.betas),
        "optim.optimizer.betas",
        f"expected two numbers in [0, 1), got {o.optimizer.betas}",
    )
    _require(o.scheduler.warmup_steps >= 0, "optim.scheduler.warmup_steps", "must be >= 0")
    _require(0.0 <= o.scheduler.min_lr_ratio <= 1.0, "optim.scheduler.min_lr_ratio", "must be in [0, 1]")
    _require(o.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 = no clipping)")
    _require(t.num_threads >= 0, "trainer.num_threads", "must be >= 0 (0 = sized from the CPU quota / affinity)")
    _require(t.early_stopping_patience >= 0, "trainer.early_stopping_patience", "must be >= 0 (0 = off)")
    _require(t.accelerator in ACCELERATORS, "trainer.accelerator", f"must be one of {ACCELERATORS}")
    _require(t.precision in PRECISIONS, "trainer.precision", f"must be one of {PRECISIONS}")
    _check_decoding(e, "eval.")
    metric, _, k = e.monitor.partition("@")
    _require(
        metric in ("recall", "ndcg") and k.isascii() and k.isdigit() and int(k) in e.ks,
        "eval.monitor",
        f"expected recall@K or ndcg@K with K in eval.ks={e.ks}, got {e.monitor!r}",
    )
    _require(e.val_max_users >= 0, "eval.val_max_users", "must be >= 0 (0 = all users)")
    _require(cfg.data_dir is not None, "data_dir", "required: the prepared dataset folder (madrec prepare-data --out)")
    if not cfg.train:
        _require(
            cfg.ckpt_path is not None,
            "ckpt_path",
            "train=false evaluates a trained checkpoint: pass ckpt_path=RUN/checkpoints/best.ckpt",
        )
    else:
        _require(
            cfg.sid_data_path is not None or cfg.ckpt_path is not None or not models.get(m.name).uses_sids,
            "sid_data_path",
            "required to train: the SID file (madrec build-sids --out OUT gives OUT/sids.pt)",
        )
    world = launch_layout().world_size
    _require(
        cfg.batch_size % world == 0,
        "batch_size",
        f"{cfg.batch_size} sequences do not split evenly over WORLD_SIZE={world} processes",
    )
    models.check(cfg)  # last: the networks assume the ranges above


def validate_evaluate(cfg: EvaluateConfig) -> None:
    """`madrec evaluate`'s checks, before a checkpoint is read."""
    missing = [k for k in ("ckpt_path", "data_dir", "output_dir") if not getattr(cfg, k)]
    if missing:
        raise MadrecError(
            f"missing {', '.join(f'{k}=...' for k in missing)} "
            "(e.g. madrec evaluate ckpt_path=RUN/checkpoints/best.ckpt data_dir=DATA split=test output_dir=EVAL)"
        )
    _check_decoding(cfg, "")
    _require(cfg.order in ORDERS, "order", f"{cfg.order!r} is not one of {', '.join(ORDERS)}")
    _require(cfg.split in SPLIT_NAMES, "split", f"{cfg.split!r} is not one of {', '.join(SPLIT_NAMES)}")
    _require(cfg.reveal_per_step >= 1, "reveal_per_step", f"must be >= 1, got {cfg.reveal_per_step}")
    _require(cfg.max_users >= 0, "max_users", f"must be >= 0 (0 = all users), got {cfg.max_users}")
    _require(cfg.compare_users >= 0, "compare_users", f"must be >= 0 (0 = all users), got {cfg.compare_users}")


def _check_decoding(d: DecodeConfig, prefix: str) -> None:
    _require(d.beam_size >= 1, f"{prefix}beam_size", f"must be >= 1, got {d.beam_size}")
    _require(bool(d.ks) and all(k > 0 for k in d.ks), f"{prefix}ks", f"expected positive cut-offs, got {d.ks}")
    try:
        check_beam_width(d.beam_size, max(d.ks), f"max({prefix}ks)")
    except MadrecError as exc:
        raise MadrecError(f"config key {prefix}beam_size: {exc}") from None
    _require(d.batch_size >= 0, f"{prefix}batch_size", f"must be >= 0 (0 = auto), got {d.batch_size}")


def check_beam_width(beam_size: int, top_k: int, what: str = "top_k") -> None:
    """A beam search returns at most beam_size items: refuse a longer top-K list (or a larger
    cut-off K of Recall@K). The one place this is checked, for every caller."""
    if top_k > beam_size:
        raise MadrecError(
            f"{what}={top_k} exceeds beam_size={beam_size}: a beam search returns at most beam_size items; "
            f"widen the beam (beam_size >= {top_k})"
        )


def check_inputs(cfg: Config) -> None:
    """The local files the config names must exist (remote URIs are fetched later)."""
    checks = [
        ("data_dir", cfg.data_dir, Path.is_dir),
        ("sid_data_path", cfg.sid_data_path, Path.is_file),
        ("ckpt_path", cfg.ckpt_path, Path.is_file),
    ]
    for key, value, exists in checks:
        if value is not None and not is_remote(value) and not exists(Path(value).expanduser()):
            raise MadrecError(f"config key {key}: {value} does not exist")
