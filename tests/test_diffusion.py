"""Masking process and the weighted denoising loss (docs/method.md, "Masked diffusion")."""

from __future__ import annotations

import math

import pytest
import torch

from madrec.models.diffusion import SCHEDULES, DiffusionConfig, LinearSchedule, MaskedDiffusion

MASK, PAD = 20, 21


def test_only_non_pad_tokens_are_masked_at_rate_t():
    torch.manual_seed(0)
    diffusion = MaskedDiffusion(DiffusionConfig(), MASK, PAD, sid_len=4)
    tokens = torch.randint(0, 20, (64, 4000))
    tokens[:, :1000] = PAD
    noisy, masked, weight = diffusion.corrupt(tokens)
    assert torch.equal(noisy[:, :1000], tokens[:, :1000])  # PAD untouched
    assert not masked[:, :1000].any()
    assert torch.equal(noisy[masked], torch.full_like(noisy[masked], MASK))
    assert torch.equal(noisy[~masked], tokens[~masked])
    t = 1.0 / weight[:, 0]  # linear schedule: weight = 1/t
    rate = masked[:, 1000:].float().mean(1)
    assert (rate - t).abs().max() < 0.04  # per sequence, 3000 tokens each
    assert 0.3 < t.mean() < 0.7 and t.min() >= 1e-3


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_weights_are_the_elbo_weights(name):
    """Every schedule's weight is the masked-diffusion ELBO's -alpha'(t) / (1 - alpha(t)),
    alpha(t) = 1 - mask_prob(t); for the linear reference that is 1/t."""
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    schedule = SCHEDULES[name]()
    alpha = lambda s: 1 - schedule.mask_prob(s)  # noqa: E731
    eps = 1e-6
    d_alpha = (alpha(t + eps) - alpha(t - eps)) / (2 * eps)
    torch.testing.assert_close(schedule.loss_weight(t), -d_alpha / (1 - alpha(t)), rtol=1e-5, atol=1e-6)
    lin = LinearSchedule()
    torch.testing.assert_close(lin.mask_prob(t), t)
    torch.testing.assert_close(lin.loss_weight(t), 1 / t)


class Uniform(torch.nn.Module):
    """Logits of 0 everywhere: every masked token costs exactly log(vocab)."""

    def forward(self, tokens, select=None):
        rows = tokens[select] if select is not None else tokens
        return torch.zeros(*rows.shape, 22, requires_grad=True)


def test_weighted_loss_is_a_weighted_mean_of_cross_entropies():
    torch.manual_seed(0)
    diffusion = MaskedDiffusion(DiffusionConfig(), MASK, PAD, sid_len=4)
    tokens = torch.randint(0, 20, (8, 12))
    assert diffusion.loss(Uniform(), tokens).item() == pytest.approx(math.log(22), rel=1e-6)

    class Fixed(torch.nn.Module):  # random but fixed logits per (row, position)
        def __init__(self):
            super().__init__()
            self.table = torch.randn(8, 12, 22)

        def forward(self, noisy, select=None):
            return self.table[select]

    model = Fixed()
    torch.manual_seed(1)
    loss = diffusion.loss(model, tokens)
    torch.manual_seed(1)
    _, masked, weight = diffusion.corrupt(tokens)
    ce = torch.nn.functional.cross_entropy(model.table.transpose(1, 2), tokens, reduction="none")
    w = weight * masked
    assert masked.any() and loss.item() == pytest.approx(float((ce * w).sum() / w.sum()), rel=1e-5)


def test_weighted_loss_exact_value_with_known_t_and_mask(monkeypatch):
    """Rows with different t and different numbers of masked tokens, non-uniform logits: the
    loss is sum_i (1/t_i) sum_j CE_ij / sum_i (1/t_i) n_i, computed by hand here. An unweighted
    mean, a weight of t instead of 1/t, or a per-row mean all give another number."""
    diffusion = MaskedDiffusion(DiffusionConfig(t_min=0.0), MASK, PAD, sid_len=1)
    tokens = torch.tensor([[3, 5, 7], [PAD, PAD, 2]])
    real_rand = torch.rand

    def rand(*shape, **kw):  # t = (0.25, 0.5); every non-PAD token masked (u = 0 < t)
        size = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else shape
        if len(size) == 1:
            return torch.tensor([0.25, 0.5])
        if tuple(size) == tuple(tokens.shape):
            return torch.zeros(size)
        return real_rand(*shape, **kw)

    monkeypatch.setattr(torch, "rand", rand)
    # logits: the target token gets logit 2 at row 0, 0 at row 1; all else 0 -> hand-computable CE
    table = torch.zeros(2, 3, 22)
    table[0, :, [3, 5, 7]] = torch.eye(3) * 2.0
    ce_hit = math.log(math.exp(2.0) + 21) - 2.0  # CE of the target with logit 2 among 21 zeros
    ce_flat = math.log(22)

    class Fixed(torch.nn.Module):
        def forward(self, noisy, select=None):
            return table[select]

    loss = diffusion.loss(Fixed(), tokens).item()
    want = (4 * 3 * ce_hit + 2 * ce_flat) / (4 * 3 + 2 * 1)
    assert loss == pytest.approx(want, rel=1e-6)
    assert abs(want - (3 * ce_hit + ce_flat) / 4) > 1e-3  # an unweighted mean would differ


def test_unknown_schedule_or_masking_is_refused():
    with pytest.raises(ValueError, match="noise schedule"):
        MaskedDiffusion(DiffusionConfig(schedule="sqrt"), MASK, PAD, 4)
    with pytest.raises(ValueError, match="masking"):
        MaskedDiffusion(DiffusionConfig(masking="span"), MASK, PAD, 4)


def test_item_loss_adds_each_noised_items_weighted_minus_log_probability():
    """every_item with item_loss_weight w: the loss sum is the per-digit sum plus w times each
    noised item's -log q(clean item), weighted like its tokens (same noise, same seed); the
    normaliser stays the tokens' weight sum."""
    from madrec.models.blocks import ModelConfig
    from madrec.models.maskgr import BlockDiffusionLM

    H, pad, mask = 3, 31, 30
    torch.manual_seed(0)
    clean = torch.randint(0, 30, (4, 12))
    clean[1, :6] = pad
    cfg = ModelConfig(n_layer=1, n_embd=32, n_head=4, d_ff=64, dropout=0.0, slot_embedding=True, pool_history=True)
    cfg.catalogue_head = True
    model = BlockDiffusionLM(cfg, 32, pad, H, clean[clean != pad].view(-1, H), mask)

    def terms(weight: float, seed: int = 1):
        diffusion = MaskedDiffusion(DiffusionConfig(masking="every_item", item_loss_weight=weight), mask, pad, H)
        torch.manual_seed(seed)
        noisy, masked, w = diffusion.corrupt(clean)
        torch.manual_seed(seed)
        return diffusion.loss_terms(model, clean), (noisy, masked, w)

    (digits, norm), (noisy, masked, w) = terms(0.0)
    (both, norm2), _ = terms(2.5)
    _, shares = model(noisy, select=masked, clean=clean, item_nll=True)
    want = digits + 2.5 * (shares * w.expand_as(masked)[masked]).sum()
    torch.testing.assert_close(both, want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(norm2, norm)
    assert (both - digits) > 1.0  # the term is there: every item has a loss of order log(8)
    with pytest.raises(ValueError, match="item_loss_weight"):
        MaskedDiffusion(DiffusionConfig(masking="uniform", item_loss_weight=1.0), mask, pad, H)
