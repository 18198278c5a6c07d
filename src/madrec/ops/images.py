"""Container image names shared by the Makefile, docker compose, manifests and KFP components.

`madrec` is the CPU image (prepare-data, build-sids, ingest-sids, recommend); `madrec-cuda` is
the CUDA image (train, evaluate). MADREC_REGISTRY / MADREC_TAG override the defaults, so a
pipeline compiled after `make push-images REGISTRY=... TAG=...` points at the pushed images.
"""

from __future__ import annotations

import os

from madrec.errors import MadrecError

DEFAULT_REGISTRY = "ghcr.io/madrec-project"
DEFAULT_TAG = "0.1.0"
IMAGES = ("madrec", "madrec-cuda")


def image(name: str, registry: str | None = None, tag: str | None = None) -> str:
    """Full reference `REGISTRY/NAME:TAG`; arguments win over MADREC_REGISTRY / MADREC_TAG."""
    if name not in IMAGES:
        raise MadrecError(f"unknown image {name!r}; valid images: {', '.join(IMAGES)} (see docker/)")
    registry = (registry or os.environ.get("MADREC_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
    tag = tag or os.environ.get("MADREC_TAG") or DEFAULT_TAG
    if ":" in tag or "/" in tag or "@" in tag:
        raise MadrecError(f"image tag {tag!r} (argument or MADREC_TAG) must be a bare tag like 0.1.0")
    return f"{registry}/{name}:{tag}"
