"""Values the method fixes (the reference configuration; docs/method.md), asserted directly:
token ids, the learning-rate schedule at given steps, the reference experiment's masking /
position settings."""

from __future__ import annotations

import pytest
import torch

from madrec.config import load_config
from madrec.models.tokens import SIDVocab

BASE = ["data_dir=/data", "sid_data_path=/sids.pt"]


def test_token_ids_mask_and_pad():
    v = SIDVocab(sid_len=4, codebook_size=256)  # the reference layout
    assert (v.block, v.mask_id, v.pad_id, v.size) == (257, 1028, 1029, 1030)
    small = SIDVocab(sid_len=3, codebook_size=5)
    assert (small.mask_id, small.pad_id, small.size) == (18, 19, 20)
    # digit d at position l is token l * (V + 1) + d; the last id of each block is never a digit
    sids = torch.tensor([[0, 4], [1, 3], [4, 0]])  # (H, N): items (0, 1, 4) and (4, 3, 0)
    assert small.item_tokens(sids).tolist() == [[0, 7, 16], [4, 9, 12]]
    assert small.tokens_to_digits(torch.tensor([[0, 7, 16]])).tolist() == [[0, 1, 4]]


@pytest.mark.parametrize(
    "step, want",
    [
        (0, 1e-4),
        (4_999, 0.5),
        (9_999, 1.0),  # warm-up: (step + 1) / warmup
        (10_000, 1.0),
        (55_000, 0.5),
        (77_500, 0.25),
        (100_000, 0.0),
        (120_000, 0.0),  # linear decay to 0
    ],
)
def test_lr_factor_reference_schedule(step, want):
    from madrec.train.module import lr_factor

    assert lr_factor(step, warmup=10_000, max_steps=100_000, min_ratio=0.0) == pytest.approx(want, abs=1e-12)


def test_lr_factor_min_ratio_and_time_budget():
    from madrec.train.module import lr_factor

    assert lr_factor(55_000, warmup=10_000, max_steps=100_000, min_ratio=0.1) == pytest.approx(0.55)
    assert lr_factor(200_000, warmup=10_000, max_steps=100_000, min_ratio=0.1) == pytest.approx(0.1)
    # with a time budget the decay follows the share spent, after the warm-up
    assert lr_factor(20, warmup=10, max_steps=1.0, min_ratio=0.0, progress=0.25) == pytest.approx(0.75)
    assert lr_factor(4, warmup=10, max_steps=1.0, min_ratio=0.0, progress=0.9) == pytest.approx(0.5)
    assert lr_factor(20, warmup=10, max_steps=1.0, min_ratio=0.2, progress=1.5) == pytest.approx(0.2)


def test_reference_experiment_masking_and_positions():
    cfg = load_config(["experiment=discrete_diffusion_train", *BASE])
    assert cfg.diffusion.masking == "uniform"
    assert cfg.diffusion.schedule == "linear" and cfg.diffusion.t_min == pytest.approx(1e-3)
    assert cfg.model.slot_embedding is False
    assert cfg.model.rope_base == pytest.approx(10_000.0)


def test_reference_model_has_rotary_positions_only():
    """No absolute or slot position parameters, and outputs do not move when the sequence is
    shifted right by left padding (rotary attention sees relative positions only)."""
    from madrec.models.maskgr import MaskedDiffusionLM

    cfg = load_config(["experiment=discrete_diffusion_train", *BASE])
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head, cfg.model.d_ff = 2, 32, 4, 64
    vocab = SIDVocab(4, 16)
    torch.manual_seed(0)
    model = MaskedDiffusionLM(cfg.model, vocab.size, vocab.pad_id, vocab.sid_len).eval()
    embeddings = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)]
    assert embeddings == ["embed"]
    tokens = vocab.item_tokens(torch.randint(0, 16, (4, 3))).reshape(1, -1)
    tokens = torch.cat([tokens, torch.full((1, 4), vocab.mask_id)], 1)
    shifted = torch.cat([torch.full((1, 5), vocab.pad_id), tokens], 1)
    with torch.no_grad():
        a, b = model(tokens), model(shifted)[:, 5:]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
