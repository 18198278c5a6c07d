"""Catalogue scale (docs/method.md, "Catalogue scale"): the sampled catalogue head, the SID-tree
beam, lazy item-row updates and averages, and a default experiment's training step whose work
does not grow with the catalogue."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from madrec.config import load_config
from madrec.models.blocks import ModelConfig
from madrec.models.catalogue import CatalogueHead, SIDTree
from madrec.models.maskgr import BlockDiffusionLM
from madrec.train.ema import RowLazyEMA, ema_update
from madrec.train.optim import LazyAdamW, clip_grad_norm

from planted import TRAIN_ARGS, planted_dataset

H, BLOCK = 3, 6  # SIDs of 3 digits of 6 codes: token k * BLOCK + digit, then MASK, PAD
VOCAB = H * BLOCK + 2
MASK = VOCAB - 2


def catalogue(n: int, seed: int = 0) -> torch.Tensor:
    """(n, H) distinct item token rows."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randperm(BLOCK**H, generator=g)[:n]
    digits = torch.stack([(codes // BLOCK ** (H - 1 - k)) % BLOCK for k in range(H)], 1)
    return digits + torch.arange(H) * BLOCK


def test_sampled_candidates_hold_the_targets_and_follow_popularity():
    torch.manual_seed(0)
    tokens = catalogue(200)
    head = CatalogueHead(tokens, VOCAB, MASK, max_candidates=50)
    assert head.samples and not CatalogueHead(tokens, VOCAB, MASK, max_candidates=200).samples
    counts = torch.zeros(200)
    counts[:10] = 1000.0  # ten popular items
    head.set_popularity(counts)
    targets = torch.tensor([3, 150, 150, 199])
    seen = torch.zeros(200)
    for _ in range(200):
        rows, correction = head.candidates(targets)
        assert len(rows) <= 50 and torch.equal(rows, rows.unique())  # sorted, distinct
        assert torch.isin(targets, rows).all()
        assert (correction <= 0).all()  # log of a probability
        seen[rows] += 1
    assert seen[:10].min() >= 190  # popular items (p ~ 0.1 each) are nearly always among 47 draws
    assert seen[10:].mean() < 100  # the rest far less often (each has 1 / 10,190 of the mass)
    # the correction is log P(row among the draws): 1 - (1 - p)^T, T = draws + targets
    p = (counts + 1) / (counts + 1).sum()
    draws = 50 - 3 + 4
    rows, correction = head.candidates(targets)
    torch.testing.assert_close(correction, torch.log(1 - (1 - p[rows].double()) ** draws).float())


def test_logq_corrected_sampled_softmax_learns_the_target_distribution():
    """Free logits trained on targets drawn from a Zipf distribution, scoring 40 of 216 items per
    step (the batch's targets plus popularity draws): with the logQ correction softmax(logits)
    approaches the target distribution; without it, far less (popular items are over-sampled as
    negatives and pushed down)."""
    tokens = catalogue(216)
    popularity = 1.0 / torch.arange(1, 217).double()
    target_p = (popularity / popularity.sum()).float()

    def learned(corrected: bool) -> torch.Tensor:
        torch.manual_seed(0)
        head = CatalogueHead(tokens, VOCAB, MASK, max_candidates=40)
        head.set_popularity(popularity * 1e4)
        logits = torch.zeros(216, 1, requires_grad=True)
        opt = torch.optim.Adam([logits], lr=0.05)
        h, slots = torch.ones(32, 1), torch.full((32, H), MASK)
        for _ in range(400):
            targets = tokens[torch.multinomial(target_p, 32, replacement=True)]
            rows, correction = head.candidates(head.index_of(targets))
            correction = correction if corrected else torch.zeros_like(correction)
            loss = head(h, slots, logits[rows], targets, rows, correction)[1].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return logits.detach()[:, 0].log_softmax(0)

    def kl(log_q: torch.Tensor) -> float:
        return float((target_p * (target_p.log() - log_q)).sum())

    with_q, without = kl(learned(True)), kl(learned(False))
    assert with_q < 0.5 * without, (with_q, without)


def test_sid_tree_beam_is_exact_when_it_keeps_every_node_and_only_returns_catalogue_items():
    torch.manual_seed(0)
    tokens = catalogue(150)
    tree = SIDTree(tokens, VOCAB)
    vectors, h = torch.randn(150, 8), torch.randn(4, 8)
    centroids = tree.centroids(vectors)
    group = vectors[tokens[:, 0] == tokens[0, 0]].mean(0)  # item 0's first-digit group
    assert torch.allclose(centroids[0][tree.node_of_item[0][0]], group)
    exact = h @ vectors.t()  # (4, N): at the last level a node is one item
    wide, wide_scores = tree.beam(h, centroids, width=150)
    torch.testing.assert_close(wide_scores, exact.gather(1, wide))  # a leaf's score is its item's own
    assert torch.equal(wide[:, :10], exact.topk(10, dim=1).indices)
    narrow = tree.beam(h, centroids, width=8)[0]
    assert narrow.shape == (4, 8) and (narrow >= 0).all() and (narrow < 150).all()
    assert all(len(row.unique()) == 8 for row in narrow)
    assert any(d is not None for d in tree.dense)
    tree.dense = [None] * H  # the range expansion alone: the same beam
    assert torch.equal(tree.beam(h, centroids, width=8)[0], narrow)
    assert torch.equal(tree.beam(h, centroids, width=150)[0], wide)
    few = SIDTree(tokens[:3], VOCAB)  # fewer items than the width: -1 pads
    picked = few.beam(h, few.centroids(vectors[:3]), width=8)[0]
    assert ((picked >= 0).sum(1) == 3).all() and (picked[:, 3:] == -1).all()


def test_top_items_beyond_the_exact_size_ranks_tree_leaves_by_the_full_score():
    torch.manual_seed(0)
    tokens = catalogue(200)
    cfg = ModelConfig(n_layer=1, n_embd=32, n_head=4, d_ff=64, dropout=0.0, slot_embedding=True, pool_history=True)
    cfg.item_embedding = cfg.catalogue_head = cfg.pool_slot = True
    cfg.head_candidates, cfg.tree_width = 64, 4  # 200 items > 2 x 64: a large catalogue, the tree
    model = BlockDiffusionLM(cfg, VOCAB, VOCAB - 1, H, tokens, MASK).eval()
    histories = tokens[torch.randint(0, 200, (5, 4))].flatten(1)
    with torch.no_grad():
        items, scores = model.top_items(histories, 3)
        slot = torch.full((5, H), MASK)
        full = model.item_log_probs(torch.cat([histories, slot], 1))  # (5, N) over every item
    assert items.shape == (5, 3) and (scores[:, :-1] >= scores[:, 1:]).all()
    assert torch.equal(full.gather(1, items).argsort(1, descending=True), torch.arange(3).expand(5, 3))
    model.large_catalogue = False  # as within 2 x head_candidates: every item ranked exactly
    with torch.no_grad():
        assert torch.equal(model.top_items(histories, 3)[0], full.topk(3, dim=1).indices)


def _table_and_optimizers(rows: int = 30):
    torch.manual_seed(0)
    sparse, dense = nn.Embedding(rows, 4, sparse=True), nn.Embedding(rows, 4)
    dense.weight.data.copy_(sparse.weight.data)
    kw = dict(lr=0.1, weight_decay=0.1)
    return sparse, dense, LazyAdamW(sparse.parameters(), **kw), torch.optim.AdamW(dense.parameters(), **kw)


def test_lazy_adamw_is_adamw_on_touched_rows_and_leaves_the_others_alone():
    sparse, dense, lazy, adam = _table_and_optimizers()
    every = torch.arange(30)
    for _ in range(3):  # every row touched each step: the same as AdamW
        for table, opt in ((sparse, lazy), (dense, adam)):
            opt.zero_grad()
            (table(every) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(sparse.weight, dense.weight)
    before = sparse.weight.detach().clone()
    moments = lazy.state[sparse.weight]["exp_avg"].clone()
    lazy.zero_grad()
    (sparse(torch.tensor([2, 7, 7])) ** 2).sum().backward()
    clip_grad_norm(list(sparse.parameters()), 0.01)
    lazy.step()
    changed = (sparse.weight != before).any(1)
    assert changed[[2, 7]].all() and changed.sum() == 2
    assert torch.equal(lazy.state[sparse.weight]["exp_avg"][0], moments[0])


def test_row_lazy_ema_equals_averaging_every_row_every_step():
    sparse, _, lazy, _ = _table_and_optimizers()
    average, dense_average = nn.Embedding(30, 4), None
    ema = RowLazyEMA(decay=0.9)
    g = torch.Generator().manual_seed(1)
    for step in range(25):
        lazy.zero_grad()
        (sparse(torch.randint(0, 30, (4,), generator=g)) ** 2).sum().backward()
        ema.before_step(sparse, average)
        lazy.step()
        ema.update(sparse, average)
        current = sparse.weight.detach()  # the first weights after a step start the average
        dense_average = ema_update(dense_average, current, torch.tensor(step), 0.9) if step else current.clone()
        if step in (7, 24):  # read mid-way, as validation does, and at the end
            ema.flush(sparse, average)
            torch.testing.assert_close(average.weight.detach(), dense_average)


class LargestAllocations(TorchDispatchMode):
    """Elements written by the ops run inside: an op's new tensors (a sparse one counts its stored
    values), an in-place op's target, an indexed write's values; views write nothing."""

    INDEXED = {"index_put_", "index_put", "_index_put_impl_", "index_add_", "index_copy_", "scatter_", "scatter_add_"}

    def __init__(self):
        super().__init__()
        self.total = self.largest = 0
        self.by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        schema, name = func._schema, func.__name__.split(".")[0]
        pairs = list(zip(args, schema.arguments))
        written = [a for a, arg in pairs if arg.alias_info is not None and arg.alias_info.is_write]
        if name in self.INDEXED:
            written = [a for a, arg in pairs if arg.name in ("values", "source", "src")]
        elif not written and not any(r.alias_info is not None for r in schema.returns):
            written = list(out) if isinstance(out, (tuple, list)) else [out]
        for t in written:
            if isinstance(t, torch.Tensor):
                n = t._values().numel() if t.layout == torch.sparse_coo else t.numel()
                self.total += n
                self.largest = max(self.largest, n)
                self.by_op[name] = self.by_op.get(name, 0) + n
        return out


def _one_step_allocations(tmp_path, monkeypatch, experiment: str, num_items: int) -> LargestAllocations:
    """Train `experiment` on planted data of num_items items and measure its 4th optimiser step
    (forward, backward, clipping, optimiser, EMA)."""
    import lightning.pytorch as L

    from madrec.train import run as train_run

    probe = LargestAllocations()

    class Probe(L.Callback):
        active = False

        def on_train_batch_start(self, trainer, *_):
            if trainer.global_step == 3 and not probe.total:
                probe.__enter__()
                self.active = True

        def on_train_batch_end(self, trainer, *_):
            if self.active:
                probe.__exit__(None, None, None)
                self.active = False

    make = train_run.make_trainer

    def with_probe(*args, **kwargs):
        trainer = make(*args, **kwargs)
        trainer.callbacks.append(Probe())  # after WeightEMA: its update is part of the step
        return trainer

    monkeypatch.setattr(train_run, "make_trainer", with_probe)
    data, sids = planted_dataset(tmp_path / str(num_items), num_items=num_items, codebook_size=32, num_users=200)
    args = [
        f"experiment={experiment}",
        *TRAIN_ARGS,
        "codebook_size=32",
        "model.head_candidates=256",
        "model.tree_width=4",
    ]  # large past 4 x 32 items
    args += [f"data_dir={data}", f"sid_data_path={sids}", f"output_dir={tmp_path / f'run{num_items}'}"]
    args += ["trainer.max_steps=5", "trainer.val_every_n_steps=5", "eval.val_max_users=20", "test=false"]
    train_run.run(load_config(args))
    assert probe.total > 0
    return probe


@pytest.mark.parametrize("experiment", ["tiny", "small"])
def test_a_default_experiments_training_step_does_not_grow_with_the_catalogue(tmp_path, monkeypatch, experiment):
    """make run's default and small: a training step at 10x the items writes about as many
    elements, and no larger tensor (an (S, N) score matrix, a dense pass over the item table
    in the optimiser or the weight average would be 10x)."""
    small = _one_step_allocations(tmp_path, monkeypatch, experiment, 2_000)
    large = _one_step_allocations(tmp_path, monkeypatch, experiment, 20_000)
    grown = {op: (small.by_op.get(op, 0), n) for op, n in large.by_op.items() if n > 1.3 * small.by_op.get(op, 0) + 1e5}
    assert large.total < 1.3 * small.total, (small.total, large.total, grown)
    assert large.largest < 1.3 * small.largest, (small.largest, large.largest, grown)


def test_catalogues_within_twice_the_candidates_train_and_decode_exactly():
    """At the default 8,192 candidates, Beauty's 12,101 items keep the exact head and a dense item
    table; 20,000 items sample candidates, update item rows sparsely, decode by tree."""
    from madrec.models.tokens import SIDVocab

    vocab = SIDVocab(sid_len=4, codebook_size=256)
    cfg = ModelConfig(n_layer=1, n_embd=8, n_head=2, d_ff=16, dropout=0.0, slot_embedding=True, pool_history=True)
    cfg.item_embedding = cfg.catalogue_head = cfg.pool_slot = True
    for n, large in ((12_101, False), (16_384, False), (20_000, True)):
        codes = torch.randperm(256**3)[:n]
        sids = torch.stack([codes // 65536, codes // 256 % 256, codes % 256, torch.zeros_like(codes)])
        model = BlockDiffusionLM(cfg, vocab.size, vocab.pad_id, 4, vocab.item_tokens(sids), vocab.mask_id)
        assert model.large_catalogue == large == model.head.samples == model.item.embed.sparse
