"""Small stand-ins for the masked-diffusion model in decoding / evaluation tests.

Each maps tokens (B, L) -> logits (B, L, vocab.size) like MaskedDiffusionLM (madrec.models.maskgr).
"""

from __future__ import annotations

import itertools

import torch

from madrec.models.tokens import SIDVocab


def random_sids(sid_len: int, codebook_size: int, num_items: int, seed: int = 0) -> torch.Tensor:
    """(H, N) distinct random SIDs."""
    g = torch.Generator().manual_seed(seed)
    every = torch.tensor(list(itertools.product(range(codebook_size), repeat=sid_len)))
    return every[torch.randperm(len(every), generator=g)[:num_items]].t().contiguous()


class ToyNetwork(torch.nn.Module):
    """The decoding interface (madrec.models.Network) of a bidirectional network without a head."""

    causal = False
    max_next_items = None
    ranks_catalogue = False


class FixedLM(ToyNetwork):
    """Context-free: the last P positions get fixed per-position digit log-probs (hand-checkable)."""

    def __init__(self, vocab: SIDVocab, digit_logprobs: torch.Tensor):
        super().__init__()
        self.vocab = vocab
        self.register_buffer("table", digit_logprobs.float())  # (P, V)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, tokens: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append(tuple(tokens.shape))
        B, L = tokens.shape
        P, V = self.table.shape
        out = torch.full((B, L, self.vocab.size), -1e4)
        for q in range(P):
            base = (q % self.vocab.sid_len) * (V + 1)
            out[:, L - P + q, base : base + V] = self.table[q]
        return out if select is None else out[select]


class MixLM(ToyNetwork):
    """Random but deterministic, context-dependent: every logit depends on all non-PAD tokens."""

    def __init__(self, vocab: SIDVocab, dim: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.vocab = vocab
        self.emb = torch.nn.Embedding(vocab.size, dim)
        self.mix = torch.nn.Embedding(vocab.size, dim)
        self.out = torch.nn.Linear(dim, vocab.size)

    def forward(self, tokens: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        keep = (tokens != self.vocab.pad_id).float()[..., None]
        ctx = (self.mix(tokens) * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)
        logits = self.out(torch.tanh(self.emb(tokens) + 3 * ctx))
        return logits if select is None else logits[select]


class SuccessorLM(MixLM):
    """Predicts item (last history item + 1) % N with high confidence, plus MixLM noise."""

    def __init__(self, vocab: SIDVocab, sids: torch.Tensor, strength: float = 8.0, seed: int = 0):
        super().__init__(vocab, seed=seed)
        self.register_buffer("item_tokens", vocab.item_tokens(sids))  # (N, H)
        self.strength = strength

    def forward(self, tokens: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        H = self.vocab.sid_len
        logits = super().forward(tokens).clone()
        last = tokens[:, -2 * H : -H]  # the most recent history item
        match = (last[:, None, :] == self.item_tokens[None]).all(-1)  # (B, N)
        has = match.any(1)
        succ = (match.int().argmax(1) + 1) % self.item_tokens.shape[0]
        want = self.item_tokens[succ]  # (B, H)
        rows = has.nonzero().squeeze(1)
        for p in range(H):
            logits[rows, tokens.shape[1] - H + p, want[rows, p]] += self.strength
        return logits if select is None else logits[select]


class RecordingLM(torch.nn.Module):
    """Wraps a network and keeps every input it is given; decodes as the network does."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []
        self.causal, self.max_next_items = inner.causal, inner.max_next_items
        self.ranks_catalogue = inner.ranks_catalogue

    def forward(self, tokens: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        self.inputs.append(tokens.clone())
        return self.inner(tokens, select=select)


def write_checkpoint(path, sids: torch.Tensor, item_ids: list[str], max_len: int, codebook_size: int, seed: int = 0):
    """A real (randomly initialised) MaskedDiffusionLM saved as a madrec checkpoint (madrec.checkpoint)."""
    from madrec.checkpoint import WEIGHTS_PREFIX, payload
    from madrec.config import Config
    from madrec.models.blocks import ModelConfig
    from madrec.models.maskgr import MaskedDiffusionLM

    torch.manual_seed(seed)
    cfg = Config(
        max_len=max_len,
        codebook_size=codebook_size,
        model=ModelConfig(n_layer=1, n_embd=16, n_head=2, d_ff=32, dropout=0.0),
    )
    vocab = SIDVocab(sids.shape[0], codebook_size)
    model = MaskedDiffusionLM(cfg.model, vocab.size, vocab.pad_id, vocab.sid_len)
    torch.save(
        {
            "state_dict": {WEIGHTS_PREFIX + k: v for k, v in model.state_dict().items()},
            "madrec": payload(cfg, vocab, sids, item_ids, max_len),
            "global_step": 7,
        },
        path,
    )
    return model.eval()


def brute_force_left_to_right(model, vocab, sids, hist):
    """Brute force, independent of beam_search: the exact constrained left-to-right log-prob of
    every catalogue item (one model call per digit, allowed digits from a plain scan)."""
    H, V = vocab.sid_len, vocab.codebook_size
    digits = sids.t()
    out = []
    for d in digits.tolist():
        slot, score = [vocab.mask_id] * H, 0.0
        for p in range(H):
            logits = model(torch.cat([hist, torch.tensor([slot])], 1))[0, hist.shape[1] + p]
            lg = logits[p * (V + 1) : p * (V + 1) + V].clone()
            agree = (digits[:, :p] == torch.tensor(d[:p])).all(1)
            allowed = torch.zeros(V, dtype=torch.bool)
            allowed[digits[agree, p]] = True
            score += torch.log_softmax(lg.masked_fill(~allowed, float("-inf")), 0)[d[p]].item()
            slot[p] = p * (V + 1) + d[p]
        out.append(score)
    return torch.tensor(out)
