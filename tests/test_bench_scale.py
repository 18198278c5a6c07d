"""bench/scale: the synthetic catalogue has the structure it promises, and the scale benchmark
measures every stage of a real (small) run into the files it names."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from madrec.sids.format import check_collapse, sid_report, validate_sids

BENCH = Path(__file__).resolve().parents[1] / "bench" / "scale"
RESULTS = ("results.md", "results.jsonl")


def _load(name: str):
    """bench/scale/NAME.py as a module (registered: its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(f"bench_scale_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    out = tmp_path_factory.mktemp("catalogue")
    info = _load("make_catalogue").make_catalogue(out, items=2000, seed=3)
    sids = torch.load(out / "sids.pt")
    lines = (out / "sequences.txt").read_text().splitlines()
    seqs = [np.array(line.split()[1:], dtype=np.int64) for line in lines]
    return out, info, sids, lines, seqs


def test_sids_are_grid_shaped_unique_and_in_range(catalogue):
    """(4, N) int64, every column distinct, digits in [0, 256), nearly every first digit used."""
    _, _, sids, _, _ = catalogue
    assert sids.dtype == torch.int64 and sids.shape == (4, 2000)
    assert validate_sids(sids, "catalogue", num_items=2000, codebook_size=256) is not None
    assert torch.unique(sids.t(), dim=0).shape[0] == 2000
    assert int(sids.min()) >= 0 and int(sids[:3].max()) <= 255
    check_collapse(sids[:-1], 256, "catalogue")
    assert torch.unique(sids[0]).numel() > 200


def test_dedup_digit_numbers_colliding_prefixes_by_item_index():
    """Uneven clusters (many shared 3-digit prefixes): still unique, numbered as build-sids does."""
    gen = _load("make_catalogue")
    sids = torch.from_numpy(gen.make_sids(20000, np.random.default_rng(0), cluster_skew=0.05))
    report = sid_report(validate_sids(sids, "skewed", codebook_size=256), 256)
    assert report["collision_rate"] > 0.01 and report["dedup_digit_follows_rule"]


def test_every_item_occurs_and_lengths_average_twelve(catalogue):
    """Users 0..N-1 in order, each item id 0..N-1 seen, >= 3 items per user, ~12 on average."""
    _, info, _, lines, seqs = catalogue
    assert [int(line.split()[0]) for line in lines] == list(range(2000))
    counts = np.bincount(np.concatenate(seqs), minlength=2000)
    assert len(counts) == 2000 and counts.min() >= 1
    assert min(len(s) for s in seqs) >= 3 and 11.0 < np.mean([len(s) for s in seqs]) < 13.0
    assert info["num_interactions"] == counts.sum()


def test_popularity_is_heavy_tailed(catalogue):
    """The top 1% of items hold far more than 1% of the interactions (here > 10%)."""
    *_, seqs = catalogue
    counts = np.sort(np.bincount(np.concatenate(seqs), minlength=2000))[::-1]
    assert counts[:20].sum() / counts.sum() > 0.10


def test_next_items_follow_the_sid_tree(catalogue):
    """Consecutive items share the first SID digit far more often than chance (1/256), and
    never repeat; the file names items that line up with the SID columns (the text's topic)."""
    out, _, sids, _, seqs = catalogue
    prev = np.concatenate([s[:-1] for s in seqs])
    nxt = np.concatenate([s[1:] for s in seqs])
    first = sids[0].numpy()
    assert (first[prev] == first[nxt]).mean() > 0.5
    assert (prev != nxt).all()
    row = json.loads((out / "items.jsonl").read_text().splitlines()[1234])
    assert row["item_id"] == 1234 and f"topic {int(sids[0, 1234])} " in row["text"]


def test_the_same_seed_gives_the_same_files(catalogue, tmp_path):
    out, *_ = catalogue
    _load("make_catalogue").make_catalogue(tmp_path, items=2000, seed=3, chunk_users=2000)
    for name in ("sequences.txt", "items.jsonl"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()
    assert torch.equal(torch.load(tmp_path / "sids.pt"), catalogue[2])


@pytest.mark.slow
def test_bench_scale_measures_every_stage_at_10k_items(tmp_path):
    """10k items, tiny: the SIDs pass ingest-sids, every stage reports its numbers, and the row
    lands in OUT/results.jsonl and OUT/results.md (not in bench/)."""
    bench = _load("bench_scale")
    before = {name: (BENCH / name).read_bytes() if (BENCH / name).is_file() else None for name in RESULTS}
    out = tmp_path / "out"
    argv = ["--items", "10000", "--experiments", "tiny", "--steps", "4", "--warmup", "2"]
    rows = bench.main([*argv, "--val-users", "20", "--eval-users", "40", "--out", str(out), "--work", str(tmp_path)])
    (row,) = rows
    stages = row["stages"]
    assert {name: st["status"] for name, st in stages.items()} == dict.fromkeys(
        ("generate", "prepare", "ingest", "train", "evaluate"), "ok"
    )
    report = json.loads((tmp_path / "sids" / "sid_report.json").read_text())
    assert report["num_items"] == 10000 and report["sid_len"] == 4 and report["dedup_digit_follows_rule"]
    for name in ("prepare", "ingest", "train", "evaluate"):
        assert stages[name]["wall_s"] > 0 and stages[name]["peak_rss_mib"] > 50
    train = stages["train"]
    assert train["global_step"] == 6 and train["timed_steps"] >= 1
    assert 0 < train["s_per_step"] < train["first_step_s"] < train["wall_s"]
    assert stages["evaluate"]["users"] == 40 and stages["evaluate"]["users_per_s"] > 0
    assert [json.loads(line)["experiment"] for line in (out / "results.jsonl").read_text().splitlines()] == ["tiny"]
    table = (out / "results.md").read_text()
    assert "| 10,000 | tiny |" in table and "commit" in table and "load average" in table
    assert before == {name: (BENCH / name).read_bytes() if (BENCH / name).is_file() else None for name in RESULTS}


@pytest.mark.slow
def test_a_stage_over_its_limits_is_stopped_and_recorded(tmp_path):
    """--max-rss-gb and --timeout kill the child and say why; a failing child keeps its error line."""
    bench = _load("bench_scale")
    grow = [sys.executable, "-c", "import time; b = b'x' * (400 << 20); time.sleep(30)"]
    big = bench.run_stage(grow, tmp_path / "big.log", timeout_s=20, max_rss=256 << 20)
    assert big["status"] == "stopped" and "over the 0.25 GiB limit" in big["reason"] and big["wall_s"] < 15
    slow = bench.run_stage([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "slow.log", 1.0, 1 << 40)
    assert slow["status"] == "stopped" and "timeout" in slow["reason"] and slow["wall_s"] < 10
    fail = bench.run_stage([sys.executable, "-c", "raise ValueError('bad input')"], tmp_path / "f.log", 20, 1 << 40)
    assert fail["status"] == "failed" and fail["rc"] == 1 and "ValueError: bad input" in fail["reason"]
    ok = bench.run_stage(grow[:2] + ["b = b'x' * (300 << 20)"], tmp_path / "ok.log", 20, 1 << 40)
    assert ok["status"] == "ok" and ok["peak_rss_mib"] > 300  # wait4's peak, however short-lived


@pytest.mark.parametrize("width, exact", [(10**6, True), (4, False)])
def test_the_sid_tree_beam_finds_the_best_items_of_an_additive_score(catalogue, width, exact):
    """factored_decode.tree_beam on the generated catalogue: with a beam as wide as the tree it
    returns exactly the top items of sum_k score[k, digit_k(i)] (found by scoring every item);
    a narrow beam returns catalogue items only, best first, each scored by its true sum."""
    fd = _load("factored_decode")
    _, _, sids, _, _ = catalogue
    tree = fd.PrefixTree(sids)
    torch.manual_seed(0)
    scores = torch.randn(6, sids.shape[0], 256)
    items, got = fd.tree_beam(scores, tree, width)
    every = scores[:, torch.arange(sids.shape[0])[:, None], sids].sum(1)  # (6, N)
    if exact:
        top = every.topk(10, dim=1)
        assert torch.equal(items[:, :10], top.indices)
        assert torch.allclose(got[:, :10], top.values)
    else:
        assert items.shape == (6, 4) and (items >= 0).all()
        assert torch.allclose(got, every.gather(1, items))
        assert (got[:, :-1] >= got[:, 1:]).all()
