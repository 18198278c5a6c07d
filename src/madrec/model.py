"""The masked-diffusion language model over SID tokens (docs/method.md, "The recommenders"), in one file.

A bidirectional (non-causal) pre-LayerNorm transformer encoder:

    tokens -> embedding -> dropout -> n_layer x [x + attn(ln(x)); x + mlp(ln(x))] -> ln
           -> logits = (h / sqrt(n_embd)) @ embedding.T      (tied output)

Positions enter only through rotary embeddings on queries and keys, so attention scores
depend on relative offsets alone and PAD keys are masked out: a sequence gives the same
logits at its real tokens whether it is padded on the left, on the right, or not at all.
Attention is PyTorch's `scaled_dot_product_attention`: its fused kernels on GPUs, its math
backend on CPUs (there the fused CPU kernel is slower for these short masked rows).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


@dataclass
class ModelConfig:
    """Transformer shape; the defaults are the reference configuration (docs/method.md).

    `name` picks the recommender (madrec.models): maskgr (masked diffusion over SIDs, the
    method), tiger (autoregressive over the same SIDs) or sasrec (next item id)."""

    name: str = "maskgr"
    n_layer: int = 8
    n_embd: int = 128
    n_head: int = 8
    d_ff: int = 3072
    # or auto: set from the training data's interactions per item (madrec.train.resolve_dropout)
    dropout: float | str = 0.25
    rope_base: float = 10000.0
    # add a learned embedding of each token's SID position (slot), counted back from the
    # sequence end; MASK tokens otherwise learn their slot only slowly through rotary offsets
    slot_embedding: bool = False
    # add a learned embedding of the item id to the tokens of every complete (unmasked) item:
    # item-to-item patterns are learned per item instead of through shared SID codes only
    item_embedding: bool = False
    # one token per clean history item (the mean of its SID token embeddings) instead of H:
    # rows cost ~H times fewer tokens; only the next item is noised, so needs next-item masking
    pool_history: bool = False
    # random, or cooccurrence: each SID digit token starts at the mean co-occurrence vector of
    # its code's items in the training sequences (madrec.cooccur), so similar codes start close
    embedding_init: str = "random"
    # with pool_history: each slot position's digit distribution is the marginal of a
    # distribution over the catalogue items that agree with the slot's revealed digits, item i
    # scored by the state's dot product with i's pooled embedding (the vector it has as a
    # history item): the denoiser predicts a clean item, x0 on the data manifold
    catalogue_head: bool = False
    # with catalogue_head: each noised item is one token too (the mean of its tokens' embeddings,
    # MASK included, plus their slot embeddings) instead of H, so a row of n items costs 2n - 1
    # tokens; the head reads the item's distribution from that token's state
    pool_slot: bool = False
    # with pool_history: each noised item's input adds the pooled vector of the clean item just
    # before it (the history's last item when decoding), as a causal model's position carries its
    # own item into its prediction; attention alone brings it to a MASK token only faintly
    slot_reads_previous: bool = False


class Rotary(nn.Module):
    """Rotary position embedding (RoPE) for (B, n_head, L, head_dim) queries and keys."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """positions: (L,) token positions; None is 0 .. L-1."""
        if positions is None:
            positions = torch.arange(x.shape[-2], device=x.device)
        angles = torch.outer(positions.to(torch.float32), self.inv_freq)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        # rotate each (even, odd) pair by its position's angle; interleave back
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.rotary = Rotary(cfg.n_embd // cfg.n_head, cfg.rope_base)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, C); keep: (B, 1, 1 or L, L) bool, True for keys that may be attended to."""
        b, length, c = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
        q, k = self.rotary(q, positions), self.rotary(k, positions)
        # On a CPU the fused kernel took 178 ms per `small` step where the math backend takes 135
        # (bench/train/results.md, "Attention on a CPU").
        backend = sdpa_kernel(SDPBackend.MATH) if x.device.type == "cpu" else contextlib.nullcontext()
        with backend:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=keep, dropout_p=self.dropout if self.training else 0.0
            )
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, length, c)))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), keep, positions)
        return x + self.mlp(self.ln2(x))


def tokens_from_end(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, L): 1 at each row's last real token, 2 at the one before it, ...; 0 at PAD."""
    real = tokens != pad_id
    return real.flip(1).cumsum(1).flip(1) * real


def items_from_end(tokens: torch.Tensor, pad_id: int, sid_len: int) -> torch.Tensor:
    """(B, L): 1 at the tokens of each row's last item, 2 at the item before it, ...; 0 at PAD."""
    return torch.div(tokens_from_end(tokens, pad_id) + sid_len - 1, sid_len, rounding_mode="floor")


def as_items(x: torch.Tensor, from_end: torch.Tensor, sid_len: int, fill) -> torch.Tensor:
    """(B, L) per-token values -> (B, n, H), item by item, oldest first, items counted from each
    row's end (`from_end`: tokens_from_end of the row); `fill` where a row has fewer items or an
    item fewer tokens."""
    b = x.shape[0]
    n = int(from_end.max() + sid_len - 1) // sid_len
    index = torch.where(from_end > 0, n * sid_len - from_end, n * sid_len)  # PAD goes to a spare last column
    out = x.new_full((b, n * sid_len + 1), fill).scatter(1, index, x)
    return out[:, :-1].view(b, n, sid_len)


def history_and_copies_mask(real: torch.Tensor, copies: int, sid_len: int, causal: bool = False) -> torch.Tensor:
    """(B, 1, n + copies * H, same) bool attention mask of a clean history of n positions
    (`real`: (B, n), its non-PAD keys) followed by `copies` slots of H tokens: the history sees
    its own keys only (with `causal`, those at or before the query), each slot the history and
    its own tokens; every query sees itself."""
    b, n = real.shape
    copy_of = torch.arange(copies, device=real.device).repeat_interleave(sid_len)
    history = real[:, None, :].expand(-1, n, -1)
    if causal:
        history = history & torch.ones(n, n, dtype=torch.bool, device=real.device).tril()
    top = torch.cat([history, real.new_zeros(b, n, copies * sid_len)], 2)
    own = (copy_of[:, None] == copy_of[None, :]).expand(b, -1, -1)
    bottom = torch.cat([real[:, None, :].expand(-1, copies * sid_len, -1), own], 2)
    keep = torch.cat([top, bottom], 1) | torch.eye(n + copies * sid_len, dtype=torch.bool, device=real.device)
    return keep[:, None]


def block_causal_mask(
    clean_item: torch.Tensor, clean_real: torch.Tensor, noised_item: torch.Tensor, noised_real: torch.Tensor
) -> torch.Tensor:
    """(B, 1, Lc + Ln, same) bool attention mask of block diffusion over items: clean tokens
    ((B, Lc) item index, earlier items smaller; `clean_real` their non-PAD keys) see the real
    clean tokens of their own and earlier items; the noised tokens after them ((B, Ln)) see the
    real clean tokens of strictly earlier items and the real noised tokens of their own item;
    every query sees itself."""
    b, lc, ln = clean_item.shape[0], clean_item.shape[1], noised_item.shape[1]
    key = clean_item[:, None, :]
    clean_sees_clean = clean_real[:, None, :] & (key <= clean_item[:, :, None])
    noised_sees_clean = clean_real[:, None, :] & (key < noised_item[:, :, None])
    noised_sees_noised = noised_real[:, None, :] & (noised_item[:, None, :] == noised_item[:, :, None])
    keep = torch.cat(
        [
            torch.cat([clean_sees_clean, clean_real.new_zeros(b, lc, ln)], 2),
            torch.cat([noised_sees_clean, noised_sees_noised], 2),
        ],
        1,
    )
    return (keep | torch.eye(lc + ln, dtype=torch.bool, device=keep.device))[:, None]


def rows_of_keys(sorted_keys: torch.Tensor, rows: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """(...) int64 item keys -> (...) their catalogue rows (`rows` ordered as `sorted_keys`), -1 where absent."""
    at = torch.searchsorted(sorted_keys, key.flatten()).view_as(key).clamp(max=len(sorted_keys) - 1)
    return torch.where(sorted_keys[at] == key, rows[at], -1)


class ItemIds(nn.Module):
    """Learned item-id embeddings looked up from each item's SID tokens (index 0: no item)."""

    def __init__(self, item_tokens: torch.Tensor, vocab_size: int, n_embd: int):
        super().__init__()
        self.base = vocab_size  # a token id is one digit of the key in this base
        if vocab_size ** item_tokens.shape[-1] >= 2**63:
            raise ValueError(f"item_embedding: SIDs of {item_tokens.shape[-1]} tokens are too long for int64 keys")
        keys = self.keys(item_tokens.long())
        order = torch.argsort(keys)
        self.register_buffer("sorted_keys", keys[order])
        self.register_buffer("item_of_key", order)
        self.embed = nn.Embedding(len(keys) + 1, n_embd, padding_idx=0)
        nn.init.normal_(self.embed.weight, mean=0.0, std=1.0)
        with torch.no_grad():
            self.embed.weight[0].zero_()

    def keys(self, item_tokens: torch.Tensor) -> torch.Tensor:
        """(..., H) tokens -> (...) int64 key, unique per SID."""
        powers = self.base ** torch.arange(item_tokens.shape[-1], device=item_tokens.device, dtype=torch.long)
        return (item_tokens * powers).sum(-1)

    def per_token(self, tokens: torch.Tensor, pad_id: int, sid_len: int) -> torch.Tensor:
        """(B, L) -> (B, L) item index + 1 at every token of a complete catalogue item, else 0
        (an item holding MASK or cut by the row's start is no catalogue item)."""
        from_end = tokens_from_end(tokens, pad_id)
        ids = self.of_items(as_items(tokens, from_end, sid_len, pad_id))  # (B, n), oldest first
        if ids.shape[1] == 0:  # every row PAD
            return torch.zeros_like(tokens)
        group = items_from_end(tokens, pad_id, sid_len)  # 1 = the row's last item, 0 = PAD
        column = (ids.shape[1] - group).clamp(0, ids.shape[1] - 1)  # PAD (group 0): any column, masked below
        return torch.where(group > 0, ids.gather(1, column), 0)

    def of_items(self, items: torch.Tensor) -> torch.Tensor:
        """(..., H) token ids of whole items -> (...) item index + 1, 0 where not a catalogue item."""
        return rows_of_keys(self.sorted_keys, self.item_of_key, self.keys(items)) + 1

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids)


class CatalogueHead(nn.Module):
    """The slot's clean item as a distribution over the catalogue; its digits' log-probabilities
    as that distribution's marginals.

    One state h per slot scores item i as h . e_i (e_i: the item's vector) if i's tokens agree
    with every revealed token of the slot, else -inf; p(token at position k) is the softmax mass
    of the items whose k-th token it is. The true item always agrees with its own revealed
    digits, so no training target is impossible; a token no agreeing item has gets
    log p = log(1e-30) (finite, so its gradient stays 0, not NaN).
    """

    def __init__(self, item_tokens: torch.Tensor, vocab_size: int, mask_id: int):
        super().__init__()
        n, h = item_tokens.shape
        if vocab_size**h >= 2**63:
            raise ValueError(f"catalogue_head: SIDs of {h} tokens are too long for int64 keys")
        self.vocab_size, self.mask_id = vocab_size, mask_id
        self.register_buffer("item_tokens", item_tokens.long(), persistent=False)  # (N, H)
        self.register_buffer("powers", vocab_size ** torch.arange(h), persistent=False)
        # keys[r, i]: item i's tokens at the positions in bit pattern r as one number, 0 elsewhere,
        # so "agrees with a slot whose revealed positions are r" is one comparison
        bits = (torch.arange(2**h)[:, None] >> torch.arange(h)) & 1
        self.register_buffer("keys", (self.item_tokens[None] * self.powers * bits[:, None]).sum(-1), persistent=False)
        # keys[-1] (every position) sorted, to find a clean item's index by binary search
        whole, rows = self.keys[-1].sort()
        self.register_buffer("whole_keys", whole, persistent=False)
        self.register_buffer("whole_rows", rows, persistent=False)

    def item_log_probs(self, h: torch.Tensor, slots: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """h (S, C) scaled slot states, slots (S, H) their tokens, items (N, C) -> (S, N) log q(item)."""
        revealed = slots != self.mask_id
        pattern = (revealed.long() << torch.arange(slots.shape[1], device=slots.device)).sum(1)
        agree = self.keys[pattern] == (slots * revealed * self.powers).sum(1, keepdim=True)
        return (h @ items.t()).float().masked_fill(~agree, float("-inf")).log_softmax(1)

    def forward(
        self, h: torch.Tensor, slots: torch.Tensor, items: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """h (S, C) scaled slot states, slots (S, H) their tokens, items (N, C) -> (S, H, vocab) log p;
        with `targets` ((S, H) the slots' clean items) also (S,) -log q(target item)."""
        log_q = self.item_log_probs(h, slots, items)  # (S, N)
        q = log_q.exp()
        marginals = [
            q.new_zeros(len(q), self.vocab_size).index_add(1, self.item_tokens[:, k], q)
            for k in range(self.item_tokens.shape[1])
        ]
        log_marginals = torch.stack(marginals, 1).clamp_min(1e-30).log()
        if targets is None:
            return log_marginals
        return log_marginals, -log_q.gather(1, self.index_of(targets)[:, None])[:, 0]

    def index_of(self, items: torch.Tensor) -> torch.Tensor:
        """(S, H) tokens of catalogue items -> (S,) their rows of the catalogue."""
        rows = rows_of_keys(self.whole_keys, self.whole_rows, (items * self.powers).sum(1))
        if (rows < 0).any():  # a host sync per step on a GPU: the price of a clear error
            raise ValueError("catalogue_head: a target item is not in the catalogue")
        return rows


class MaskedDiffusionLM(nn.Module):
    """Bidirectional transformer predicting every position's token; PAD keys are masked."""

    causal = False  # decoding may reveal positions in any order (madrec.decode)
    max_next_items: int | None = None  # None: any number of jointly decoded next items

    def __init__(
        self,
        cfg: ModelConfig,
        vocab_size: int,
        pad_id: int,
        sid_len: int | None = None,
        item_tokens: torch.Tensor | None = None,
    ):
        """item_tokens: the catalogue's (N, H) token table, needed by `cfg.item_embedding`."""
        super().__init__()
        if cfg.n_embd % cfg.n_head or (cfg.n_embd // cfg.n_head) % 2:
            raise ValueError(f"n_embd={cfg.n_embd} must split into n_head={cfg.n_head} heads of even size (rotary)")
        if (cfg.slot_embedding or cfg.item_embedding) and not sid_len:
            raise ValueError("slot_embedding and item_embedding need sid_len (tokens per item)")
        if cfg.item_embedding and item_tokens is None:
            raise ValueError("item_embedding needs the catalogue's SID table")
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.sid_len = sid_len
        self.embed = nn.Embedding(vocab_size, cfg.n_embd)
        self.slot = nn.Embedding(sid_len, cfg.n_embd) if cfg.slot_embedding else None
        self.item = ItemIds(item_tokens, vocab_size, cfg.n_embd) if cfg.item_embedding else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.apply(self._init_weights)
        # unit-variance embeddings: with the tied output scaled by 1/sqrt(n_embd) the initial
        # logits have unit scale (T5's convention); 0.02 would leave them ~50x too small to learn fast
        nn.init.normal_(self.embed.weight, mean=0.0, std=1.0)
        # GPT-2 scaling: residual projections shrink with depth so the stream's variance stays put
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) token ids -> (B, L, vocab_size) logits (PAD positions' logits are meaningless).

        With `select` ((B, L) bool), only the selected positions' logits: (M, vocab_size),
        which spares training the full (B, L, vocab_size) tensor.
        """
        return self.logits(tokens, self.attention_mask(tokens), self.slots(tokens), select)

    def logits(
        self,
        tokens: torch.Tensor,
        keep: torch.Tensor,
        slots: torch.Tensor | None,
        select: torch.Tensor | None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The transformer on given attention `keep` mask, SID slots and rotary positions."""
        x = self.embed(tokens)
        if self.slot is not None:
            x = x + self.slot(slots)
        if self.item is not None:
            x = x + self.item(self.item_ids(tokens))
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, keep, positions)
        x = self.position_outputs(x)
        h = self.ln_f(x if select is None else x[select]) / math.sqrt(self.cfg.n_embd)
        return h @ self.embed.weight.t()

    def slots(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """(B, L) SID position of each token (None without slot embeddings). Sequences end with
        a whole item (history items, then the MASKs of the next one): the last real token is
        slot H-1, the one before it H-2, ... whatever the padding."""
        if self.slot is None:
            return None
        return torch.remainder(-tokens_from_end(tokens, self.pad_id), self.sid_len)

    def item_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) item index + 1 at every token of a complete item, 0 elsewhere (MASK in the
        item, PAD): a noised item never gets its id, so the id cannot leak a masked digit."""
        return self.item.per_token(tokens, self.pad_id, self.sid_len)

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, L) bool: every query may attend to every non-PAD key (bidirectional)."""
        keep = tokens != self.pad_id
        # an all-PAD row would leave its queries nothing to attend to (NaN); let it see everything
        keep = keep | ~keep.any(dim=1, keepdim=True)
        return keep[:, None, None, :]

    def position_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden state that predicts each position's token: its own (masked prediction)."""
        return x

    def flops_per_token(self, length: int) -> float:
        """Training FLOPs (forward + backward) per token at sequence length `length`."""
        c = self.cfg
        matmul_params = c.n_layer * (4 * c.n_embd * c.n_embd + 2 * c.n_embd * c.d_ff) + self.vocab_size * c.n_embd
        attention = c.n_layer * 2 * length * c.n_embd  # q·k and attn·v, per token
        return 6 * matmul_params + 6 * attention


class CausalLM(MaskedDiffusionLM):
    """The same transformer with causal self-attention, read as a next-token model.

    Position i's logits come from the hidden state at i - 1 (teacher forcing), so asking for
    the logits of a masked SID position gives p(token | every token before it): decoding
    reveals positions left to right, one per model call. Queries always see themselves, so a
    left-padded row has no empty attention row.
    """

    causal = True

    def __init__(
        self,
        cfg: ModelConfig,
        vocab_size: int,
        pad_id: int,
        sid_len: int | None = None,
        item_tokens: torch.Tensor | None = None,
    ):
        super().__init__(dataclasses.replace(cfg, slot_embedding=False), vocab_size, pad_id, sid_len, item_tokens)

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


class ItemCausalDiffusionLM(MaskedDiffusionLM):
    """Masked diffusion within each item, causal across items: block diffusion (BD3-LM,
    Arriola et al. 2025) with one item's semantic ID as the block (docs/method.md, deviations).

    Each token attends to the tokens of its own item and of every item before it. On a
    decoding input (the history, then the next item's masked slot) the slot therefore sees the
    whole clean history and its own revealed digits, as in MaskedDiffusionLM. In training
    (`forward(noisy, select, clean=row)`) the clean row and its noised copy run side by side,
    as BD3-LM does: noised item b attends to clean items before b and to itself, so one pass
    trains every item of a row as a next item, where next-item noising trains one.
    """

    max_next_items = 1  # a masked item sees clean items only: one next item at a time

    def __init__(
        self, cfg: ModelConfig, vocab_size: int, pad_id: int, sid_len: int, item_tokens: torch.Tensor | None = None
    ):
        super().__init__(cfg, vocab_size, pad_id, sid_len, item_tokens)

    def forward(
        self, tokens: torch.Tensor, select: torch.Tensor | None = None, clean: torch.Tensor | None = None
    ) -> torch.Tensor:
        if clean is None:
            return super().forward(tokens, select)
        length = tokens.shape[1]
        order = -items_from_end(clean, self.pad_id, self.sid_len)  # item index, earlier items smaller
        keep = block_causal_mask(order, order < 0, order, order < 0)
        positions = torch.arange(length, device=tokens.device).repeat(2)  # a copy keeps its item's positions
        slots = None if self.slot is None else self.slots(clean).repeat(1, 2)
        if select is not None:
            select = torch.cat([torch.zeros_like(select), select], 1)
        return self.logits(torch.cat([clean, tokens], 1), keep, slots, select, positions)

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1, L, L) bool: non-PAD keys of the query's own item and of earlier items."""
        order = -items_from_end(tokens, self.pad_id, self.sid_len)
        none = order[:, :0]
        return block_causal_mask(order, order < 0, none, none.bool())


class PooledHistoryDiffusionLM(MaskedDiffusionLM):
    """Masked diffusion over the next item's SID tokens, the clean history one token per item.

    The row's last item (its H tokens, some or all MASK) stays H tokens; every history item
    before it becomes one token, the mean of its SID token embeddings plus a learned
    "history item" slot. A row of n items costs n - 1 + H tokens instead of n * H, so a CPU
    second trains several times more next-item targets. Only the last item carries
    predictions: the objective must noise nothing else (diffusion.masking=next_item), and
    `select` may not ask for a history position. The history does not attend to the slot
    (as in NextItemDiffusionLM), so diffusion.next_item_copies works here too.
    """

    max_next_items = 1  # the network reads one masked item per row
    causal_history = False  # history items attend to every other history item

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
        super().__init__(cfg, vocab_size, pad_id, sid_len, item_tokens)
        self.history_slot = nn.Parameter(torch.zeros(cfg.n_embd))
        if cfg.catalogue_head and (item_tokens is None or mask_id is None):
            raise ValueError("catalogue_head needs the catalogue's SID table and the MASK token id")
        if cfg.pool_slot and not cfg.catalogue_head:
            raise ValueError("pool_slot needs catalogue_head: one token per noised item has no per-digit states")
        self.head = CatalogueHead(item_tokens, vocab_size, mask_id) if cfg.catalogue_head else None

    def forward(
        self, tokens: torch.Tensor, select: torch.Tensor | None = None, copies: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, L) tokens -> the last item's logits: (M, vocab) at `select`, else (B, L, vocab)
        with zeros at every history and PAD position. With `copies` ((B, n, H) noised versions
        of the last item) and `select` ((B, n, H)): their logits, each as if alone."""
        tail = self._tail_positions(tokens)
        b, h = tokens.shape[0], self.sid_len
        if copies is None:
            if select is not None and (select & ~tail).any():
                raise ValueError("pool_history predicts only each row's last item; select asked for a history position")
            copies = tokens[tail].view(b, 1, h)
            select_copies = None if select is None else select[tail].view(b, 1, h)
        else:
            select_copies = select
        logits = self._slot_logits(self._slot_states(tokens, copies), copies, select_copies)
        if select is not None:
            return logits
        full = logits.new_zeros(*tokens.shape, self.vocab_size)
        full[tail] = logits.reshape(-1, self.vocab_size)
        return full

    def _slot_logits(
        self,
        states: torch.Tensor,
        slots: torch.Tensor,
        select: torch.Tensor | None,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of slot states (B, n, H, C) whose noised tokens are `slots` (B, n, H): (M, vocab)
        at `select` ((B, n, H) bool), else (B * n * H, vocab). With `targets` ((B, n, H) the slots'
        clean items; catalogue head only) also (M,): each selected token's share of its slot's
        -log q(clean item), so the shares of a slot sum to its item loss."""
        if select is None:
            select = torch.ones_like(slots, dtype=torch.bool)
        if self.head is None:
            if targets is not None:
                raise ValueError("an item loss needs model.catalogue_head")
            return self.ln_f(states[select]) / math.sqrt(self.cfg.n_embd) @ self.embed.weight.t()
        asked = select.any(-1)  # slots with a position asked for
        chosen = select[asked]
        out = self.head(
            self._slot_vector(states[asked]),
            slots[asked],
            self._catalogue(),
            None if targets is None else targets[asked],
        )
        if targets is None:
            return out[chosen]
        log_marginals, item_nll = out
        shares = (item_nll / chosen.sum(1))[:, None].expand_as(chosen)
        return log_marginals[chosen], shares[chosen]

    def _slot_vector(self, states: torch.Tensor) -> torch.Tensor:
        """(S, H, C) final states of slots ((S, 1, C) with pool_slot) -> (S, C): one scaled state
        per slot, the mean of its positions'."""
        return self.ln_f(states.mean(1)) / math.sqrt(self.cfg.n_embd)

    def _catalogue(self) -> torch.Tensor:
        """(N, C) every catalogue item's vector: what it is as a pooled history item."""
        return self._pool(self.head.item_tokens[None])[0]

    def item_log_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) rows ending in the slot (H tokens, some or all MASK) -> (B, N) log q(item) of the
        catalogue head: the slot's clean item, -inf for items disagreeing with its revealed tokens."""
        if self.head is None:
            raise ValueError("item_log_probs needs model.catalogue_head")
        tail = self._tail_positions(tokens)
        slots = tokens[tail].view(tokens.shape[0], 1, self.sid_len)
        h = self._slot_vector(self._slot_states(tokens, slots)[:, 0])
        return self.head.item_log_probs(h, slots[:, 0], self._catalogue())

    def _slot_states(self, tokens: torch.Tensor, copies: torch.Tensor) -> torch.Tensor:
        """(B, n, H, C) final states of each slot copy ((B, n, 1, C) with pool_slot) beside the
        pooled history (which does not attend to the slots, so a copy's states are those it would
        have alone)."""
        b, n = copies.shape[:2]
        history, real = self._pooled_history(tokens)
        last = history[:, -1:] if history.shape[1] else history.new_zeros(b, 1, history.shape[2])
        x = self._noised_items(copies, last)
        h = x.shape[2]
        x = self.drop(torch.cat([history + self.history_slot, x.flatten(1, 2)], 1))
        steps = torch.arange(history.shape[1] + h, device=tokens.device)
        positions = torch.cat([steps[: history.shape[1]], steps[history.shape[1] :].repeat(n)])
        keep = history_and_copies_mask(real, n, h, causal=self.causal_history)
        for block in self.blocks:
            x = block(x, keep, positions)
        return x[:, history.shape[1] :].reshape(b, n, h, -1)

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


class PooledItemCausalDiffusionLM(PooledHistoryDiffusionLM):
    """Block diffusion over pooled items: every item of a row a next-item target in one pass.

    `pool_history` with `diffusion.masking=every_item`. The row's clean items are one pooled
    token each, attending causally (to themselves and earlier items); beside them, item b's
    noised SID tokens attend to the pooled items before b and to each other. A row of n items
    costs n + (n - 1) H tokens and trains n - 1 next items, where next-item noising trains one:
    the density of the causal `tiger`, with the masked-diffusion objective on each item. Decoding
    (`forward(tokens, select)`) is PooledHistoryDiffusionLM's with a causal history, so the slot
    gets exactly the logits its item gets in the training pass.
    """

    causal_history = True

    def forward(
        self,
        tokens: torch.Tensor,
        select: torch.Tensor | None = None,
        copies: torch.Tensor | None = None,
        clean: torch.Tensor | None = None,
        item_nll: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """As PooledHistoryDiffusionLM; with `clean` ((B, L) rows of which `tokens` is the noised
        version) and `select`: the logits at `select`, every item beside the clean items before it,
        and with `item_nll` each selected token's share of its item's loss (`_slot_logits`)."""
        if clean is None:
            return super().forward(tokens, select, copies)
        if select is None:
            raise ValueError("the every-item training pass needs select (the noised positions)")
        from_end = tokens_from_end(clean, self.pad_id)
        items, noisy, chosen = (self._as_items(x, from_end) for x in (clean, tokens, select))
        if chosen[:, 0].any():
            raise ValueError("a row's first item has no history: it cannot be a target")
        targets = items[:, 1:] if item_nll else None
        return self._slot_logits(self._item_states(items, noisy[:, 1:]), noisy[:, 1:], chosen[:, 1:], targets)

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


class NextItemDiffusionLM(MaskedDiffusionLM):
    """Masked diffusion of the next item beside a clean history that does not attend to it.

    The history (every token but a row's last item) attends bidirectionally to itself; the
    next item's H tokens attend to the history and to each other. Since the history's states
    do not depend on the slot, one pass can denoise several noised copies of the next item
    (`forward(tokens, select, copies)`, diffusion.next_item_copies), each exactly as if alone.
    """

    max_next_items = 1  # the slot is the row's last item

    def forward(
        self, tokens: torch.Tensor, select: torch.Tensor | None = None, copies: torch.Tensor | None = None
    ) -> torch.Tensor:
        """As MaskedDiffusionLM; with `copies` ((B, n, H)) see `copies_forward`."""
        if copies is not None:
            return self.copies_forward(tokens, copies, select)
        return super().forward(tokens, select)

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1, L, L) bool: non-PAD keys, except that history queries skip the last item's keys."""
        from_end = tokens_from_end(tokens, self.pad_id)
        slot = (from_end >= 1) & (from_end <= self.sid_len)
        keep = super().attention_mask(tokens) & ~(~slot[:, None, :, None] & slot[:, None, None, :])
        return keep | torch.eye(tokens.shape[1], dtype=torch.bool, device=tokens.device)

    def copies_forward(self, tokens: torch.Tensor, copies: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        """Logits at `select` ((B, n, H) bool) of n noised copies of each row's last item, in one
        pass: the clean history attends to itself, copy j to the history and to its own tokens,
        at the last item's positions and slots. Each copy gets exactly the logits of the row
        [history, copy j] alone (the history never sees the slot), so one pass trains n noise
        levels of the next item for one history's cost."""
        b, n, h = copies.shape
        if (tokens[:, -h:] == self.pad_id).any():
            raise ValueError("copies need rows that end with a whole item (left-padded rows)")
        history = tokens[:, :-h]
        length = history.shape[1]
        real = history != self.pad_id
        keep = history_and_copies_mask(real, n, h)
        steps = torch.arange(length + h, device=tokens.device)
        positions = torch.cat([steps[:length], steps[length:].repeat(n)])
        slots = None if self.slot is None else self.slots(tokens)
        if slots is not None:
            slots = torch.cat([slots[:, :length], slots[:, -h:].repeat(1, n)], 1)
        select = torch.cat([torch.zeros_like(real), select.flatten(1)], 1)
        return self.logits(torch.cat([history, copies.flatten(1)], 1), keep, slots, select, positions)
