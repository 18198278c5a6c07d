"""The recipe of docs/architecture.md, "Adding a model", followed by a test: a network behind the
`Network` interface, its objective and a `Recommender` registered under a new `model.name` train,
checkpoint, evaluate and recommend through madrec's own code with no other edit. The toy model is
registered for this test only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from madrec import models
from madrec.checkpoint import load_checkpoint
from madrec.config import load_config
from madrec.evaluate.recommend import Recommender
from madrec.train.run import run

from planted import TRAIN_ARGS, planted_dataset


class LastItemLM(nn.Module):
    """Predicts the slot's digits from the item just before it (enough for a successor rule)."""

    causal = False  # the decoder may reveal the slot's digits in any order
    max_next_items = 1
    ranks_catalogue = False

    def __init__(self, vocab_size: int, sid_len: int, dim: int = 32):
        super().__init__()
        self.vocab_size, self.sid_len = vocab_size, sid_len
        self.embed = nn.Embedding(vocab_size, dim)
        self.out = nn.Linear(dim, sid_len * vocab_size)

    def forward(self, tokens: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        b, length = tokens.shape
        h = self.embed(tokens[:, -2 * self.sid_len : -self.sid_len]).sum(1)  # the previous item's tokens
        logits = torch.zeros(b, length, self.vocab_size, device=tokens.device, dtype=h.dtype)
        logits[:, -self.sid_len :] = self.out(h).view(b, self.sid_len, self.vocab_size)
        return logits if select is None else logits[select]


class LastItemLoss:
    """Cross-entropy of each row's last item, all its digits masked."""

    def __init__(self, mask_id: int, sid_len: int):
        self.mask_id, self.sid_len = mask_id, sid_len

    def loss_terms(self, model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        select = torch.zeros_like(tokens, dtype=torch.bool)
        select[:, -self.sid_len :] = True
        logits = model(tokens.masked_fill(select, self.mask_id), select=select)
        ce = F.cross_entropy(logits.float(), tokens[select], reduction="sum")
        return ce, select.sum().to(ce.dtype)


LAST_ITEM = models.Recommender(
    "lastitem",
    uses_sids=True,
    build_network=lambda cfg, vocab, item_tokens: LastItemLM(vocab.size, vocab.sid_len),
    build_objective=lambda cfg, vocab: LastItemLoss(vocab.mask_id, vocab.sid_len),
)


@pytest.mark.slow
def test_a_model_registered_in_a_test_trains_checkpoints_and_recommends(tmp_path, monkeypatch):
    monkeypatch.setitem(models._REGISTERED, "lastitem", LAST_ITEM)  # the recipe's register(), undone after
    data, sids = planted_dataset(tmp_path / "planted")
    args = [*TRAIN_ARGS, "model.name=lastitem", "optim.optimizer.lr=1e-2", "trainer.max_steps=200"]
    args += [
        "trainer.val_every_n_steps=200",
        "trainer.checkpoint_every_n_steps=200",
        "trainer.early_stopping_patience=0",
    ]
    args += [f"data_dir={data}", f"sid_data_path={sids}", f"output_dir={tmp_path / 'run'}"]
    summary = run(load_config(args))
    assert summary["val/recall@10"] >= 0.9 and summary["test/recall@10"] >= 0.8, summary
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert isinstance(load_checkpoint(ckpt).model, LastItemLM)
    rec = Recommender.from_checkpoint(str(ckpt), device="cpu")
    assert len(rec.recommend(["item1", "item2"], k=5)) == 5


def test_an_unregistered_name_lists_the_registered_ones():
    from madrec.errors import MadrecError

    with pytest.raises(MadrecError, match="unknown model 'lastitem'; choose one of maskgr, .*tiger.*sasrec"):
        models.get("lastitem")
