"""tiger: autoregressive generative retrieval over the same semantic IDs (TIGER's idea).

TIGER and GRID use a small encoder-decoder; here it is a decoder-only causal transformer over
the history's SID tokens followed by the next item's digits (madrec.model.CausalLM). Same
tokens, same width/depth knobs and same decoder as maskgr, so the comparison isolates the
objective: next-token prediction with teacher forcing on every token of a row (every item of
the history is a training target, as in SASRec-style training) versus masked diffusion.
Decoding is the shared constrained beam search, left to right, one digit per model call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from madrec.model import CausalLM
from madrec.models import Recommender


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


RECOMMENDER = Recommender("tiger", uses_sids=True, build_network=build_network, build_objective=build_objective)
