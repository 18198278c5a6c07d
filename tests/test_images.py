"""Image references: defaults, environment overrides, explicit arguments, bad names."""

from __future__ import annotations

import pytest

from madrec.errors import MadrecError
from madrec.ops.images import DEFAULT_REGISTRY, DEFAULT_TAG, image


def test_defaults(monkeypatch):
    monkeypatch.delenv("MADREC_REGISTRY", raising=False)
    monkeypatch.delenv("MADREC_TAG", raising=False)
    assert image("madrec") == "ghcr.io/madrec-project/madrec:0.1.0"
    assert image("madrec-cuda") == f"{DEFAULT_REGISTRY}/madrec-cuda:{DEFAULT_TAG}"


def test_env_then_arguments(monkeypatch):
    monkeypatch.setenv("MADREC_REGISTRY", "europe-docker.pkg.dev/p/r/")
    monkeypatch.setenv("MADREC_TAG", "dev")
    assert image("madrec") == "europe-docker.pkg.dev/p/r/madrec:dev"
    assert image("madrec-cuda", registry="localhost:5000", tag="1.2") == "localhost:5000/madrec-cuda:1.2"


def test_bad_name_and_tag():
    with pytest.raises(MadrecError, match="unknown image 'madrec-gpu'"):
        image("madrec-gpu")
    with pytest.raises(MadrecError, match="bare tag"):
        image("madrec", tag="x:1")
