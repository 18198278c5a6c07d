"""Masked (absorbing-state) diffusion over SID token sequences (docs/method.md, "Masked diffusion"), mdlm-style.

Forward process: draw t per sequence, replace each maskable token by MASK with probability
`schedule.mask_prob(t)`. Objective: cross-entropy at the masked positions, each weighted by
`schedule.loss_weight(t)`, summed and divided by the sum of the weights. For the linear
schedule (the reference) mask_prob(t) = t and the weight is 1/t, the masked-diffusion ELBO.

The schedule and the masking policy are small objects looked up by name, so a new one is a
class and a registry entry; the model never sees either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DiffusionConfig:
    """schedule: a SCHEDULES key; masking: a MASKINGS key; t ~ U(t_min, 1).

    t_min keeps the 1/t weight finite: one masked token at t -> 0 would otherwise dominate a batch.
    """

    schedule: str = "linear"
    masking: str = "uniform"
    t_min: float = 1e-3
    # masking=every_item with model.catalogue_head: add this times each noised item's
    # -log q(clean item | its revealed digits), weighted like its tokens. The per-digit loss
    # rewards mass on items that share a digit with the target; this term asks for the item
    # itself, as a full-softmax recommender (SASRec) is trained. 0: the per-digit loss alone
    item_loss_weight: float = 0.0


class LinearSchedule:
    """alpha(t) = 1 - t: the fraction of masked tokens grows linearly; weight 1/t."""

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 / t


class UniformMasking:
    """Mask every maskable token independently with its sequence's probability (the reference)."""

    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg

    def __call__(self, maskable: torch.Tensor, prob: torch.Tensor, sid_len: int) -> torch.Tensor:
        """maskable: (B, L) bool; prob: (B, 1) or (B, L) -> (B, L) bool, True where the token becomes MASK."""
        return maskable & (torch.rand(maskable.shape, device=maskable.device) < prob)


class EveryItemMasking(UniformMasking):
    """Noise every item of a row but its first, each at its own rate t (block diffusion's forward
    process, one item per block). Needs the item-causal network (madrec.models.maskgr.BlockDiffusionLM):
    noised item b is predicted from the clean items before it, so each item is a next-item
    target, which is the conditional decoding asks for. A row's first item has no history
    before it and is not a target.
    """

    per_item = True

    def __call__(self, maskable: torch.Tensor, prob: torch.Tensor, sid_len: int) -> torch.Tensor:
        item = torch.div(maskable.flip(1).cumsum(1).flip(1) + sid_len - 1, sid_len, rounding_mode="floor")
        first = item == item.max(dim=1, keepdim=True).values
        return super().__call__(maskable & ~first, prob, sid_len)


SCHEDULES = {"linear": LinearSchedule}
MASKINGS = {"uniform": UniformMasking, "every_item": EveryItemMasking}


class MaskedDiffusion:
    """The forward (noising) process and the weighted denoising loss for one token layout."""

    def __init__(self, cfg: DiffusionConfig, mask_id: int, pad_id: int, sid_len: int):
        if cfg.schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {cfg.schedule!r}; choose one of {sorted(SCHEDULES)}")
        if cfg.masking not in MASKINGS:
            raise ValueError(f"unknown masking policy {cfg.masking!r}; choose one of {sorted(MASKINGS)}")
        if cfg.item_loss_weight < 0 or (cfg.item_loss_weight and cfg.masking != "every_item"):
            raise ValueError(
                f"item_loss_weight must be >= 0, and > 0 only with every_item masking, got {cfg.item_loss_weight}"
            )
        self.cfg = cfg
        self.schedule = SCHEDULES[cfg.schedule]()
        self.masking = MASKINGS[cfg.masking](cfg)
        self.mask_id, self.pad_id, self.sid_len = mask_id, pad_id, sid_len

    def corrupt(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L) clean tokens -> (noisy tokens, masked (B, L) bool, weight (B, 1) or (B, L)).

        Randomness comes from the global torch RNG, so a seeded step is reproducible.
        """
        t = self._noise_levels(tokens)
        masked = self.masking(tokens != self.pad_id, self.schedule.mask_prob(t), self.sid_len)
        return tokens.masked_fill(masked, self.mask_id), masked, self.schedule.loss_weight(t)

    def _noise_levels(self, tokens: torch.Tensor) -> torch.Tensor:
        """t ~ U(t_min, 1): (B, 1), one per sequence, or (B, L), one per item when the policy says so."""
        b, length = tokens.shape
        per_item = getattr(self.masking, "per_item", False)
        draws = (
            torch.rand(b, length // self.sid_len + 2, device=tokens.device)
            if per_item
            else torch.rand(b, device=tokens.device)[:, None]
        )
        t = self.cfg.t_min + (1.0 - self.cfg.t_min) * draws
        if not per_item:
            return t
        real = tokens != self.pad_id
        item = torch.div(real.flip(1).cumsum(1).flip(1) * real + self.sid_len - 1, self.sid_len, rounding_mode="floor")
        return t.gather(1, item)

    def loss_terms(self, model: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise a batch of clean (B, L) tokens; return (weighted CE sum, weight sum) over masked positions.

        `model(noisy, select=masked)` returns logits at the masked positions only. The loss is
        the ratio; keeping both lets data-parallel ranks share one global denominator.
        """
        noisy, masked, weight = self.corrupt(tokens)
        item_nll = 0.0
        if self.cfg.item_loss_weight:
            logits, item_nll = model(noisy, select=masked, clean=tokens, item_nll=True)
        elif getattr(self.masking, "per_item", False):
            logits = model(noisy, select=masked, clean=tokens)  # noised items beside the clean row
        else:
            logits = model(noisy, select=masked)
        weights = weight.expand_as(masked)[masked]
        ce = F.cross_entropy(logits.float(), tokens[masked], reduction="none")
        return ((ce + self.cfg.item_loss_weight * item_nll) * weights).sum(), weights.sum()

    def loss(self, model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """The objective on one batch of clean (B, L) tokens (single process)."""
        total, norm = self.loss_terms(model, tokens)
        return total / norm.clamp_min(torch.finfo(norm.dtype).tiny)
