"""Process layout and device: what torchrun (or a Kubeflow Trainer job, whose PET_* variables torchrun
reads) tells each process in RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE, and the rank
and size of a running torch.distributed process group, and the device a process runs on. The
one place these are read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from madrec.errors import MadrecError, quoted


@dataclass(frozen=True)
class Layout:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def nodes(self) -> int:
        return self.world_size // self.local_world_size


def launch_layout(environ: Mapping[str, str] | None = None) -> Layout:
    """This process's place in the launch (one process, when no launcher set the variables)."""
    env = os.environ if environ is None else environ

    def read(name: str, default: int) -> int:
        text = env.get(name, "").strip()
        if not text:
            return default
        if not (text.isascii() and text.isdigit()):  # "²".isdigit(), but int() refuses it
            raise MadrecError(f"{name}={text!r}: expected a whole number (set by torchrun)")
        return int(text)

    local_world = read("LOCAL_WORLD_SIZE", 0)  # each defaults to the other: one node
    world = max(read("WORLD_SIZE", local_world), 1)
    local_world = max(local_world or world, 1)
    if world % local_world:
        raise MadrecError(f"WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={local_world}")
    return Layout(read("RANK", 0), world, read("LOCAL_RANK", 0), local_world)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed process group, else (0, 1)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str | None, local_rank: int = 0):
    """The torch.device a step runs on; `auto` (or None) is CUDA when available, else the CPU.

    Checked before any file is read, so a typo is named as such rather than failing later as
    a corrupt checkpoint. A bare `cuda` is this process's GPU under torchrun (`local_rank`).
    """
    import torch

    text = "auto" if name is None else str(name).strip()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise MadrecError(f"device {quoted(text)}: not a device madrec runs on; use {DEVICE_CHOICES}")
    if device.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MadrecError(f"device {quoted(text)}: CUDA is not available on this machine; use cpu")
    index = local_rank if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise MadrecError(f"device {quoted(text)}: this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device("cuda", index)
