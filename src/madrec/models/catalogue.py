"""The catalogue head of maskgr's block diffusion (docs/method.md, "Catalogue scale"): the noised
slot's clean item as a distribution over catalogue items, its digits' log-probabilities as that
distribution's marginals, at a cost that does not grow with the catalogue.

- Training scores at most `model.head_candidates` items per step: the whole catalogue while it
  fits, else the batch's target items plus items drawn by training popularity, each logit
  corrected by the log of its chance to be among the candidates (sampled softmax with logQ
  correction, Bengio & Senécal 2008; Yi et al. 2019).
- Decoding a large catalogue beams over its SID tree (`SIDTree`), scoring each node by the slot
  state against the mean vector of the items under it, and re-ranks the leaves by the full score.
"""

from __future__ import annotations

import torch
from torch import nn

from madrec.models.blocks import rows_of_keys


class CatalogueHead(nn.Module):
    """One state h per slot scores item i as h . e_i (e_i: the item's vector) if i's tokens agree
    with every revealed token of the slot, else -inf; p(token at position k) is the softmax mass
    of the items whose k-th token it is. The true item always agrees with its own revealed
    digits, so no training target is impossible; a token no agreeing item has gets
    log p = log(1e-30) (finite, so its gradient stays 0, not NaN).
    """

    def __init__(self, item_tokens: torch.Tensor, vocab_size: int, mask_id: int, max_candidates: int = 0):
        """max_candidates: items a training step scores at most (0 = every item)."""
        super().__init__()
        n, h = item_tokens.shape
        if vocab_size**h >= 2**63:
            raise ValueError(f"catalogue_head: SIDs of {h} tokens are too long for int64 keys")
        self.vocab_size, self.mask_id, self.max_candidates = vocab_size, mask_id, max_candidates
        self.register_buffer("item_tokens", item_tokens.long(), persistent=False)  # (N, H)
        self.register_buffer("powers", vocab_size ** torch.arange(h), persistent=False)
        # rows of bits: which positions a revealed-pattern number r holds
        self.register_buffer("bits", (torch.arange(2**h)[:, None] >> torch.arange(h)) & 1, persistent=False)
        whole, rows = (self.item_tokens * self.powers).sum(-1).sort()  # to find a clean item's row
        self.register_buffer("whole_keys", whole, persistent=False)
        self.register_buffer("whole_rows", rows, persistent=False)
        self.set_popularity(torch.ones(n))

    @property
    def num_items(self) -> int:
        return len(self.item_tokens)

    @property
    def samples(self) -> bool:
        """Whether a training step scores a sample of the catalogue rather than all of it."""
        return 0 < self.max_candidates < self.num_items

    def set_popularity(self, counts: torch.Tensor) -> None:
        """The sampling distribution of candidates: each item's training interactions, plus one so
        that an item without any still has a chance."""
        p = counts.double().to(self.item_tokens.device) + 1.0
        self.register_buffer("cdf", (p / p.sum()).cumsum(0), persistent=False)

    def candidates(self, targets: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(S,) target rows -> (K,) sorted catalogue rows to score (the targets among them) and
        (K,) their logQ corrections; (None, None) while the catalogue fits (every item, exact)."""
        if not self.samples:
            return None, None
        wanted = targets.unique()
        draws = max(0, self.max_candidates - len(wanted))
        u = torch.rand(draws, dtype=torch.float64, device=targets.device)
        sampled = torch.searchsorted(self.cdf, u * self.cdf[-1]).clamp_max(self.num_items - 1)
        rows = torch.cat([wanted, sampled]).unique()
        # the chance that an item is among T draws from the popularity distribution (targets
        # follow it too): 1 - (1 - p)^T; logits minus its log keep the softmax consistent
        p = self.cdf[rows] - torch.where(rows > 0, self.cdf[(rows - 1).clamp_min(0)], 0.0)
        draws_total = draws + len(targets)
        correction = torch.log(-torch.expm1(draws_total * torch.log1p(-p.clamp(max=1 - 1e-12))))
        return rows, correction.float()

    def item_log_probs(
        self,
        h: torch.Tensor,
        slots: torch.Tensor,
        items: torch.Tensor,
        rows: torch.Tensor | None = None,
        correction: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """h (S, C) scaled slot states, slots (S, H) their tokens, items (K, C) the vectors of
        catalogue rows `rows` (None: every item) -> (S, K) log q(item) over those items."""
        logits = (h @ items.t() if correction is None else torch.addmm(-correction[None], h, items.t())).float()
        revealed = slots != self.mask_id
        some = revealed.any(1)
        if some.any():  # most training slots have every digit masked: no agreement to check
            tokens = self.item_tokens if rows is None else self.item_tokens[rows]
            keys = ((tokens * self.powers)[:, None, :] * self.bits).sum(-1)  # (K, 2^H)
            shown = revealed[some].long()
            pattern = (shown << torch.arange(slots.shape[1], device=slots.device)).sum(1)
            agree = keys.t()[pattern] == (slots[some] * shown * self.powers).sum(1, keepdim=True)
            logits[some] = logits[some].masked_fill(~agree, float("-inf"))
        return logits.log_softmax(1)

    def forward(
        self,
        h: torch.Tensor,
        slots: torch.Tensor,
        items: torch.Tensor,
        targets: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        correction: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """h (S, C) scaled slot states, slots (S, H) their tokens, items (K, C) the vectors of rows
        `rows` (None: the catalogue) -> (S, H, vocab) log p; with `targets` ((S, H) the slots'
        clean items, each among `rows`) also (S,) -log q(target item)."""
        log_q = self.item_log_probs(h, slots, items, rows, correction)  # (S, K)
        q = log_q.exp()
        tokens = self.item_tokens if rows is None else self.item_tokens[rows]
        marginals = [q.new_zeros(len(q), self.vocab_size).index_add(1, tokens[:, k], q) for k in range(tokens.shape[1])]
        log_marginals = torch.stack(marginals, 1).clamp_min(1e-30).log()
        if targets is None:
            return log_marginals
        column = self.index_of(targets)
        if rows is not None:
            column = torch.searchsorted(rows, column)
        return log_marginals, -log_q.gather(1, column[:, None])[:, 0]

    def index_of(self, items: torch.Tensor) -> torch.Tensor:
        """(S, H) tokens of catalogue items -> (S,) their rows of the catalogue."""
        rows = rows_of_keys(self.whole_keys, self.whole_rows, (items * self.powers).sum(1))
        if (rows < 0).any():  # a host sync per step on a GPU: the price of a clear error
            raise ValueError("catalogue_head: a target item is not in the catalogue")
        return rows


class SIDTree:
    """The catalogue's SID tree, level by level: the nodes of depth k are the distinct prefixes of
    k + 1 tokens in lexicographic order, so a parent's children are one contiguous range
    (`start[p]` to `start[p + 1]`); the leaves are the items. A level whose parents hold most of
    its tokens (the first levels of a large catalogue) is also kept as a dense (parents, span)
    table of child nodes (-1: none), which the beam indexes instead of padding every range."""

    def __init__(self, item_tokens: torch.Tensor, vocab_size: int):
        tokens = item_tokens.long()
        self.depth = tokens.shape[1]
        self.token, self.start, self.fanout, self.dense, self.node_of_item = [], [], [], [], []  # per level
        key = torch.zeros(len(tokens), dtype=torch.long, device=tokens.device)
        parents = torch.zeros(1, dtype=torch.long, device=tokens.device)  # the root's key
        for k in range(self.depth):
            key = key * vocab_size + tokens[:, k]  # most significant first: sorting groups siblings
            nodes = key.unique()
            parent = torch.searchsorted(parents, nodes // vocab_size if k else torch.zeros_like(nodes))
            start = torch.searchsorted(parent, torch.arange(len(parents) + 1, device=tokens.device))
            self.token.append(nodes % vocab_size)
            self.start.append(start)
            self.fanout.append(int((start[1:] - start[:-1]).max()))
            self.dense.append(self._dense_children(parent, self.token[k], len(parents)))
            self.node_of_item.append(torch.searchsorted(nodes, key))
            parents = nodes
        self.item_of_leaf = torch.empty_like(key).scatter_(
            0, torch.searchsorted(parents, key), torch.arange(len(key), device=key.device)
        )

    def _dense_children(self, parent: torch.Tensor, token: torch.Tensor, parents: int):
        """(first token, (parents, span) child node per token of the level's span, -1: none) for a
        level where a parent has on average at least a quarter of the span and the table stays
        small; else None."""
        low, span = int(token.min()), int(token.max()) - int(token.min()) + 1
        if len(token) * 4 < parents * span or parents * span > 1 << 22:
            return None
        table = torch.full((parents, span), -1, dtype=torch.long, device=token.device)
        table[parent, token - low] = torch.arange(len(token), device=token.device)
        return low, table

    def centroids(self, vectors: torch.Tensor) -> list[torch.Tensor]:
        """(N, C) item vectors -> per level, (nodes, C) the mean vector of the items under each node
        (the last level: the items' own vectors, in leaf order)."""
        out = []
        for node in self.node_of_item:
            count = torch.bincount(node).to(vectors.dtype)
            total = torch.zeros(len(count), vectors.shape[1], device=vectors.device, dtype=vectors.dtype)
            out.append(total.index_add_(0, node, vectors) / count[:, None])
        return out

    def beam(self, h: torch.Tensor, centroids: list[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, C) slot states -> (B, width) items (-1 pad) and their scores: the `width` best
        nodes per depth by h . (the mean vector of the items under the node), expanding only
        children the catalogue has (cost per user: width x the widest fan-out x C per level,
        whatever the catalogue's size); at the last level a node is one item, so the scores are
        the items' own h . e_i."""
        b = h.shape[0]
        nodes = torch.zeros(b, 1, dtype=torch.long, device=h.device)  # the root
        scores = torch.zeros(b, 1, device=h.device)
        for k in range(self.depth):
            if self.dense[k] is not None:
                child = self.dense[k][1][nodes]  # (B, W, span), -1: no such child
                real = child >= 0
            else:
                first, last = self.start[k][nodes], self.start[k][nodes + 1]  # (B, W) child ranges
                child = first[..., None] + torch.arange(self.fanout[k], device=nodes.device)
                real = child < last[..., None]
            real = real & (scores > float("-inf"))[..., None]
            child = child.clamp(0, len(self.token[k]) - 1)
            total = torch.einsum("bc,bwfc->bwf", h.float(), centroids[k][child].float())
            top = total.masked_fill(~real, float("-inf")).flatten(1).topk(min(width, real[0].numel()), dim=1)
            nodes, scores = child.flatten(1).gather(1, top.indices), top.values
        return torch.where(scores > float("-inf"), self.item_of_leaf[nodes], -1), scores
