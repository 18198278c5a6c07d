"""Beam decoding: hand-checked beams, constraint index, validity, batching, parallel decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from madrec.errors import MadrecError
from madrec.evaluate.decode import (
    SIDIndex,
    _first_occurrence,
    beam_search,
    build_histories,
    history_window,
    max_next_items,
)
from madrec.models.tokens import SIDVocab

from toy_lm import FixedLM, MixLM, brute_force_left_to_right, random_sids

# Hand-checked catalogue, H = 2, V = 3: item index -> SID (d0, d1). (1, 0) is not an item.
HAND_SIDS = torch.tensor([[0, 0], [2, 0], [0, 1], [1, 1], [1, 2]]).t()
# position 0: p = (.5, .3, .2); position 1: p = (.9, .05, .05)
HAND_LOGPROBS = torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]]).log()


def hand_model():
    vocab = SIDVocab(2, 3)
    return vocab, FixedLM(vocab, HAND_LOGPROBS), torch.full((1, 4), vocab.pad_id)


def test_confidence_order_hand_checked():
    vocab, model, hist = hand_model()
    res = beam_search(model, vocab, HAND_SIDS, hist, beam_size=2, top_k=2, order="confidence")
    # step 1 reveals position 1 (max prob .9 > .5): beams d1=0 (.9) and d1=1 (.05, tie with d1=2 -> smaller)
    # step 2, beam d1=0: items (0,0), (2,0) allowed -> .9 * .5/.7 and .9 * .2/.7
    assert res.items.tolist() == [[0, 1]]
    assert res.scores.dtype == torch.float32
    assert res.scores[0].tolist() == pytest.approx([math.log(0.9 * 0.5 / 0.7), math.log(0.9 * 0.2 / 0.7)], abs=1e-5)
    assert len(model.calls) == 2


def test_left_to_right_hand_checked_and_unconstrained_reports_invalid():
    vocab, model, hist = hand_model()
    res = beam_search(model, vocab, HAND_SIDS, hist, beam_size=2, top_k=2, order="left_to_right")
    # beams d0=0 (.5), d0=1 (.3); then d0=0 allows d1 in {0,1}: .5 * .9/.95; d0=1 allows {1,2}: .3 * .5 each
    assert res.items.tolist() == [[0, 3]]  # (1,1) wins the tie with (1,2): smaller digit
    assert res.scores[0].tolist() == pytest.approx([math.log(0.5 * 0.9 / 0.95), math.log(0.15)], abs=1e-5)
    free = beam_search(model, vocab, HAND_SIDS, hist, beam_size=2, top_k=2, order="left_to_right", constrained=False)
    # unconstrained: (0,0) .45 and (1,0) .27, which is no catalogue item
    assert free.items.tolist() == [[0, -1]]
    assert free.scores[0].tolist() == pytest.approx([math.log(0.45), math.log(0.27)], abs=1e-5)


def test_top_k_above_beam_width_says_widen():
    vocab, model, hist = hand_model()
    with pytest.raises(MadrecError, match=r"widen the beam \(beam_size >= 4\)"):
        beam_search(model, vocab, HAND_SIDS, hist, beam_size=2, top_k=4)
    with pytest.raises(MadrecError, match="unknown unmasking order"):
        beam_search(model, vocab, HAND_SIDS, hist, beam_size=2, top_k=2, order="backwards")


def test_sid_index_agrees_with_brute_force_for_every_subset():
    sids = random_sids(3, 4, 30, seed=1)
    index, digits = SIDIndex(sids, 4), sids.t()
    for revealed in range(8):
        for p in [q for q in range(3) if not revealed >> q & 1]:
            reps, S, pos = torch.arange(30), torch.full((30,), revealed), torch.full((30,), p)
            allowed = index.allowed(S, reps, pos)
            same = torch.ones(30, 30, dtype=torch.bool)
            for q in range(3):
                if revealed >> q & 1:
                    same &= digits[:, None, q] == digits[None, :, q]
            for v in range(4):
                ok = same & (digits[None, :, p] == v)  # (rep, item)
                want = torch.where(ok.any(1), torch.where(ok, torch.arange(30), 99).amin(1), -1)
                assert allowed[:, v].tolist() == ok.any(1).tolist(), (revealed, p, v)
                assert index.child(S, reps, pos, torch.full((30,), v)).tolist() == want.tolist(), (revealed, p, v)
    assert index.lookup(digits).tolist() == list(range(30))
    missing = [t for t in np.ndindex(4, 4, 4) if not (digits == torch.tensor(t)).all(1).any()][:3]
    assert index.lookup(torch.tensor(missing)).tolist() == [-1, -1, -1]
    assert index.lookup(torch.tensor([[0, 0, 4], [-1, 0, 0]])).tolist() == [-1, -1]


def test_wide_beam_is_exhaustive_and_exact():
    vocab = SIDVocab(2, 4)
    sids = random_sids(2, 4, 11, seed=3)
    model = MixLM(vocab, seed=3).eval()
    hist = torch.tensor([[vocab.pad_id] * 2 + vocab.item_tokens(sids)[[4, 7]].reshape(-1).tolist()])
    res = beam_search(model, vocab, sids, hist, beam_size=11, top_k=11, order="left_to_right")
    want = brute_force_left_to_right(model, vocab, sids, hist)
    assert sorted(res.items[0].tolist()) == list(range(11))
    assert res.scores[0].tolist() == pytest.approx(want[res.items[0]].tolist(), abs=1e-5)
    assert res.items[0].tolist() == torch.sort(want, descending=True, stable=True).indices.tolist()


@pytest.mark.parametrize("order", ["confidence", "left_to_right", "random"])
@pytest.mark.parametrize("reveal", [1, 2, 3])
def test_constrained_beams_are_distinct_catalogue_items(order, reveal):
    vocab = SIDVocab(3, 6)
    sids = random_sids(3, 6, 40, seed=reveal)
    model = MixLM(vocab, seed=reveal).eval()
    seqs = [np.random.default_rng(i).integers(0, 40, size=i % 5 + 1) for i in range(12)]
    hist = build_histories(vocab, sids, seqs, max_len=15, drop_last=False)
    gen = torch.Generator().manual_seed(0)
    res = beam_search(
        model, vocab, sids, hist, beam_size=10, top_k=10, order=order, reveal_per_step=reveal, generator=gen
    )
    assert (res.items >= 0).all()
    assert all(len(set(row)) == 10 for row in res.items.tolist())
    assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()
    free = beam_search(
        model,
        vocab,
        sids,
        hist,
        beam_size=10,
        top_k=10,
        order=order,
        reveal_per_step=reveal,
        constrained=False,
        generator=torch.Generator().manual_seed(0),
    )
    valid = free.items[free.items >= 0]
    assert (free.items < 0).any(), "a random model should propose SIDs outside a sparse catalogue"
    assert len(valid) > 0


@pytest.mark.parametrize("reveal,calls", [(1, 3), (2, 2), (3, 1), (5, 1)])
def test_one_batched_forward_per_step(reveal, calls):
    vocab = SIDVocab(3, 4)
    sids = random_sids(3, 4, 50, seed=0)
    model = FixedLM(vocab, torch.randn(3, 4, generator=torch.Generator().manual_seed(0)))
    hist = torch.full((7, 6), vocab.pad_id)
    beam_search(model, vocab, sids, hist, beam_size=5, top_k=5, reveal_per_step=reveal)
    # every call runs all beams of all users at once: 7 users x 1 beam, then 7 x min(5, 4 * 1)...
    assert len(model.calls) == calls
    assert model.calls[0] == (7, 9)
    assert all(rows % 7 == 0 and L == 9 for rows, L in model.calls)


def test_next_items_decodes_a_joint_tuple():
    vocab = SIDVocab(2, 4)
    sids = random_sids(2, 4, 9, seed=5)
    model = MixLM(vocab, seed=5).eval()
    hist = build_histories(vocab, sids, [np.array([1, 2, 3]), np.array([4])], max_len=10, drop_last=False, next_items=2)
    res = beam_search(model, vocab, sids, hist, beam_size=6, top_k=6, next_items=2, reveal_per_step=2)
    assert res.items.shape == (2, 6, 2)
    assert (res.items >= 0).all()
    assert all(len(set(map(tuple, row))) == 6 for row in res.items.tolist())


def test_results_do_not_depend_on_batch_composition():
    vocab = SIDVocab(3, 5)
    sids = random_sids(3, 5, 60, seed=2)
    model = MixLM(vocab, seed=2).eval()
    seqs = [np.random.default_rng(i).integers(0, 60, size=4) for i in range(9)]
    hist = build_histories(vocab, sids, seqs, max_len=30)
    whole = beam_search(model, vocab, sids, hist)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    shuffled = beam_search(model, vocab, sids, hist[perm])
    assert torch.equal(shuffled.items, whole.items[perm])
    one = beam_search(model, vocab, sids, hist[3:4])
    assert torch.equal(one.items, whole.items[3:4])
    assert torch.allclose(one.scores, whole.scores[3:4])


def test_ties_are_broken_deterministically():
    vocab = SIDVocab(2, 3)
    every = torch.tensor([[a, b] for a in range(3) for b in range(3)]).t()
    model = FixedLM(vocab, torch.zeros(2, 3))  # every SID equally likely
    hist = torch.full((2, 2), vocab.pad_id)
    res = beam_search(model, vocab, every, hist, beam_size=4, top_k=4)
    # all scores equal: earlier beam then smaller digit wins, position 0 revealed first
    assert res.items.tolist() == [[0, 1, 2, 3]] * 2


def test_first_occurrence_keeps_the_best_copy():
    keys = torch.tensor([[[1, -1], [2, 3], [1, -1], [2, 3], [0, 0]]])
    assert _first_occurrence(keys).tolist() == [[True, True, False, False, True]]


def test_build_histories_left_pads_whole_recent_items_and_drops_target():
    vocab = SIDVocab(2, 3)
    sids = torch.tensor([[0, 1, 2, 0], [0, 1, 2, 2]])  # item i -> tokens (d0, 4 + d1)
    hist = build_histories(vocab, sids, [np.array([0, 1, 2, 3]), np.array([2, 1])], max_len=6)
    pad = vocab.pad_id
    # room for (6 - 2) / 2 = 2 items; the target (last) never enters
    assert hist.tolist() == [[1, 5, 2, 6], [pad, pad, 2, 6]]
    keep = build_histories(vocab, sids, [np.array([3])], max_len=6, drop_last=False)
    assert keep.tolist() == [[0, 6]]
    with pytest.raises(MadrecError, match="max_len=3 leaves no room"):
        build_histories(vocab, sids, [np.array([1, 2])], max_len=3)
    with pytest.raises(MadrecError, match="sequence 0 is empty"):
        build_histories(vocab, sids, [np.array([], dtype=np.int64)], max_len=6)


def test_catalogue_head_ranks_every_item_by_its_joint_probability_in_one_call():
    """A catalogue-head model decodes by the exact top-K of its distribution over the masked
    slot's item (one model call), and that distribution's digit marginals are the logits the
    same model gives the slot's positions."""
    from madrec.models.blocks import ModelConfig
    from madrec.models.maskgr import BlockDiffusionLM

    torch.manual_seed(0)
    vocab, n = SIDVocab(sid_len=3, codebook_size=4), 30
    sids = random_sids(3, 4, n, seed=1)
    cfg = ModelConfig(n_layer=1, n_embd=16, n_head=2, d_ff=32, dropout=0.0, slot_embedding=True)
    cfg.pool_history = cfg.item_embedding = cfg.catalogue_head = True
    model = BlockDiffusionLM(cfg, vocab.size, vocab.pad_id, 3, vocab.item_tokens(sids), vocab.mask_id).eval()
    histories = build_histories(vocab, sids, [np.array([3, 7, 1]), np.array([5, 2]), np.array([9])], max_len=12)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        res = beam_search(model, vocab, sids, histories, beam_size=10, top_k=10)
        rows = torch.cat([histories, torch.full((3, 3), vocab.mask_id)], 1)
        log_q = model.item_log_probs(rows)
        marginals = model(rows)[:, -3:].exp()  # (B, H, vocab)
    assert len(calls) == 1 and model.ranks_catalogue
    best = log_q.topk(10, dim=1)
    assert torch.equal(res.items, best.indices) and torch.allclose(res.scores, best.values)
    assert torch.allclose(log_q.exp().sum(1), torch.ones(3), atol=1e-5)
    item_tokens = vocab.item_tokens(sids)
    for k in range(3):
        want = torch.zeros(3, vocab.size).index_add(1, item_tokens[:, k], log_q.exp())
        torch.testing.assert_close(marginals[:, k], want, atol=1e-5, rtol=1e-4)


def test_how_many_next_items_a_model_decodes_at_once():
    vocab, model, hist = hand_model()
    assert history_window(max_len=12, sid_len=2, next_items=1) == 5
    assert max_next_items(model, max_len=12, sid_len=2) == 5  # any number, bounded by max_len
    model.max_next_items = 2
    assert max_next_items(model, max_len=12, sid_len=2) == 2
    head = torch.nn.Module()
    head.causal, head.max_next_items, head.ranks_catalogue = False, None, True  # a catalogue head scores one slot
    assert max_next_items(head, max_len=12, sid_len=2) == 1
    with pytest.raises(MadrecError, match="next_items=2: this checkpoint ranks the catalogue"):
        beam_search(head, vocab, HAND_SIDS, hist, next_items=2)
