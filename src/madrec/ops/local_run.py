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
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from madrec.data.prepare import ML1M_URL
from madrec.errors import MadrecError
from madrec.io import content_digest, is_remote
from madrec.ops.pipeline_params import (
    PIPELINE_FILE,
    REPO,
    add_param_option,
    parse_params,
    pipeline_inputs,
    train_overrides_from,
)

# Items files next to sequences or an interactions table (prepare-data --items reads them all).
ITEM_PATTERNS = ("*.jsonl", "*.jsonl.gz", "movies.dat", "items.csv", "items.csv.gz", "items.parquet")
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet")  # interactions tables (prepare-data --dataset interactions)
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
KINDS = ("ml-1m", "sequences", "interactions")
# Artifacts of a finished run, linked under OUT/latest: link name -> evaluate output or lineage key.
RESULT_LINKS = {
    "dataset": "dataset",
    "sids.pt": "sids",
    "sid_report.html": "sid_report",
    "model.ckpt": "model",
    "train_run": "run",
    "metrics.json": "metrics",
    "report.html": "report",
    "predictions.parquet": "predictions",
    "summary.md": "summary",
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


def _is_table(path: Path) -> bool:
    return path.name.lower().endswith(TABLE_SUFFIXES)


def _looks_like_interactions(path: Path) -> bool:
    """True for a CSV / Parquet table with user_id, item_id and timestamp columns."""
    try:
        if path.name.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            columns = pq.read_schema(path).names
        else:
            import gzip

            opener = gzip.open if path.name.lower().endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
                columns = [c.strip().strip('"') for c in fh.readline().split(",")]
    except Exception:  # unreadable or not a table: not a candidate
        return False
    return set(INTERACTION_COLUMNS) <= set(columns)


def _listing(paths) -> str:
    return ", ".join(sorted(p.name for p in paths))


def _pick_items(folder: Path, items: str | None, exclude: Path | None = None) -> Path:
    if items:
        return _existing(items, "--items")
    found = sorted({p for pattern in ITEM_PATTERNS for p in folder.glob(pattern) if p.is_file() and p != exclude})
    if not found:
        raise MadrecError(
            f"{folder}: no items file (items.jsonl[.gz], movies.dat or items.csv / items.parquet) next to the "
            "sequences or interactions; pass --items FILE (make run ITEMS=...)"
        )
    if len(found) > 1:
        raise MadrecError(
            f"{folder}: several items files ({_listing(found)}); pick one with --items FILE (make run ITEMS=...)"
        )
    return found[0]


def _existing(path: str, flag: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise MadrecError(f"{flag} {path}: no such file or folder")
    return p.resolve()


def _sequences(seq: Path, items: str | None) -> DataSpec:
    return DataSpec("sequences", str(seq), str(_pick_items(seq.parent, items)))


def _interactions(table: Path, items: str | None) -> DataSpec:
    return DataSpec("interactions", str(table), str(_pick_items(table.parent, items, exclude=table)))


def _kind_of_file(name: str) -> str:
    """The input kind a single file's name implies."""
    lower = name.lower()
    if lower.endswith(".zip"):
        return "ml-1m"
    return "interactions" if lower.endswith(TABLE_SUFFIXES) else "sequences"


def find_data(
    data: str | None = None, sequences: str | None = None, items: str | None = None, kind: str | None = None
) -> DataSpec:
    """Recognise the input layout.

    - nothing given: MovieLens-1M from GroupLens;
    - `ml-1m.zip`, or a folder with `ml-1m.zip` or `ratings.dat` + `movies.dat`: ML-1M;
    - a sequences file (`*.txt`, `user item item ...` per line, integer ids) with an items file
      (`items.jsonl[.gz]`, `movies.dat`, `items.csv` or `items.parquet`) in the same folder;
    - an interactions table (`*.csv[.gz]` or `*.parquet` with user_id, item_id, timestamp)
      with an items file (the same names);
    - a remote source (gs://, https://): its kind from its name, its items from `items`.
    Several candidates are an error that lists them; `sequences` / `items` pick. `kind`
    (prepare-data's --dataset) forces the kind of `data`.
    """
    if kind is not None and kind not in KINDS:
        raise MadrecError(f"--dataset {kind}: expected one of {', '.join(KINDS)}")
    if sequences:
        return _sequences(_existing(sequences, "--sequences"), items or None)
    if data is None:
        if items or kind not in (None, "ml-1m"):
            raise MadrecError("--items / --dataset need --data (the folder or file of the interactions)")
        return DataSpec("ml-1m", ML1M_URL)
    if is_remote(data):
        return _remote(data, items, kind)
    path = _existing(data, "--data")
    if path.is_file():
        kind = kind or _kind_of_file(path.name)
        if kind == "ml-1m":
            return DataSpec("ml-1m", str(path))
        return _interactions(path, items) if kind == "interactions" else _sequences(path, items)
    return _find_in_folder(path, items, kind)


def _remote(uri: str, items: str | None, kind: str | None) -> DataSpec:
    kind = kind or _kind_of_file(uri.rsplit("/", 1)[-1])
    if kind != "ml-1m" and not items:
        raise MadrecError(f"--data {uri}: {kind} need their item texts too; pass --items FILE_OR_URI")
    if items and not is_remote(items):
        items = str(_existing(items, "--items"))
    return DataSpec(kind, uri, items or "")


def _find_in_folder(path: Path, items: str | None, kind: str | None) -> DataSpec:
    """The one recognised input in a folder (module docstring)."""
    ml1m = [p for p in (path / "ml-1m.zip",) if p.is_file()]
    for folder in (path, path / "ml-1m"):
        if (folder / "ratings.dat").is_file() and (folder / "movies.dat").is_file():
            ml1m.append(folder / "ratings.dat")
    texts = sorted(p for p in path.glob("*.txt") if p.is_file())
    seqs = [p for p in texts if _looks_like_sequences(p)]
    tables = sorted(p for p in path.iterdir() if p.is_file() and _is_table(p) and _looks_like_interactions(p))
    found = {"ml-1m": ml1m, "sequences": seqs, "interactions": tables}
    if kind is None:
        _refuse_mixed(path, ml1m, seqs, tables, items)
    for k in (kind,) if kind else KINDS:
        if len(found[k]) > 1:
            what, pick = PICK[k]
            raise MadrecError(f"{path}: several {what} ({_listing(found[k])}); pick one with {pick}")
        if found[k]:
            return _spec(k, found[k][0], items)
    hint = f"; its .txt files ({_listing(texts)}) are not 'user item item ...' lines of integer ids" if texts else ""
    raise MadrecError(
        f"{path}: no recognised data: expected ml-1m.zip, ratings.dat + movies.dat, a sequences *.txt or an "
        f"interactions table (*.csv / *.parquet with {', '.join(INTERACTION_COLUMNS)}) with an items file{hint}; "
        "pass --sequences FILE --items FILE or --data TABLE --items FILE"
    )


# What each kind's candidates are called, and the option that picks one of several.
PICK = {
    "ml-1m": ("MovieLens-1M sources", "--data FILE_OR_FOLDER"),
    "sequences": ("sequences files", "--sequences FILE (make run SEQUENCES=...)"),
    "interactions": ("interactions tables", "--data TABLE (make run DATA=...)"),
}


def _spec(kind: str, found: Path, items: str | None) -> DataSpec:
    if kind == "ml-1m":  # the archive, or the folder holding ratings.dat
        return DataSpec("ml-1m", str(found if found.suffix == ".zip" else found.parent))
    return _sequences(found, items) if kind == "sequences" else _interactions(found, items)


def _refuse_mixed(path: Path, ml1m: list, seqs: list, tables: list, items: str | None) -> None:
    """A folder holding inputs of two kinds is ambiguous: the message says how to pick one."""
    if ml1m and (seqs or tables or items):
        others = _listing(seqs + tables) or "with --items"
        raise MadrecError(
            f"{path}: both MovieLens-1M files ({_listing(ml1m)}) and sequences or interactions ({others}); "
            f"use --data {ml1m[0]} for the ratings, or --sequences FILE / --data TABLE "
            "(make run SEQUENCES=... / DATA=...)"
        )
    if seqs and tables:
        raise MadrecError(
            f"{path}: both sequences ({_listing(seqs)}) and interactions tables ({_listing(tables)}); "
            "pick one with --sequences FILE or --data TABLE"
        )


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
    """Every result under `folder` with a conventional file name: a symlink, except that a page
    (`*.html`) whose artifact file has no extension is a hard link (a copy across file systems),
    since a browser follows a symlink to its target's name and shows an extension-less page as text."""
    folder.mkdir(parents=True, exist_ok=True)
    for link_name, key in links.items():
        if key in results:
            link, target = folder / link_name, Path(results[key])
            if link.is_symlink() or link.exists():
                link.unlink()
            if link.suffix == ".html" and target.suffix != ".html" and target.is_file():
                try:
                    os.link(target, link)
                except OSError:
                    shutil.copyfile(target, link)
            else:
                link.symlink_to(target)
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
    p.add_argument(
        "--data",
        help="a folder or file: ml-1m.zip, ratings.dat + movies.dat, a sequences *.txt or an "
        "interactions table (*.csv / *.parquet: user_id, item_id, timestamp) with items; or a gs:// / "
        "https:// URI",
    )
    p.add_argument("--sequences", help="the sequences file, when the folder has several")
    p.add_argument(
        "--items",
        help="the items file (items.jsonl[.gz], movies.dat, CSV / Parquet item_id,text), "
        "when the folder has several or has none",
    )
    p.add_argument(
        "--dataset",
        choices=KINDS,
        help="the kind of --data, when its name does not say it (as madrec prepare-data --dataset)",
    )
    p.add_argument("--min-item-count", type=int, default=None, help="as madrec prepare-data (default 5)")
    p.add_argument("--sid-uri", default="", help="a GRID SID file to ingest instead of building SIDs")
    p.add_argument("--experiment", default="tiny", help="training experiment (configs/experiment/NAME.yaml)")
    add_param_option(p, "any other pipeline parameter, e.g. --param sid_levels=4 --param eval_overrides.beam_size=20")
    p.add_argument("--out", type=Path, default=Path("runs/local"), help="pipeline root (default runs/local)")
    p.add_argument("--no-cache", action="store_true", help="rerun every step instead of reusing earlier outputs")
    p.add_argument("--pipeline-file", type=Path, default=PIPELINE_FILE, help="compiled pipeline YAML")
    args = p.parse_args(argv)

    spec = find_data(args.data, args.sequences, args.items, args.dataset)
    if args.sid_uri and not is_remote(args.sid_uri):
        _existing(args.sid_uri, "--sid-uri")
    out = args.out.resolve()
    store = out / ".inputs"
    defaults = {
        "dataset": spec.kind,
        "source": stage_input(spec.source, store),
        "items": stage_input(spec.items, store),
        "sid_uri": stage_input(args.sid_uri, store),
        "experiment": args.experiment,
        "train_overrides": train_overrides_from(args.overrides, "madrec run-local"),
        "num_gpus": 0,
        **({"min_item_count": args.min_item_count} if args.min_item_count is not None else {}),
    }
    arguments = parse_params(args.param, pipeline_inputs(args.pipeline_file), base=defaults)
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
