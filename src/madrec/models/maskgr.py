"""maskgr: masked diffusion over semantic IDs (docs/method.md), the method madrec implements.

A bidirectional transformer (madrec.model.MaskedDiffusionLM) denoises masked SID tokens; the
objective is madrec.diffusion. Decoding may reveal positions in any order, several per call.
"""

from __future__ import annotations

from madrec.diffusion import MaskedDiffusion
from madrec.model import (
    ItemCausalDiffusionLM,
    MaskedDiffusionLM,
    NextItemDiffusionLM,
    PooledHistoryDiffusionLM,
    PooledItemCausalDiffusionLM,
)
from madrec.models import Recommender


def build_network(cfg, vocab, item_tokens) -> MaskedDiffusionLM:
    if cfg.diffusion.masking == "every_item" and cfg.model.pool_history:  # the same, history pooled
        net = PooledItemCausalDiffusionLM(
            cfg.model, vocab.size, vocab.pad_id, vocab.sid_len, item_tokens, vocab.mask_id
        )
    elif cfg.diffusion.masking == "every_item":  # every item noised given the clean ones before it
        net = ItemCausalDiffusionLM(cfg.model, vocab.size, vocab.pad_id, vocab.sid_len, item_tokens)
    elif cfg.model.pool_history:  # one token per history item; only the next item is noised
        net = PooledHistoryDiffusionLM(cfg.model, vocab.size, vocab.pad_id, vocab.sid_len, item_tokens, vocab.mask_id)
    elif cfg.diffusion.next_item_copies > 1:  # several noised copies of the next item per history
        net = NextItemDiffusionLM(cfg.model, vocab.size, vocab.pad_id, vocab.sid_len, item_tokens)
    else:
        net = MaskedDiffusionLM(cfg.model, vocab.size, vocab.pad_id, vocab.sid_len, item_tokens)
        # only the last item was ever noised: the model has not learned several masked items at once
        net.max_next_items = 1 if cfg.diffusion.masking == "next_item" else None
    net.masking = cfg.diffusion.masking
    return net


def build_objective(cfg, vocab) -> MaskedDiffusion:
    return MaskedDiffusion(cfg.diffusion, vocab.mask_id, vocab.pad_id, vocab.sid_len)


RECOMMENDER = Recommender("maskgr", uses_sids=True, build_network=build_network, build_objective=build_objective)
