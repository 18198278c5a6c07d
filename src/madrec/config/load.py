"""Reading the run configuration: experiment YAML files and `key=value` overrides onto the
schema, each value checked against its field's type (one engine for train, evaluate and the
pipeline's override structs).

    madrec train experiment=tiny data_dir=DIR sid_data_path=SIDS optim.optimizer.lr=1e-3
    madrec evaluate ckpt_path=RUN/checkpoints/best.ckpt data_dir=DIR output_dir=EVAL beam_size=20

Precedence: schema defaults < `configs/experiment/NAME.yaml` < command-line overrides. Keys
are dotted paths into the schema; an unknown key or a value of the wrong type is an error
listing the valid keys, raised before anything heavy starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path

import yaml

from madrec.config.checks import validate, validate_evaluate
from madrec.config.schema import Config, EvaluateConfig
from madrec.errors import MadrecError
from madrec.overrides import normalise_key, yaml_value
from madrec.overrides import pairs as _pairs

# keys of the prior research system that mean one of ours
ALIASES = {"paths.output_dir": "output_dir"}


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
        Path(__file__).resolve().parents[3] / "configs",  # source checkout / editable install
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
    """Typed overrides -> `key=value` arguments that read back to the same values. A KFP struct
    hands every number over as a float: a whole one is written as an integer (a float key reads
    `3` as 3.0), so the step's log shows `trainer.max_steps=20000`, not `20000.0`."""

    def text(v) -> str:
        if isinstance(v, str):
            return v
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return json.dumps(v)

    return [f"{k}={text(v)}" for k, v in values.items()]


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
