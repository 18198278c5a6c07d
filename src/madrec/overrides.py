"""`key=value` arguments: the one parser behind `madrec train`, `madrec evaluate` and
`--param NAME=VALUE` of run-local / submit (the config schema types the values: madrec.config).

    pairs("trainer.max_steps=200 eval.ks=[5,10]".split())   # [("trainer.max_steps", "200"), ...]
    yaml_value("[5,10]")                                        # [5, 10]

Keys may carry Hydra's `+` prefix or a leading `--` and use `-` for `_`; values stay text
until the caller types them (`yaml_value` reads them the way YAML files are read).
"""

from __future__ import annotations

from collections.abc import Iterable

from madrec.errors import MadrecError


def normalise_key(key: str) -> str:
    """`+trainer.max_steps`, `--beam-size` -> `trainer.max_steps`, `beam_size`."""
    return key.strip().lstrip("+").lstrip("-").replace("-", "_")


def pairs(
    items: Iterable[str], *, what: str = "argument", example: str = "trainer.max_steps=1000"
) -> list[tuple[str, str]]:
    """`key=value` strings -> (normalised key, raw value) pairs, in order; anything else is an
    error naming the item (`what` names the kind of argument in the message)."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        key = normalise_key(key)
        if not sep or not key:
            raise MadrecError(f"{what} {item!r}: expected key=value (e.g. {example})")
        out.append((key, value))
    return out


def yaml_value(raw: str):
    """The value as YAML reads it (numbers, booleans, lists, null), else the text itself."""
    import yaml

    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw


def refuse_keys(items: Iterable[str], taken: Iterable[str], who: str) -> list[str]:
    """The overrides, unchanged, after refusing any of the keys `who` sets itself."""
    items = list(items)
    for item, (key, _) in zip(items, pairs(items, what="override")):
        if key in taken:
            raise MadrecError(f"override {item!r}: {who} sets {key} itself; remove it from the overrides")
    return items
