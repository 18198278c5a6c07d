"""The one key=value parser (madrec.overrides) and the process layout (madrec.dist)."""

from __future__ import annotations

import pytest

from madrec.dist import Layout, launch_layout
from madrec.errors import MadrecError
from madrec.overrides import normalise_key, pairs, refuse_keys, yaml_value


def test_pairs_keep_order_and_raw_values():
    assert pairs(["+trainer.max_steps=5", "--beam-size=20", "ks=[5,10]", "note=a=b", "empty="]) == [
        ("trainer.max_steps", "5"),
        ("beam_size", "20"),
        ("ks", "[5,10]"),
        ("note", "a=b"),
        ("empty", ""),
    ]
    assert normalise_key(" +eval.val-max-users ") == "eval.val_max_users"
    with pytest.raises(MadrecError, match=r"--param 'sid_levels': expected key=value \(e.g. x=1\)"):
        pairs(["sid_levels"], what="--param", example="x=1")
    with pytest.raises(MadrecError, match="expected key=value"):
        pairs(["=3"])


def test_yaml_values_and_shell_words():
    assert [yaml_value(v) for v in ("3", "1e-3", "true", "[5, 10]", "null", "", "a: b: c")] == [
        3,
        "1e-3",
        True,
        [5, 10],
        None,
        None,
        "a: b: c",
    ]


def test_refuse_keys():
    assert refuse_keys(["a=1", "b=2"], ("data_dir",), "the pipeline") == ["a=1", "b=2"]
    with pytest.raises(MadrecError, match="override '\\+data_dir=x': the pipeline sets data_dir itself"):
        refuse_keys(["a=1", "+data_dir=x"], ("data_dir",), "the pipeline")


def test_launch_layout():
    assert launch_layout({}) == Layout(0, 1, 0, 1)
    torchrun = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    assert launch_layout(torchrun) == Layout(5, 8, 1, 4) and launch_layout(torchrun).nodes == 2
    assert launch_layout({"LOCAL_WORLD_SIZE": "2"}).world_size == 2
    with pytest.raises(MadrecError, match="WORLD_SIZE=6 is not a multiple of LOCAL_WORLD_SIZE=4"):
        launch_layout({"WORLD_SIZE": "6", "LOCAL_WORLD_SIZE": "4"})
    with pytest.raises(MadrecError, match="RANK='x'"):
        launch_layout({"RANK": "x"})
