"""tiger: autoregressive generative retrieval over the same semantic IDs (TIGER's idea).

TIGER and GRID use a small encoder-decoder; here it is a decoder-only causal transformer over
the history's SID tokens followed by the next item's digits (CausalLM, below). Same
tokens, same width/depth knobs and same decoder as maskgr, so the comparison isolates the
objective: next-token prediction with teacher forcing on every token of a row (every item of
the history is a training target, as in SASRec-style training) versus masked diffusion.
Decoding is the shared constrained beam search, left to right, one digit per model call.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from madrec.models import Recommender, register
from madrec.models.blocks import ModelConfig, TokenTransformer, refuse_pooled_options, tokens_from_end


class NextTokenLoss:
    """Cross-entropy of every token that has a real token before it in its row (mean over them)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def loss_terms(self, model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        real = tokens != self.pad_id
        target = torch.zeros_like(real)
        target[:, 1:] = real[:, 1:] & real[:, :-1]
        logits = model(tokens, select=target)
        ce = F.cross_entropy(logits.float(), tokens[target], reduction="sum")
        return ce, target.sum().to(ce.dtype)


def build_network(cfg, vocab, item_tokens) -> CausalLM:
    return CausalLM(cfg.model, vocab.size, vocab.pad_id, vocab.sid_len, item_tokens)


def build_objective(cfg, vocab) -> NextTokenLoss:
    return NextTokenLoss(vocab.pad_id)


RECOMMENDER = register(
    Recommender("tiger", uses_sids=True, build_network=build_network, build_objective=build_objective)
)


class CausalLM(TokenTransformer):
    """The same transformer with causal self-attention, read as a next-token model.

    Position i's logits come from the hidden state at i - 1 (teacher forcing), so asking for
    the logits of a masked SID position gives p(token | every token before it): decoding
    reveals positions left to right, one per model call. Queries always see themselves, so a
    left-padded row has no empty attention row.
    """

    causal = True
    max_next_items: int | None = None  # left to right through as many items as the row leaves room for
    ranks_catalogue = False

    def __init__(
        self,
        cfg: ModelConfig,
        vocab_size: int,
        pad_id: int,
        sid_len: int | None = None,
        item_tokens: torch.Tensor | None = None,
    ):
        refuse_pooled_options(cfg, "a causal model")
        super().__init__(dataclasses.replace(cfg, slot_embedding=False), vocab_size, pad_id, sid_len, item_tokens)

    def forward(self, tokens: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) tokens -> (B, L, vocab) logits, or (M, vocab) at `select`; position i from state i - 1."""
        return self.logits(tokens, self.attention_mask(tokens), None, select)

    def item_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """Item ids at each complete item's last token only: an earlier token of the item predicts
        the item's next digit, which its id would give away."""
        last = torch.remainder(tokens_from_end(tokens, self.pad_id) - 1, self.sid_len) == 0
        return super().item_ids(tokens) * last

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1, L, L) bool: non-PAD keys at or before the query, and the query itself."""
        length = tokens.shape[1]
        past = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        mask = (tokens != self.pad_id)[:, None, None, :] & past
        return mask | torch.eye(length, dtype=torch.bool, device=tokens.device)

    def position_outputs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], x[:, :-1]], dim=1)  # shift right: state i-1 predicts token i
