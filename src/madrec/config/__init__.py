"""The one run configuration of `madrec train` and `madrec evaluate`: `schema` (the typed
keys and defaults), `load` (experiment files and overrides onto the schema), `checks` (rules
across keys). Callers import from here.
"""

from madrec.config.checks import check_beam_width, check_inputs, validate, validate_evaluate
from madrec.config.load import (
    as_arguments,
    config_from_dict,
    describe_keys,
    experiment_path,
    load_config,
    load_evaluate_config,
    typed_overrides,
    valid_keys,
)
from madrec.config.schema import (
    ORDERS,
    ROW_MODES,
    Config,
    DecodeConfig,
    EvalConfig,
    EvaluateConfig,
    OptimConfig,
    TrainerConfig,
)

__all__ = [
    "ORDERS",
    "ROW_MODES",
    "Config",
    "DecodeConfig",
    "EvalConfig",
    "EvaluateConfig",
    "OptimConfig",
    "TrainerConfig",
    "as_arguments",
    "check_beam_width",
    "check_inputs",
    "config_from_dict",
    "describe_keys",
    "experiment_path",
    "load_config",
    "load_evaluate_config",
    "typed_overrides",
    "valid_keys",
    "validate",
    "validate_evaluate",
]
