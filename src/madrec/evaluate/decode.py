"""Beam decoding of the masked next-item slot (docs/method.md, "Deviations": decoding).

    histories = build_histories(vocab, sids, split.sequences, max_len)   # (B, L), left-padded
    result = beam_search(model, vocab, sids, histories, beam_size=10, top_k=10)
    result.items    # (B, 10) item indices, best first; result.scores: fp32 sums of log-probs

H MASK tokens are appended after each history. Every step runs the model once on all beams of
all users, picks per beam the still-masked position(s) to reveal (most confident first, or
left-to-right, or random), expands each beam by the digits there and keeps the best
`beam_size` distinct partial SIDs per user. With `constrained=True` a digit is only allowed if
some catalogue item agrees with it and with every digit the beam has revealed so far, in
whatever order they were revealed (see `SIDIndex`), so each finished beam is a real item and a
top-K list never repeats one. `reveal_per_step=k` reveals k positions per model call
(ceil(H/k) calls); `next_items=n` decodes n future items jointly (n*H masked positions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from madrec.config import ORDERS, check_beam_width
from madrec.errors import MadrecError
from madrec.models import Network
from madrec.models.tokens import SIDVocab


@dataclass
class DecodeResult:
    """`items`: (B, top_k) item indices, or (B, top_k, n) for n next items; -1 = no catalogue
    item (unconstrained mode) or no beam left. `scores`: (B, top_k) fp32 sums of log-probs.

    When fewer than top_k items are reachable (a catalogue, or the items agreeing with the
    revealed digits, smaller than the list), the list ends in -1 items scored -inf: a row never
    repeats an item and its finite-scored entries are all catalogue items (constrained mode)."""

    items: torch.Tensor
    scores: torch.Tensor


@dataclass
class _Table:
    """For revealed positions S and a position p (see SIDIndex._build)."""

    sgroup: torch.Tensor  # (N,) the item's S-group: the items agreeing with it at S
    bits: torch.Tensor  # (S-groups, ceil(V/8)) uint8: digits at p present in each S-group
    start: torch.Tensor  # (S-groups,) first (S, p) group of each S-group
    first: torch.Tensor  # (G,) smallest item index of each (S, p) group, groups by digit


class SIDIndex:
    """Which digits a SID position may take given the digits revealed at any subset of positions.

    A partial SID is represented by its revealed-position bitmask S and a representative: the
    smallest index among the catalogue items that agree with it. For each (S, p) a table groups
    the items by their digits at S (S-groups) and keeps, per S-group, a bitmask of the digits
    present at p and the smallest item of each (S-group, digit) pair; a beam's allowed digits
    are then one row lookup, whatever order its digits were revealed in. Tables are built on
    first use and cost ceil(V/8) bytes per S-group.
    """

    def __init__(self, sids: torch.Tensor, codebook_size: int):
        if sids.dim() != 2 or sids.numel() == 0:
            raise MadrecError(f"SID table must be a non-empty (H, N) tensor, got shape {tuple(sids.shape)}")
        self.digits = sids.t().contiguous().long()  # (N, H)
        self.num_items, self.sid_len = self.digits.shape
        self.codebook_size = codebook_size
        self._bit = 1 << torch.arange(8, device=self.digits.device, dtype=torch.uint8)
        byte = torch.arange(256, device=self.digits.device, dtype=torch.uint8)
        self._unpacked = (byte[:, None] & self._bit).ne(0)  # (256, 8): the bits of every byte value
        self._popcount = self._unpacked.sum(1)  # (256,)
        self._tables: dict[tuple[int, int], _Table] = {}

    def _build(self, revealed: int, p: int) -> _Table:
        cols = [q for q in range(self.sid_len) if revealed >> q & 1]
        d, N, V = self.digits, self.num_items, self.codebook_size
        order = torch.arange(N, device=d.device)
        for q in reversed(cols + [p]):  # stable sorts from the last key: lexicographic, ties by index
            order = order[torch.argsort(d[order, q], stable=True)]
        keys = d[order][:, cols + [p]]
        new_group = torch.ones(N, dtype=torch.bool, device=d.device)
        new_group[1:] = (keys[1:] != keys[:-1]).any(1)
        new_sgroup = torch.zeros_like(new_group)
        new_sgroup[0] = True
        if cols:
            new_sgroup[1:] = (keys[1:, :-1] != keys[:-1, :-1]).any(1)
        group = torch.cumsum(new_group, 0) - 1
        sgroup = torch.cumsum(new_sgroup, 0) - 1
        dense = torch.zeros(int(sgroup[-1]) + 1, -(-V // 8) * 8, dtype=torch.uint8, device=d.device)
        dense[sgroup[new_group], keys[new_group, -1]] = 1
        bits = (dense.view(dense.shape[0], -1, 8) * self._bit).sum(-1, dtype=torch.uint8)
        item_sgroup = torch.empty_like(order)
        item_sgroup[order] = sgroup
        return _Table(item_sgroup, bits, group[new_sgroup], order[new_group])

    def table(self, revealed: int, p: int) -> _Table:
        key = (revealed, p)
        if key not in self._tables:
            self._tables[key] = self._build(revealed, p)
        return self._tables[key]

    def _rows(self, revealed: torch.Tensor, pos: torch.Tensor):
        """Yield (row indices, table) for each distinct (revealed set, position) among the rows."""
        combo = revealed.long() * self.sid_len + pos.long()
        for c in torch.unique(combo).tolist():
            yield (combo == c).nonzero().squeeze(1), self.table(c // self.sid_len, c % self.sid_len)

    def _unpack(self, bits: torch.Tensor) -> torch.Tensor:
        return self._unpacked[bits.long()].flatten(-2)[..., : self.codebook_size]

    def allowed(self, revealed: torch.Tensor, reps: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """(M, V) bool: digits that some catalogue item agreeing with each partial SID has at `pos`.

        `revealed` (M,) bitmasks of revealed positions, `reps` (M,) representatives, `pos` (M,)
        unrevealed positions.
        """
        out = torch.empty((reps.shape[0], -(-self.codebook_size // 8)), dtype=torch.uint8, device=reps.device)
        for rows, t in self._rows(revealed, pos):
            out[rows] = t.bits[t.sgroup[reps[rows]]]
        return self._unpack(out)

    def child(self, revealed: torch.Tensor, reps: torch.Tensor, pos: torch.Tensor, digit: torch.Tensor):
        """(M,) representative after revealing an allowed `digit` at `pos` (-1 if not allowed)."""
        out = torch.full_like(reps, -1)
        for rows, t in self._rows(revealed, pos):
            sg = t.sgroup[reps[rows]]
            bits = t.bits[sg].long()  # (m, ceil(V/8))
            d = digit[rows, None]
            byte = bits.gather(1, d // 8)
            ok = (byte >> (d % 8)) & 1
            # groups are sorted by digit: the group of d comes after those of the smaller digits
            below = self._popcount[bits].cumsum(1).gather(1, d // 8) - self._popcount[byte]
            below = below + self._popcount[byte & ((1 << (d % 8)) - 1)]
            group = (t.start[sg] + below.squeeze(1)).clamp(max=t.first.shape[0] - 1)
            out[rows] = torch.where(ok.squeeze(1).bool(), t.first[group], -1)
        return out

    def lookup(self, digits: torch.Tensor) -> torch.Tensor:
        """(M, H) digit tuples -> (M,) item index, -1 where no catalogue item has that SID."""
        M = digits.shape[0]
        reps = torch.zeros(M, dtype=torch.long, device=digits.device)
        ok = ((digits >= 0) & (digits < self.codebook_size)).all(1)
        for p in range(self.sid_len):
            nxt = self.child(
                torch.full_like(reps, (1 << p) - 1),
                reps,
                torch.full_like(reps, p),
                digits[:, p].clamp(0, self.codebook_size - 1),
            )
            ok &= nxt >= 0
            reps = torch.where(ok, nxt, 0)
        return torch.where(ok, reps, -1)


def build_histories(
    vocab: SIDVocab,
    sids: torch.Tensor,
    sequences: Sequence[np.ndarray],
    max_len: int,
    *,
    drop_last: bool = True,
    next_items: int = 1,
) -> torch.LongTensor:
    """Left-padded (B, L) history tokens: the most recent whole items that fit in
    `max_len - next_items * H` tokens, oldest first. With `drop_last` (evaluation) the last item
    of each sequence is the target and never enters the history."""
    H = vocab.sid_len
    max_items = history_window(max_len, H, next_items)
    if max_items < 1:
        raise MadrecError(
            f"max_len={max_len} leaves no room for a history before {next_items} x {H} masked tokens; "
            f"use max_len >= {(next_items + 1) * H}"
        )
    table = vocab.item_tokens(sids.cpu()).numpy()
    num_items = table.shape[0]
    hists = []
    for i, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.int64)
        if seq.size and (seq.min() < 0 or seq.max() >= num_items):
            bad = int(seq[(seq < 0) | (seq >= num_items)][0])
            raise MadrecError(
                f"sequence {i}: item index {bad} outside [0, {num_items}); the SID table has {num_items} items "
                "(are the sequences and the SID table from the same catalogue?)"
            )
        if drop_last:
            if seq.size == 0:
                raise MadrecError(f"sequence {i} is empty: an evaluation sequence needs at least its target item")
            seq = seq[:-1]
        hists.append(seq[len(seq) - min(len(seq), max_items) :])
    width = max((len(h) for h in hists), default=0) * H
    out = np.full((len(hists), width), vocab.pad_id, dtype=np.int64)
    for i, h in enumerate(hists):
        if len(h):
            out[i, width - len(h) * H :] = table[h].reshape(-1)
    return torch.from_numpy(out)


def _first_occurrence(keys: torch.Tensor) -> torch.Tensor:
    """(B, M, P) keys -> (B, M) True where no earlier row of the same user has the same key."""
    B, M, P = keys.shape
    perm = torch.arange(M, device=keys.device).expand(B, M)
    for c in reversed(range(P)):  # lexicographic order, ties keep the earlier (better) row first
        perm = perm.gather(1, torch.argsort(keys[..., c].gather(1, perm), dim=1, stable=True))
    sk = keys.gather(1, perm[..., None].expand(B, M, P))
    repeat = torch.zeros(B, M, dtype=torch.bool, device=keys.device)
    repeat[:, 1:] = (sk[:, 1:] == sk[:, :-1]).all(-1)
    return torch.empty_like(repeat).scatter_(1, perm, ~repeat)


def _check_args(vocab, sids, histories, beam_size, top_k, order, reveal_per_step, next_items) -> None:
    check_beam_width(beam_size, top_k)
    if top_k < 1 or reveal_per_step < 1 or next_items < 1:
        raise MadrecError(
            f"top_k, reveal_per_step and next_items must be >= 1 (got {top_k}, {reveal_per_step}, {next_items})"
        )
    if order not in ORDERS:
        raise MadrecError(f"unknown unmasking order {order!r}; choose one of {', '.join(ORDERS)}")
    if sids.dim() != 2 or sids.shape[0] != vocab.sid_len:
        raise MadrecError(f"SID table has shape {tuple(sids.shape)}, expected ({vocab.sid_len}, N) for this vocabulary")
    if histories.dim() != 2:
        raise MadrecError(f"histories must be a (B, L) token tensor, got shape {tuple(histories.shape)}")


@torch.no_grad()
def history_window(max_len: int, sid_len: int, next_items: int = 1) -> int:
    """How many of a history's most recent items the model reads before `next_items` masked items."""
    return (max_len - next_items * sid_len) // sid_len


def max_next_items(model: Network, max_len: int, sid_len: int) -> int:
    """The most future items this model decodes jointly: 1 for a catalogue head (one slot) or a
    model trained on one masked item at a time, else as many as leave one history item."""
    limit = 1 if model.ranks_catalogue else model.max_next_items
    room = max(1, history_window(max_len, sid_len, 1))
    return min(room, limit) if limit is not None else room


def beam_search(
    model: Network,
    vocab: SIDVocab,
    sids: torch.Tensor,
    histories: torch.Tensor,
    *,
    beam_size: int = 10,
    top_k: int = 10,
    order: str = "confidence",
    reveal_per_step: int = 1,
    constrained: bool = True,
    next_items: int = 1,
    generator: torch.Generator | None = None,
    index: SIDIndex | None = None,
) -> DecodeResult:
    """Beam-decode the next item(s) after each left-padded history (module docstring).

    `index` (a SIDIndex of `sids` on the histories' device) may be passed to reuse its tables
    across calls. Ties are broken towards the earlier beam, then the smaller digit.
    """
    _check_args(vocab, sids, histories, beam_size, top_k, order, reveal_per_step, next_items)
    order = _model_order(model, order, reveal_per_step, next_items)
    if model.ranks_catalogue:
        if next_items > 1:
            raise MadrecError(
                f"next_items={next_items}: this checkpoint ranks the catalogue for one masked item "
                "(model.catalogue_head), so it decodes next_items=1 only"
            )
        return _catalogue_top_k(model, vocab, histories, top_k)
    if index is None:
        index = SIDIndex(sids.to(histories.device), vocab.codebook_size)
    beams = _Beams.start(histories.shape[0], next_items, vocab.sid_len, histories.device)
    for _ in range(-(-beams.positions // reveal_per_step)):
        logits = _digit_logits(model, vocab, histories, beams)  # one model call for every beam
        steps = min(reveal_per_step, int((beams.digits[0] < 0).sum()))
        chosen = _choose_positions(
            index, logits, beams.digits, beams.reps, beams.revealed, order, steps, constrained, generator
        )
        for j in range(steps):
            src = beams.reveal(index, logits, chosen[:, j], beam_size, constrained)
            logits, chosen = logits[src], chosen[src]
    return beams.result(index, top_k, constrained)


def _catalogue_top_k(model: Network, vocab: SIDVocab, histories: torch.Tensor, top_k: int) -> DecodeResult:
    """The top_k items of a catalogue-head model's distribution over the masked slot's clean
    item, in one model call (`top_items`: every item scored by its joint log-probability, or
    the best leaves of the SID tree on a catalogue too large for that, model.tree_width)."""
    items, scores = model.top_items(histories, top_k)
    missing = top_k - items.shape[1]  # a catalogue smaller than the list: -1 items scored -inf
    items = torch.nn.functional.pad(items, (0, missing), value=-1)
    return DecodeResult(items, torch.nn.functional.pad(scores.float(), (0, missing), value=float("-inf")))


@dataclass
class _Beams:
    """The beams of B users, W per user, R = B * W rows user-major, over P = n * H positions."""

    digits: torch.Tensor  # (R, P) revealed digits, -1 = still masked
    reps: torch.Tensor  # (R, n) representative item per item slot (constrained mode)
    revealed: torch.Tensor  # (R, n) bitmask of revealed positions per item slot
    scores: torch.Tensor  # (B, W) fp32 sums of log-probs
    sid_len: int

    @classmethod
    def start(cls, users: int, next_items: int, sid_len: int, device) -> _Beams:
        """One empty beam per user: every position masked, score 0."""
        long = dict(dtype=torch.long, device=device)
        return cls(
            torch.full((users, next_items * sid_len), -1, **long),
            torch.zeros((users, next_items), **long),
            torch.zeros((users, next_items), **long),
            torch.zeros((users, 1), dtype=torch.float32, device=device),
            sid_len,
        )

    @property
    def positions(self) -> int:
        return self.digits.shape[1]

    @property
    def width(self) -> int:
        return self.scores.shape[1]

    def reveal(
        self, index: SIDIndex, logits: torch.Tensor, q: torch.Tensor, beam_size: int, constrained: bool
    ) -> torch.Tensor:
        """Reveal position q[r] of every beam r: expand it by every (allowed) digit and keep the
        best `beam_size` distinct partial SIDs per user. Returns each new beam's parent row."""
        H, (R, _, V) = self.sid_len, logits.shape
        B, W = self.scores.shape
        rows = torch.arange(R, device=q.device)
        lg = logits[rows, q]
        if constrained:
            lg = lg.masked_fill(
                ~index.allowed(self.revealed[rows, q // H], self.reps[rows, q // H], q % H), float("-inf")
            )
        lp = _nan_to_neg_inf(torch.log_softmax(lg, -1))
        W_new = min(beam_size, W * V)
        parent, digit, self.scores = _select(
            (self.scores.reshape(R, 1) + lp).view(B, W * V), self.digits, q, V, W, W_new
        )
        src = (torch.arange(B, device=q.device)[:, None] * W + parent).view(-1)  # parent rows
        digit, qs = digit.view(-1), q[src]
        rows = torch.arange(B * W_new, device=q.device)
        self.digits, self.reps, self.revealed = self.digits[src], self.reps[src], self.revealed[src]
        self.digits[rows, qs] = digit
        if constrained:
            child = index.child(self.revealed[rows, qs // H], self.reps[rows, qs // H], qs % H, digit)
            self.reps[rows, qs // H] = child.clamp(min=0)  # -1: a dead beam's impossible digit
        self.revealed[rows, qs // H] |= 1 << (qs % H)
        return src

    def result(self, index: SIDIndex, top_k: int, constrained: bool) -> DecodeResult:
        """The finished beams as items, best first, padded with "no item" to top_k."""
        (B, W), H = self.scores.shape, self.sid_len
        n = self.reps.shape[1]
        items = self.reps if constrained else index.lookup(self.digits.view(-1, H)).view(B * W, n)
        items = items.view(B, W, n).masked_fill(torch.isinf(self.scores)[..., None], -1)
        scores = self.scores
        if W < top_k:  # a catalogue smaller than top_k: pad with "no item"
            items = torch.cat([items, items.new_full((B, top_k - W, n), -1)], 1)
            scores = torch.cat([scores, scores.new_full((B, top_k - W), float("-inf"))], 1)
        items, scores = items[:, :top_k], scores[:, :top_k]
        return DecodeResult(items.squeeze(2) if n == 1 else items, scores)


def _digit_logits(model: Network, vocab: SIDVocab, histories: torch.Tensor, beams: _Beams) -> torch.Tensor:
    """(R, P, V) fp32 logits of the digit tokens at every slot position, for every beam."""
    H, V, P = vocab.sid_len, vocab.codebook_size, beams.positions
    pos_h = torch.arange(P, device=histories.device) % H
    digit_tokens = pos_h[:, None] * (V + 1) + torch.arange(V, device=histories.device)  # (P, V)
    slot = torch.where(beams.digits >= 0, beams.digits + pos_h * (V + 1), vocab.mask_id)
    tokens = torch.cat([histories.repeat_interleave(beams.width, 0), slot], 1)
    logits = _slot_logits(model, tokens, P)
    return logits.gather(2, digit_tokens.expand(tokens.shape[0], P, V)).float()


def _nan_to_neg_inf(x: torch.Tensor) -> torch.Tensor:
    """NaN (log_softmax of a row with every digit forbidden) -> -inf, keeping -inf as -inf.

    Not `nan_to_num(nan=-inf)`: that also maps -inf to the smallest finite float, so forbidden
    digits and dead beams would keep finite scores and surface as repeated items.
    """
    return x.masked_fill(torch.isnan(x), float("-inf"))


def _model_order(model: Network, order: str, reveal_per_step: int, next_items: int) -> str:
    """The unmasking order this model can decode with; refuse what it was not trained for.

    A causal model (tiger, sasrec) predicts a position only from the tokens before it, so it
    reveals left to right, one position per call (`confidence`, the default, means that for it).
    BlockDiffusionLM never saw two masked items at once.
    """
    if model.causal:
        if order == "random" or reveal_per_step > 1:
            raise MadrecError(
                f"{type(model).__name__} is a causal (left-to-right) model: it decodes one SID "
                f"position per call in order; got order={order}, reveal_per_step={reveal_per_step}"
            )
        return "left_to_right"
    if model.max_next_items is not None and next_items > model.max_next_items:
        raise MadrecError(
            f"next_items={next_items}: {type(model).__name__} decodes at most {model.max_next_items} item(s) at "
            "once (a noised item was trained beside clean items only); decode next_items=1, or train the "
            "reference network (diffusion.masking=uniform, model.pool_history=false) for several"
        )
    return order


def _slot_logits(model: Network, tokens: torch.Tensor, P: int) -> torch.Tensor:
    """(R, P, vocab) logits at the last P positions, asked for by `select` (sparing the full output layer)."""
    select = torch.zeros_like(tokens, dtype=torch.bool)
    select[:, -P:] = True
    return model(tokens, select=select).view(tokens.shape[0], P, -1)


def _choose_positions(index, logits, digits, reps, revealed, order, steps, constrained, generator):
    """(R, steps) masked positions to reveal for each beam, in reveal order."""
    R, P, V = logits.shape
    H = index.sid_len
    masked = digits < 0
    if order == "left_to_right":
        priority = -torch.arange(P, device=logits.device, dtype=torch.float32).expand(R, P)
    elif order == "random":
        gen_device = generator.device if generator is not None else "cpu"
        priority = torch.rand((R, P), generator=generator, device=gen_device).to(logits.device)
    else:  # most confident: highest (constrained) max probability
        lg = logits
        if constrained:
            rows, q = masked.nonzero(as_tuple=True)
            ok = index.allowed(revealed[rows, q // H], reps[rows, q // H], q % H)
            lg = logits.clone()
            lg[rows, q] = lg[rows, q].masked_fill(~ok, float("-inf"))
        priority = _nan_to_neg_inf(torch.log_softmax(lg, -1).amax(-1))
    priority = priority.masked_fill(~masked, float("-inf"))
    # stable sort: equal priorities go to the smaller position; revealed positions sort last
    ranked = torch.sort(priority, dim=1, descending=True, stable=True).indices
    return ranked[:, :steps]


def _select(cand: torch.Tensor, digits: torch.Tensor, q: torch.Tensor, V: int, W: int, W_new: int):
    """Best W_new distinct partial SIDs per user among (B, W*V) candidate scores.

    Two beams may reach the same partial SID through different reveal orders; only the better
    scored copy is kept. Each distinct candidate has at most W copies (one per parent), so the
    best W_new distinct ones are among the best W_new * W candidates.
    """
    B = cand.shape[0]
    M = min(W_new * W, cand.shape[1])
    top = torch.sort(cand, dim=1, descending=True, stable=True)
    idx, val = top.indices[:, :M], top.values[:, :M]
    parent, digit = idx // V, idx % V
    src = torch.arange(B, device=cand.device)[:, None] * W + parent
    keys = digits[src].clone()  # (B, M, P)
    keys.scatter_(2, q[src][..., None], digit[..., None])
    val = val.masked_fill(~_first_occurrence(keys), float("-inf"))
    keep = torch.sort(val, dim=1, descending=True, stable=True)
    sel = keep.indices[:, :W_new]
    return parent.gather(1, sel), digit.gather(1, sel), keep.values[:, :W_new]
