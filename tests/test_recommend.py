"""Recommender: original ids in and out, unknown ids, batching, the CLI table."""

from __future__ import annotations

import pytest
import torch

from madrec.cli import main
from madrec.errors import MadrecError
from madrec.evaluate.recommend import Recommender

from toy_lm import random_sids, write_checkpoint

N = 40
IDS = [f"A{i * 7:04d}" for i in range(N)]  # original ids are not the indices


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "model.ckpt"
    sids = random_sids(3, 5, N, seed=9)
    model = write_checkpoint(path, sids, IDS, max_len=15, codebook_size=5)
    return path, model, sids


def brute_force_scores(model, sids, history, order):
    """Every catalogue item's exact constrained score, without madrec.evaluate.decode: walk each item's
    own reveal path (left to right, or most confident allowed position first, ties to the
    smaller position), summing log-probs renormalised over the digits some item agreeing with
    the revealed ones has. H = 3, V = 5 (the fixture's layout)."""
    H, V = 3, 5
    mask_id, digits = H * (V + 1), sids.t().tolist()
    hist = [p * (V + 1) + d for item in history for p, d in enumerate(digits[item])]
    scores = []
    for item in digits:
        known: dict[int, int] = {}
        score = 0.0
        while len(known) < H:
            slot = [p * (V + 1) + known[p] if p in known else mask_id for p in range(H)]
            logits = model(torch.tensor([hist + slot]))[0, len(hist) :]
            agree = [d for d in digits if all(d[q] == v for q, v in known.items())]
            lp = {}
            for p in range(H):
                if p in known:
                    continue
                allowed = torch.zeros(V, dtype=torch.bool)
                allowed[[d[p] for d in agree]] = True
                row = logits[p, p * (V + 1) : p * (V + 1) + V]
                lp[p] = torch.log_softmax(row.masked_fill(~allowed, float("-inf")), 0)
            if order == "left_to_right":
                p = min(lp)
            else:
                p = max(sorted(lp), key=lambda q: (lp[q].max().item(), -q))
            score += lp[p][item[p]].item()
            known[p] = item[p]
        scores.append(score)
    return scores


@pytest.fixture(scope="module")
def sharp_ckpt(tmp_path_factory):
    """The fixture's model with its attention and MLP weights scaled up, so that its outputs
    depend strongly on the history (a fresh model is almost context-free)."""
    from madrec.checkpoint import load_checkpoint

    path = tmp_path_factory.mktemp("rec") / "sharp.ckpt"
    sids = random_sids(3, 5, N, seed=9)
    write_checkpoint(path, sids, IDS, max_len=15, codebook_size=5)
    raw = torch.load(path, weights_only=True)
    for k, v in raw["state_dict"].items():
        if ".blocks." in "." + k and k.endswith("weight") and v.dim() == 2:
            raw["state_dict"][k] = v * 30
    torch.save(raw, path)
    return path, load_checkpoint(path).model, sids


@pytest.mark.parametrize("order", ["confidence", "left_to_right"])
def test_recommend_matches_an_exhaustive_brute_force(sharp_ckpt, order):
    """A beam as wide as the catalogue is exhaustive: the top 5 must be the 5 best items of an
    independent enumeration of every item's score, with the same scores."""
    path, model, sids = sharp_ckpt
    assert (
        max(
            abs(a - b)
            for a, b in zip(
                brute_force_scores(model, sids, [1, 10, 2], order), brute_force_scores(model, sids, [2, 10, 1], order)
            )
        )
        > 0.1
    )
    rec = Recommender.from_checkpoint(str(path), device="cpu", order=order)
    top = rec.recommend(["A0007", "A0070", "A0014"], k=5, beam_size=N)
    want = brute_force_scores(model, sids, [1, 10, 2], order)
    best = sorted(range(N), key=lambda i: -want[i])[:5]
    assert [i for i, _ in top] == [IDS[j] for j in best]
    assert [s for _, s in top] == pytest.approx([want[j] for j in best], abs=1e-4)
    # the default (narrower) beam returns distinct catalogue items, best first
    narrow = rec.recommend(["A0007", "A0070", "A0014"], k=5)
    assert len({i for i, _ in narrow}) == 5 and all(i in IDS for i, _ in narrow)
    scores = [s for _, s in narrow]
    assert scores == sorted(scores, reverse=True)
    assert all(s <= max(want) + 1e-4 for s in scores)


def test_recommend_many_equals_one_by_one(ckpt):
    rec = Recommender.from_checkpoint(str(ckpt[0]), device="cpu")
    histories = [["A0007"], ["A0014", "A0021", "A0028", "A0035", "A0042"], ["A0070", "A0000"]]
    many = rec.recommend_many(histories, k=3, batch_size=2)
    assert [[i for i, _ in r] for r in many] == [[i for i, _ in rec.recommend(h, k=3)] for h in histories]


def test_unknown_ids_are_an_error_or_skipped(ckpt):
    rec = Recommender.from_checkpoint(str(ckpt[0]), device="cpu")
    with pytest.raises(MadrecError, match=r"history 0: 2 item id\(s\) not in the model's catalogue.*'nope', '3'"):
        rec.recommend(["A0007", "nope", 3], k=3)
    assert rec.recommend(["A0007", "nope"], k=3, skip_unknown=True) == rec.recommend(["A0007"], k=3)
    with pytest.raises(MadrecError, match="widen the beam"):
        rec.recommend(["A0007"], k=5, beam_size=4)


def test_cli_prints_a_ranked_table(ckpt, capsys):
    assert main(["recommend", "--ckpt", str(ckpt[0]), "--history", "A0007,A0014", "-k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "item_id", "score"]
    assert [ln.split()[0] for ln in lines[1:]] == ["1", "2", "3", "4"]
    assert all(ln.split()[1] in IDS for ln in lines[1:])
    assert main(["recommend", "--ckpt", str(ckpt[0]), "--history", "A0007,zzz"]) == 2
    assert "zzz" in capsys.readouterr().err


def test_next_items_are_decoded_jointly(ckpt, capsys):
    rec = Recommender.from_checkpoint(str(ckpt[0]), device="cpu")
    pairs = rec.recommend(["A0007", "A0014"], k=6, next_items=2)
    assert len(pairs) == 6 and len({p for p, _ in pairs}) == 6
    assert all(len(p) == 2 and set(p) <= set(IDS) for p, _ in pairs)
    assert main(["recommend", "--ckpt", str(ckpt[0]), "--history", "A0007", "-k", "2", "--next-items", "2"]) == 0
    assert " -> " in capsys.readouterr().out


def test_a_history_longer_than_the_window_is_said_once(ckpt, caplog):
    rec = Recommender.from_checkpoint(str(ckpt[0]), device="cpu")
    window = rec.window()
    long = IDS[: window + 3]
    with caplog.at_level("WARNING", logger="madrec.evaluate.recommend"):
        assert rec.recommend(long, k=3) == rec.recommend(long[-window:], k=3)
        rec.recommend(long, k=3)
    said = [r.getMessage() for r in caplog.records if "window" in r.getMessage()]
    assert len(said) == 1 and f"window of {window} items" in said[0]


def test_next_items_beyond_what_the_model_decodes_is_named(ckpt):
    rec = Recommender.from_checkpoint(str(ckpt[0]), device="cpu")
    with pytest.raises(MadrecError, match=f"next_items={rec.max_next_items + 1}: this checkpoint decodes at most"):
        rec.recommend(["A0007"], k=3, next_items=rec.max_next_items + 1)


def test_an_empty_history_is_named_not_decoded(ckpt, cli_stderr):
    # a catalogue-head model raised a reshape RuntimeError (a traceback) on these
    rec = Recommender.from_checkpoint(str(ckpt[0]), device="cpu")
    with pytest.raises(MadrecError, match="history 1 is empty: "):
        rec.recommend_many([["A0007"], []], k=3)
    with pytest.raises(MadrecError, match=r"history 0 is empty after skipping its 2 unknown id\(s\)"):
        rec.recommend(["nope", "99999"], k=3, skip_unknown=True)
    for history, extra in (("", []), (" , ", []), ("99999", ["--skip-unknown"])):
        assert main(["recommend", "--ckpt", str(ckpt[0]), "--history", history, *extra]) == 2
        err = cli_stderr()
        assert len(err) == 1 and err[0].startswith("madrec recommend: error: ") and "empty" in err[0], err


@pytest.mark.parametrize(
    "device, said",
    [("tpu", "not a device madrec runs on"), ("cuda:x", "not a device"), ("cuda:0", "CUDA is not available")],
)
def test_a_bad_device_is_named_before_the_checkpoint_is_read(tmp_path, device, said, capsys):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    missing = tmp_path / "absent.ckpt"  # never opened: the device is checked first
    with pytest.raises(MadrecError, match=f"device '{device}': {said}"):
        Recommender.from_checkpoint(str(missing), device=device)
    verbs = [
        ["recommend", "--ckpt", str(missing), "--history", "A0007", "--device", device],
        [
            "evaluate",
            f"ckpt_path={missing}",
            f"data_dir={tmp_path}",
            f"output_dir={tmp_path / 'ev'}",
            f"device={device}",
        ],
        ["serve", "--ckpt", str(missing), "--device", device, "--host", "127.0.0.1", "--port", "1"],
    ]
    for argv in verbs:  # one check (madrec.dist.resolve_device) for every verb that loads a checkpoint
        assert main(argv) == 2, argv
        assert f"madrec {argv[0]}: error: device '{device}': {said}" in capsys.readouterr().err
