"""The recommenders madrec trains, one file each, behind one interface.

A recommender is picked by the config key `model.name`:

| name     | tokens                      | network                  | objective                     |
|----------|-----------------------------|--------------------------|-------------------------------|
| `maskgr` | semantic IDs (H per item)   | bidirectional transformer | masked diffusion (the method) |
| `tiger`  | the same semantic IDs       | causal transformer        | next token (teacher forcing)  |
| `sasrec` | item ids (one token per item)| causal transformer       | next item, full-softmax CE    |

Each module gives a `Recommender` spec: how to tokenize items (`sid_table`), how to build the
network and its training objective. Everything else is shared: training rows (madrec.rows),
the Lightning loop (madrec.train), checkpoints, decoding (one constrained beam search: for
`sasrec` a "SID" is the item index itself, so the beam search is an exact top-K over every
item), metrics and the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from madrec.errors import MadrecError
from madrec.tokens import SIDVocab


class Objective(Protocol):
    def loss_terms(self, model: Callable, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted loss sum, weight sum) over a batch of clean (B, L) token rows."""


@dataclass(frozen=True)
class Recommender:
    """What training, decoding and checkpoints need to know of one kind of model."""

    name: str
    uses_sids: bool  # False: items are their own one-digit "SID" (no sid_data_path needed)
    build_network: Callable  # (cfg, vocab, item_tokens) -> nn.Module with forward(tokens, select=None)
    build_objective: Callable  # (cfg, vocab) -> Objective

    def sid_table(self, sids: torch.Tensor | None, num_items: int) -> torch.Tensor:
        """The (H, N) table the model's tokens and decoder use."""
        if not self.uses_sids:
            return torch.arange(num_items, dtype=torch.long)[None]
        if sids is None:
            raise MadrecError(f"model.name={self.name} needs semantic IDs: pass sid_data_path=OUT/sids.pt")
        return sids

    def vocab(self, table: torch.Tensor, codebook_size: int) -> SIDVocab:
        return SIDVocab(sid_len=table.shape[0], codebook_size=codebook_size if self.uses_sids else table.shape[1])


def registry() -> dict[str, Recommender]:
    from madrec.models import maskgr, sasrec, tiger

    return {m.RECOMMENDER.name: m.RECOMMENDER for m in (maskgr, tiger, sasrec)}


NAMES = ("maskgr", "tiger", "sasrec")


def get(name: str) -> Recommender:
    models = registry()
    if name not in models:
        raise MadrecError(f"config key model.name: unknown model {name!r}; choose one of {', '.join(NAMES)}")
    return models[name]


def build(cfg, vocab: SIDVocab, sids: torch.Tensor) -> tuple[nn.Module, Objective]:
    """The network and training objective of `cfg.model.name` for this token layout and the
    catalogue's (H, N) SID table (item-id embeddings look items up by their tokens)."""
    if isinstance(cfg.model.dropout, str):
        raise MadrecError(
            f"config key model.dropout: {cfg.model.dropout!r} is set from the training data "
            "(madrec.train.resolve_dropout) before a network is built; resolve it first or give a number"
        )
    spec = get(cfg.model.name)
    return spec.build_network(cfg, vocab, vocab.item_tokens(sids)), spec.build_objective(cfg, vocab)
