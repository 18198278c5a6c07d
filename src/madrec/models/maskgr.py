"""maskgr: masked diffusion over semantic IDs (docs/method.md), the method madrec implements.

Two networks, one objective (madrec.models.diffusion):
- `MaskedDiffusionLM`, the reference: a bidirectional transformer denoising masked SID tokens
  anywhere in a row (diffusion.masking=uniform); decoding may reveal positions in any order,
  several per call, and several next items jointly.
- `BlockDiffusionLM`, what the shipped experiments run (`model.pool_history` with
  diffusion.masking=every_item): clean history items one pooled token each, every item of a
  row noised beside the clean items before it, optionally with a catalogue head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from madrec.models import Recommender, register
from madrec.models.blocks import (
    ModelConfig,
    TokenTransformer,
    as_items,
    block_causal_mask,
    is_large_catalogue,
    refuse_pooled_options,
    tokens_from_end,
)
from madrec.models.catalogue import CatalogueHead, SIDTree
from madrec.models.diffusion import MaskedDiffusion


def build_network(cfg, vocab, item_tokens) -> MaskedDiffusionLM | BlockDiffusionLM:
    pooled, every_item = cfg.model.pool_history, cfg.diffusion.masking == "every_item"
    if pooled != every_item:
        raise ValueError(
            "model.pool_history and diffusion.masking=every_item go together (block diffusion over pooled "
            f"items); got pool_history={pooled}, masking={cfg.diffusion.masking}"
        )
    if cfg.diffusion.item_loss_weight > 0 and not cfg.model.catalogue_head:
        raise ValueError("diffusion.item_loss_weight: the item's probability comes from model.catalogue_head")
    if pooled:
        return BlockDiffusionLM(cfg.model, vocab.size, vocab.pad_id, vocab.sid_len, item_tokens, vocab.mask_id)
    return MaskedDiffusionLM(cfg.model, vocab.size, vocab.pad_id, vocab.sid_len, item_tokens)


def build_objective(cfg, vocab) -> MaskedDiffusion:
    return MaskedDiffusion(cfg.diffusion, vocab.mask_id, vocab.pad_id, vocab.sid_len)


RECOMMENDER = register(
    Recommender("maskgr", uses_sids=True, build_network=build_network, build_objective=build_objective)
)


class MaskedDiffusionLM(TokenTransformer):
    """The reference network: a bidirectional transformer predicting every position's token
    (PAD keys masked), so decoding may reveal a slot's positions in any order, several per call."""

    causal = False
    max_next_items: int | None = None  # as many jointly decoded next items as the row leaves room for
    ranks_catalogue = False

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_id: int, sid_len=None, item_tokens=None):
        refuse_pooled_options(cfg, "MaskedDiffusionLM")
        super().__init__(cfg, vocab_size, pad_id, sid_len, item_tokens)

    def forward(self, tokens: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) token ids -> (B, L, vocab_size) logits (PAD positions' logits are meaningless).

        With `select` ((B, L) bool), only the selected positions' logits: (M, vocab_size),
        which spares training the full (B, L, vocab_size) tensor.
        """
        return self.logits(tokens, self.attention_mask(tokens), self.slots(tokens), select)

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, L) bool: every query may attend to every non-PAD key (bidirectional)."""
        keep = tokens != self.pad_id
        # an all-PAD row would leave its queries nothing to attend to (NaN); let it see everything
        keep = keep | ~keep.any(dim=1, keepdim=True)
        return keep[:, None, None, :]


class BlockDiffusionLM(TokenTransformer):
    """Block diffusion over pooled items (`model.pool_history` with `diffusion.masking=every_item`):
    every item of a row a next-item target in one pass (docs/method.md, deviations).

    The row's clean items are one token each (the mean of its SID token embeddings plus a
    learned "history item" vector, plus its id embedding with `model.item_embedding`), attending
    causally: to themselves and earlier items. Beside them, item b's noised SID tokens attend to
    the pooled items before b and to each other (BD3-LM, Arriola et al. 2025, with one item as
    the block). A row of n items costs n + (n - 1) H tokens and trains n - 1 next items, the
    density of the causal `tiger`, with the masked-diffusion objective on each item. Decoding
    (`forward(tokens, select)`: the history, then the slot's H tokens) gives the slot exactly the
    logits its item gets in the training pass. With `model.catalogue_head` the slot's digits are
    marginals of a distribution over the catalogue (CatalogueHead).
    """

    causal = False
    max_next_items = 1  # a noised item sees clean items only: one next item at a time

    def __init__(
        self,
        cfg: ModelConfig,
        vocab_size: int,
        pad_id: int,
        sid_len: int,
        item_tokens: torch.Tensor | None = None,
        mask_id: int | None = None,
    ):
        """mask_id: the MASK token, needed by `cfg.catalogue_head` (which digits are revealed)."""
        if not sid_len:
            raise ValueError("pool_history needs sid_len (tokens per item)")
        super().__init__(cfg, vocab_size, pad_id, sid_len, item_tokens)
        self.history_slot = nn.Parameter(torch.zeros(cfg.n_embd))
        if cfg.catalogue_head and (item_tokens is None or mask_id is None):
            raise ValueError("catalogue_head needs the catalogue's SID table and the MASK token id")
        if cfg.pool_slot and not cfg.catalogue_head:
            raise ValueError("pool_slot needs catalogue_head: one token per noised item has no per-digit states")
        self.large_catalogue = item_tokens is not None and is_large_catalogue(cfg, len(item_tokens))
        candidates = cfg.head_candidates if self.large_catalogue else 0  # 0: every item
        self.head = CatalogueHead(item_tokens, vocab_size, mask_id, candidates) if cfg.catalogue_head else None
        self._tree: SIDTree | None = None  # built at the first decoding that needs it
        self._centroids: tuple | None = None  # (weights' versions, the tree's node vectors)

    @property
    def ranks_catalogue(self) -> bool:
        return self.head is not None

    def forward(
        self,
        tokens: torch.Tensor,
        select: torch.Tensor | None = None,
        clean: torch.Tensor | None = None,
        item_nll: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Decoding: (B, L) rows ending in the slot -> the slot's logits, (M, vocab) at `select`,
        else (B, L, vocab) with zeros at every history and PAD position. Training: with `clean`
        ((B, L) rows of which `tokens` is the noised version) and `select`: the logits at
        `select`, every item beside the clean items before it, and with `item_nll` each
        selected token's share of its item's loss (`_slot_logits`)."""
        if clean is not None:
            return self._training_logits(tokens, select, clean, item_nll)
        tail = self._tail_positions(tokens)
        b, h = tokens.shape[0], self.sid_len
        if select is not None and (select & ~tail).any():
            raise ValueError("pool_history predicts only each row's last item; select asked for a history position")
        slot = tokens[tail].view(b, 1, h)
        logits = self._slot_logits(
            self._slot_states(tokens, slot), slot, None if select is None else select[tail].view(b, 1, h)
        )
        if select is not None:
            return logits
        full = logits.new_zeros(*tokens.shape, self.vocab_size)
        full[tail] = logits.reshape(-1, self.vocab_size)
        return full

    def _training_logits(self, tokens, select, clean, item_nll):
        if select is None:
            raise ValueError("the every-item training pass needs select (the noised positions)")
        from_end = tokens_from_end(clean, self.pad_id)
        items, noisy, chosen = (self._as_items(x, from_end) for x in (clean, tokens, select))
        if chosen[:, 0].any():
            raise ValueError("a row's first item has no history: it cannot be a target")
        targets = items[:, 1:] if self.head is not None else None
        return self._slot_logits(self._item_states(items, noisy[:, 1:]), noisy[:, 1:], chosen[:, 1:], targets, item_nll)

    def _slot_logits(
        self,
        states: torch.Tensor,
        slots: torch.Tensor,
        select: torch.Tensor | None,
        targets: torch.Tensor | None = None,
        item_nll: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of slot states (B, n, H, C) whose noised tokens are `slots` (B, n, H): (M, vocab)
        at `select` ((B, n, H) bool), else (B * n * H, vocab). `targets` ((B, n, H) the slots'
        clean items; catalogue head only, training): the head scores them and a sample of the
        rest of the catalogue (CatalogueHead.candidates); with `item_nll` also (M,): each
        selected token's share of its slot's -log q(clean item), so the shares of a slot sum to
        its item loss."""
        if select is None:
            select = torch.ones_like(slots, dtype=torch.bool)
        if self.head is None:
            if item_nll:
                raise ValueError("an item loss needs model.catalogue_head")
            return self.ln_f(states[select]) / math.sqrt(self.cfg.n_embd) @ self.embed.weight.t()
        asked = select.any(-1)  # slots with a position asked for
        chosen = select[asked]
        wanted = None if targets is None else targets[asked]
        rows, correction = None, None
        if wanted is not None and self.head.samples:
            rows, correction = self.head.candidates(self.head.index_of(wanted))
        h, noised = self._slot_vector(states[asked]), slots[asked]
        if not item_nll:
            return self.head(h, noised, self._catalogue(rows), None, rows, correction)[chosen]
        log_marginals, nll = self.head(h, noised, self._catalogue(rows), wanted, rows, correction)
        shares = (nll / chosen.sum(1))[:, None].expand_as(chosen)
        return log_marginals[chosen], shares[chosen]

    def _slot_vector(self, states: torch.Tensor) -> torch.Tensor:
        """(S, H, C) final states of slots ((S, 1, C) with pool_slot) -> (S, C): one scaled state
        per slot, the mean of its positions'."""
        return self.ln_f(states.mean(1)) / math.sqrt(self.cfg.n_embd)

    def _catalogue(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(K, C) the vectors of catalogue rows `rows` (None: every item): what each is as a
        pooled history item."""
        tokens = self.head.item_tokens if rows is None else self.head.item_tokens[rows]
        return self._pool(tokens[None])[0]

    def item_log_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) rows ending in the slot (H tokens, some or all MASK) -> (B, N) log q(item) of the
        catalogue head: the slot's clean item, -inf for items disagreeing with its revealed tokens."""
        if self.head is None:
            raise ValueError("item_log_probs needs model.catalogue_head")
        tail = self._tail_positions(tokens)
        slots = tokens[tail].view(tokens.shape[0], 1, self.sid_len)
        h = self._slot_vector(self._slot_states(tokens, slots)[:, 0])
        return self.head.item_log_probs(h, slots[:, 0], self._catalogue())

    def top_items(self, histories: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) left-padded histories -> (B, top_k) the best next items and their log q: exact
        over the catalogue unless it is large (blocks.is_large_catalogue), else the SID-tree beam's
        leaves (`model.tree_width` nodes per level, each scored by the mean vector of its items;
        a leaf by its own) ranked by q normalised over those leaves."""
        slot = torch.full((histories.shape[0], self.sid_len), self.head.mask_id, device=histories.device)
        tokens = torch.cat([histories, slot], 1)
        if not self.large_catalogue:
            scores, items = self.item_log_probs(tokens).float().topk(min(top_k, self.head.num_items), dim=1)
            return items, scores
        h = self._slot_vector(self._slot_states(tokens, slot[:, None])[:, 0])
        centroids = self._tree_centroids()
        chunks = torch.split(torch.arange(len(h), device=h.device), 16)  # bounds the (B, W, fan-out, C) gather
        beams = [self._tree.beam(h[c], centroids, self.cfg.tree_width) for c in chunks]
        leaves, full = torch.cat([b[0] for b in beams]), torch.cat([b[1] for b in beams])
        scores, at = full.log_softmax(1).topk(min(top_k, full.shape[1]), dim=1)
        return leaves.gather(1, at), scores

    def _tree_centroids(self) -> list[torch.Tensor]:
        """The SID tree's node vectors for the current weights (recomputed after an optimiser
        step changes the token or item embeddings: their in-place version counters)."""
        if self._tree is None:
            self._tree = SIDTree(self.head.item_tokens, self.vocab_size)
        weights = [self.embed.weight] + ([] if self.item is None else [self.item.embed.weight])
        version = tuple((w.data_ptr(), w._version) for w in weights)
        if self._centroids is None or self._centroids[0] != version:
            self._centroids = (version, self._tree.centroids(self._catalogue()))
        return self._centroids[1]

    def _slot_states(self, tokens: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, C) final states of the slot ((B, 1, 1, C) with pool_slot) after the pooled
        history, which attends causally to itself and not to the slot."""
        b = slot.shape[0]
        history, real = self._pooled_history(tokens)
        last = history[:, -1:] if history.shape[1] else history.new_zeros(b, 1, history.shape[2])
        x = self._noised_items(slot, last)
        h = x.shape[2]
        x = self.drop(torch.cat([history + self.history_slot, x.flatten(1, 2)], 1))
        positions = torch.arange(history.shape[1] + h, device=tokens.device)
        keep = history_and_slot_mask(real, h)
        for block in self.blocks:
            x = block(x, keep, positions)
        return x[:, history.shape[1] :].reshape(b, 1, h, -1)

    def _noised_items(self, noisy: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        """(B, n, H) noised items -> (B, n, H, C) their tokens' inputs, or (B, n, 1, C) with
        `model.pool_slot`: one token per item, the mean of its H inputs. `before` ((B, n, C) or
        (B, 1, C)): the pooled clean item before each, added with `model.slot_reads_previous`."""
        x = self.embed(noisy)
        if self.slot is not None:
            x = x + self.slot.weight
        x = x.mean(2, keepdim=True) if self.cfg.pool_slot else x
        return x + before[:, :, None] if self.cfg.slot_reads_previous else x

    def _tail_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: each row's last H real tokens (the item to predict)."""
        from_end = tokens_from_end(tokens, self.pad_id)
        tail = (from_end >= 1) & (from_end <= self.sid_len)
        if (tail.sum(1) != self.sid_len).any():
            raise ValueError(f"pool_history needs at least one whole item ({self.sid_len} tokens) in every row")
        return tail

    def _pooled_history(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n, C) pooled history items (every item but a row's last), oldest first and
        left-padded to the longest history n, and (B, n) bool: a real item."""
        history = self._as_items(tokens, tokens_from_end(tokens, self.pad_id))[:, :-1]
        return self._pool(history), (history != self.pad_id).any(2)

    def _pool(self, items: torch.Tensor) -> torch.Tensor:
        """(B, n, H) clean items -> (B, n, C): the mean of each item's SID token embeddings, plus
        its item-id embedding with `model.item_embedding`."""
        # one fused gather-and-sum (PAD tokens skipped): a step pools the whole catalogue, and
        # embedding, mask and sum as separate ops cost 3x the time on a CPU (bench/train/results.md)
        flat = F.embedding_bag(
            items.reshape(-1, items.shape[-1]), self.embed.weight, mode="sum", padding_idx=self.pad_id
        )
        pooled = flat.view(*items.shape[:-1], -1) / self.sid_len
        if self.item is not None:
            pooled = pooled + self.item(self.item.of_items(items))
        return pooled

    def _as_items(self, x: torch.Tensor, from_end: torch.Tensor) -> torch.Tensor:
        """(B, L) per-token values of a row -> (B, n, H) items, oldest first (see `as_items`)."""
        return as_items(x, from_end, self.sid_len, self.pad_id if x.dtype != torch.bool else False)

    def _item_states(self, items: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        """(B, n - 1, H, C) final states of noised items 1..n-1 ((B, n - 1, H) tokens; (B, n - 1, 1, C)
        with pool_slot), item b beside the pooled clean items 0..b-1 of `items` ((B, n, H))."""
        b, n = items.shape[:2]
        pooled = self._pool(items)
        x = self._noised_items(noisy, pooled[:, :-1])
        h = x.shape[2]
        x = self.drop(torch.cat([pooled + self.history_slot, x.flatten(1, 2)], 1))
        steps = torch.arange(n, device=items.device)
        positions = torch.cat([steps, (steps[1:, None] + torch.arange(h, device=items.device)).flatten()])
        real = (items != self.pad_id).any(2)
        owner = steps[1:].repeat_interleave(h)  # the item each noised token belongs to
        keep = block_causal_mask(steps.expand(b, -1), real, owner.expand(b, -1), real[:, owner])
        for block in self.blocks:
            x = block(x, keep, positions)
        return x[:, n:].reshape(b, n - 1, h, x.shape[-1])  # n = 1: no noised item, an empty result


def history_and_slot_mask(real: torch.Tensor, sid_len: int) -> torch.Tensor:
    """(B, 1, n + H, same) bool attention mask of a clean history of n positions (`real`: (B, n),
    its non-PAD keys) followed by one slot of H tokens: each history position sees the real
    history keys at or before it, the slot the history and its own tokens; every query sees itself."""
    b, n = real.shape
    history = real[:, None, :].expand(-1, n, -1) & torch.ones(n, n, dtype=torch.bool, device=real.device).tril()
    top = torch.cat([history, real.new_zeros(b, n, sid_len)], 2)
    bottom = torch.cat([real[:, None, :].expand(-1, sid_len, -1), real.new_ones(b, sid_len, sid_len)], 2)
    keep = torch.cat([top, bottom], 1) | torch.eye(n + sid_len, dtype=torch.bool, device=real.device)
    return keep[:, None]
