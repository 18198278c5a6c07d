"""Reading a prepared dataset folder back: per-split item-index sequences and item texts.

Layout (docs/architecture.md, "Data flow"), written by `madrec prepare-data` or by the prior research system:

    DIR/dataset.json                      counts and the item-index -> original-id map
    DIR/items/*.tfrecord.gz               id (int64), text (bytes)
    DIR/training/*.tfrecord.gz            user_id (int64), sequence_data (int64 list)
    DIR/evaluation/*.tfrecord.gz          ... (the prior system calls it validation/)
    DIR/testing/*.tfrecord.gz

Every protocol prepare-data writes (leave-one-out, temporal, item hold-out; docs/data.md) nests
the rows the same way, so one check serves all; dataset.json's `new_items` are checked too.

TFRecords are decoded once into numpy arrays; nothing here is on a training hot path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from madrec.data.tfrecord import read_examples
from madrec.errors import MadrecError

SPLITS = ("training", "evaluation", "testing")
SPLIT_ALIASES = {"evaluation": ("evaluation", "validation")}
# what a user may call a split (madrec evaluate split=...) -> its folder
SPLIT_NAMES = {
    "test": "testing",
    "testing": "testing",
    "val": "evaluation",
    "validation": "evaluation",
    "evaluation": "evaluation",
}
SEQUENCE_FEATURES = frozenset({"user_id", "sequence_data"})
ITEM_FEATURES = frozenset({"id", "text"})
SHARD_GLOB = "*.tfrecord.gz"


@dataclass
class Split:
    """One split: user ids and each user's item-index sequence (oldest first).

    For `evaluation` and `testing` the last item of each sequence is the target.
    """

    name: str
    user_ids: np.ndarray
    sequences: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.sequences)

    def first(self, n: int) -> Split:
        """The first `n` users (all of them when n is 0 or at least the split's size)."""
        if n <= 0 or n >= len(self):
            return self
        return Split(self.name, self.user_ids[:n], self.sequences[:n])

    def sample(self, n: int, seed: int) -> Split:
        """A fixed random subset of `n` users, in the split's order (all of them when n is 0 or
        at least the split's size)."""
        if n <= 0 or n >= len(self):
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return Split(self.name, self.user_ids[keep], [self.sequences[i] for i in keep])


@dataclass
class PreparedDataset:
    root: Path
    info: dict
    num_items: int
    item_ids: list[str]
    item_texts: list[str]
    splits: dict[str, Split] = field(default_factory=dict)


def split_dir(root: Path, split: str) -> Path:
    """The folder of `split` under `root`, accepting the prior system's folder names."""
    for name in SPLIT_ALIASES.get(split, (split,)):
        if (root / name).is_dir():
            return root / name
    raise MadrecError(
        f"{root}: split folder {split}/ is missing (expected {', '.join(s + '/' for s in SPLITS)} "
        "as written by `madrec prepare-data`)"
    )


def shard_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob(SHARD_GLOB))
    if not files:
        raise MadrecError(f"{folder}: no {SHARD_GLOB} files; the split is empty or was not prepared")
    return files


def _check_features(path: Path, index: int, example: dict, expected: frozenset) -> None:
    missing = expected - example.keys()
    if missing:
        raise MadrecError(
            f"{path}: record {index} lacks feature(s) {sorted(missing)}; found {sorted(example)}, "
            f"expected {sorted(expected)} (madrec prepare-data writes them)"
        )


def read_items(root: str | Path) -> tuple[list[int], list[str]]:
    """Item indices and texts from `root/items/`, ordered by index and checked to be 0..N-1."""
    root = Path(root)
    rows: list[tuple[int, str]] = []
    for path in shard_files(split_dir(root, "items")):
        for i, ex in enumerate(read_examples(path)):
            _check_features(path, i, ex, ITEM_FEATURES)
            text = ex["text"][0] if ex["text"] else b""
            rows.append((int(ex["id"][0]), bytes(text).decode("utf-8", errors="replace")))
    rows.sort()
    ids = [r[0] for r in rows]
    if ids != list(range(len(ids))):
        raise MadrecError(f"{root / 'items'}: item ids must be exactly 0..{len(ids) - 1} (found gaps or duplicates)")
    return ids, [r[1] for r in rows]


def read_split(root: str | Path, split: str, num_items: int) -> Split:
    """Decode one split and check every item index is in [0, num_items)."""
    return _read_split(root, split, num_items)[0]


def _read_split(root: str | Path, split: str, num_items: int) -> tuple[Split, list[tuple[Path, int]]]:
    """The split and, per record, its (file, record index)."""
    folder = split_dir(Path(root), split)
    user_ids: list[int] = []
    sequences: list[np.ndarray] = []
    origins: list[tuple[Path, int]] = []
    for path in shard_files(folder):
        for i, ex in enumerate(read_examples(path)):
            _check_features(path, i, ex, SEQUENCE_FEATURES)
            seq = np.asarray(ex["sequence_data"], dtype=np.int64)
            if seq.size and (seq.min() < 0 or seq.max() >= num_items):
                bad = int(seq[(seq < 0) | (seq >= num_items)][0])
                raise MadrecError(
                    f"{path}: record {i} (user {ex['user_id'][0]}) has item index {bad} outside "
                    f"[0, {num_items}); the split does not belong to this item catalogue"
                )
            user_ids.append(int(ex["user_id"][0]))
            sequences.append(seq)
            origins.append((path, i))
    if not sequences:
        raise MadrecError(f"{folder}: the split has no records")
    return Split(split, np.asarray(user_ids, dtype=np.int64), sequences), origins


# (split, reference split, items the split drops from the end of the reference's row)
_NESTING = (("evaluation", "testing", 1), ("training", "testing", 2), ("training", "evaluation", 1))
# per protocol (dataset.json split.kind), how many items at the end of each split's rows are
# targets, the only places a new item (dataset.json new_items) may occur
_NEW_ITEM_TARGETS = {
    "temporal": {"training": 0, "evaluation": 1, "testing": 2},
    "holdout": {"training": 0, "evaluation": 0, "testing": 1},
}


def _where(origins: dict, name: str, k: int) -> str:
    if name in origins:
        path, rec = origins[name][k]
        return f"{path}: record {rec}"
    return f"{name}: row {k}"


def check_splits(splits: dict[str, Split], origins: dict[str, list[tuple[Path, int]]] | None = None) -> None:
    """Leave-one-out consistency: for every user, evaluation == testing minus its
    last item and training == testing minus its last two. Checked between whichever of the
    splits are present (against testing when it is); the first offending user is named."""
    origins = origins or {}

    def where(name: str, k: int) -> str:
        return _where(origins, name, k)

    index: dict[str, dict[int, int]] = {}
    for name, split in splits.items():
        rows: dict[int, int] = {}
        for k, u in enumerate(split.user_ids.tolist()):
            if u in rows:
                raise MadrecError(
                    f"{where(name, k)}: user {u} appears twice in the {name} split "
                    f"(first at {where(name, rows[u])}); one row per user is expected"
                )
            rows[u] = k
        index[name] = rows
    done = set()
    for name, ref, drop in _NESTING:
        if name not in splits or ref not in splits or name in done:
            continue
        done.add(name)
        rows, ref_rows = index[name], index[ref]
        for u, k in rows.items():
            if u not in ref_rows:
                raise MadrecError(
                    f"{where(name, k)}: user {u} is in the {name} split but not in {ref}; "
                    "the splits were not made from the same users"
                )
            seq, full = splits[name].sequences[k], splits[ref].sequences[ref_rows[u]]
            if len(full) < drop or not np.array_equal(seq, full[: len(full) - drop]):
                raise MadrecError(
                    f"{where(name, k)}: user {u}'s {name} row {_show(seq)} is not the {ref} row {_show(full)} "
                    f"minus its last {drop} item(s) ({where(ref, ref_rows[u])}); the splits must be leave-one-out "
                    "as written by `madrec prepare-data`, otherwise targets leak into training"
                )
        for u, k in ref_rows.items():
            if u not in rows:
                raise MadrecError(
                    f"{where(ref, k)}: user {u} is in the {ref} split but not in {name}; "
                    "the splits were not made from the same users"
                )


def check_new_items(splits: dict[str, Split], info: dict, num_items: int, origins: dict | None = None) -> None:
    """The items dataset.json records as new (`new_items`) occur in no history, only as the
    targets the recorded protocol allows (temporal: validation and test; holdout: test)."""
    kind = (info.get("split") or {}).get("kind")
    if "new_items" not in info or kind not in _NEW_ITEM_TARGETS:
        return
    new = np.asarray(info["new_items"])
    if new.size and (new.dtype.kind != "i" or new.ndim != 1 or new.min() < 0 or new.max() >= num_items):
        raise MadrecError(f"dataset.json: new_items must be item indices in [0, {num_items}); re-run prepare-data")
    is_new = np.zeros(num_items, dtype=bool)
    is_new[new.astype(np.int64)] = True
    for name, split in splits.items():
        targets = _NEW_ITEM_TARGETS[kind].get(name, 0)
        for k, seq in enumerate(split.sequences):
            history = seq[: len(seq) - targets]
            if is_new[history].any():
                raise MadrecError(
                    f"{_where(origins or {}, name, k)}: user {split.user_ids[k]}'s {name} history holds item "
                    f"{int(history[is_new[history]][0])}, recorded as new in dataset.json ({kind} split); new "
                    "items may only be targets, otherwise they leak into training"
                )


def _show(seq: np.ndarray, n: int = 8) -> str:
    items = seq.tolist()
    return "[" + ", ".join(map(str, items[:n])) + (", ..." if len(items) > n else "") + "]"


def load_info(root: str | Path) -> dict:
    path = Path(root) / "dataset.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MadrecError(f"{path}: not valid JSON ({exc}); re-run `madrec prepare-data`") from exc


def load_dataset(root: str | Path, splits: tuple[str, ...] = SPLITS) -> PreparedDataset:
    """Load a prepared dataset: items (texts and original ids) and the requested splits, checked
    against each other (`check_splits`)."""
    root = Path(root)
    if not root.is_dir():
        raise MadrecError(f"{root}: dataset folder not found; run `madrec prepare-data --out {root}` first")
    info = load_info(root)
    _, texts = read_items(root)
    num_items = len(texts)
    if info and info.get("num_items") != num_items:
        raise MadrecError(
            f"{root / 'dataset.json'}: num_items is {info.get('num_items')} but items/ holds {num_items} records"
        )
    item_ids = [str(x) for x in info.get("item_ids", range(num_items))]
    data = PreparedDataset(root, info, num_items, item_ids, texts)
    origins = {}
    for split in splits:
        data.splits[split], origins[split] = _read_split(root, split, num_items)
    check_splits(data.splits, origins)
    check_new_items(data.splits, info, num_items, origins)
    return data
