"""Reading a torch.save'd file that came from a user or the network: `weights_only` unpickling
(no code runs), and any failure a MadrecError that names the file, its size and what was expected."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from madrec.errors import MadrecError


def unreadable(source, local, exc: BaseException, expected: str, made_by: str) -> str:
    """The message for a file that is not a readable `expected` (e.g. "madrec checkpoint")."""
    try:
        size = f"{Path(local).stat().st_size} bytes"
    except OSError:
        size = "size unknown"
    detail = (str(exc).strip().splitlines() or [""])[0][:200]
    if isinstance(exc, pickle.UnpicklingError):  # torch's text suggests weights_only=False: never for such a file
        detail = "weights_only unpickling refused it (it is not plain tensors and containers)"
    cause = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return (
        f"{source}: not a readable {expected} ({size}): the file is truncated or corrupt, or was not {made_by} "
        f"({cause})"
    )


def load_torch_file(source, local, expected: str, made_by: str, map_location="cpu"):
    """torch.load(local, weights_only=True); `source` is what the user named (path or URL)."""
    try:
        return torch.load(local, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the unpickler raises KeyError, IndexError, EOFError, RuntimeError, ...
        raise MadrecError(unreadable(source, local, exc, expected, made_by)) from exc
