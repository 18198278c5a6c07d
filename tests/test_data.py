"""Reading prepared datasets back: validation of layout, features and ranges."""

from __future__ import annotations

import json
import shutil

import pytest

from madrec.data import load_dataset
from madrec.errors import MadrecError
from madrec.prepare import prepare
from madrec.tfrecord import encode_example, write_records


@pytest.fixture()
def prepared(tmp_path):
    (tmp_path / "seq.txt").write_text("1 1 2 3 4\n2 2 3 4\n3 4 3 2 1\n")
    (tmp_path / "items.jsonl").write_text(
        "".join(json.dumps({"item_id": i, "text": f"t{i}"}) + "\n" for i in range(1, 5))
    )
    prepare(
        "sequences", str(tmp_path / "seq.txt"), tmp_path / "ds", items=str(tmp_path / "items.jsonl"), min_item_count=1
    )
    return tmp_path / "ds"


def test_round_trip(prepared):
    data = load_dataset(prepared)
    assert data.num_items == 4 and data.item_texts == ["t1", "t2", "t3", "t4"]
    assert [s.tolist() for s in data.splits["testing"].sequences] == [[0, 1, 2, 3], [1, 2, 3], [3, 2, 1, 0]]
    assert [s.tolist() for s in data.splits["training"].sequences] == [[0, 1], [1], [3, 2]]
    # evaluation rows: the sequence without its last item (target = second-to-last interaction)
    assert [s.tolist() for s in data.splits["evaluation"].sequences] == [[0, 1, 2], [1, 2], [3, 2, 1]]
    for split in ("training", "evaluation", "testing"):
        assert data.splits[split].user_ids.tolist() == [0, 1, 2]


def test_prior_system_folder_name_validation_is_accepted(prepared):
    (prepared / "evaluation").rename(prepared / "validation")
    assert len(load_dataset(prepared).splits["evaluation"]) == 3


def test_missing_split_names_folder(prepared):
    shutil.rmtree(prepared / "testing")
    with pytest.raises(MadrecError, match=r"split folder testing/ is missing"):
        load_dataset(prepared)


def test_empty_split_names_folder(prepared):
    for f in (prepared / "training").glob("*"):
        f.unlink()
    with pytest.raises(MadrecError, match=r"training: no \*\.tfrecord\.gz files"):
        load_dataset(prepared)


def test_wrong_feature_names_name_the_file(prepared):
    shard = next((prepared / "evaluation").glob("*.tfrecord.gz"))
    write_records(shard, [encode_example({"user_id": [0], "items": [1, 2]})])
    with pytest.raises(MadrecError, match=rf"{shard.name}: record 0 lacks feature\(s\) \['sequence_data'\]"):
        load_dataset(prepared)


def test_ids_out_of_range_name_the_file(prepared):
    shard = next((prepared / "testing").glob("*.tfrecord.gz"))
    write_records(shard, [encode_example({"user_id": [0], "sequence_data": [1, 2, 9]})])
    with pytest.raises(MadrecError, match=rf"{shard.name}: record 0 \(user 0\) has item index 9 outside \[0, 4\)"):
        load_dataset(prepared)


def test_missing_folder_says_how_to_prepare(tmp_path):
    with pytest.raises(MadrecError, match="run `madrec prepare-data"):
        load_dataset(tmp_path / "nope")
