"""Collaborative item vectors (madrec.sids.cooccur) and SIDs built with them (build-sids)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from madrec.data.prepare import write_prepared
from madrec.errors import MadrecError
from madrec.sids.build import build_sids
from madrec.sids.cooccur import blend, cooccurrence_counts, cooccurrence_embeddings


def two_communities(num_items: int = 40, num_users: int = 300, seed: int = 0) -> list[np.ndarray]:
    """Users who consume items of one half of the catalogue only (even users the first half)."""
    rng = np.random.default_rng(seed)
    half = num_items // 2
    seqs = []
    for u in range(num_users):
        pool = np.arange(half) if u % 2 == 0 else np.arange(half, num_items)
        seqs.append(rng.choice(pool, size=int(rng.integers(6, 12)), replace=False).astype(np.int64))
    return seqs


def test_counts_are_symmetric_and_respect_the_window():
    counts = cooccurrence_counts([np.array([0, 1, 2, 3]), np.array([3, 2])], 5, window=2).to_dense()
    assert torch.equal(counts, counts.t())
    assert counts[0, 1] == 1 and counts[0, 2] == 1 and counts[0, 3] == 0  # 3 positions apart: outside
    assert counts[2, 3] == 2 and counts[4].sum() == 0


def test_items_consumed_together_get_close_vectors():
    vectors = cooccurrence_embeddings(two_communities(), 40, dim=8)
    assert vectors.shape == (40, 8)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(40))
    cos = vectors @ vectors.t()
    same = torch.zeros(40, 40, dtype=torch.bool)
    same[:20, :20] = same[20:, 20:] = True
    assert cos[same].mean() > 0.5 and cos[~same].abs().mean() < 0.1
    # weight is the collaborative share of squared distances
    text = torch.randn(40, 16)
    mixed = blend(text, vectors, 0.25)
    torch.testing.assert_close(mixed[:, 16:].pow(2).sum(1), torch.full((40,), 0.25))
    torch.testing.assert_close(mixed[:, :16].pow(2).sum(1), torch.full((40,), 0.75))


def prepared(root, sequences, num_items: int = 40):
    item_ids = [f"i{k}" for k in range(num_items)]
    texts = {k: "the same text for every item" for k in item_ids}  # text alone cannot tell items apart
    write_prepared(root, item_ids, texts, list(range(len(sequences))), sequences, {"num_items": num_items})
    return root


@pytest.mark.slow
def test_build_sids_first_digit_follows_the_communities_from_training_sequences_only(tmp_path):
    sequences = two_communities()
    # the same training sequences, validation and test targets from the other community
    swapped = [np.concatenate([s[:-2], (s[-2:] + 20) % 40]) for s in sequences]
    a, b = prepared(tmp_path / "a", sequences), prepared(tmp_path / "b", swapped)
    opts = dict(levels=2, codebook_size=8, device="cpu", collaborative_weight=0.5)
    report = build_sids(a, tmp_path / "sa", **opts)
    sids = torch.load(tmp_path / "sa" / "sids.pt", weights_only=True)
    first = sids[0]  # every first-digit code holds items of one community only
    assert not set(first[:20].tolist()) & set(first[20:].tolist())
    assert report["collaborative_weight"] == 0.5 and report["collaborative"]["used"] is True
    assert json.loads((tmp_path / "sa" / "sid_report.json").read_text())["collaborative"]["window"] == 3
    build_sids(b, tmp_path / "sb", **opts)
    assert torch.equal(torch.load(tmp_path / "sb" / "sids.pt", weights_only=True), sids)
    with pytest.raises(MadrecError, match="--collaborative-weight 1.5"):
        build_sids(a, tmp_path / "bad", **{**opts, "collaborative_weight": 1.5})
    assert not (tmp_path / "bad").exists()


def test_an_item_without_cooccurrences_borrows_its_text_neighbours_vector():
    from madrec.sids.cooccur import borrow_missing

    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    collab = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    filled = borrow_missing(collab, torch.nn.functional.normalize(text, dim=1))
    assert torch.equal(filled[2], collab[0]) and torch.equal(filled[3], collab[1])
    assert torch.equal(filled[:2], collab[:2]) and collab[2].abs().sum() == 0  # the input is left alone
    mixed = blend(text, collab, 0.5)
    assert torch.equal(mixed[2, 2:], mixed[0, 2:])


def test_digit_tokens_start_at_their_codes_cooccurrence_vectors():
    """model.embedding_init=cooccurrence: first-digit codes whose items are consumed together
    start with close token embeddings, codes of the other community far; unused codes, MASK
    and PAD keep their random init."""
    from madrec.models.tokens import SIDVocab
    from madrec.train.run import init_from_cooccurrence

    vocab = SIDVocab(sid_len=2, codebook_size=8)
    items = torch.arange(40)
    sids = torch.stack([items // 10, items % 10 % 8])  # first digit: 0, 1 (community A), 2, 3 (B)
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.embed = torch.nn.Embedding(vocab.size, 16)
    model.item = None  # no item-id embeddings (model.item_embedding off)
    weight = model.embed.weight.data
    before = weight.clone()
    with torch.no_grad():
        init_from_cooccurrence(model, vocab, sids, two_communities())
    first = torch.nn.functional.normalize(weight[:4], dim=1)
    cos = first @ first.t()
    assert cos[0, 1] > 0.6 and cos[2, 3] > 0.6 and cos[:2, 2:].abs().max() < 0.3
    assert torch.equal(weight[4:8], before[4:8])  # first-digit codes 4..7 hold no item
    assert torch.equal(weight[vocab.mask_id :], before[vocab.mask_id :])
    assert not torch.equal(weight[vocab.block : vocab.block + 8], before[vocab.block : vocab.block + 8])


def test_item_id_embeddings_start_at_their_items_cooccurrence_vectors():
    """With model.item_embedding, each item's id embedding starts at its own co-occurrence
    vector: items of one community close, of the other far; index 0 (no item) untouched."""
    from madrec.models.blocks import ModelConfig
    from madrec.models.maskgr import BlockDiffusionLM
    from madrec.models.tokens import SIDVocab
    from madrec.train.run import init_from_cooccurrence

    vocab = SIDVocab(sid_len=2, codebook_size=8)
    items = torch.arange(40)
    sids = torch.stack([items // 10, items % 10 % 8])
    cfg = ModelConfig(n_layer=1, n_embd=16, n_head=2, d_ff=32, slot_embedding=True, item_embedding=True)
    torch.manual_seed(0)
    model = BlockDiffusionLM(cfg, vocab.size, vocab.pad_id, vocab.sid_len, vocab.item_tokens(sids))
    before = model.item.embed.weight.detach().clone()
    with torch.no_grad():
        init_from_cooccurrence(model, vocab, sids, two_communities())
    ids = torch.nn.functional.normalize(model.item.embed.weight[1:].detach(), dim=1)
    cos = ids @ ids.t()
    a, b = slice(0, 20), slice(20, 40)  # the two communities of two_communities()
    assert cos[a, a].mean() > 0.4 and cos[b, b].mean() > 0.4 and cos[a, b].abs().mean() < 0.2
    assert torch.equal(model.item.embed.weight[0], before[0])


def test_counting_in_row_blocks_gives_the_pair_counts_of_every_sequence():
    """Counted a few rows at a time (block = 7 pair occurrences) or at once, the counts are the
    brute-force ones: sequences of 1..12 items over 30 items, repeats and self-pairs included."""
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, 30, size=rng.integers(1, 13)) for _ in range(60)]
    want = np.zeros((30, 30))
    for seq in sequences:
        for i in range(len(seq)):
            for j in range(i + 1, min(i + 3, len(seq) - 1) + 1):
                want[seq[i], seq[j]] += 1
                want[seq[j], seq[i]] += 1
    for block in (7, 10**9):
        got = cooccurrence_counts(sequences, 30, window=3, block=block)
        assert got.layout == torch.sparse_csr
        np.testing.assert_array_equal(got.to_dense().numpy(), want)
