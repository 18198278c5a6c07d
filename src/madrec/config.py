"""The run configuration of `madrec train` and `madrec evaluate`: one typed schema, YAML
experiment files and `key=value` overrides, read by one loader.

    madrec train experiment=tiny data_dir=DIR sid_data_path=SIDS optim.optimizer.lr=1e-3
    madrec evaluate ckpt_path=RUN/checkpoints/best.ckpt data_dir=DIR output_dir=EVAL beam_size=20

Precedence: schema defaults < `configs/experiment/NAME.yaml` < command-line overrides. Keys
are dotted paths into the schema; an unknown key or a value of the wrong type is an error
listing the valid keys, raised before anything heavy starts. The defaults are the reference
configuration (experiment `discrete_diffusion_train`; docs/method.md). Decoding settings
(`DecodeConfig`) are one definition shared by training's validation (`eval.*`) and `madrec
evaluate` (`EvaluateConfig`, flat keys).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from madrec.data.dataset import SPLIT_NAMES
from madrec.dist import launch_layout
from madrec.errors import MadrecError
from madrec.io import is_remote
from madrec.models.blocks import ModelConfig
from madrec.models.diffusion import DiffusionConfig
from madrec.overrides import normalise_key, yaml_value
from madrec.overrides import pairs as _pairs

# keys of the prior research system that mean one of ours
ALIASES = {"paths.output_dir": "output_dir"}
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
    predictions: bool = _opt(False, "write predictions.parquet (user, rank, item_id, item, score)")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N (under torchrun: one GPU per process)")
    order: str = _opt("confidence", f"unmasking order: {' | '.join(ORDERS)}")
    reveal_per_step: int = _opt(1, "SID positions revealed per model call")
    sweep: bool = _opt(True, "also decode with fewer model calls per item (quality vs steps)")
    compare_unconstrained: bool = _opt(True, "also decode without the catalogue constraint (invalid-SID rate)")
    compare_users: int = _opt(2000, "users (the split's first) for the unconstrained comparison and the sweep; 0 = all")
    seed: int = _opt(0, "seed of the random unmasking order")
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


# --- schema walking --------------------------------------------------------------------


def _hints(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def valid_keys(cls=Config, prefix: str = "") -> dict[str, object]:
    """Every dotted leaf key of the schema with its type."""
    keys: dict[str, object] = {}
    for name, tp in _hints(cls).items():
        if dataclasses.is_dataclass(tp):
            keys.update(valid_keys(tp, f"{prefix}{name}."))
        else:
            keys[f"{prefix}{name}"] = tp
    return keys


def _type_name(tp) -> str:
    if tp in (int, float, bool, str):
        return tp.__name__
    args = typing.get_args(tp)
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(args[0])}]"
    return " | ".join("null" if a is type(None) else _type_name(a) for a in args)


def describe_keys(cls=Config) -> str:
    """The valid keys of schema `cls`, one per line with type, default and help where a field
    has one, for error messages and --help."""
    defaults = _flatten(dataclasses.asdict(cls()))
    helps = _helps(cls)
    return "\n".join(
        f"  {k}: {_type_name(tp)} = {defaults[k]!r}" + (f"  # {helps[k]}" if k in helps else "")
        for k, tp in valid_keys(cls).items()
    )


def _helps(cls, prefix: str = "") -> dict[str, str]:
    out = {}
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(_helps(tp, f"{prefix}{f.name}."))
        elif "help" in f.metadata:
            out[f"{prefix}{f.name}"] = f.metadata["help"]
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _coerce(value, tp, key: str, raw: str | None = None):
    """Check (and where unambiguous convert) `value` to type `tp`; `raw` is the override text."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
        for option in (a for a in args if a is not type(None)):  # the first type that fits, in schema order
            try:
                return _coerce(value, option, key, raw)
            except MadrecError:
                pass
        shown = raw if raw is not None else value
        raise MadrecError(f"config key {key}: expected {_type_name(tp)}, got {shown!r}")
    if tp is str:
        if raw is not None:  # a path like 001 or 1e3 stays the text the user typed
            return raw
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _number(value)
        if number is not None and float(number).is_integer():
            return int(number)
    elif tp is float:
        number = _number(value)
        if number is not None:
            return float(number)
    elif typing.get_origin(tp) is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0], key) for v in value]
    shown = raw if raw is not None else value
    raise MadrecError(f"config key {key}: expected {_type_name(tp)}, got {shown!r}")


def _number(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):  # YAML reads 3e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _unknown_key(key: str, where: str, schema) -> MadrecError:
    return MadrecError(f"{where}: unknown config key {key!r}. Valid keys:\n{describe_keys(schema)}")


def _set(cfg, key: str, value, where: str, raw: str | None = None) -> None:
    """Set dotted `key` of the schema instance `cfg` to `value`, checked against its type."""
    key = ALIASES.get(key, key)
    target = cfg
    *parents, leaf = key.split(".")
    for part in parents:
        if not dataclasses.is_dataclass(target) or part not in _hints(type(target)):
            raise _unknown_key(key, where, type(cfg))
        target = getattr(target, part)
    hints = _hints(type(target)) if dataclasses.is_dataclass(target) else {}
    if leaf not in hints:
        raise _unknown_key(key, where, type(cfg))
    tp = hints[leaf]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise MadrecError(
                f"{where}: {key} is a group of keys; set its fields, e.g. {key}.{next(iter(_hints(tp)))}=..."
            )
        for sub, v in value.items():
            _set(cfg, f"{key}.{sub}", v, where)
        return
    try:
        setattr(target, leaf, _coerce(value, tp, key, raw))
    except MadrecError as exc:
        raise MadrecError(f"{where}: {exc}") from None


# --- experiment files ------------------------------------------------------------------


def config_dirs() -> list[Path]:
    """Where experiment YAMLs are looked up, first match wins ($MADREC_CONFIG_DIR: the images)."""
    dirs = []
    if os.environ.get("MADREC_CONFIG_DIR"):
        dirs.append(Path(os.environ["MADREC_CONFIG_DIR"]))
    dirs += [
        Path.cwd() / "configs",
        Path(__file__).resolve().parents[2] / "configs",  # source checkout / editable install
    ]
    return dirs


def experiment_path(name: str) -> Path:
    """The YAML of experiment `name` (a name under configs/experiment/ or a path to a .yaml)."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name).expanduser()
        if not path.is_file():
            raise MadrecError(f"experiment={name}: no such file")
        return path
    searched = [d / "experiment" for d in config_dirs()]
    for folder in searched:
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    known = sorted({p.stem for f in searched if f.is_dir() for p in f.glob("*.yaml")})
    raise MadrecError(
        f"experiment={name}: not found in {', '.join(str(f) for f in searched)}; "
        f"known experiments: {', '.join(known) or 'none'} (or pass a path to a .yaml file)"
    )


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MadrecError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise MadrecError(f"{path}: expected a mapping of config keys at the top level")
    return data


# --- public API ------------------------------------------------------------------------


def load_config(overrides: list[str]) -> Config:
    """Defaults, then the experiment YAML named by `experiment=`, then the overrides; validated."""
    pairs = _pairs(overrides)
    cfg = Config()
    experiment = next((v for k, v in reversed(pairs) if k == "experiment"), cfg.experiment)
    path = experiment_path(experiment)
    for key, value in _read_yaml(path).items():
        _set(cfg, key, value, str(path))
    _apply(cfg, pairs)
    cfg.experiment = Path(experiment).stem if experiment.endswith((".yaml", ".yml")) else experiment
    validate(cfg)
    return cfg


def load_evaluate_config(argv: list[str]) -> EvaluateConfig:
    """`madrec evaluate`'s key=value arguments on the defaults; validated."""
    cfg = EvaluateConfig()
    _apply(cfg, _pairs(argv, what="argument", example="beam_size=20"))
    validate_evaluate(cfg)
    return cfg


def typed_overrides(values: dict, schema=Config, where: str = "overrides") -> dict:
    """{dotted key: value} -> {key: value of the schema's type}, checked now: how the pipeline
    carries overrides (a KFP struct). A text value is read as on a command line (`3` -> 3)."""
    cfg, out = schema(), {}
    for key, value in values.items():
        key = ALIASES.get(normalise_key(key), normalise_key(key))
        if isinstance(value, str):
            _apply(cfg, [(key, value)], where)
        else:
            _set(cfg, key, value, where)
        target = cfg
        for part in key.split("."):
            target = getattr(target, part)
        out[key] = dataclasses.asdict(target) if dataclasses.is_dataclass(target) else target
    return out


def as_arguments(values: dict) -> list[str]:
    """Typed overrides -> `key=value` arguments that read back to the same values."""
    return [f"{k}={v}" if isinstance(v, str) else f"{k}={json.dumps(v)}" for k, v in values.items()]


def _apply(cfg, pairs: list[tuple[str, str]], where: str = "command line") -> None:
    """Command-line `key=value` pairs onto `cfg`: YAML-typed, a path keeps the text as typed."""
    for key, value in pairs:
        parsed = yaml_value(value)
        raw = None if parsed is None and value.strip().lower() in ("null", "none", "~", "") else value
        _set(cfg, key, parsed, where, raw=raw)


# options removed once measured (bench/train/results.md keeps their numbers) -> the value at
# which they did nothing: a saved config (an older checkpoint) holding that value still loads
REMOVED = {
    ("diffusion", "next_item_prob"): 0.5,
    ("diffusion", "history_item_prob"): 0.0,
    ("diffusion", "next_item_copies"): 1,
    ("diffusion", "loss_weight"): "elbo",
}


def config_from_dict(data: dict, where: str) -> Config:
    """Rebuild a Config saved with `Config.to_dict()` (e.g. from a checkpoint)."""
    cfg = Config()
    for key, value in data.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if not _removed(key, k, v, where)}
        _set(cfg, key, value, where)
    return cfg


def _removed(group: str, key: str, value, where: str) -> bool:
    if (group, key) not in REMOVED:
        return False
    if value != REMOVED[group, key]:
        raise MadrecError(
            f"{where}: {group}.{key}={value!r} was removed from madrec (no shipped experiment used it); "
            "this checkpoint needs the madrec version that trained it"
        )
    return True


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
        metric in ("recall", "ndcg") and k.isdigit() and int(k) in e.ks,
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
