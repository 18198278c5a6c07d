"""`madrec run-local`: the whole Kubeflow pipeline on this machine (the embedded default).

Runs the committed pipeline YAML with kfp's local SubprocessRunner (no Docker, no
Kubernetes), on CPU, with the `tiny` experiment. Data: MovieLens-1M from GroupLens by default
(downloaded once into the madrec cache), or a local folder whose layout `find_data`
recognises. Finished runs are linked under OUT/latest with plain file names (dataset/,
sids.pt, model.ckpt, metrics.json, report.html, ...), and the metrics table is printed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from madrec.errors import MadrecError
from madrec.io import content_digest, is_remote
from madrec.ops.pipeline_params import PIPELINE_FILE, REPO, parse_params, pipeline_inputs
from madrec.prepare import ML1M_URL

ITEM_PATTERNS = ("*.jsonl", "*.jsonl.gz", "movies.dat")
# Artifacts of a finished run, linked under OUT/latest: link name -> evaluate output or lineage key.
RESULT_LINKS = {
    "dataset": "dataset", "sids.pt": "sids", "sid_report.html": "sid_report", "model.ckpt": "model",
    "train_run": "run", "metrics.json": "metrics", "report.html": "report",
    "predictions.parquet": "predictions", "summary.md": "summary",
}


@dataclass(frozen=True)
class DataSpec:
    """What `madrec prepare-data` reads: --dataset KIND --source SOURCE [--items ITEMS]."""

    kind: str
    source: str
    items: str = ""

    def describe(self) -> str:
        return f"{self.kind}: {self.source}" + (f" + items {self.items}" if self.items else "")


def _looks_like_sequences(path: Path, lines: int = 5) -> bool:
    """True when the first lines are `user item item ...` with integer ids."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            head = [line.split() for line, _ in zip(fh, range(lines * 4)) if line.strip()][:lines]
    except OSError:
        return False
    return bool(head) and all(len(t) >= 2 and all(x.isdigit() for x in t) for t in head)


def _listing(paths) -> str:
    return ", ".join(sorted(p.name for p in paths))


def _pick_items(folder: Path, items: str | None) -> Path:
    if items:
        return _existing(items, "--items")
    found = sorted({p for pattern in ITEM_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    if not found:
        raise MadrecError(
            f"{folder}: no items file (items.jsonl, items.jsonl.gz or movies.dat) next to the sequences; "
            "pass --items FILE (make run ITEMS=...)"
        )
    if len(found) > 1:
        raise MadrecError(f"{folder}: several items files ({_listing(found)}); pick one with --items FILE (make run ITEMS=...)")
    return found[0]


def _existing(path: str, flag: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise MadrecError(f"{flag} {path}: no such file or folder")
    return p.resolve()


def _sequences(seq: Path, items: str | None) -> DataSpec:
    return DataSpec("sequences", str(seq), str(_pick_items(seq.parent, items)))


def find_data(data: str | None = None, sequences: str | None = None, items: str | None = None) -> DataSpec:
    """Recognise the input layout.

    - nothing given: MovieLens-1M from GroupLens;
    - `ml-1m.zip`, or a folder with `ml-1m.zip` or `ratings.dat` + `movies.dat`: ML-1M;
    - a sequences file (`*.txt`, `user item item ...` per line, integer ids) with an items file
      (`items.jsonl[.gz]` or `movies.dat`) in the same folder.
    Several candidates are an error that lists them; `sequences` / `items` pick.
    """
    if sequences:
        return _sequences(_existing(sequences, "--sequences"), items or None)
    if data is None:
        if items:
            raise MadrecError("--items needs --sequences or --data (the folder or file of the sequences)")
        return DataSpec("ml-1m", ML1M_URL)
    path = _existing(data, "--data")
    if path.is_file():
        if path.suffix == ".zip":
            return DataSpec("ml-1m", str(path))
        return _sequences(path, items)
    ml1m = [p for p in (path / "ml-1m.zip",) if p.is_file()]
    for folder in (path, path / "ml-1m"):
        if (folder / "ratings.dat").is_file() and (folder / "movies.dat").is_file():
            ml1m.append(folder / "ratings.dat")
    texts = sorted(p for p in path.glob("*.txt") if p.is_file())
    seqs = [p for p in texts if _looks_like_sequences(p)]
    if ml1m and (seqs or items):
        raise MadrecError(
            f"{path}: both MovieLens-1M files ({_listing(ml1m)}) and sequences ({_listing(seqs) or 'with --items'}); "
            f"use --data {ml1m[0]} for the ratings, or --sequences FILE (make run SEQUENCES=...)"
        )
    if len(ml1m) > 1:
        raise MadrecError(f"{path}: several MovieLens-1M sources ({_listing(ml1m)}); pick one with --data FILE_OR_FOLDER")
    if ml1m:
        return DataSpec("ml-1m", str(ml1m[0] if ml1m[0].suffix == ".zip" else ml1m[0].parent))
    if len(seqs) > 1:
        raise MadrecError(
            f"{path}: several sequences files ({_listing(seqs)}); pick one with --sequences FILE (make run SEQUENCES=...)"
        )
    if not seqs:
        found = f"; its .txt files ({_listing(texts)}) are not 'user item item ...' lines of integer ids" if texts else ""
        raise MadrecError(
            f"{path}: no recognised data: expected ml-1m.zip, ratings.dat + movies.dat, or a sequences "
            f"*.txt with an items file{found}; pass --sequences FILE --items FILE"
        )
    return _sequences(seqs[0], items)


def stage_input(source: str, store: Path) -> str:
    """A content-addressed alias STORE/<sha256>/<name> of a local input: the pipeline's
    arguments, and with them kfp's cache keys, change exactly when the content does."""
    if not source or is_remote(source):
        return source
    path = Path(source).resolve()
    alias = store / content_digest(path)[:16] / path.name
    alias.parent.mkdir(parents=True, exist_ok=True)
    if not alias.is_symlink():
        try:
            alias.symlink_to(path)
        except FileExistsError:  # a concurrent run made the same alias
            pass
    return str(alias)


def code_fingerprint() -> str:
    """Hash of the madrec library and configs: after a code change no step reuses old outputs."""
    import madrec

    files = sorted(Path(madrec.__file__).parent.rglob("*.py")) + sorted((REPO / "configs").rglob("*.yaml"))
    return hashlib.sha256("".join(content_digest(f) for f in files).encode()).hexdigest()[:16]


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def run_pipeline(arguments: dict, out: Path, cache_root: Path | None, pipeline_file: Path = PIPELINE_FILE) -> Path:
    """Run the compiled pipeline locally under `out`; returns the run's folder."""
    from kfp import components, local

    if cache_root:
        cache_root.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(out),
        enable_caching=cache_root is not None,
        cache_root=str(cache_root) if cache_root else None,
    )
    pipeline = components.load_component_from_file(str(pipeline_file))
    with warnings.catch_warnings():
        # Expected locally: our images are not python:* ones, and GPU / node-pool settings are
        # cluster-only (the local runner ignores them).
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
        try:
            pipeline(**arguments)
        except RuntimeError as exc:
            raise MadrecError(f"{_strip_ansi(str(exc))} (that step's log is above)") from None
    runs = [p for p in out.iterdir() if p not in before and p.is_dir() and not p.name.startswith(".")]
    if len(runs) != 1:
        raise MadrecError(f"{out}: expected one new run folder, found {_listing(runs) or 'none'}")
    return runs[0]


COMPARISON_LINKS = {"comparison.md": "table", "comparison.html": "report", "comparison.json": "comparison"}


def collect_comparison(run_dir: Path) -> dict[str, str] | None:
    """The compare step's outputs (a run with the `experiments` parameter), else None."""
    outputs = sorted(run_dir.glob("compare-models*/executor_output.json"))
    if not outputs:
        return None
    artifacts = json.loads(outputs[-1].read_text())["artifacts"]
    return {name: entry["artifacts"][0]["uri"] for name, entry in artifacts.items()}


def collect_results(run_dir: Path) -> dict[str, str]:
    """Output name -> local path of a finished run: the evaluate step's outputs plus the
    lineage it records (dataset, SIDs, model, ...; these may come from cached earlier runs)."""
    outputs = sorted(run_dir.glob("evaluate*/executor_output.json"))
    if len(outputs) != 1:
        raise MadrecError(f"{run_dir}: expected one evaluate step, found {len(outputs)}")
    artifacts = json.loads(outputs[0].read_text())["artifacts"]
    found = {name: entry["artifacts"][0]["uri"] for name, entry in artifacts.items()}
    lineage = artifacts["summary"]["artifacts"][0].get("metadata", {})
    found.update({k: v for k, v in lineage.items() if k in RESULT_LINKS.values() and v})
    return found


def link_results(results: dict[str, str], folder: Path, links: dict[str, str] = RESULT_LINKS) -> Path:
    """Symlink every result under `folder` with a conventional file name."""
    folder.mkdir(parents=True, exist_ok=True)
    for link_name, key in links.items():
        if key in results:
            link = folder / link_name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(results[key])
    return folder


def _point_latest(out: Path, target: Path) -> None:
    latest = out / "latest"
    tmp = out / f".latest-{os.getpid()}"
    tmp.symlink_to(target.relative_to(out))
    os.replace(tmp, latest)


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="madrec run-local",
        description="Run the whole madrec pipeline locally with kfp's SubprocessRunner (CPU).",
        epilog="Default data: MovieLens-1M downloaded from GroupLens. Extra KEY=VALUE arguments are "
        "`madrec train` overrides, e.g. trainer.max_steps=200.",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training config overrides")
    p.add_argument("--data", help="folder (ml-1m.zip, ratings.dat + movies.dat, or sequences *.txt + items) or file")
    p.add_argument("--sequences", help="the sequences file, when the folder has several")
    p.add_argument("--items", help="the items file (items.jsonl[.gz] or movies.dat), when the folder has several")
    p.add_argument("--sid-uri", default="", help="a GRID SID file to ingest instead of building SIDs")
    p.add_argument("--experiment", default="tiny", help="training experiment (configs/experiment/NAME.yaml)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other pipeline parameter, e.g. --param sid_levels=4 --param eval_overrides=beam_size=20")
    p.add_argument("--out", type=Path, default=Path("runs/local"), help="pipeline root (default runs/local)")
    p.add_argument("--no-cache", action="store_true", help="rerun every step instead of reusing earlier outputs")
    p.add_argument("--pipeline-file", type=Path, default=PIPELINE_FILE, help="compiled pipeline YAML")
    args = p.parse_args(argv)

    spec = find_data(args.data, args.sequences, args.items)
    if args.sid_uri and not is_remote(args.sid_uri):
        _existing(args.sid_uri, "--sid-uri")
    out = args.out.resolve()
    store = out / ".inputs"
    arguments = {
        "dataset": spec.kind, "source": stage_input(spec.source, store), "items": stage_input(spec.items, store),
        "sid_uri": stage_input(args.sid_uri, store), "experiment": args.experiment,
        "train_overrides": " ".join(args.overrides), "num_gpus": 0,
        **parse_params(args.param, pipeline_inputs(args.pipeline_file)),
    }
    cache_root = None if args.no_cache else out / ".cache" / code_fingerprint()
    print(f"madrec run-local: {spec.describe()} | experiment {args.experiment} | outputs under {out}", flush=True)
    start = time.perf_counter()
    run_dir = run_pipeline(arguments, out, cache_root, args.pipeline_file)
    comparison = collect_comparison(run_dir)
    if comparison is not None:
        results, links, table = comparison, COMPARISON_LINKS, comparison["table"]
    else:
        results = collect_results(run_dir)
        links, table = RESULT_LINKS, results["summary"]
    folder = link_results(results, run_dir / "results", links)
    _point_latest(out, folder)
    minutes, seconds = divmod(int(time.perf_counter() - start), 60)
    print(f"\nmadrec run-local: finished in {minutes}m{seconds:02d}s; artifacts in {out / 'latest'} -> {folder}")
    for link_name in links:
        if (folder / link_name).is_symlink():
            print(f"  {link_name:<20} {os.readlink(folder / link_name)}")
    print()
    print(Path(table).read_text())
    return 0
