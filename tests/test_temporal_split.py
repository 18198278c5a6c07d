"""Split protocols of prepare-data beyond leave-one-out (docs/data.md, "Split protocols"): the
global temporal split and the item hold-out, on planted data with exact expected splits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from madrec.cli import main
from madrec.data.dataset import load_dataset
from madrec.data.prepare import prepare
from madrec.errors import MadrecError

# (user, item, timestamp) in file order; users interleave. With the cut-off at 100 (index = id - 1):
#   user 1: 1@10 2@20 | 3@100 4@110 5@120  -> train [1, 2], validation 3 (at the cut-off), test 4, 5 unused
#   user 2: 2@30      | 6@105 1@130        -> train [2], validation 6 (a new item), test 1
#   user 3: 1@50 3@60 4@70 |               -> nothing after the cut-off: dropped
#   user 4:           | 4@150 5@160 6@170  -> no training interaction: dropped
#   user 5: 3@40      | 4@101              -> one interaction after the cut-off: dropped
#   user 6: 3@90 2@90 | 7@200 8@200 1@200  -> ties keep the file order: train [3, 2], validation 7, test 8
# items 5-8 are first seen after the cut-off (new); item 4 was seen before it by user 3 only (old)
PLANTED = [
    (1, 1, 10), (3, 1, 50), (6, 3, 90), (1, 2, 20), (2, 2, 30), (5, 3, 40), (3, 3, 60),
    (6, 2, 90), (3, 4, 70), (1, 3, 100), (5, 4, 101), (2, 6, 105), (1, 4, 110), (1, 5, 120),
    (2, 1, 130), (4, 4, 150), (4, 5, 160), (4, 6, 170), (6, 7, 200), (6, 8, 200), (6, 1, 200),
]  # fmt: skip
EXPECTED = {  # user id: (training, evaluation, testing) rows at cut-off 100, min_item_count 1
    "1": ([0, 1], [0, 1, 2], [0, 1, 2, 3]),
    "2": ([1], [1, 5], [1, 5, 0]),
    "6": ([2, 1], [2, 1, 6], [2, 1, 6, 7]),
}
DROPPED = {
    "items_below_min_count": 0,
    "interactions_of_dropped_items": 0,
    "users_without_training_interactions": 1,
    "users_with_fewer_than_2_interactions_after_cutoff": 2,
    "interactions_after_the_test_target": 2,
}


def _interactions(tmp_path: Path, rows=PLANTED) -> tuple[str, str]:
    (tmp_path / "log.csv").write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    (tmp_path / "items.csv").write_text("item_id,text\n" + "".join(f"{i},item {i}\n" for i in range(1, 9)))
    return str(tmp_path / "log.csv"), str(tmp_path / "items.csv")


def _rows(out: Path) -> dict[str, tuple[list[int], ...]]:
    """Per original user id, its (training, evaluation, testing) rows, as load_dataset reads them."""
    data = load_dataset(out)
    rows = {}
    for name in ("training", "evaluation", "testing"):
        split = data.splits[name]
        for u, seq in zip(split.user_ids, split.sequences):
            rows.setdefault(data.info["user_ids"][u], []).append(seq.tolist())
    return {u: tuple(r) for u, r in rows.items()}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.*")}


def test_temporal_split_on_planted_interactions_is_exact(tmp_path):
    log, items = _interactions(tmp_path)
    info = prepare("interactions", log, tmp_path / "out", items=items, min_item_count=1, split="temporal", cutoff=100)
    assert _rows(tmp_path / "out") == EXPECTED
    assert info["dropped"] == DROPPED
    assert info["split"] == {"kind": "temporal", "cutoff": 100, "cutoff_quantile": None}
    assert info["item_ids"] == [str(i) for i in range(1, 9)]  # new items stay in the catalogue
    assert info["new_items"] == [4, 5, 6, 7] and info["num_new_items"] == 4
    assert (info["new_item_validation_targets"], info["new_item_test_targets"]) == (2, 1)
    assert (info["num_users"], info["num_interactions"]) == (3, 11)
    assert json.loads((tmp_path / "out/dataset.json").read_text())["new_items"] == [4, 5, 6, 7]


def test_quantile_cutoff_is_a_timestamp_of_the_data(tmp_path):
    log, items = _interactions(tmp_path)
    info = prepare(
        "interactions", log, tmp_path / "out", items=items, min_item_count=1, split="temporal", cutoff_quantile=0.48
    )
    # "lower" quantile: the timestamp at sorted position floor(0.48 * (21 - 1)) = 9
    assert sorted(t for _, _, t in PLANTED)[9] == 100
    assert info["split"] == {"kind": "temporal", "cutoff": 100, "cutoff_quantile": 0.48}
    assert _rows(tmp_path / "out") == EXPECTED
    info = prepare(
        "interactions", log, tmp_path / "o2", items=items, min_item_count=1, split="temporal", cutoff_quantile=0.5
    )
    assert info["split"]["cutoff"] == 101  # position 10: user 1's item 3 at 100 is now training
    assert _rows(tmp_path / "o2")["1"] == ([0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4])


def test_ties_keep_the_input_order(tmp_path):
    swapped = list(PLANTED)
    a, b = swapped.index((6, 7, 200)), swapped.index((6, 8, 200))
    swapped[a], swapped[b] = swapped[b], swapped[a]
    c, d = swapped.index((6, 3, 90)), swapped.index((6, 2, 90))
    swapped[c], swapped[d] = swapped[d], swapped[c]
    log, items = _interactions(tmp_path, swapped)
    prepare("interactions", log, tmp_path / "out", items=items, min_item_count=1, split="temporal", cutoff=100)
    assert _rows(tmp_path / "out")["6"] == ([1, 2], [1, 2, 7], [1, 2, 7, 6])


def test_item_filter_counts_only_training_interactions_and_keeps_new_items(tmp_path):
    # at min count 2: item 4 has one interaction before the cut-off (user 3's) and is dropped with
    # all four of its interactions; items 5-8 (one to two interactions each, all after) are kept
    log, items = _interactions(tmp_path)
    info = prepare("interactions", log, tmp_path / "out", items=items, min_item_count=2, split="temporal", cutoff=100)
    assert info["item_ids"] == ["1", "2", "3", "5", "6", "7", "8"]
    assert info["new_items"] == [3, 4, 5, 6]
    assert (info["dropped"]["items_below_min_count"], info["dropped"]["interactions_of_dropped_items"]) == (1, 4)
    assert _rows(tmp_path / "out") == {
        "1": ([0, 1], [0, 1, 2], [0, 1, 2, 3]),  # 4@110 is gone: 5@120 is the test target
        "2": ([1], [1, 4], [1, 4, 0]),
        "6": ([2, 1], [2, 1, 5], [2, 1, 5, 6]),
    }


def test_ml1m_timestamps_reach_the_temporal_split(tmp_path):
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m/ratings.dat").write_text("".join(f"{u}::{i}::5::{t}\n" for u, i, t in PLANTED))
    (tmp_path / "ml-1m/movies.dat").write_text("".join(f"{i}::Movie {i} (2000)::Drama\n" for i in range(1, 9)))
    info = prepare("ml-1m", str(tmp_path), tmp_path / "out", min_item_count=1, split="temporal", cutoff=100)
    assert _rows(tmp_path / "out") == EXPECTED
    assert info["dropped"] == DROPPED and info["new_items"] == [4, 5, 6, 7]


def test_cutoff_outside_the_data_names_the_timestamp_span(tmp_path):
    log, items = _interactions(tmp_path)
    with pytest.raises(MadrecError, match=r"before the cut-off 5 and 2 at/after it \(timestamps span 10\.\.200\)"):
        prepare("interactions", log, tmp_path / "out", items=items, min_item_count=1, split="temporal", cutoff=5)
    assert not (tmp_path / "out").exists()


REFUSED = {  # name: (dataset, prepare keywords, the error)
    "sequences have no timestamps": (
        "sequences",
        {"split": "temporal", "cutoff": 1.0},
        r"^--split temporal needs timestamps and --dataset sequences has none; use --dataset interactions",
    ),
    "no cut-off": ("interactions", {"split": "temporal"}, r"exactly one of --cutoff TIMESTAMP and --cutoff-quantile"),
    "two cut-offs": (
        "interactions",
        {"split": "temporal", "cutoff": 1.0, "cutoff_quantile": 0.5},
        r"exactly one of --cutoff",
    ),
    "quantile 1": (
        "interactions",
        {"split": "temporal", "cutoff_quantile": 1.0},
        r"--cutoff-quantile must be in \(0, 1\)",
    ),
    "quantile 0": (
        "interactions",
        {"split": "temporal", "cutoff_quantile": 0.0},
        r"--cutoff-quantile must be in \(0, 1\)",
    ),
    "infinite cut-off": ("interactions", {"split": "temporal", "cutoff": float("inf")}, r"--cutoff must be a finite"),
    "cut-off without temporal": ("interactions", {"cutoff": 100.0}, r"apply only with --split temporal"),
    "hold-out with temporal": (
        "interactions",
        {"split": "temporal", "cutoff": 100.0, "holdout_items": 0.1},
        r"--holdout-items is for --split leave-one-out",
    ),
    "hold-out 0": ("sequences", {"holdout_items": 0.0}, r"--holdout-items must be a fraction in \(0, 1\)"),
    "hold-out 1": ("sequences", {"holdout_items": 1.0}, r"--holdout-items must be a fraction in \(0, 1\)"),
    "hold-out negative": ("sequences", {"holdout_items": -0.1}, r"--holdout-items must be a fraction in \(0, 1\)"),
    "hold-out of no item": ("sequences", {"holdout_items": 0.01}, r"--holdout-items 0\.01 holds out no item of 10"),
    "unknown split": ("sequences", {"split": "random"}, r"unknown --split 'random'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_undefined_protocols_are_refused_and_nothing_is_written(tmp_path, case):
    dataset, kwargs, error = REFUSED[case]
    source, items = _interactions(tmp_path) if dataset == "interactions" else _sequences(tmp_path)
    with pytest.raises(MadrecError, match=error):
        prepare(dataset, source, tmp_path / "out", items=items, min_item_count=1, **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_temporal_sequences_in_one_line(tmp_path, cli_stderr):
    source, items = _sequences(tmp_path)
    argv = [
        "prepare-data",
        "--dataset",
        "sequences",
        "--source",
        source,
        "--items",
        items,
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, "--split", "temporal", "--cutoff-quantile", "0.9"]) == 2
    err = cli_stderr()
    assert len(err) == 1 and err[0].startswith("madrec prepare-data: error: --split temporal needs timestamps"), err


def test_cli_temporal_reports_new_items(tmp_path, capsys):
    log, items = _interactions(tmp_path)
    argv = ["prepare-data", "--dataset", "interactions", "--source", log, "--items", items, "--min-item-count", "1"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--split", "temporal", "--cutoff", "100"]) == 0
    assert "3 users, 8 items, 11 interactions, 4 new items (1 test targets)" in capsys.readouterr().out
    assert json.loads((tmp_path / "out/dataset.json").read_text())["split"]["cutoff"] == 100


# --- the item hold-out ---------------------------------------------------------------

# ids 1..10 -> index id - 1; seed 0 holds out 2 of the 10 items: indices 6 and 7 (items 7 and 8)
SEQUENCES = ["1 1 2 3 4", "2 7 1 8 2 3", "3 1 2 8", "4 7 5 9", "5 5 6 10 7", "6 1 2"]
HELD_OUT = [6, 7]
EXPECTED_HOLDOUT = {
    "1": ([0, 1], [0, 1, 2], [0, 1, 2, 3]),  # holds no held-out item: as leave-one-out
    "2": ([0], [0, 1], [0, 1, 2]),  # items 7 and 8 removed from the history
    "3": ([0], [0, 1], [0, 1, 7]),  # the test target is held out: kept
    "5": ([4, 5], [4, 5, 9], [4, 5, 9, 6]),
    # user 4: the history 7 5 loses 7, one item is left: dropped; user 6: 2 items: dropped as usual
}


def _sequences(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "seq.txt").write_text("\n".join(SEQUENCES) + "\n")
    (tmp_path / "items.jsonl").write_text(
        "".join(json.dumps({"item_id": i, "text": f"t{i}"}) + "\n" for i in range(1, 11))
    )
    return str(tmp_path / "seq.txt"), str(tmp_path / "items.jsonl")


def test_holdout_with_a_fixed_seed_is_exact(tmp_path):
    seq, items = _sequences(tmp_path)
    info = prepare("sequences", seq, tmp_path / "out", items=items, min_item_count=1, holdout_items=0.2, seed=0)
    assert info["split"] == {"kind": "holdout", "holdout_items": 0.2, "seed": 0}
    assert info["new_items"] == HELD_OUT and info["num_new_items"] == 2 == round(0.2 * info["num_items"])
    assert _rows(tmp_path / "out") == EXPECTED_HOLDOUT
    assert (info["new_item_validation_targets"], info["new_item_test_targets"]) == (0, 2)
    dropped = info["dropped"]
    assert dropped["users_with_fewer_than_3_items"] == 1
    assert dropped["users_with_fewer_than_3_items_after_holdout"] == 1
    assert dropped["held_out_interactions"] == 2  # user 2's items 7 and 8
    data = load_dataset(tmp_path / "out")
    for name in ("training", "evaluation"):
        assert not set(np.concatenate(data.splits[name].sequences).tolist()) & set(HELD_OUT)
    # same seed: the same files; another seed: another held-out set
    first = _digest(tmp_path / "out")
    prepare("sequences", seq, tmp_path / "out", items=items, min_item_count=1, holdout_items=0.2, seed=0)
    assert _digest(tmp_path / "out") == first
    info = prepare("sequences", seq, tmp_path / "o2", items=items, min_item_count=1, holdout_items=0.2, seed=1)
    assert info["new_items"] == [4, 5]


@pytest.mark.slow
def test_holdout_on_beauty_keeps_every_test_target(shared_data, tmp_path):
    beauty = shared_data / "amazon_beauty"
    items = str(beauty / "items.jsonl.gz")
    info = prepare("sequences", str(beauty / "Beauty.txt"), tmp_path / "out", items=items, holdout_items=0.05)
    assert info["num_new_items"] == round(0.05 * 12_101) == 605
    data = load_dataset(tmp_path / "out")
    held = set(info["new_items"])
    for name in ("training", "evaluation"):
        assert not set(np.concatenate(data.splits[name].sequences).tolist()) & held
    # every kept user's test target is its last Beauty item
    lines = {ln.split()[0]: ln.split() for ln in (beauty / "Beauty.txt").read_text().splitlines()}
    test = data.splits["testing"]
    for u, seq in zip(test.user_ids, test.sequences):
        assert data.item_ids[seq[-1]] == lines[info["user_ids"][u]][-1]
    assert info["num_users"] + info["dropped"]["users_with_fewer_than_3_items_after_holdout"] == 22_363


# --- the reader and the default ------------------------------------------------------


@pytest.mark.parametrize(("protocol", "split"), [("temporal", "training"), ("holdout", "evaluation")])
def test_reader_refuses_a_new_item_in_a_history(tmp_path, protocol, split):
    if protocol == "temporal":
        log, items = _interactions(tmp_path)
        prepare("interactions", log, tmp_path / "out", items=items, min_item_count=1, split="temporal", cutoff=100)
    else:
        seq, items = _sequences(tmp_path)
        prepare("sequences", seq, tmp_path / "out", items=items, min_item_count=1, holdout_items=0.2)
    load_dataset(tmp_path / "out")  # as written: accepted
    path = tmp_path / "out/dataset.json"
    info = json.loads(path.read_text())
    info["new_items"].append(0)  # item index 0 is in user 1's training row under both protocols
    path.write_text(json.dumps(info))
    with pytest.raises(
        MadrecError, match=rf"{split}.*record 0: user 0's {split} history holds item 0, recorded as new"
    ):
        load_dataset(tmp_path / "out", splits=(split,))


def test_default_split_is_leave_one_out_without_protocol_fields(tmp_path):
    log, items = _interactions(tmp_path)
    info = prepare("interactions", log, tmp_path / "a", items=items, min_item_count=1)
    prepare("interactions", log, tmp_path / "b", items=items, min_item_count=1, split="leave-one-out", seed=7)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert not {"split", "new_items", "num_new_items"} & info.keys()
    rows = _rows(tmp_path / "a")
    assert rows["6"] == ([2, 1, 6], [2, 1, 6, 7], [2, 1, 6, 7, 0])  # whole history, ties in file order
    assert rows["4"] == ([3], [3, 4], [3, 4, 5])
