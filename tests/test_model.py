"""The networks (madrec.models.blocks, maskgr, tiger; docs/method.md)."""

from __future__ import annotations

import math

import pytest
import torch

from madrec.models.blocks import ModelConfig
from madrec.models.blocks import tokens_from_end as model_tokens_from_end
from madrec.models.maskgr import BlockDiffusionLM, CatalogueHead, MaskedDiffusionLM

VOCAB, PAD = 30, 29
SMALL = ModelConfig(n_layer=2, n_embd=32, n_head=4, d_ff=64, dropout=0.0)


def small_model(seed: int = 0, cfg: ModelConfig = SMALL) -> MaskedDiffusionLM:
    torch.manual_seed(seed)
    return MaskedDiffusionLM(cfg, VOCAB, PAD).eval()


def test_reference_size_and_tied_output():
    model = MaskedDiffusionLM(ModelConfig(), vocab_size=4 * 257 + 2, pad_id=4 * 257 + 1)
    assert 6.5e6 < model.num_parameters() < 7.5e6  # "≈7M parameters"
    # the only (vocab, width) matrix is the embedding: the output layer is tied to it
    shaped = [n for n, p in model.named_parameters() if p.shape == (4 * 257 + 2, 128)]
    assert shaped == ["embed.weight"]


def test_output_is_scaled_hidden_times_embedding():
    model = small_model()
    tokens = torch.randint(0, 28, (2, 7))
    hidden = {}
    model.ln_f.register_forward_hook(lambda m, i, o: hidden.setdefault("h", o))
    logits = model(tokens)
    expected = hidden["h"] / math.sqrt(SMALL.n_embd) @ model.embed.weight.t()
    torch.testing.assert_close(logits, expected)
    assert logits.shape == (2, 7, VOCAB)


def test_padding_side_does_not_matter():
    """Rotary positions + masked PAD keys: left, right or no padding give the same logits."""
    model = small_model()
    seq = torch.randint(0, 28, (1, 9))
    pad = torch.full((1, 4), PAD)
    plain = model(seq)[0]
    left = model(torch.cat([pad, seq], 1))[0, 4:]
    right = model(torch.cat([seq, pad], 1))[0, :9]
    torch.testing.assert_close(left, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right, plain, atol=1e-5, rtol=1e-5)


def test_attention_is_bidirectional_and_pad_keys_are_ignored():
    model = small_model()
    seq = torch.randint(0, 28, (1, 8))
    changed = seq.clone()
    changed[0, -1] = (seq[0, -1] + 1) % 28
    # the first position sees the last one (non-causal)
    assert not torch.allclose(model(seq)[0, 0], model(changed)[0, 0])
    # a batch mixing lengths: each row equals the row run alone
    short = torch.cat([torch.full((1, 3), PAD), seq[:, :5]], 1)
    batch = model(torch.cat([short, seq]))
    torch.testing.assert_close(batch[0, 3:], model(seq[:, :5])[0], atol=1e-5, rtol=1e-5)


def test_select_gives_the_selected_rows_and_all_pad_rows_stay_finite():
    model = small_model()
    tokens = torch.randint(0, 28, (3, 6))
    tokens[2] = PAD
    full = model(tokens)
    assert torch.isfinite(full).all()
    select = torch.rand(3, 6) < 0.5
    torch.testing.assert_close(model(tokens, select=select), full[select])


def test_slot_embedding_tells_the_masks_of_the_next_item_apart():
    cfg = ModelConfig(n_layer=1, n_embd=32, n_head=4, d_ff=64, dropout=0.0, slot_embedding=True)
    torch.manual_seed(0)
    model = MaskedDiffusionLM(cfg, VOCAB, PAD, sid_len=3).eval()
    history = torch.randint(0, 27, (1, 6))
    masks = torch.full((1, 3), 27)
    out = model(torch.cat([history, masks], 1))[0]
    # identical MASK tokens at the three slots of the next item get different outputs
    assert not torch.allclose(out[-1], out[-2]) and not torch.allclose(out[-2], out[-3])
    # slots count back from the sequence end, so padding on either side changes nothing
    pad = torch.full((1, 5), PAD)
    torch.testing.assert_close(model(torch.cat([pad, history, masks], 1))[0, 5:], out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(torch.cat([history, masks, pad], 1))[0, :9], out, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="sid_len"):
        MaskedDiffusionLM(cfg, VOCAB, PAD)


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = MaskedDiffusionLM(ModelConfig(n_layer=1, n_embd=32, n_head=4, d_ff=64, dropout=0.5), VOCAB, PAD)
    tokens = torch.randint(0, 28, (2, 5))
    model.train()
    assert not torch.equal(model(tokens), model(tokens))
    model.eval()
    assert torch.equal(model(tokens), model(tokens))


def test_heads_must_split_width_evenly():
    with pytest.raises(ValueError, match="n_head"):
        MaskedDiffusionLM(ModelConfig(n_embd=30, n_head=4), VOCAB, PAD)
    with pytest.raises(ValueError, match="even"):
        MaskedDiffusionLM(ModelConfig(n_embd=24, n_head=8), VOCAB, PAD)  # head size 3


def test_item_embedding_ids_only_complete_catalogue_items():
    from madrec.models.tiger import CausalLM
    from madrec.models.tokens import SIDVocab

    vocab = SIDVocab(sid_len=3, codebook_size=4)
    sids = torch.tensor([[0, 1, 2, 3, 0], [1, 1, 0, 2, 3], [0, 0, 1, 2, 3]])  # (H, N): 5 items
    items = vocab.item_tokens(sids)
    cfg = ModelConfig(n_layer=1, n_embd=32, n_head=4, d_ff=64, dropout=0.0, item_embedding=True)
    model = MaskedDiffusionLM(cfg, vocab.size, vocab.pad_id, vocab.sid_len, items).eval()
    M, P = vocab.mask_id, vocab.pad_id
    unknown = items[0].clone()
    unknown[2] += 3  # digits (0, 1, 3): no catalogue item
    slot = items[2].clone()
    slot[1] = M  # the next item, one digit still masked
    row = torch.cat([items[3], items[1], unknown, slot])
    want = torch.tensor([4] * 3 + [2] * 3 + [0] * 3 + [0] * 3)
    assert torch.equal(model.item_ids(row[None])[0], want)
    # padding on either side changes nothing; PAD tokens get no item
    padded = torch.cat([torch.full((2,), P), row, torch.full((1,), P)])[None]
    assert torch.equal(
        model.item_ids(padded)[0], torch.cat([torch.zeros(2, dtype=torch.long), want, torch.zeros(1, dtype=torch.long)])
    )
    # a complete last item gets its id; the causal model puts ids at each item's last token only
    full = torch.cat([items[3], items[2]])[None]
    assert torch.equal(model.item_ids(full)[0], torch.tensor([4, 4, 4, 3, 3, 3]))
    causal = CausalLM(cfg, vocab.size, vocab.pad_id, vocab.sid_len, items).eval()
    assert torch.equal(causal.item_ids(full)[0], torch.tensor([0, 0, 4, 0, 0, 3]))
    # the ids reach the network: a different history item id changes the slot's logits
    row = torch.cat([items[3], slot])[None]
    before = model(row)[0, -1].clone()
    model.item.embed.weight.data[4] = torch.randn(32)
    assert not torch.allclose(model(row)[0, -1], before)
    with pytest.raises(ValueError, match="SID table"):
        MaskedDiffusionLM(cfg, vocab.size, vocab.pad_id, vocab.sid_len)


def test_pooled_history_reads_each_history_item_as_one_token():
    """pool_history: the next item's logits do not depend on padding, change with the order and
    the digits of history items, and only the last item may be asked for."""
    torch.manual_seed(0)
    H, pad, mask = 3, 31, 30
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, d_ff=64, dropout=0.0, slot_embedding=True, pool_history=True)
    model = BlockDiffusionLM(cfg, 32, pad, H).eval()
    for p in model.parameters():  # away from the near-uniform attention of a fresh model
        p.data.normal_(0, 0.5)
    a, b, c = torch.tensor([0, 10, 20]), torch.tensor([1, 11, 21]), torch.tensor([2, 12, 22])
    slot = torch.tensor([mask, 13, mask])
    row = torch.cat([a, b, c, slot])[None]
    with torch.no_grad():
        out = model(row)
        assert out.shape == (1, 12, 32) and out[0, :9].abs().sum() == 0  # history positions carry nothing
        left = model(torch.cat([torch.full((1, 5), pad), row], 1))[0, -H:]
        right = model(torch.cat([row, torch.full((1, 4), pad)], 1))[0, 9:12]
        torch.testing.assert_close(left, out[0, -H:], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(right, out[0, -H:], atol=1e-5, rtol=1e-4)
        short = torch.cat([torch.full((6,), pad), c, slot])  # one history item, left-padded
        history, real = model._pooled_history(torch.stack([row[0], short]))
        means = torch.stack([model.embed(item).mean(0) for item in (a, b, c)])
        torch.testing.assert_close(history[0], means)  # oldest first, one mean per item
        torch.testing.assert_close(history[1, -1], means[2])
        assert history[1, :2].abs().sum() == 0  # PAD tokens add nothing
        assert real.tolist() == [[True, True, True], [False, False, True]]
        cut, _ = model._pooled_history(torch.cat([b[1:], c, slot])[None])  # b cut by the row's start
        torch.testing.assert_close(cut[0, 0], model.embed(b[1:]).sum(0) / H)
        swapped = model(torch.cat([b, a, c, slot])[None])[0, -H:]
        other_digit = model(torch.cat([a, torch.tensor([1, 11, 22]), c, slot])[None])[0, -H:]
        assert (swapped - out[0, -H:]).abs().max() > 1e-3  # order reaches the slot (rotary)
        assert (other_digit - out[0, -H:]).abs().max() > 1e-3  # every digit reaches the slot
        select = torch.zeros_like(row, dtype=torch.bool)
        select[0, [9, 11]] = True
        torch.testing.assert_close(model(row, select=select), out[0, [9, 11]])
        select[0, 3] = True
        with pytest.raises(ValueError, match="history position"):
            model(row, select=select)


@pytest.mark.parametrize(
    "item_embedding,catalogue_head,pool_slot,slot_reads_previous",
    [
        (False, False, False, False),
        (True, False, False, False),
        (True, True, False, False),
        (True, True, True, False),
        (False, False, False, True),
        (True, True, True, True),
    ],
)
def test_pooled_every_item_pass_gives_each_item_its_decoding_logits(
    item_embedding, catalogue_head, pool_slot, slot_reads_previous
):
    """pool_history with every_item: the one training pass gives noised item b exactly the
    logits that decoding computes from the clean items before b and that noised item; an item
    does not see later items; the history is causal in decoding too. With item_embedding the
    pooled items carry their ids, in both passes; with catalogue_head the logits are the
    catalogue marginals, in both passes; with pool_slot each noised item is one token, in both;
    with slot_reads_previous each noised item adds the clean item before it, in both."""
    torch.manual_seed(0)
    H, pad, mask = 3, 31, 30
    clean = torch.randint(0, 30, (2, 15))
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, d_ff=64, dropout=0.0, slot_embedding=True, pool_history=True)
    cfg.item_embedding, cfg.catalogue_head, cfg.pool_slot = item_embedding, catalogue_head, pool_slot
    cfg.slot_reads_previous = slot_reads_previous
    catalogue = clean.view(-1, H)  # every item of both rows is a catalogue item
    model = BlockDiffusionLM(cfg, 32, pad, H, catalogue, mask).eval()
    for p in model.parameters():  # away from the near-uniform attention of a fresh model
        p.data.normal_(0, 0.3)
    clean[1, :6] = pad  # left-padded: 3 items
    if item_embedding:
        with torch.no_grad():
            ids = model.item.of_items(model._as_items(clean, model_tokens_from_end(clean, pad)))
        assert (ids[0] > 0).all() and ids[1].tolist()[:2] == [0, 0] and (ids[1, 2:] > 0).all()
    # the catalogue head is certain once a few digits single out one of these 10 items: mask all
    masked = (torch.rand(clean.shape) < 0.5) | catalogue_head
    noisy = clean.masked_fill(masked & (clean != pad), mask)
    select = (clean != pad) & (torch.arange(15) >= torch.tensor([[H], [3 * H]]))  # all but each first item
    with torch.no_grad():
        both = model(noisy, select=select, clean=clean)
        want = []
        for row, first in ((0, 0), (1, 2)):
            for b in range(first + 1, 5):
                alone = model(torch.cat([clean[row, first * H : b * H], noisy[row, b * H : (b + 1) * H]])[None])
                want.append(alone[0, -H:])
        torch.testing.assert_close(both, torch.cat(want), atol=1e-5, rtol=1e-4)
        later = clean.clone()
        later[:, 9:12] = (later[:, 9:12] + 1) % 30  # change the clean fourth item only
        changed = model(noisy, select=select, clean=later).view(-1, H, 32)
        # rows: items 1..4 of row 0, then items 3..4 of row 1; items up to the fourth do not see it
        unchanged = torch.tensor([True, True, True, False, True, False])
        torch.testing.assert_close(changed[unchanged], both.view(-1, H, 32)[unchanged], atol=1e-5, rtol=1e-4)
        assert (changed[~unchanged] - both.view(-1, H, 32)[~unchanged]).abs().max() > 1e-3
        with pytest.raises(ValueError, match="first item"):
            model(noisy, select=clean != pad, clean=clean)
        if item_embedding:  # the id of the second item reaches the items after it
            model.item.embed.weight.data[int(ids[0, 1])] += torch.randn(32)  # not a constant: LayerNorm drops those
            moved = model(noisy, select=select, clean=clean).view(-1, H, 32)
            assert (moved[1:4] - both.view(-1, H, 32)[1:4]).abs().max() > 1e-3
            if not catalogue_head:  # with it, the item's id also moves its score in every slot
                torch.testing.assert_close(moved[0], both.view(-1, H, 32)[0], atol=1e-5, rtol=1e-4)


def test_pool_slot_reads_each_noised_item_as_one_token():
    """pool_slot: a row of n items enters the transformer as 2n - 1 tokens (n pooled clean items,
    n - 1 noised ones), and a noised item's revealed digit reaches its token's state: the item
    distribution is not just the all-masked one renormalised over the agreeing items."""
    torch.manual_seed(0)
    H, pad, mask = 3, 31, 30
    catalogue = torch.randint(0, 30, (40, H))
    catalogue[:, 0] = torch.arange(40) % 3  # ~13 items share each first digit
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, d_ff=64, dropout=0.0, slot_embedding=True, pool_history=True)
    cfg.item_embedding = cfg.catalogue_head = cfg.pool_slot = True
    model = BlockDiffusionLM(cfg, 32, pad, H, catalogue, mask).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    widths = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: widths.append(args[0].shape[1]))
    clean = catalogue[:10].reshape(2, 5 * H)
    select = torch.zeros_like(clean, dtype=torch.bool)
    select[:, H:] = True
    with torch.no_grad():
        model(clean.masked_fill(select, mask), select=select, clean=clean)
        assert widths == [5 + 4]
        history = catalogue[:3].reshape(-1)
        masked = torch.full((H,), mask)
        revealed = masked.clone()
        revealed[0] = catalogue[5, 0]
        all_masked, one_revealed = (
            model.item_log_probs(torch.cat([history, slot])[None])[0] for slot in (masked, revealed)
        )
    agree = catalogue[:, 0] == revealed[0]
    assert torch.isinf(one_revealed[~agree]).all() and torch.isfinite(one_revealed[agree]).all()
    renormalised = all_masked[agree].log_softmax(0)
    assert (one_revealed[agree] - renormalised).abs().max() > 1e-3
    with pytest.raises(ValueError, match="pool_slot needs catalogue_head"):
        cfg.catalogue_head = False
        BlockDiffusionLM(cfg, 32, pad, H, catalogue, mask)


def test_catalogue_head_gives_the_marginals_of_the_items_that_agree_with_the_slot():
    """Each position's log p(token) is the softmax mass, over the catalogue items agreeing with
    the slot's revealed tokens, of the items holding that token there (checked item by item);
    a revealed position is certain; no agreeing item, no mass."""
    torch.manual_seed(0)
    H, block, n = 3, 5, 40
    vocab = H * block + 2  # madrec.models.tokens layout: digit v at position k is k * block + v, then MASK, PAD
    mask = vocab - 2
    digits = torch.stack(torch.meshgrid(*[torch.arange(4)] * H, indexing="ij"), -1).view(-1, H)
    item_tokens = digits[torch.randperm(len(digits))[:n]] + torch.arange(H) * block  # distinct SIDs
    head = CatalogueHead(item_tokens, vocab, mask)
    items, h = torch.randn(n, 8), torch.randn(4, 8)
    slots = item_tokens[[0, 1, 2, 3]].clone()
    slots[0] = mask  # nothing revealed: the whole catalogue
    slots[1, 1:] = mask  # first digit revealed
    slots[2, 0] = mask  # first digit masked, the others revealed
    slots[3, 2] = mask
    log_p = head(h, slots, items)
    assert log_p.shape == (4, H, vocab)
    for s in range(4):
        agree = ((item_tokens == slots[s]) | (slots[s] == mask)).all(1)
        q = torch.where(agree, h[s] @ items.t(), float("-inf")).softmax(0)
        for k in range(H):
            want = torch.zeros(vocab).index_add(0, item_tokens[:, k], q)
            torch.testing.assert_close(log_p[s, k].exp(), want, atol=1e-6, rtol=1e-5)
            if slots[s, k] != mask:
                torch.testing.assert_close(log_p[s, k, slots[s, k]], torch.tensor(0.0), atol=1e-5, rtol=0)
    assert (log_p.exp().sum(-1) - 1).abs().max() < 1e-5
    unreachable = torch.ones(vocab, dtype=torch.bool)
    unreachable[item_tokens[item_tokens[:, 0] == slots[1, 0], 1]] = False
    assert log_p[1, 1, unreachable].max() < -60  # no item with the revealed first digit has them
    same, item_nll = head(h, slots, items, targets=item_tokens[[0, 1, 2, 3]])
    torch.testing.assert_close(same, log_p)
    for s in range(4):  # -log q(the slot's clean item) among the items agreeing with the slot
        agree = ((item_tokens == slots[s]) | (slots[s] == mask)).all(1)
        want = -torch.where(agree, h[s] @ items.t(), float("-inf")).log_softmax(0)[s]
        torch.testing.assert_close(item_nll[s], want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not in the catalogue"):
        head(h, slots, items, targets=torch.full((4, H), block - 1) + torch.arange(H) * block)


def test_item_loss_shares_sum_to_minus_log_of_the_item_probability_decoding_ranks():
    """With item_nll, the every-item training pass gives each selected token a share of its
    item's loss; a slot's shares sum to -log q(its clean item) where q is the distribution
    decoding ranks (item_log_probs of the same history and noised slot)."""
    torch.manual_seed(0)
    H, pad, mask = 3, 31, 30
    clean = torch.randint(0, 30, (2, 12))
    catalogue = torch.cat([clean.view(-1, H), torch.randint(0, 30, (10, H))])
    cfg = ModelConfig(n_layer=1, n_embd=32, n_head=4, d_ff=64, dropout=0.0, slot_embedding=True, pool_history=True)
    cfg.item_embedding = cfg.catalogue_head = True
    model = BlockDiffusionLM(cfg, 32, pad, H, catalogue, mask).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    select = torch.zeros_like(clean, dtype=torch.bool)
    select[:, 3:] = torch.rand(2, 9) < 0.6
    select[0, 3:6] = True  # item 1 of row 0 all masked, item 2 of row 1 one digit masked
    select[1, 6:9] = torch.tensor([False, True, False])
    noisy = clean.masked_fill(select, mask)
    with torch.no_grad():
        logits = model(noisy, select=select, clean=clean)
        same, shares = model(noisy, select=select, clean=clean, item_nll=True)
        torch.testing.assert_close(same, logits)
        owner = (torch.arange(12) // H).expand(2, -1)[select] + 4 * torch.arange(2)[:, None].expand(-1, 12)[select]
        for row, b in ((0, 1), (1, 2)):
            log_q = model.item_log_probs(torch.cat([clean[row, : b * H], noisy[row, b * H : (b + 1) * H]])[None])[0]
            item = 4 * row + b  # catalogue rows 0..7 are the two rows' items
            torch.testing.assert_close(shares[owner == item].sum(), -log_q[item], atol=1e-5, rtol=1e-5)


def test_pooled_every_item_pass_on_rows_of_one_item_trains_nothing_and_keeps_the_graph():
    """A length bucket of one-item rows (the oldest window of a short history) has no target:
    the training pass returns no logits, still attached to the parameters, so the batch's other
    buckets backpropagate through one summed loss."""
    torch.manual_seed(0)
    H, pad = 3, 31
    cfg = ModelConfig(n_layer=1, n_embd=32, n_head=4, d_ff=64, dropout=0.0, slot_embedding=True, pool_history=True)
    clean = torch.randint(0, 30, (4, H))
    model = BlockDiffusionLM(cfg, 32, pad, H, clean)
    logits = model(clean, select=torch.zeros_like(clean, dtype=torch.bool), clean=clean)
    assert logits.shape == (0, 32) and logits.requires_grad
    logits.sum().backward()
