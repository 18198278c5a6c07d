"""The transformer pieces every madrec network is made of (docs/method.md, "The recommenders").

A pre-LayerNorm transformer over SID tokens with a tied output:

    tokens -> embedding -> dropout -> n_layer x [x + attn(ln(x)); x + mlp(ln(x))] -> ln
           -> logits = (h / sqrt(n_embd)) @ embedding.T

Positions enter only through rotary embeddings on queries and keys, so attention scores
depend on relative offsets alone and PAD keys are masked out: a sequence gives the same
logits at its real tokens whether it is padded on the left, on the right, or not at all.
Attention is PyTorch's `scaled_dot_product_attention`: its fused kernels on GPUs, its math
backend on CPUs (there the fused CPU kernel is slower for these short masked rows). The
networks themselves live one family per file: maskgr.py (masked diffusion), tiger.py (causal).
"""

from __future__ import annotations

import contextlib
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
    # or auto: set from the training data's interactions per item (madrec.train.run.resolve_dropout)
    dropout: float | str = 0.25
    rope_base: float = 10000.0
    # add a learned embedding of each token's SID position (slot), counted back from the
    # sequence end; MASK tokens otherwise learn their slot only slowly through rotary offsets
    slot_embedding: bool = False
    # add a learned embedding of the item id to the tokens of every complete (unmasked) item:
    # item-to-item patterns are learned per item instead of through shared SID codes only
    item_embedding: bool = False
    # maskgr with diffusion.masking=every_item: one token per clean history item (the mean of its
    # SID token embeddings) instead of H, so rows cost ~H times fewer tokens (BlockDiffusionLM)
    pool_history: bool = False
    # random, or cooccurrence: each SID digit token starts at the mean co-occurrence vector of
    # its code's items in the training sequences (madrec.sids.cooccur), so similar codes start close
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
    # A catalogue of more than 2 x head_candidates items (16,384) is large (`is_large_catalogue`:
    # a sample would leave out more than half of it): a catalogue-head step then scores
    # head_candidates of its items (the batch's targets plus popularity-sampled ones,
    # logQ-corrected), decoding beams over the SID tree keeping tree_width nodes per level, and
    # item_embedding rows update only where a step touches them. Within it every item is scored
    # and updated, as measured on Beauty, Toys and ML-1M (docs/method.md, "Catalogue scale").
    # 8192 keeps a 1M-item step within 1.1x of a 12k one; width 16 finds 94% of the exact top-10's
    # hits at 1M items, ~960 users/s with tiny (bench/scale/README.md)
    head_candidates: int = 8192
    tree_width: int = 16


def is_large_catalogue(cfg: ModelConfig, num_items: int) -> bool:
    """More than 2 x cfg.head_candidates items: a training step's candidates, the SID-tree beam and
    lazy item rows from here on (ModelConfig.head_candidates)."""
    return num_items > 2 * cfg.head_candidates


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

    def __init__(self, item_tokens: torch.Tensor, vocab_size: int, n_embd: int, sparse: bool = False):
        """sparse: gradients only for the rows a step looks up (a catalogue too large for dense updates)."""
        super().__init__()
        self.base = vocab_size  # a token id is one digit of the key in this base
        if vocab_size ** item_tokens.shape[-1] >= 2**63:
            raise ValueError(f"item_embedding: SIDs of {item_tokens.shape[-1]} tokens are too long for int64 keys")
        keys = self.keys(item_tokens.long())
        order = torch.argsort(keys)
        self.register_buffer("sorted_keys", keys[order])
        self.register_buffer("item_of_key", order)
        self.embed = nn.Embedding(len(keys) + 1, n_embd, padding_idx=0, sparse=sparse)
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


# ModelConfig options only maskgr's BlockDiffusionLM reads; every other network refuses them
POOLED_OPTIONS = ("pool_history", "catalogue_head", "pool_slot", "slot_reads_previous")


def refuse_pooled_options(cfg: ModelConfig, network: str) -> None:
    pooled = [k for k in POOLED_OPTIONS if getattr(cfg, k)]
    if pooled:
        raise ValueError(
            f"{', '.join(pooled)}: options of block diffusion over pooled items, which {network} does not read; "
            "set model.pool_history=true and diffusion.masking=every_item with them (maskgr), or turn them off"
        )


class TokenTransformer(nn.Module):
    """Embeddings of SID tokens (plus optional slot and item-id embeddings), pre-LN blocks, a
    final LayerNorm and the tied output; a subclass says who attends to whom (`attention_mask`)
    and which state predicts a position (`position_outputs`)."""

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
        self.item = None
        if cfg.item_embedding:
            sparse = is_large_catalogue(cfg, len(item_tokens))
            self.item = ItemIds(item_tokens, vocab_size, cfg.n_embd, sparse=sparse)
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
        raise NotImplementedError

    def position_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden state that predicts each position's token: its own (masked prediction)."""
        return x

    def flops_per_token(self, length: int) -> float:
        """Training FLOPs (forward + backward) per token at sequence length `length`."""
        c = self.cfg
        matmul_params = c.n_layer * (4 * c.n_embd * c.n_embd + 2 * c.n_embd * c.d_ff) + self.vocab_size * c.n_embd
        attention = c.n_layer * 2 * length * c.n_embd  # q·k and attn·v, per token
        return 6 * matmul_params + 6 * attention
