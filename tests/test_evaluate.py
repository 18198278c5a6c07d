"""evaluate_split: exact metrics independent of batch size and process count, no target leakage."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.multiprocessing as mp

from madrec.data.dataset import Split
from madrec.evaluate.run import evaluate_split, predict_split
from madrec.models.tokens import SIDVocab

from toy_lm import FixedLM, RecordingLM, SuccessorLM, random_sids

H, V, N = 3, 6, 50
MAX_LEN = 18


def synthetic(num_users: int = 40, seed: int = 0):
    """Users whose target follows the successor rule for every other user."""
    rng = np.random.default_rng(seed)
    seqs = []
    for u in range(num_users):
        hist = rng.integers(0, N, size=rng.integers(1, 8))
        target = (hist[-1] + 1) % N if u % 2 == 0 else rng.integers(0, N)
        seqs.append(np.append(hist, target).astype(np.int64))
    return Split("testing", np.arange(100, 100 + num_users), seqs)


def setup():
    vocab = SIDVocab(H, V)
    sids = random_sids(H, V, N, seed=4)
    return vocab, sids, SuccessorLM(vocab, sids, seed=4).eval()


def test_metrics_are_sane_and_independent_of_batch_size():
    vocab, sids, model = setup()
    split = synthetic()
    runs = [
        evaluate_split(model, vocab, sids, split, MAX_LEN, batch_size=b, progress=False, prefix="test")
        for b in (1, 7, 256)
    ]
    for r in runs[1:]:
        assert {k: v for k, v in r.items() if k != "test/users_per_s"} == {
            k: v for k, v in runs[0].items() if k != "test/users_per_s"
        }
    m = runs[0]
    assert m["test/invalid_sid_rate"] == 0 and m["test/duplicate_rate"] == 0
    assert m["test/num_users"] == 40


def test_metrics_exact_on_a_constructed_ranking():
    """A context-free model over the full 4 x 4 catalogue ranks SID (d0, d1) at 4*d0 + d1 + 1
    for every user; targets are placed at chosen ranks, so every metric is known by hand."""
    vocab = SIDVocab(2, 4)
    every = torch.tensor([(a, b) for a in range(4) for b in range(4)])
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    sids = every[perm].t().contiguous()  # item i has the SID ranked perm[i] + 1
    rank_of = {i: int(perm[i]) + 1 for i in range(16)}
    item_at = {r: i for i, r in rank_of.items()}
    logprobs = torch.log_softmax(torch.tensor([[30.0, 20.0, 10.0, 0.0], [3.0, 2.0, 1.0, 0.0]]), -1)
    model = FixedLM(vocab, logprobs)
    ranks = [1, 2, 5, 6, 10, 11, 16]
    split = Split("testing", np.arange(len(ranks)), [np.array([3, item_at[r]]) for r in ranks])
    m = evaluate_split(model, vocab, sids, split, max_len=6, batch_size=3, progress=False)
    ndcg = {r: 1 / math.log2(r + 1) for r in ranks}
    assert m["recall@5"] == pytest.approx(3 / 7, abs=1e-12)
    assert m["recall@10"] == pytest.approx(5 / 7, abs=1e-12)
    assert m["ndcg@5"] == pytest.approx((ndcg[1] + ndcg[2] + ndcg[5]) / 7, abs=1e-12)
    assert m["ndcg@10"] == pytest.approx((ndcg[1] + ndcg[2] + ndcg[5] + ndcg[6] + ndcg[10]) / 7, abs=1e-12)
    assert m["num_users"] == 7 and m["invalid_sid_rate"] == 0 and m["duplicate_rate"] == 0


def test_predictions_keep_user_order():
    vocab, sids, model = setup()
    split = synthetic(12)
    preds = predict_split(model, vocab, sids, split, MAX_LEN, top_k=5, beam_size=5, batch_size=5, progress=False)
    assert preds.user_ids.tolist() == list(range(100, 112))
    assert preds.targets.tolist() == [int(s[-1]) for s in split.sequences]
    for u in range(0, 12, 2):  # rule followers: the successor is ranked first
        assert preds.items[u, 0] == preds.targets[u]


def test_no_target_tokens_in_model_input():
    vocab, sids, inner = setup()
    model = RecordingLM(inner)
    rng = np.random.default_rng(1)
    # histories use items 0..39 only, targets are items 40..49: any target SID in an input is a leak
    seqs = [np.append(rng.integers(0, 40, size=rng.integers(1, 9)), 40 + u % 10) for u in range(30)]
    split = Split("testing", np.arange(30), seqs)
    predict_split(model, vocab, sids, split, MAX_LEN, batch_size=4, progress=False)
    table = vocab.item_tokens(sids)
    targets = {tuple(row) for row in table[40:].tolist()}
    for t in model.inputs:
        hist = t[:, :-H]
        blocks = hist.reshape(-1, H).tolist()  # histories are whole items, right-aligned to the slot
        assert not targets & {tuple(b) for b in blocks}
        assert ((t[:, -H:] == vocab.mask_id) | (t[:, -H:] < vocab.mask_id)).all()
    # the first (fully masked) call of each batch sees exactly the users' histories without targets
    first = [t[:, :-H] for t in model.inputs if (t[:, -H:] == vocab.mask_id).all()]
    seen = sorted(tuple(x for x in row if x != vocab.pad_id) for t in first for row in t.tolist())
    max_items = (MAX_LEN - H) // H
    want = sorted(tuple(table[s[:-1][-max_items:]].reshape(-1).tolist()) for s in seqs)
    assert seen == want


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    vocab, sids, model = setup()
    m = evaluate_split(model, vocab, sids, synthetic(), MAX_LEN, batch_size=6, progress=False)
    if rank == 0:
        with open(out_file, "w") as fh:
            json.dump(m, fh)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_give_the_one_process_metrics(tmp_path):
    vocab, sids, model = setup()
    single = evaluate_split(model, vocab, sids, synthetic(), MAX_LEN, batch_size=6, progress=False)
    out = tmp_path / "metrics.json"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    double = json.loads(out.read_text())
    single.pop("users_per_s"), double.pop("users_per_s")
    assert double == pytest.approx(single, abs=0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared dataset (madrec.data.prepare.write_prepared) and a random real checkpoint on it."""
    from madrec.data.prepare import write_prepared

    from toy_lm import write_checkpoint

    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, N, size=rng.integers(3, 9)).astype(np.int64) for _ in range(45)]
    ids = [f"B{i:03d}" for i in range(N)]
    write_prepared(root / "data", ids, {k: k for k in ids}, list(range(45)), seqs, {"num_items": N})
    write_checkpoint(root / "model.ckpt", random_sids(H, V, N, seed=4), ids, MAX_LEN, V)
    return root


def test_evaluate_cli_writes_metrics_report_and_predictions(prepared):
    from madrec.cli import main

    out = prepared / "out"
    code = main(
        [
            "evaluate",
            f"ckpt_path={prepared / 'model.ckpt'}",
            f"data_dir={prepared / 'data'}",
            "split=test",
            f"output_dir={out}",
            "predictions=true",
            "ks=[1,5,10]",
            "batch_size=8",
        ]
    )
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in (
        "test/recall@1",
        "test/ndcg@5",
        "test/recall@10",
        "test/most_popular/recall@10",
        "test/unconstrained/invalid_sid_rate",
        "test/steps_1/recall@10",
        "test/steps_3/ndcg@10",
    ):
        assert key in m
    assert m["test/invalid_sid_rate"] == 0 and m["test/duplicate_rate"] == 0
    assert m["test/num_users"] == 45
    assert m["test/steps_3/recall@10"] == m["test/recall@10"]  # H calls = the main run
    html = (out / "report.html").read_text()
    for heading in ("Recall@K and NDCG@K", "Quality vs number of decoding steps", "most popular", "<svg"):
        assert heading in html
    assert "<h2>Comparisons</h2>" not in html  # the note sits under the metrics table it concerns
    assert "Unconstrained decoding and the decoding-steps sweep use" in html
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "predictions.parquet").to_pylist()
    assert len(rows) == 45 * 10
    assert rows[0]["user"] == 0 and [r["rank"] for r in rows[:10]] == list(range(1, 11))
    assert all(r["item_id"] == f"B{r['item']:03d}" for r in rows)
    for u in range(45):  # every top-10 list: catalogue items, no repeats
        assert len({r["item"] for r in rows[u * 10 : (u + 1) * 10]}) == 10


def test_evaluate_cli_rejects_bad_arguments(prepared, capsys):
    from madrec.cli import main

    base = [f"ckpt_path={prepared / 'model.ckpt'}", f"data_dir={prepared / 'data'}", f"output_dir={prepared / 'x'}"]
    assert main(["evaluate", *base, "ks=[5,20]"]) == 2
    assert "widen the beam (beam_size >= 20)" in capsys.readouterr().err
    assert main(["evaluate", *base, "beams=3"]) == 2
    assert "unknown config key 'beams'. Valid keys:\n  beam_size: int = 10" in capsys.readouterr().err
    assert main(["evaluate", *base, "split=train"]) == 2
    assert main(["evaluate", f"data_dir={prepared / 'data'}"]) == 2
    assert "missing ckpt_path=..., output_dir=..." in capsys.readouterr().err
    assert not (prepared / "x").exists()


def test_evaluate_max_users_decodes_a_fixed_subset(prepared):
    """max_users: a seeded random subset of the split, the same users on every run."""
    from madrec.cli import main

    def users(name: str, *extra: str) -> list[int]:
        out = prepared / name
        base = [f"ckpt_path={prepared / 'model.ckpt'}", f"data_dir={prepared / 'data'}", f"output_dir={out}"]
        assert main(["evaluate", *base, "predictions=true", "sweep=false", "compare_unconstrained=false", *extra]) == 0
        decoded = sorted(set(pq.read_table(out / "predictions.parquet").column("user").to_pylist()))
        assert json.loads((out / "metrics.json").read_text())["test/num_users"] == len(decoded)
        return decoded

    every = users("all")
    some = users("some", "max_users=12")
    assert len(every) == 45 and len(some) == 12 and set(some) < set(every)
    assert users("again", "max_users=12") == some
    assert users("other", "max_users=12", "seed=1") != some
