"""Masked (absorbing-state) diffusion over SID token sequences (docs/method.md, "Masked diffusion"), mdlm-style.

Forward process: draw t per sequence, replace each maskable token by MASK with probability
`schedule.mask_prob(t)`. Objective: cross-entropy at the masked positions, each weighted by
`schedule.loss_weight(t)`, summed and divided by the sum of the weights. For the linear
schedule (the reference) mask_prob(t) = t and the weight is 1/t, the masked-diffusion ELBO.

The schedule and the masking policy are small objects looked up by name, so a new one is a
class and a registry entry; the model never sees either.
"""

from __future__ import annotations

import math
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
    next_item_prob: float = 0.5  # masking=mixed: share of rows noised as next_item, the rest uniform
    # masking=next_item: each history item is also masked whole with this probability, a cloze
    # target (weight 1) that the bidirectional model fills from the items on both sides of it
    history_item_prob: float = 0.0
    # masking=next_item: noise each row's last item this many times, at stratified noise levels
    # ((j + u) / n of the way from t_min to 1 for copy j), all copies in one pass beside one
    # clean history (MaskedDiffusionLM.copies_forward): several noise samples for one history's cost
    next_item_copies: int = 1
    # elbo: each masked token weighted by the schedule's ELBO weight (1/t for linear, the
    # reference); flat: weight 1, so a noise level counts by how many tokens it masks, which
    # shifts the loss towards the heavily masked states decoding starts from
    loss_weight: str = "elbo"
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


class CosineSchedule:
    """alpha(t) = cos(pi t / 2): fewer masks early on; weight -alpha'(t) / (1 - alpha(t))."""

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - torch.cos(0.5 * math.pi * t)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * t) / self.mask_prob(t)


class UniformMasking:
    """Mask every maskable token independently with its sequence's probability (the reference)."""

    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg

    def __call__(self, maskable: torch.Tensor, prob: torch.Tensor, sid_len: int) -> torch.Tensor:
        """maskable: (B, L) bool; prob: (B, 1) or (B, L) -> (B, L) bool, True where the token becomes MASK."""
        return maskable & (torch.rand(maskable.shape, device=maskable.device) < prob)


class NextItemMasking(UniformMasking):
    """Noise only each row's last item (its final sid_len tokens); the history stays clean.

    The same absorbing process and weights, applied to p(next item | history): the ELBO of the
    conditional model, which is exactly what decoding asks of it. It learns from far fewer
    epochs than the reference policy; meant for small compute budgets (experiment tiny).
    """

    def __call__(self, maskable: torch.Tensor, prob: torch.Tensor, sid_len: int) -> torch.Tensor:
        from_end = maskable.flip(1).cumsum(1).flip(1)  # 1 at a row's last real token, 2 before it, ...
        return super().__call__(maskable & (from_end <= sid_len), prob, sid_len)


class SuffixMasking(UniformMasking):
    """Noise a random suffix of each row's items: the last k items (k uniform in 1..n-1 of the
    row's n items), each token w.p. t; the prefix stays clean.

    The first noised item is exactly the next-item conditional that decoding asks for, and the
    later ones teach several future items at once (next_items > 1), so a row trains up to
    n - 1 items instead of one: denser supervision per token computed than next_item.
    """

    def __call__(self, maskable: torch.Tensor, prob: torch.Tensor, sid_len: int) -> torch.Tensor:
        from_end = maskable.flip(1).cumsum(1).flip(1)  # 1 at a row's last real token, 2 before it, ...
        items = maskable.sum(1) // sid_len
        k = 1 + (torch.rand(items.shape, device=maskable.device) * (items - 1).clamp_min(1)).long()
        return super().__call__(maskable & (from_end <= (k * sid_len)[:, None]), prob, sid_len)


class MixedMasking(NextItemMasking):
    """Each row is noised as next_item with probability `next_item_prob`, else uniformly.

    Uniform rows teach the model every item of a row in every context (and several masked
    items at once, which parallel decoding of next items needs); next-item rows train exactly
    the conditional that recommending asks for.
    """

    def __call__(self, maskable: torch.Tensor, prob: torch.Tensor, sid_len: int) -> torch.Tensor:
        next_rows = torch.rand(maskable.shape[0], device=maskable.device) < self.cfg.next_item_prob
        uniform = UniformMasking.__call__(self, maskable, prob, sid_len)
        return torch.where(next_rows[:, None], NextItemMasking.__call__(self, maskable, prob, sid_len), uniform)


class EveryItemMasking(UniformMasking):
    """Noise every item of a row but its first, each at its own rate t (block diffusion's forward
    process, one item per block). Needs the item-causal network (madrec.model.ItemCausalDiffusionLM):
    noised item b is predicted from the clean items before it, so each item is a next-item
    target, which is the conditional decoding asks for. A row's first item has no history
    before it and is not a target.
    """

    per_item = True

    def __call__(self, maskable: torch.Tensor, prob: torch.Tensor, sid_len: int) -> torch.Tensor:
        item = torch.div(maskable.flip(1).cumsum(1).flip(1) + sid_len - 1, sid_len, rounding_mode="floor")
        first = item == item.max(dim=1, keepdim=True).values
        return super().__call__(maskable & ~first, prob, sid_len)


SCHEDULES = {"linear": LinearSchedule, "cosine": CosineSchedule}
MASKINGS = {
    "uniform": UniformMasking,
    "next_item": NextItemMasking,
    "suffix": SuffixMasking,
    "mixed": MixedMasking,
    "every_item": EveryItemMasking,
}


class MaskedDiffusion:
    """The forward (noising) process and the weighted denoising loss for one token layout."""

    def __init__(self, cfg: DiffusionConfig, mask_id: int, pad_id: int, sid_len: int):
        if cfg.schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {cfg.schedule!r}; choose one of {sorted(SCHEDULES)}")
        if cfg.masking not in MASKINGS:
            raise ValueError(f"unknown masking policy {cfg.masking!r}; choose one of {sorted(MASKINGS)}")
        if cfg.loss_weight not in ("elbo", "flat"):
            raise ValueError(f"unknown loss_weight {cfg.loss_weight!r}; choose elbo or flat")
        if cfg.next_item_copies < 1:
            raise ValueError(f"next_item_copies must be >= 1, got {cfg.next_item_copies}")
        if cfg.next_item_copies > 1 and (cfg.masking != "next_item" or cfg.history_item_prob):
            raise ValueError("next_item_copies > 1 noises copies of the last item: it needs next_item masking alone")
        if cfg.item_loss_weight < 0 or (cfg.item_loss_weight and cfg.masking != "every_item"):
            raise ValueError(
                f"item_loss_weight must be >= 0, and > 0 only with every_item masking, got {cfg.item_loss_weight}"
            )
        if cfg.history_item_prob and cfg.masking != "next_item":
            raise ValueError(f"history_item_prob masks history items beside next_item masking, not {cfg.masking!r}")
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
        weight = self._loss_weight(t)
        if self.cfg.history_item_prob:
            cloze = self._history_items(tokens)
            masked, weight = masked | cloze, torch.where(cloze, 1.0, weight.expand_as(masked))
        return tokens.masked_fill(masked, self.mask_id), masked, weight

    def _loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        return self.schedule.loss_weight(t) if self.cfg.loss_weight == "elbo" else torch.ones_like(t)

    def _history_items(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: the tokens of history items (all but a row's last) drawn whole w.p. history_item_prob."""
        real = tokens != self.pad_id
        item = torch.div(real.flip(1).cumsum(1).flip(1) * real + self.sid_len - 1, self.sid_len, rounding_mode="floor")
        draws = torch.rand(tokens.shape[0], int(item.max()) + 1, device=tokens.device) < self.cfg.history_item_prob
        return draws.gather(1, item) & (item >= 2)

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
        if self.cfg.next_item_copies > 1:
            return self._copies_loss_terms(model, tokens)
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

    def corrupt_copies(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L) clean rows -> (copies, masked, weight), each (B, n, H): n noised copies of each
        row's last item, copy j at t in the j-th of n equal strata of [t_min, 1]."""
        n, h = self.cfg.next_item_copies, self.sid_len
        last = tokens[:, None, -h:].expand(-1, n, -1)
        strata = (torch.arange(n, device=tokens.device) + torch.rand(tokens.shape[0], n, device=tokens.device)) / n
        t = (self.cfg.t_min + (1.0 - self.cfg.t_min) * strata)[..., None]
        masked = torch.rand(last.shape, device=tokens.device) < self.schedule.mask_prob(t)
        return last.masked_fill(masked, self.mask_id), masked, self._loss_weight(t).expand_as(masked)

    def _copies_loss_terms(self, model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        copies, masked, weight = self.corrupt_copies(tokens)
        logits = model(tokens, select=masked, copies=copies)
        ce = F.cross_entropy(
            logits.float(), tokens[:, None, -self.sid_len :].expand_as(masked)[masked], reduction="none"
        )
        return (ce * weight[masked]).sum(), weight[masked].sum()

    def loss(self, model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """The objective on one batch of clean (B, L) tokens (single process)."""
        total, norm = self.loss_terms(model, tokens)
        return total / norm.clamp_min(torch.finfo(norm.dtype).tiny)
