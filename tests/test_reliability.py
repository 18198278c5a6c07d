"""Reliability defects (issue 13): short top-K lists, corrupt checkpoints, inconsistent splits,
out-of-range history items. Each test failed before its fix."""

from __future__ import annotations

import random
import zipfile

import numpy as np
import pytest
import torch

from madrec.checkpoint import load_checkpoint, read_checkpoint
from madrec.cli import main
from madrec.data.dataset import load_dataset
from madrec.data.prepare import prepare
from madrec.data.tfrecord import encode_example, write_records
from madrec.errors import MadrecError
from madrec.evaluate.decode import beam_search, build_histories
from madrec.evaluate.recommend import Recommender
from madrec.models.tokens import SIDVocab

from toy_lm import MixLM, brute_force_left_to_right, random_sids, write_checkpoint

# ---------------------------------------------------------------- top-K on a tiny catalogue

SMALL_IDS = ["w", "x", "y", "z"]


@pytest.mark.parametrize("order", ["confidence", "left_to_right", "random"])
def test_catalogue_smaller_than_the_beam_pads_with_no_item(order):
    vocab = SIDVocab(3, 5)
    sids = random_sids(3, 5, 4, seed=1)
    model = MixLM(vocab, seed=0).eval()
    hist = build_histories(vocab, sids, [[0, 1], [3]], max_len=15, drop_last=False)
    res = beam_search(
        model, vocab, sids, hist, beam_size=10, top_k=10, order=order, generator=torch.Generator().manual_seed(0)
    )
    for row, scores in zip(res.items.tolist(), res.scores.tolist()):
        assert sorted(row[:4]) == [0, 1, 2, 3]  # every item once ...
        assert row[4:] == [-1] * 6  # ... then "no item", never item 0 again
        assert all(np.isfinite(scores[:4])) and scores[4:] == [float("-inf")] * 6


def test_catalogue_smaller_than_the_beam_left_to_right_is_exact():
    vocab = SIDVocab(3, 5)
    sids = random_sids(3, 5, 4, seed=1)
    model = MixLM(vocab, seed=0).eval()
    hist = build_histories(vocab, sids, [[0, 1]], max_len=15, drop_last=False)
    res = beam_search(model, vocab, sids, hist, beam_size=10, top_k=8, order="left_to_right")
    want = brute_force_left_to_right(model, vocab, sids, hist).tolist()
    ranked = sorted(range(4), key=lambda i: -want[i])
    assert res.items[0].tolist() == ranked + [-1] * 4
    assert res.scores[0, :4].tolist() == pytest.approx([want[i] for i in ranked], abs=1e-5)


def test_recommender_returns_fewer_than_k_distinct_items(tmp_path):
    sids = random_sids(3, 5, 4, seed=1)
    write_checkpoint(tmp_path / "m.ckpt", sids, SMALL_IDS, max_len=15, codebook_size=5)
    rec = Recommender.from_checkpoint(str(tmp_path / "m.ckpt"), device="cpu")
    top = rec.recommend(["w", "y"], k=10)
    assert sorted(i for i, _ in top) == sorted(SMALL_IDS)
    assert all(np.isfinite(s) and s > -1e30 for _, s in top)
    pairs = rec.recommend(["w"], k=10, next_items=2)  # 4 x 4 = 16 pairs >= 10: a full list
    assert len(pairs) == 10 and len({p for p, _ in pairs}) == 10
    sids3 = random_sids(3, 5, 3, seed=2)
    write_checkpoint(tmp_path / "m3.ckpt", sids3, SMALL_IDS[:3], max_len=15, codebook_size=5)
    rec3 = Recommender.from_checkpoint(str(tmp_path / "m3.ckpt"), device="cpu")
    pairs = rec3.recommend(["w"], k=10, next_items=2)  # only 3 x 3 = 9 pairs exist
    assert len(pairs) == 9 and len({p for p, _ in pairs}) == 9


# ---------------------------------------------------------------- corrupt checkpoints


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "good.ckpt"
    write_checkpoint(path, random_sids(3, 5, 40, seed=1), [str(i) for i in range(40)], max_len=15, codebook_size=5)
    return path


def _bad_files(good, tmp_path):
    data = good.read_bytes()
    out = {}
    for frac in (0.0, 0.05, 0.5, 0.95):
        out[f"truncated-{frac}"] = data[: int(len(data) * frac)]
    out["random-bytes"] = random.Random(0).randbytes(4096)
    out["text"] = b"hello world\n"  # the unpickler: KeyError 104
    flipped = bytearray(data)  # damage inside a stored tensor: only the zip CRC notices
    for i in range(len(data) // 2, len(data) // 2 + 64):
        flipped[i] ^= 0xFF
    out["bit-flipped"] = bytes(flipped)
    paths = {}
    for name, blob in out.items():
        paths[name] = tmp_path / f"{name}.ckpt"
        paths[name].write_bytes(blob)
    return paths


def test_corrupt_checkpoints_are_a_named_error(good_ckpt, tmp_path):
    assert read_checkpoint(good_ckpt)["madrec"]["max_len"] == 15
    for path in _bad_files(good_ckpt, tmp_path).values():
        with pytest.raises(MadrecError, match=r"not a readable madrec checkpoint .*truncated or corrupt"):
            load_checkpoint(path)
        with pytest.raises(MadrecError):
            read_checkpoint(path)


def test_checkpoint_without_madrec_entries_is_named(tmp_path):
    torch.save({"state_dict": {}, "madrec": {"format": "madrec.checkpoint/1"}}, tmp_path / "half.ckpt")
    with pytest.raises(MadrecError, match=r"incomplete madrec checkpoint, missing config, sid_len"):
        load_checkpoint(tmp_path / "half.ckpt")
    with zipfile.ZipFile(tmp_path / "other.ckpt", "w") as z:
        z.writestr("a.txt", "not a checkpoint")
    with pytest.raises(MadrecError, match="not a readable madrec checkpoint"):
        load_checkpoint(tmp_path / "other.ckpt")


def test_recommend_and_evaluate_cli_report_a_truncated_checkpoint(good_ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(good_ckpt.read_bytes()[:3000])
    assert main(["recommend", "--ckpt", str(bad), "--history", "0,1"]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    (tmp_path / "t.ckpt").write_bytes(b"hello world\n")
    assert main(["recommend", "--ckpt", str(tmp_path / "t.ckpt"), "--history", "0"]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert main(["evaluate", f"ckpt_path={bad}", f"data_dir={tmp_path}", f"output_dir={tmp_path / 'ev'}"]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    # resuming training from it
    (tmp_path / "data").mkdir()
    assert (
        main(
            [
                "train",
                "experiment=tiny",
                f"data_dir={tmp_path / 'data'}",
                f"ckpt_path={bad}",
                f"output_dir={tmp_path / 'run'}",
            ]
        )
        == 2
    )
    assert "truncated or corrupt" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


# ---------------------------------------------------------------- splits checked against each other


def _rewrite(folder, rows):
    shards = sorted(folder.glob("*.tfrecord.gz"))
    for s in shards[1:]:
        s.unlink()
    write_records(shards[0], [encode_example({"user_id": [u], "sequence_data": seq}) for u, seq in rows])
    return shards[0]


def test_evaluation_holding_the_full_sequence_is_named(tiny_prepared):
    # evaluation rows equal to testing rows: the evaluation target would be the test target
    shard = _rewrite(tiny_prepared / "evaluation", [(0, [0, 1, 2]), (1, [1, 2, 3]), (2, [3, 2, 1])])
    with pytest.raises(
        MadrecError,
        match=rf"{shard.name}: record 1: user 1's evaluation row \[1, 2, 3\] is not the "
        r"testing row \[1, 2, 3\] minus its last 1 item",
    ):
        load_dataset(tiny_prepared)


def test_training_holding_a_target_is_named(tiny_prepared):
    shard = _rewrite(tiny_prepared / "training", [(0, [0, 1]), (1, [1]), (2, [3, 2, 1])])
    with pytest.raises(
        MadrecError,
        match=rf"{shard.name}: record 2: user 2's training row \[3, 2, 1\] is not the "
        r"testing row \[3, 2, 1, 0\] minus its last 2 item",
    ):
        load_dataset(tiny_prepared)
    # only training + evaluation loaded: checked against each other
    with pytest.raises(MadrecError, match=r"user 2's training row \[3, 2, 1\] is not the evaluation row"):
        load_dataset(tiny_prepared, splits=("training", "evaluation"))
    assert len(load_dataset(tiny_prepared, splits=("testing",)).splits["testing"]) == 3


def test_users_missing_or_repeated_are_named(tiny_prepared):
    shard = _rewrite(tiny_prepared / "evaluation", [(0, [0, 1, 2]), (1, [1, 2])])
    with pytest.raises(MadrecError, match=r"user 2 is in the testing split but not in evaluation"):
        load_dataset(tiny_prepared)
    shard = _rewrite(tiny_prepared / "evaluation", [(0, [0, 1, 2]), (1, [1, 2]), (2, [3, 2, 1]), (1, [1, 2])])
    with pytest.raises(MadrecError, match=rf"{shard.name}: record 3: user 1 appears twice"):
        load_dataset(tiny_prepared)


def test_prepared_real_slice_passes_the_check(shared_data, tmp_path):
    lines = (shared_data / "amazon_beauty" / "Beauty.txt").read_text().splitlines()[:300]
    (tmp_path / "b.txt").write_text("\n".join(lines) + "\n")
    prepare(
        "sequences",
        str(tmp_path / "b.txt"),
        tmp_path / "ds",
        items=str(shared_data / "amazon_beauty" / "items.jsonl.gz"),
        min_item_count=1,
    )
    data = load_dataset(tmp_path / "ds")
    assert len(data.splits["training"]) == 300


# ---------------------------------------------------------------- history item range


def test_build_histories_rejects_out_of_range_items():
    vocab = SIDVocab(2, 4)
    sids = random_sids(2, 4, 5, seed=0)
    assert build_histories(vocab, sids, [[0, 4, 1]], max_len=8).shape == (1, 4)
    with pytest.raises(MadrecError, match=r"sequence 1: item index -1 outside \[0, 5\)"):
        build_histories(vocab, sids, [[0, 1], [2, -1, 3]], max_len=8, drop_last=False)
    with pytest.raises(MadrecError, match=r"sequence 0: item index 5 outside \[0, 5\)"):
        build_histories(vocab, sids, [[5, 1]], max_len=8)
