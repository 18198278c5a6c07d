"""Self-contained checkpoints: evaluation and recommendation need nothing else.

A checkpoint is a PyTorch Lightning checkpoint (so `ckpt_path=` resumes training exactly:
optimiser, LR schedule, loop state) with one extra entry, `madrec`, holding the SID table,
the item-index -> original-id map, the token layout, `max_len` and the full config. The
model weights are Lightning's `state_dict` under the `model.` prefix.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from madrec import models
from madrec.config import Config, config_from_dict
from madrec.errors import MadrecError
from madrec.io import fetch
from madrec.models.tokens import SIDVocab
from madrec.torchfile import load_torch_file, unreadable

FORMAT = "madrec.checkpoint/1"
WEIGHTS_PREFIX = "model."


@dataclass
class Loaded:
    model: torch.nn.Module  # in eval mode; which recommender: config.model.name
    vocab: SIDVocab
    sids: torch.Tensor  # (H, N) int64
    item_ids: list[str]  # item index -> original id
    config: Config
    max_len: int
    global_step: int


def payload(cfg: Config, vocab: SIDVocab, sids: torch.Tensor, item_ids: list[str], max_len: int) -> dict:
    """The `madrec` entry added to every checkpoint (plain types only: loads with weights_only)."""
    return {
        "format": FORMAT,
        "model": cfg.model.name,  # the recommender (madrec.models); the config says it too
        "config": cfg.to_dict(),
        "sid_len": vocab.sid_len,
        "codebook_size": vocab.codebook_size,
        "sids": sids.detach().cpu().long(),
        "item_ids": list(item_ids),
        "max_len": max_len,
    }


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The raw checkpoint dict, checked to be a madrec checkpoint."""
    local = fetch(str(path))
    _check_archive(path, local)
    ckpt = load_torch_file(path, local, _EXPECTED, _MADE_BY, map_location)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("madrec"), dict):
        raise MadrecError(
            f"{path}: not a madrec checkpoint (no 'madrec' entry); pass a .ckpt written by `madrec train`"
        )
    meta = ckpt["madrec"]
    if meta.get("format") != FORMAT:
        raise MadrecError(f"{path}: checkpoint format {meta.get('format')!r}, this madrec reads {FORMAT!r}")
    missing = [k for k in _META_KEYS if k not in meta] + (
        [] if isinstance(ckpt.get("state_dict"), dict) else ["state_dict"]
    )
    if missing:
        raise MadrecError(
            f"{path}: incomplete madrec checkpoint, missing {', '.join(missing)}; "
            "pass a .ckpt written by `madrec train`"
        )
    return ckpt


_META_KEYS = ("config", "sid_len", "codebook_size", "sids", "item_ids", "max_len")


_EXPECTED, _MADE_BY = "madrec checkpoint", "written by `madrec train`"


def _check_archive(path, local) -> None:
    """Checkpoints are zip archives (torch.save): check the CRC of every member, so a truncated
    or bit-flipped file is an error here rather than silently wrong weights."""
    try:
        if not zipfile.is_zipfile(local):
            return  # not a zip: torch.load decides (legacy format, or an error below)
        with zipfile.ZipFile(local) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
        raise MadrecError(unreadable(path, local, exc, _EXPECTED, _MADE_BY)) from exc
    if bad is not None:
        raise MadrecError(
            unreadable(path, local, zipfile.BadZipFile(f"checksum mismatch in member {bad}"), _EXPECTED, _MADE_BY)
        )


def model_weights(ckpt: dict) -> dict[str, torch.Tensor]:
    """The model's own state dict out of a Lightning checkpoint."""
    return {k[len(WEIGHTS_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(WEIGHTS_PREFIX)}


def load_checkpoint(path: str | Path, map_location="cpu") -> Loaded:
    """Rebuild the model (eval mode), vocab, SID table, item ids and config from a checkpoint."""
    ckpt = read_checkpoint(path, map_location)
    meta = ckpt["madrec"]
    cfg = config_from_dict(meta["config"], f"{path} (saved config)")
    vocab = SIDVocab(sid_len=int(meta["sid_len"]), codebook_size=int(meta["codebook_size"]))
    model, _ = models.build(cfg, vocab, meta["sids"])
    try:
        model.load_state_dict(model_weights(ckpt))
    except RuntimeError as exc:
        raise MadrecError(f"{path}: the weights do not fit the saved model config ({exc})") from exc
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()
    return Loaded(
        model, vocab, meta["sids"], list(meta["item_ids"]), cfg, int(meta["max_len"]), int(ckpt.get("global_step", 0))
    )
