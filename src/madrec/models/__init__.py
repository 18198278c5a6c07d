"""The recommenders madrec trains, one file each, behind one interface.

A recommender is picked by the config key `model.name`:

| name     | tokens                      | network                  | objective                     |
|----------|-----------------------------|--------------------------|-------------------------------|
| `maskgr` | semantic IDs (H per item)   | bidirectional transformer | masked diffusion (the method) |
| `tiger`  | the same semantic IDs       | causal transformer        | next token (teacher forcing)  |
| `sasrec` | item ids (one token per item)| causal transformer       | next item, full-softmax CE    |

Each module gives a `Recommender` spec: how to tokenize items (`sid_table`), how to build the
network and its training objective; every network offers the `Network` interface below, which
is all decoding asks of it; shared layers are in `blocks.py`. Everything else is shared:
training rows (madrec.train.rows), the Lightning loop (madrec.train.run), checkpoints,
decoding (one constrained beam search: for `sasrec` a "SID" is the item index itself, so the
beam search is an exact top-K over every item), metrics and the pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from madrec.errors import MadrecError
from madrec.models.tokens import SIDVocab


class Network(Protocol):
    """What decoding (madrec.evaluate.decode), recommending and serving ask of a trained network."""

    causal: bool  # reveals a slot's positions left to right, one per call (else in any order)
    max_next_items: int | None  # the most future items decoded jointly; None: as many as the row holds
    ranks_catalogue: bool  # top_items ranks the catalogue for the next item in one call

    def forward(self, tokens: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) rows ending in the masked slot -> logits (B, L, vocab), or (M, vocab) at `select`."""

    def top_items(self, histories: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) left-padded histories -> (B, top_k) next items and their scores, when `ranks_catalogue`."""


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


_REGISTERED: dict[str, Recommender] = {}


def register(spec: Recommender) -> Recommender:
    """Make `spec` a `model.name` (madrec's own models register when imported; so can a plugin or test)."""
    _REGISTERED[spec.name] = spec
    return spec


def registry() -> dict[str, Recommender]:
    from madrec.models import maskgr, sasrec, tiger  # noqa: F401 - importing a model registers it

    return dict(_REGISTERED)


def get(name: str) -> Recommender:
    models = registry()
    if name not in models:
        raise MadrecError(f"config key model.name: unknown model {name!r}; choose one of {', '.join(models)}")
    return models[name]


def build(cfg, vocab: SIDVocab, sids: torch.Tensor) -> tuple[nn.Module, Objective]:
    """The network and training objective of `cfg.model.name` for this token layout and the
    catalogue's (H, N) SID table (item-id embeddings look items up by their tokens)."""
    if isinstance(cfg.model.dropout, str):
        raise MadrecError(
            f"config key model.dropout: {cfg.model.dropout!r} is set from the training data "
            "(madrec.train.run.resolve_dropout) before a network is built; resolve it first or give a number"
        )
    spec = get(cfg.model.name)
    return spec.build_network(cfg, vocab, vocab.item_tokens(sids)), spec.build_objective(cfg, vocab)


def check(cfg) -> None:
    """Build `cfg`'s network and objective on the meta device (nothing is allocated), so that an
    option a network or objective refuses is a MadrecError before any data loads."""
    if not get(cfg.model.name).uses_sids and cfg.model.item_embedding:
        raise MadrecError(
            f"config key model.item_embedding: {cfg.model.name}'s tokens are item ids already; set it false"
        )
    if cfg.model.dropout == "auto":  # set from the data later; any valid number builds the same shapes
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.0))
    vocab = SIDVocab(sid_len=2, codebook_size=4)
    try:
        with torch.device("meta"):
            build(cfg, vocab, torch.tensor([[0, 1], [1, 2]]))
    except ValueError as exc:
        raise MadrecError(f"config key model / diffusion: {exc}") from None
