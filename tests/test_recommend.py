"""Recommender: original ids in and out, unknown ids, batching, the CLI table."""
from __future__ import annotations

import pytest
from toy_lm import random_sids, write_checkpoint

from madrec.cli import main
from madrec.decode import beam_search, build_histories
from madrec.errors import MadrecError
from madrec.recommend import Recommender
from madrec.tokens import SIDVocab

N = 40
IDS = [f"A{i * 7:04d}" for i in range(N)]  # original ids are not the indices


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "model.ckpt"
    sids = random_sids(3, 5, N, seed=9)
    model = write_checkpoint(path, sids, IDS, max_len=15, codebook_size=5)
    return path, model, sids


def test_recommend_maps_ids_and_matches_the_decoder(ckpt):
    path, model, sids = ckpt
    rec = Recommender.from_checkpoint(str(path), device="cpu")
    top = rec.recommend(["A0007", "A0070", "A0014"], k=5)
    assert len(top) == 5 and len({i for i, _ in top}) == 5
    assert all(i in IDS for i, _ in top)
    scores = [s for _, s in top]
    assert scores == sorted(scores, reverse=True)
    vocab = SIDVocab(3, 5)
    hist = build_histories(vocab, sids, [[1, 10, 2]], max_len=15, drop_last=False)
    ref = beam_search(model, vocab, sids, hist, beam_size=10, top_k=5)
    assert [i for i, _ in top] == [IDS[j] for j in ref.items[0].tolist()]
    assert scores == pytest.approx(ref.scores[0].tolist(), abs=1e-5)


def test_recommend_many_equals_one_by_one(ckpt):
    rec = Recommender.from_checkpoint(str(ckpt[0]), device="cpu")
    histories = [["A0007"], ["A0014", "A0021", "A0028", "A0035", "A0042"], ["A0070", "A0000"]]
    many = rec.recommend_many(histories, k=3, batch_size=2)
    assert [[i for i, _ in r] for r in many] == [[i for i, _ in rec.recommend(h, k=3)] for h in histories]


def test_unknown_ids_are_an_error_or_skipped(ckpt):
    rec = Recommender.from_checkpoint(str(ckpt[0]), device="cpu")
    with pytest.raises(MadrecError, match=r"history 0: 2 item id\(s\) not in the model's catalogue.*nope, 3"):
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
