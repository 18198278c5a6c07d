"""Semantic-ID tokenisation (docs/architecture.md, "Data flow").

A digit v at SID position l becomes token ``l * (V + 1) + v`` (V = codebook size); one
shared MASK token and one PAD token follow the digit tokens. A user's history is the
concatenation of its items' SIDs, oldest first, truncated from the left to whole items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SIDVocab:
    """Token layout for SIDs of length `sid_len` (H) with `codebook_size` (V) codes per digit."""

    sid_len: int
    codebook_size: int

    @property
    def block(self) -> int:
        return self.codebook_size + 1

    @property
    def mask_id(self) -> int:
        return self.sid_len * self.block

    @property
    def pad_id(self) -> int:
        return self.mask_id + 1

    @property
    def size(self) -> int:
        return self.pad_id + 1

    def items_per_sequence(self, max_len: int) -> int:
        """How many whole items fit in `max_len` tokens."""
        return max_len // self.sid_len

    def item_tokens(self, sids: torch.Tensor) -> torch.Tensor:
        """(H, N) SID table -> (N, H) token table: row i holds item i's tokens."""
        offsets = torch.arange(self.sid_len, device=sids.device) * self.block
        return sids.t().long() + offsets

    def tokens_to_digits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of item_tokens on any (..., H) tensor of digit tokens."""
        offsets = torch.arange(self.sid_len, device=tokens.device) * self.block
        return tokens - offsets

    def encode_history(self, item_tokens: torch.Tensor, items: list[int], max_items: int) -> torch.Tensor:
        """Concatenate the SID tokens of the most recent `max_items` items (oldest first)."""
        recent = torch.as_tensor(items[-max_items:] if max_items > 0 else [], dtype=torch.long)
        return item_tokens[recent].reshape(-1)
