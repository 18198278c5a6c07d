"""The compiled pipeline's run parameters, shared by `madrec run-local` and `madrec submit`.

`PIPELINE_FILE` is the committed IR YAML (`make compile-pipeline` writes it); its root inputs
are the run parameters, and `parse_params` turns `--param KEY=VALUE` strings into values of
their declared types. The two override parameters are typed structs checked against the config
schema before a run starts: `--param train_overrides.trainer.max_minutes=3` sets one key
(`train_overrides={"trainer.max_minutes": 3.0}`), as does a JSON object for the whole parameter.
"""

from __future__ import annotations

import json
from pathlib import Path

from madrec.config import Config, EvaluateConfig, typed_overrides
from madrec.errors import MadrecError
from madrec.overrides import pairs

REPO = Path(__file__).resolve().parents[3]
PIPELINE_FILE = REPO / "pipelines" / "madrec_pipeline.yaml"

_CONVERTERS = {
    "STRING": str,
    "NUMBER_INTEGER": int,
    "NUMBER_DOUBLE": float,
    "BOOLEAN": lambda v: {"true": True, "false": False}[v.lower()],
    "STRUCT": json.loads,
    "LIST": json.loads,
}
# the struct parameters that hold `madrec train` / `madrec evaluate` config keys -> their schema
OVERRIDES = {"train_overrides": Config, "eval_overrides": EvaluateConfig}


def pipeline_inputs(pipeline_file: Path) -> dict[str, dict]:
    """The pipeline's run parameters: name -> {parameterType, defaultValue, ...}."""
    import yaml

    if not pipeline_file.is_file():
        raise MadrecError(f"{pipeline_file}: no compiled pipeline; run `make compile-pipeline` in a source checkout")
    with pipeline_file.open() as fh:
        spec = next(yaml.safe_load_all(fh))
    return spec["root"]["inputDefinitions"]["parameters"]


def train_overrides_from(items: list[str], where: str) -> dict:
    """A verb's positional `KEY=VALUE` training overrides -> the typed `train_overrides` struct."""
    return typed_overrides(dict(pairs(items)), Config, where)


def add_param_option(parser, example: str) -> None:
    """The `--param KEY=VALUE` option of run-local and submit (parsed by `parse_params`)."""
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help=example)


def parse_params(items: list[str], inputs: dict[str, dict], base: dict | None = None) -> dict:
    """`KEY=VALUE` strings -> typed run parameters over `base` (a verb's own defaults), where a
    `train_overrides.KEY=V` adds to base's overrides; unknown keys and bad values are errors."""
    params = {k: dict(v) if isinstance(v, dict) else v for k, v in (base or {}).items()}
    for key, raw in pairs(items, what="--param", example="sid_levels=4"):
        name, _, sub = key.partition(".")
        if sub and name in OVERRIDES:  # train_overrides.trainer.max_minutes=3
            params.setdefault(name, {}).update(typed_overrides({sub: raw}, OVERRIDES[name], f"--param {key}"))
            continue
        if key not in inputs:
            raise MadrecError(f"--param {key}: not a pipeline parameter; valid: {', '.join(sorted(inputs))}")
        params[key] = _typed(key, raw, inputs[key]["parameterType"])
        if key in OVERRIDES:
            params[key] = typed_overrides(params[key], OVERRIDES[key], f"--param {key}")
    return params


def _typed(key: str, raw: str, kind: str):
    try:
        value = _CONVERTERS[kind](raw)
    except (ValueError, KeyError) as exc:
        raise MadrecError(f"--param {key}={raw!r}: not a valid {kind.lower()} ({exc})") from exc
    if kind in ("STRUCT", "LIST") and not isinstance(value, dict if kind == "STRUCT" else list):
        raise MadrecError(f"--param {key}: expected a JSON {'object' if kind == 'STRUCT' else 'array'}, got {raw!r}")
    return value
