"""Reading prepared datasets back: validation of layout, features and ranges."""

from __future__ import annotations

import shutil

import pytest

from madrec.data.dataset import load_dataset
from madrec.data.tfrecord import encode_example, write_records
from madrec.errors import MadrecError


def test_round_trip(tiny_prepared):
    data = load_dataset(tiny_prepared)
    assert data.num_items == 4 and data.item_texts == ["t1", "t2", "t3", "t4"]
    assert [s.tolist() for s in data.splits["testing"].sequences] == [[0, 1, 2, 3], [1, 2, 3], [3, 2, 1, 0]]
    assert [s.tolist() for s in data.splits["training"].sequences] == [[0, 1], [1], [3, 2]]
    # evaluation rows: the sequence without its last item (target = second-to-last interaction)
    assert [s.tolist() for s in data.splits["evaluation"].sequences] == [[0, 1, 2], [1, 2], [3, 2, 1]]
    for split in ("training", "evaluation", "testing"):
        assert data.splits[split].user_ids.tolist() == [0, 1, 2]


def test_prior_system_folder_name_validation_is_accepted(tiny_prepared):
    (tiny_prepared / "evaluation").rename(tiny_prepared / "validation")
    assert len(load_dataset(tiny_prepared).splits["evaluation"]) == 3


def test_missing_split_names_folder(tiny_prepared):
    shutil.rmtree(tiny_prepared / "testing")
    with pytest.raises(MadrecError, match=r"split folder testing/ is missing"):
        load_dataset(tiny_prepared)


def test_empty_split_names_folder(tiny_prepared):
    for f in (tiny_prepared / "training").glob("*"):
        f.unlink()
    with pytest.raises(MadrecError, match=r"training: no \*\.tfrecord\.gz files"):
        load_dataset(tiny_prepared)


def test_wrong_feature_names_name_the_file(tiny_prepared):
    shard = next((tiny_prepared / "evaluation").glob("*.tfrecord.gz"))
    write_records(shard, [encode_example({"user_id": [0], "items": [1, 2]})])
    with pytest.raises(MadrecError, match=rf"{shard.name}: record 0 lacks feature\(s\) \['sequence_data'\]"):
        load_dataset(tiny_prepared)


def test_ids_out_of_range_name_the_file(tiny_prepared):
    shard = next((tiny_prepared / "testing").glob("*.tfrecord.gz"))
    write_records(shard, [encode_example({"user_id": [0], "sequence_data": [1, 2, 9]})])
    with pytest.raises(MadrecError, match=rf"{shard.name}: record 0 \(user 0\) has item index 9 outside \[0, 4\)"):
        load_dataset(tiny_prepared)


def test_missing_folder_says_how_to_prepare(tmp_path):
    with pytest.raises(MadrecError, match="run `madrec prepare-data"):
        load_dataset(tmp_path / "nope")
