"""The core library stands without the operations layer: every module outside `madrec.ops`
imports with kfp, kubernetes and kserve made unimportable, and none imports `madrec.ops`."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import madrec

BLOCKED = ("kfp", "kubernetes", "kserve", "kubeflow_trainer_api")
SRC = Path(madrec.__file__).parent


def core_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages([str(SRC)], prefix="madrec.")]
    return ["madrec", *sorted(n for n in names if not n.startswith("madrec.ops"))]


def test_the_operations_layer_is_its_own_package():
    ops = {m.name for m in pkgutil.iter_modules([str(SRC / "ops")])}
    assert {"steps", "local_run", "submit", "trainjob", "deploy", "serve", "images"} <= ops


@pytest.mark.slow
def test_core_imports_without_kfp_kubernetes_kserve():
    code = f"""
import importlib, importlib.abc, sys
BLOCKED = {BLOCKED!r}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked for this test: {{name}}")
        return None

sys.meta_path.insert(0, Block())
for name in {core_modules()!r}:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED or m.startswith("madrec.ops"))
assert not loaded, loaded
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_core_modules_never_name_the_operations_layer():
    """Not even lazily inside a function: the dependency points one way (ops -> core). The verb
    table of `madrec.cli` names ops verbs as strings, which is how the CLI reaches them."""
    for path in sorted(SRC.rglob("*.py")):
        if path.is_relative_to(SRC / "ops"):
            continue
        name = path.relative_to(SRC).with_suffix("").as_posix()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("madrec.ops"):
                raise AssertionError(f"{name} imports {node.module}")
            if isinstance(node, ast.Import) and any(a.name.startswith("madrec.ops") for a in node.names):
                raise AssertionError(f"{name} imports madrec.ops")


# The import order of the library, lowest first: a module imports only from its own layer or a
# lower one (lazily inside a function too), so the tree reads as the pipeline. evaluate sits below
# train because training validates by decoding; config and checkpoint are the contracts between
# stages (the run configuration, and the file train writes and every later stage reads).
LAYERS = (
    ("errors", "io", "overrides", "dist", "threads", "torchfile", "report"),
    ("data",),
    ("sids",),
    ("models",),
    ("config",),
    ("checkpoint",),
    ("evaluate",),
    ("train",),
    ("cli",),  # names every verb's module as a string; ops steps run verbs through it
    ("ops",),
)


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    found = [i for i, names in enumerate(LAYERS) if top in names]
    assert found, f"{module}: add its package or module to LAYERS"
    return found[0]


def _madrec_imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("madrec"):
            out += [f"madrec.{a.name}" for a in node.names] if node.module == "madrec" else [node.module]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("madrec.")]
    return out


def test_each_stage_imports_only_the_stages_below_it():
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts == ("__init__",):
            continue
        me = "madrec." + ".".join(p for p in parts if p != "__init__")
        upward += [f"{me} -> {m}" for m in _madrec_imports(path) if _layer(m) > _layer(me)]
    assert not upward, upward


def test_the_tree_shows_the_pipeline():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == {"data", "sids", "models", "config", "train", "evaluate", "ops"}
    flat = sorted(p.stem for p in SRC.glob("*.py") if p.stem != "__init__")
    assert flat == sorted(["checkpoint", "cli", *LAYERS[0]]), flat
