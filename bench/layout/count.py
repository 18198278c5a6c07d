"""Counts of the library's layout at a git revision (or the working tree), for docs/architecture.md:
the largest modules, the tree (modules at the top, subpackages), networks per file, the model /
diffusion options a user can set, and the dataclasses that type config keys.

    python bench/layout/count.py [REV ...]      # e.g. 70172be HEAD; no REV: the working tree
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NETWORK_BASES = {"nn.Module", "MaskedDiffusionLM", "TokenTransformer", "PooledHistoryDiffusionLM", "CausalLM"}
OPTION_CLASSES = ("ModelConfig", "DiffusionConfig")


def sources(rev: str | None) -> dict[str, str]:
    """path -> text of every src/madrec/**/*.py at `rev` (None: the working tree)."""
    if rev is None:
        return {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "src/madrec").rglob("*.py"))}
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev, "src/madrec"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    show = lambda n: subprocess.run(["git", "show", f"{rev}:{n}"], capture_output=True, text=True, cwd=ROOT).stdout  # noqa: E731
    return {n: show(n) for n in names if n.endswith(".py")}


def networks(tree: ast.Module) -> list[str]:
    """Classes ending in LM (the networks a recommender builds)."""
    return [c.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and c.name.endswith("LM")]


def options(files: dict[str, str]) -> dict[str, list[str]]:
    out = {}
    for text in files.values():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.name in OPTION_CLASSES:
                out[node.name] = [s.target.id for s in node.body if isinstance(s, ast.AnnAssign)]
    return out


def choices(files: dict[str, str]) -> dict[str, list[str]]:
    """The values of MASKINGS, SCHEDULES (dict keys) and ROW_MODES (a tuple)."""
    out = {}
    for text in files.values():
        for node in ast.parse(text).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") in (
                "MASKINGS",
                "SCHEDULES",
                "ROW_MODES",
            ):
                value = node.value
                items = value.keys if isinstance(value, ast.Dict) else value.elts
                out[node.targets[0].id] = [ast.literal_eval(k) for k in items]
    return out


def tree(files: dict[str, str]) -> tuple[list[str], list[str]]:
    """Modules directly in src/madrec/ and its subpackages."""
    parts = [Path(n).relative_to("src/madrec").parts for n in files]
    top = sorted(p[0].removesuffix(".py") for p in parts if len(p) == 1 and p[0] != "__init__.py")
    return top, sorted({p[0] for p in parts if len(p) > 1})


def config_schemas(files: dict[str, str]) -> list[str]:
    """Dataclasses whose fields are config keys a user sets on a command line (name ends in Config or Args)."""
    out = []
    for name, text in files.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Config", "Args")):
                out.append(f"{Path(name).relative_to('src/madrec').as_posix()}:{node.name}")
    return sorted(out)


def report(rev: str | None) -> str:
    files = sources(rev)
    sizes = sorted(((len(t.splitlines()), n) for n, t in files.items()), reverse=True)
    nets = {n: networks(ast.parse(t)) for n, t in files.items()}
    nets = {n: v for n, v in nets.items() if v}
    opts = options(files)
    lines = [f"## {rev or 'working tree'}", ""]
    lines += ["largest modules: " + ", ".join(f"{n.removeprefix('src/madrec/')} {k}" for k, n in sizes[:3])]
    top, packages = tree(files)
    lines += [f"tree: {len(top)} modules at the top ({', '.join(top)}); subpackages: {', '.join(packages)}"]
    lines += ["config schemas: " + ", ".join(config_schemas(files))]
    lines += [f"networks: {sum(map(len, nets.values()))} in {len(nets)} file(s): "
              + "; ".join(f"{n.removeprefix('src/madrec/')} {', '.join(v)}" for n, v in nets.items())]  # fmt: skip
    for cls, fields in opts.items():
        lines += [f"{cls}: {len(fields)} keys ({', '.join(fields)})"]
    for name, values in choices(files).items():
        lines += [f"{name}: {len(values)} ({', '.join(values)})"]
    return "\n".join(lines)


if __name__ == "__main__":
    revs = sys.argv[1:] or [None]
    print("\n\n".join(report(r) for r in revs))
