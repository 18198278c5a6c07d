"""Data preparation (docs/architecture.md, "Data flow"): raw interactions -> leave-one-out GZIP TFRecord splits.

Three input kinds, one output layout (see `madrec.data.dataset`):

- ``ml-1m``: the official GroupLens archive (``ml-1m.zip``, its extracted folder, or a URL);
- ``sequences``: one line per user, ``user item item ...`` in chronological order, plus an
  items file giving each item's text (JSON lines, optionally gzipped, or MovieLens ``movies.dat``);
- ``interactions``: a CSV or Parquet table ``user_id,item_id,timestamp`` plus an items table
  ``item_id,text`` (CSV, Parquet or JSON lines).

Every path goes through the same steps: keep items with at least ``min_item_count``
interactions (one pass, items only), drop users left with fewer than 3 items (counted),
index items in the order of their original ids (numeric when they are all numbers), split
leave-one-out and write the shards into a temporary folder that replaces ``out`` at the end.
``--split temporal`` (a global cut-off) and ``--holdout-items`` (a seeded share of items kept
only as test targets) are the other protocols (docs/data.md, "Split protocols").
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
import re
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from madrec.data.tfrecord import encode_example, write_records
from madrec.errors import MadrecError, quoted
from madrec.io import atomic_dir, fetch

log = logging.getLogger(__name__)

ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
# published checksums of known archives (GroupLens publishes ml-1m.zip.md5 next to the zip):
# a download that does not match is refused and not cached
KNOWN_MD5 = {url: "c4d9eecfca2ab87c1945afe126590906" for url in (ML1M_URL, ML1M_URL.replace("https:", "http:"))}
DATASETS = ("ml-1m", "sequences", "interactions")
MIN_USER_ITEMS = 3  # one training item, the validation target and the test target
SPLIT_KINDS = ("leave-one-out", "temporal")
NO_TRAINING = "users_without_training_interactions"
FEW_AFTER_CUTOFF = "users_with_fewer_than_2_interactions_after_cutoff"
RECORDS_PER_SHARD = 10_000
FORMAT = "madrec.prepared/1"


@dataclass
class RawData:
    """Users' chronological item-id sequences and item texts, before filtering and indexing.

    `origin[i]` tells where user i's sequence came from (``file:line``), for error messages;
    `times[i]` are its interactions' timestamps (non-decreasing), None for inputs without them.
    """

    users: list[str]
    sequences: list[list[str]]
    origin: list[str]
    texts: dict[str, str]
    items_source: str
    skipped: dict[str, int] = field(default_factory=dict)
    times: list[np.ndarray] | None = None


# --- small readers -------------------------------------------------------------------


def _open_text_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield (line number, line without newline) of a text file, gzipped or not.

    Decoding and decompression errors become MadrecErrors naming the file and line.
    """
    lineno = 0
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    yield lineno, raw.decode(encoding).rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    raise MadrecError(
                        f"{path}:{lineno}: not valid {encoding} ({exc.reason} at byte {exc.start}); "
                        f"re-save the file as {encoding}"
                    ) from exc
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise MadrecError(
            f"{path}: corrupt or truncated gzip after line {lineno} ({exc}); re-download or re-create the file"
        ) from exc


_INT = re.compile(r"-?[0-9]+")


def _is_int(text: str) -> bool:
    """ASCII digits with an optional minus: '²' and '٣' are str.isdigit() but not ids int() reads
    the same way, '--1' is no number (all found by tests/test_fuzz_prepare.py)."""
    return _INT.fullmatch(text) is not None


def id_sort_key(ids: Iterable[str]):
    """Sort key for original ids: numeric order when every id is an integer, else text order."""
    ids = list(ids)
    if ids and all(_is_int(i) for i in ids):
        return lambda i: (0, int(i), "")
    return lambda i: (1, 0, i)


class _Texts:
    """Item id -> text as an items file gives them: an id given twice with different texts is an
    error (which one is meant?), an exact repeat is counted and said once."""

    def __init__(self, name: str):
        self.name, self.texts, self.where, self.repeats = name, {}, {}, 0

    def add(self, where: str, item, text) -> None:
        item = str(item)
        if not isinstance(text, str):
            shown = "null" if text is None else quoted(text)
            raise MadrecError(
                f"{where}: item {quoted(item)} has text {shown}; the 'text' field must be a string "
                '(the title / description the SID is built from; "" for an item without one)'
            )
        if item in self.texts:
            if self.texts[item] != text:
                raise MadrecError(
                    f"{where}: item {quoted(item)} appears again with a different text (first at {self.where[item]}); "
                    "keep one line per item"
                )
            self.repeats += 1
            return
        self.texts[item], self.where[item] = text, where

    def done(self) -> dict[str, str]:
        if not self.texts:
            raise MadrecError(f"{self.name}: no items found; expected one item id and text per line or row")
        if self.repeats:
            log.warning("%s: %d repeated line(s) of an item with the same text, kept once", self.name, self.repeats)
        return self.texts


def _parse_movies_dat(lines: Iterable[tuple[int, str]], name: str) -> dict[str, str]:
    """MovieLens `MovieID::Title::Genres` -> {id: "<title> (<genres>)"} (genres joined by ', ')."""
    texts = _Texts(name)
    for lineno, line in lines:
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != 3 or not _is_int(parts[0]):
            raise MadrecError(f"{name}:{lineno}: expected 'MovieID::Title::Genres', got {quoted(line)}")
        texts.add(f"{name}:{lineno}", parts[0], f"{parts[1]} ({parts[2].replace('|', ', ')})")
    return texts.done()


def read_item_texts(path: Path) -> dict[str, str]:
    """Item texts from JSON lines (`item_id`, `text`; .gz ok), `movies.dat`, CSV or Parquet."""
    name = path.name.lower()
    if name.endswith(".dat"):
        return _parse_movies_dat(_open_text_lines(path, "iso-8859-1"), str(path))
    if name.endswith((".csv", ".parquet", ".csv.gz")):
        table = _read_table(path, {"item_id", "text"})
        texts = _Texts(str(path))
        for row, (item, text) in enumerate(zip(table["item_id"], table["text"]), start=1):
            if item is None:
                raise MadrecError(f"{path}: row {row} has an empty item_id")
            texts.add(f"{path}: row {row}", item, "" if text is None else text)  # an empty cell: no text
        return texts.done()
    if not name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        raise MadrecError(
            f"{path}: unknown items file type; use JSON lines (.jsonl[.gz]) with item_id and text, "
            "MovieLens movies.dat, or a CSV/Parquet table with item_id,text"
        )
    texts = _Texts(str(path))
    for lineno, line in _open_text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            raise MadrecError(f"{path}:{lineno}: not valid JSON ({reason}); each line must be one JSON object") from exc
        if not isinstance(row, dict) or "item_id" not in row or "text" not in row:
            raise MadrecError(f"{path}:{lineno}: each line needs the fields 'item_id' and 'text'")
        item = row["item_id"]
        if isinstance(item, bool) or not isinstance(item, (str, int)) or item == "":
            raise MadrecError(f"{path}:{lineno}: item_id {quoted(item)} must be a non-empty string or an integer")
        texts.add(f"{path}:{lineno}", item, row["text"])
    return texts.done()


def _read_table(path: Path, required: set[str]) -> dict[str, list]:
    """Columns of a CSV or Parquet table as python lists (ids as strings)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if path.name.lower().endswith(".parquet"):
            table = pq.read_table(path)
        else:
            types = {c: pa.string() for c in ("user_id", "item_id", "text")}
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
    except (pa.ArrowInvalid, OSError) as exc:
        raise MadrecError(
            f"{path}: cannot read as {'Parquet' if path.suffix == '.parquet' else 'CSV'} ({exc})"
        ) from exc
    missing = required - set(table.column_names)
    if missing:
        raise MadrecError(
            f"{path}: missing column(s) {sorted(missing)}; found {table.column_names}, need {sorted(required)}"
        )
    if table.num_rows == 0:
        raise MadrecError(f"{path}: the table has a header but no rows; expected one row per {sorted(required)}")
    out = {}
    for col in required:
        arr = table[col]
        if col != "timestamp" and not pa.types.is_string(arr.type):
            arr = arr.cast(pa.string())
        out[col] = arr.to_pylist()
    return out


# --- the three input kinds ---------------------------------------------------------


def _ml1m_members(source: Path) -> tuple[str, bytes, bytes]:
    """(label, ratings.dat bytes, movies.dat bytes) from a zip or a folder."""
    if source.is_file():
        try:
            with zipfile.ZipFile(source) as zf:
                names = {Path(n).name: n for n in zf.namelist()}
                if "ratings.dat" not in names or "movies.dat" not in names:
                    raise MadrecError(f"{source}: the archive has no ratings.dat and movies.dat (is it ml-1m.zip?)")
                return str(source), zf.read(names["ratings.dat"]), zf.read(names["movies.dat"])
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise MadrecError(f"{source}: not a readable zip archive ({exc}); re-download ml-1m.zip") from exc
    for folder in (source, source / "ml-1m"):
        if (folder / "ratings.dat").is_file() and (folder / "movies.dat").is_file():
            return str(folder), (folder / "ratings.dat").read_bytes(), (folder / "movies.dat").read_bytes()
    raise MadrecError(f"{source}: no ratings.dat and movies.dat found (expected ml-1m.zip or its extracted folder)")


def _lines_of(data: bytes, encoding: str, name: str) -> Iterator[tuple[int, str]]:
    for lineno, raw in enumerate(io.BytesIO(data), start=1):
        try:
            yield lineno, raw.decode(encoding).rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise MadrecError(f"{name}:{lineno}: not valid {encoding} ({exc.reason})") from exc


def read_ml1m(source: str) -> RawData:
    """The official ML-1M archive: every rating is an interaction, ordered by timestamp (stable)."""
    label, ratings, movies = _ml1m_members(fetch(source, md5=KNOWN_MD5.get(source)))
    ratings_name, movies_name = f"{label}/ratings.dat", f"{label}/movies.dat"
    per_user: dict[str, list[tuple[int, str]]] = {}
    first_line: dict[str, int] = {}
    for lineno, line in _lines_of(ratings, "iso-8859-1", ratings_name):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != 4 or not all(_is_int(p) for p in (parts[0], parts[1], parts[3])):
            raise MadrecError(
                f"{ratings_name}:{lineno}: expected 'UserID::MovieID::Rating::Timestamp', got {line[:80]!r}"
            )
        per_user.setdefault(parts[0], []).append((int(parts[3]), parts[1]))
        first_line.setdefault(parts[0], lineno)
    users = sorted(per_user, key=id_sort_key(per_user))
    # list.sort is stable: ties keep the file order
    rows = [sorted(per_user[u], key=lambda r: r[0]) for u in users]
    sequences = [[item for _, item in r] for r in rows]
    times = [np.array([t for t, _ in r], dtype=np.float64) for r in rows]
    texts = _parse_movies_dat(_lines_of(movies, "iso-8859-1", movies_name), movies_name)
    origin = [f"{ratings_name}:{first_line[u]}" for u in users]
    return RawData(users, sequences, origin, texts, movies_name, times=times)


def read_sequences(path: Path, items_path: Path) -> RawData:
    """One line per user: `user item item ...` (chronological)."""
    seen: dict[str, tuple[int, list[str]]] = {}
    skipped = Counter()
    for lineno, line in _open_text_lines(path):
        tokens = line.split()
        if not tokens:
            skipped["blank_lines"] += 1
            continue
        if len(tokens) < 2:
            raise MadrecError(
                f"{path}:{lineno}: user {tokens[0]!r} has no items; each line must be 'user item item ...'"
            )
        user, items = tokens[0], tokens[1:]
        if user in seen:
            first, previous = seen[user]
            if previous != items:
                raise MadrecError(
                    f"{path}:{lineno}: user {user!r} appears again with a different sequence (first at line "
                    f"{first}); merge the lines into one chronological sequence"
                )
            skipped["duplicate_lines"] += 1
            continue
        seen[user] = (lineno, items)
    if not seen:
        raise MadrecError(f"{path}: no user sequences found")
    users = sorted(seen, key=id_sort_key(seen))
    return RawData(
        users,
        [seen[u][1] for u in users],
        [f"{path}:{seen[u][0]}" for u in users],
        read_item_texts(items_path),
        str(items_path),
        dict(skipped),
    )


def _timestamps(values: list, path: Path) -> np.ndarray:
    """Numeric timestamps, or ISO-8601 strings / datetimes, as float seconds."""
    from datetime import datetime

    out = np.empty(len(values), dtype=np.float64)
    for row, v in enumerate(values):
        try:
            if isinstance(v, datetime):
                out[row] = v.timestamp()
            elif isinstance(v, str) and not v.replace(".", "", 1).lstrip("-").isdigit():
                out[row] = datetime.fromisoformat(v).timestamp()
            else:
                out[row] = float(v)
        except (TypeError, ValueError, OverflowError) as exc:
            raise MadrecError(f"{path}: row {row + 1} has timestamp {quoted(v)}; use Unix seconds or ISO-8601") from exc
        if not np.isfinite(out[row]):
            raise MadrecError(
                f"{path}: row {row + 1} has timestamp {quoted(v)}, which is not a finite number of seconds; "
                "use Unix seconds or ISO-8601"
            )
    return out


def read_interactions(path: Path, items_path: Path) -> RawData:
    """A `user_id,item_id,timestamp` table: ordered per user by timestamp (stable for ties)."""
    table = _read_table(path, {"user_id", "item_id", "timestamp"})
    users_col, items_col = table["user_id"], table["item_id"]
    for name, col in (("user_id", users_col), ("item_id", items_col)):
        if None in col:
            raise MadrecError(f"{path}: row {col.index(None) + 1} has an empty {name}")
    ts = _timestamps(table["timestamp"], path)
    uniq = sorted(set(users_col), key=id_sort_key(set(users_col)))
    code = {u: i for i, u in enumerate(uniq)}
    user_codes = np.fromiter((code[u] for u in users_col), dtype=np.int64, count=len(users_col))
    order = np.lexsort((ts, user_codes))  # stable: ties keep the table order
    bounds = np.searchsorted(user_codes[order], np.arange(len(uniq) + 1))
    first_row = {}
    for row, u in enumerate(users_col):
        first_row.setdefault(u, row + 1)
    rows = [order[bounds[i] : bounds[i + 1]] for i in range(len(uniq))]
    sequences = [[items_col[r] for r in user_rows] for user_rows in rows]
    origin = [f"{path}: row {first_row[u]}" for u in uniq]
    return RawData(uniq, sequences, origin, read_item_texts(items_path), str(items_path), times=[ts[r] for r in rows])


# --- filtering, indexing, splitting, writing ---------------------------------------


def _a_file(path: Path, flag: str, what: str) -> Path:
    if path.is_dir():
        raise MadrecError(f"{path}: {flag} is a folder; give the {what} file itself ({flag} FOLDER/FILE)")
    return path


def _index_items(raw: RawData, counts: Counter, min_item_count: int, extra: frozenset = frozenset()) -> list[str]:
    """Items with >= min_item_count counted interactions, plus `extra`, in id order; each needs a text."""
    kept = {i for i, c in counts.items() if c >= min_item_count} | extra
    item_ids = sorted(kept, key=id_sort_key(kept))
    missing = [i for i in item_ids if i not in raw.texts]
    if missing:
        where = next(o for o, seq in zip(raw.origin, raw.sequences) if missing[0] in seq)
        raise MadrecError(
            f"{where}: item {missing[0]!r} has no text in {raw.items_source} ({len(missing)} such items); "
            "add the items to the items file or remove them from the interactions"
        )
    return item_ids


def _stats(raw: RawData, total: Counter, index: dict, dropped_users: dict) -> dict:
    """Counts before filtering and what the filters dropped (`total`: interactions per item id)."""
    gone = [c for i, c in total.items() if i not in index]
    return {
        "before_filter": {
            "num_users": len(raw.users),
            "num_items": len(total),
            "num_interactions": int(sum(total.values())),
        },
        "dropped": {
            "items_below_min_count": len(gone),
            "interactions_of_dropped_items": int(sum(gone)),
            **dropped_users,
            **raw.skipped,
        },
    }


def _filter_and_index(raw: RawData, min_item_count: int) -> tuple[list[str], list[str], list[np.ndarray], dict]:
    """Apply the item filter, drop short users, index items; returns (item_ids, users, seqs, stats)."""
    counts = Counter(i for seq in raw.sequences for i in seq)
    item_ids = _index_items(raw, counts, min_item_count)
    index = {i: k for k, i in enumerate(item_ids)}
    users, sequences = [], []
    for user, seq in zip(raw.users, raw.sequences):
        kept_seq = [index[i] for i in seq if i in index]
        if len(kept_seq) >= MIN_USER_ITEMS:
            users.append(user)
            sequences.append(np.asarray(kept_seq, dtype=np.int64))
    short = {f"users_with_fewer_than_{MIN_USER_ITEMS}_items": len(raw.users) - len(users)}
    if not users:
        raise MadrecError(
            f"{raw.origin[0].split(':')[0]}: no user has {MIN_USER_ITEMS}+ items after keeping items with "
            f">= {min_item_count} interactions; lower --min-item-count"
        )
    return item_ids, users, sequences, _stats(raw, counts, index, short)


def leave_one_out(sequences: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """training = all but the last two; evaluation = all but the last; testing = all."""
    return {
        "training": [s[:-2] for s in sequences],
        "evaluation": [s[:-1] for s in sequences],
        "testing": list(sequences),
    }


# --- the temporal protocol and the item hold-out (docs/data.md, "Split protocols") -----


def cutoff_of(raw: RawData, cutoff: float | None, quantile: float | None) -> float:
    """`cutoff` as given, or the `quantile` of all input timestamps (numpy method "lower":
    a timestamp that occurs in the data)."""
    if cutoff is not None:
        return float(cutoff)
    return float(np.quantile(np.concatenate(raw.times), quantile, method="lower"))


def _temporal_rows(raw: RawData, index: dict, cutoff: float) -> tuple[list[str], list[np.ndarray], dict]:
    """Each user's kept items up to their second one at/after `cutoff`; users without an
    interaction before it, or with fewer than 2 at/after it, are dropped and counted."""
    users, sequences = [], []
    dropped = {NO_TRAINING: 0, FEW_AFTER_CUTOFF: 0, "interactions_after_the_test_target": 0}
    for user, seq, ts in zip(raw.users, raw.sequences, raw.times):
        kept = [(index[i], bool(t < cutoff)) for i, t in zip(seq, ts) if i in index]
        before = sum(b for _, b in kept)  # times are non-decreasing: these come first
        if before == 0:
            dropped[NO_TRAINING] += 1
        elif len(kept) - before < 2:
            dropped[FEW_AFTER_CUTOFF] += 1
        else:
            dropped["interactions_after_the_test_target"] += len(kept) - before - 2
            users.append(user)
            sequences.append(np.asarray([k for k, _ in kept[: before + 2]], dtype=np.int64))
    return users, sequences, dropped


def temporal_split(raw: RawData, min_item_count: int, cutoff: float) -> tuple[list[str], list[str], dict, dict, list]:
    """Global temporal split at `cutoff`: (item_ids, users, splits, stats, new item indices).

    The item filter counts only interactions before the cut-off; items first seen at/after it
    are never filtered and become the new items."""
    total, before = Counter(), Counter()
    for seq, ts in zip(raw.sequences, raw.times):
        total.update(seq)
        before.update(i for i, t in zip(seq, ts) if t < cutoff)
    new = frozenset(total.keys() - before.keys())
    item_ids = _index_items(raw, before, min_item_count, new)
    index = {i: k for k, i in enumerate(item_ids)}
    users, sequences, dropped = _temporal_rows(raw, index, cutoff)
    if not users:
        span = np.concatenate(raw.times)
        raise MadrecError(
            f"{raw.origin[0].split(':')[0]}: no user has an interaction before the cut-off {_number(cutoff)} and 2 "
            f"at/after it (timestamps span {_number(span.min())}..{_number(span.max())}); choose another cut-off"
        )
    stats = _stats(raw, total, index, dropped)
    return item_ids, users, leave_one_out(sequences), stats, sorted(index[i] for i in new)


def holdout_split(sequences: list[np.ndarray], num_items: int, fraction: float, seed: int):
    """Hold out round(fraction * num_items) seeded items: removed from every history (all but a
    user's last item), kept as test targets; users left with fewer than 2 history items are
    dropped. Returns (held item indices, kept row numbers, rows)."""
    n = round(fraction * num_items)
    if n < 1:
        raise MadrecError(f"--holdout-items {fraction} holds out no item of {num_items}; raise it")
    held = np.sort(np.random.default_rng(seed).choice(num_items, size=n, replace=False))
    is_held = np.zeros(num_items, dtype=bool)
    is_held[held] = True
    keep, rows = [], []
    for k, seq in enumerate(sequences):
        history = seq[:-1][~is_held[seq[:-1]]]
        if len(history) >= MIN_USER_ITEMS - 1:
            keep.append(k)
            rows.append(np.append(history, seq[-1]))
    return held.tolist(), keep, rows


def _new_item_record(splits: dict, new_items: list[int]) -> dict:
    """dataset.json's new-item fields: the items, how many, how many targets are new items."""
    new = set(new_items)
    return {
        "num_new_items": len(new_items),
        "new_item_validation_targets": sum(int(s[-1]) in new for s in splits["evaluation"]),
        "new_item_test_targets": sum(int(s[-1]) in new for s in splits["testing"]),
        "new_items": new_items,
    }


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def _split_data(raw: RawData, min_item_count: int, protocol: dict):
    """(item_ids, users, splits, stats, dataset.json protocol fields) for `protocol`
    (`kind`, and `cutoff` / `cutoff_quantile`, or `holdout_items` / `seed`)."""
    if protocol["kind"] == "temporal":
        protocol["cutoff"] = _number(cutoff_of(raw, protocol["cutoff"], protocol["cutoff_quantile"]))
        item_ids, users, splits, stats, new_items = temporal_split(raw, min_item_count, protocol["cutoff"])
        return item_ids, users, splits, stats, {"split": protocol, **_new_item_record(splits, new_items)}
    item_ids, users, sequences, stats = _filter_and_index(raw, min_item_count)
    if protocol.get("holdout_items") is None:
        return item_ids, users, leave_one_out(sequences), stats, {}
    held, keep, rows = holdout_split(sequences, len(item_ids), protocol["holdout_items"], protocol["seed"])
    if not keep:
        raise MadrecError(f"--holdout-items {protocol['holdout_items']} leaves no user with 2 history items")
    stats["dropped"][f"users_with_fewer_than_{MIN_USER_ITEMS}_items_after_holdout"] = len(users) - len(keep)
    stats["dropped"]["held_out_interactions"] = int(sum(len(sequences[k]) - len(r) for k, r in zip(keep, rows)))
    splits = leave_one_out(rows)
    return item_ids, [users[k] for k in keep], splits, stats, {"split": protocol, **_new_item_record(splits, held)}


def check_protocol(dataset: str, split: str, cutoff, cutoff_quantile, holdout_items) -> None:
    """Refuse option combinations the split protocols do not define."""
    if split not in SPLIT_KINDS:
        raise MadrecError(f"unknown --split {split!r}; choose one of {', '.join(SPLIT_KINDS)}")
    if split == "leave-one-out":
        if cutoff is not None or cutoff_quantile is not None:
            raise MadrecError("--cutoff and --cutoff-quantile apply only with --split temporal; add it or drop them")
        if holdout_items is not None and not 0 < holdout_items < 1:
            raise MadrecError(f"--holdout-items must be a fraction in (0, 1), e.g. 0.05; got {holdout_items}")
        return
    if dataset == "sequences":
        raise MadrecError(
            "--split temporal needs timestamps and --dataset sequences has none; use --dataset interactions "
            "(a user_id,item_id,timestamp table) or ml-1m, or the default --split leave-one-out"
        )
    if holdout_items is not None:
        raise MadrecError(
            "--holdout-items is for --split leave-one-out; with --split temporal the items first seen after "
            "the cut-off are the new items: drop one of the two"
        )
    if (cutoff is None) == (cutoff_quantile is None):
        raise MadrecError("--split temporal needs exactly one of --cutoff TIMESTAMP and --cutoff-quantile Q")
    if cutoff_quantile is not None and not 0 < cutoff_quantile < 1:
        raise MadrecError(f"--cutoff-quantile must be in (0, 1), e.g. 0.9; got {cutoff_quantile}")
    if cutoff is not None and not np.isfinite(cutoff):
        raise MadrecError(f"--cutoff must be a finite timestamp; got {cutoff}")


def _protocol(split: str, cutoff, cutoff_quantile, holdout_items, seed: int) -> dict:
    """The protocol as dataset.json records it (`split`; the temporal cut-off is filled in later)."""
    if split == "temporal":
        return {"kind": split, "cutoff": cutoff, "cutoff_quantile": cutoff_quantile}
    if holdout_items is not None:
        return {"kind": "holdout", "holdout_items": holdout_items, "seed": seed}
    return {"kind": split}


def _write_split(folder: Path, examples: list[bytes]) -> int:
    folder.mkdir(parents=True)
    shards = max(1, -(-len(examples) // RECORDS_PER_SHARD))
    for s in range(shards):
        chunk = examples[s * RECORDS_PER_SHARD : (s + 1) * RECORDS_PER_SHARD]
        write_records(folder / f"part-{s:05d}-of-{shards:05d}.tfrecord.gz", chunk)
    return shards


def write_prepared(out: Path, item_ids, texts, users, sequences, info: dict, splits: dict | None = None) -> dict:
    """Write items/, the three splits (`splits`, or leave-one-out of `sequences`) and dataset.json
    into `out` atomically."""
    splits = splits or leave_one_out(sequences)
    with atomic_dir(out) as tmp:
        items = [encode_example({"id": [k], "text": [texts[i].encode("utf-8")]}) for k, i in enumerate(item_ids)]
        info["files"] = {"items": _write_split(tmp / "items", items)}
        for name, seqs in splits.items():
            examples = [encode_example({"user_id": [u], "sequence_data": s.tolist()}) for u, s in enumerate(seqs)]
            info["files"][name] = _write_split(tmp / name, examples)
            log.info("wrote %s: %d users", name, len(examples))
        info["item_ids"] = list(item_ids)
        info["user_ids"] = list(users)
        (tmp / "dataset.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def _read(dataset: str, source: str, items: str | None) -> RawData:
    if dataset == "ml-1m":
        return read_ml1m(source)
    if not source or not items:
        raise MadrecError(f"--dataset {dataset} needs --source (the {dataset} file) and --items (item texts)")
    reader = read_sequences if dataset == "sequences" else read_interactions
    return reader(_a_file(fetch(source), "--source", dataset), _a_file(fetch(items), "--items", "item texts"))


def prepare(
    dataset: str,
    source: str | None,
    out: str | Path,
    items: str | None = None,
    min_item_count: int = 5,
    *,
    split: str = "leave-one-out",
    cutoff: float | None = None,
    cutoff_quantile: float | None = None,
    holdout_items: float | None = None,
    seed: int = 0,
) -> dict:
    """Prepare a dataset into `out` with the `split` protocol; returns the content of `out/dataset.json`."""
    if dataset not in DATASETS:
        raise MadrecError(f"unknown --dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if min_item_count < 1:
        raise MadrecError(f"--min-item-count must be >= 1, got {min_item_count}")
    check_protocol(dataset, split, cutoff, cutoff_quantile, holdout_items)
    protocol = _protocol(split, cutoff, cutoff_quantile, holdout_items, seed)
    start = time.perf_counter()
    if dataset == "ml-1m":
        source = source or ML1M_URL
    raw = _read(dataset, source, items)
    item_ids, users, splits, stats, record = _split_data(raw, min_item_count, protocol)
    info = {
        "format": FORMAT,
        "dataset": dataset,
        "source": source,
        "items_source": items if dataset != "ml-1m" else None,
        "min_item_count": min_item_count,
        "num_users": len(users),
        "num_items": len(item_ids),
        "num_interactions": int(sum(len(s) for s in splits["testing"])),
        **stats,
        **record,
    }
    log.info(
        "%s: %d users, %d items, %d interactions after filtering (%.1fs); writing %s",
        dataset,
        info["num_users"],
        info["num_items"],
        info["num_interactions"],
        time.perf_counter() - start,
        out,
    )
    return write_prepared(Path(out), item_ids, raw.texts, users, splits["testing"], info, splits)


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="madrec prepare-data", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--source", help=f"file, folder or URL (ml-1m default: {ML1M_URL})")
    p.add_argument("--items", help="item texts: items.jsonl[.gz], movies.dat, or CSV/Parquet item_id,text")
    p.add_argument("--min-item-count", type=int, default=5, help="keep items with at least this many interactions")
    p.add_argument("--split", choices=SPLIT_KINDS, default="leave-one-out", help="hold-out protocol (docs/data.md)")
    p.add_argument("--cutoff", type=float, help="temporal: the cut-off, in the unit of the input's timestamps")
    p.add_argument("--cutoff-quantile", type=float, help="temporal: cut off at this quantile of all timestamps")
    p.add_argument("--holdout-items", type=float, help="leave-one-out: share of items kept only as test targets")
    p.add_argument("--seed", type=int, default=0, help="seed of the --holdout-items draw")
    p.add_argument("--out", required=True, help="output folder (replaced atomically)")
    args = p.parse_args(argv)
    info = prepare(
        args.dataset,
        args.source,
        args.out,
        args.items,
        args.min_item_count,
        split=args.split,
        cutoff=args.cutoff,
        cutoff_quantile=args.cutoff_quantile,
        holdout_items=args.holdout_items,
        seed=args.seed,
    )
    new = ""
    if "new_items" in info:
        new = f", {info['num_new_items']:,} new items ({info['new_item_test_targets']:,} test targets)"
    print(
        f"{args.out}: {info['num_users']:,} users, {info['num_items']:,} items, "
        f"{info['num_interactions']:,} interactions{new}; dropped {info['dropped']}"
    )
    return 0
