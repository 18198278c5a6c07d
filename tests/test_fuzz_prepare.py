"""Property-based fuzzing of prepare-data's readers: generated sequences files, interactions
tables (CSV) and items files (JSON lines, CSV, movies.dat), each either prepared into a complete
output folder or refused with a MadrecError whose message is bounded, never another exception
(a traceback at the CLI) and never a half-written output."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from madrec.data.prepare import prepare
from madrec.errors import MadrecError

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.slow
FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))

ids = st.one_of(st.sampled_from(["1", "2", "3", "4", "a", "-1", "0", ""]), st.text(max_size=6))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
item_rows = st.fixed_dictionaries(
    {},
    optional={"item_id": st.one_of(ids, st.integers(-3, 5), json_values), "text": json_values | st.text(max_size=12)},
)
timestamps = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e400", "-1e400", "nan", "2024-01-02T03:04:05", "2024-13-99", "", "x", "1.5.5"]),
)
csv_cells = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=8)


def _items_file(folder: Path, kind: str, rows: list[dict], raw: bytes) -> Path:
    if kind == "raw":
        path = folder / "items.jsonl"
        path.write_bytes(raw)
    elif kind == "jsonl":
        path = folder / "items.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "csv":
        path = folder / "items.csv"
        path.write_text("item_id,text\n" + "".join(f"{r.get('item_id', '')},{r.get('text', '')}\n" for r in rows))
    else:
        path = folder / "movies.dat"
        path.write_text("".join(f"{r.get('item_id', '')}::{r.get('text', '')}::Drama\n" for r in rows))
    return path


def _prepared_or_refused(dataset: str, source: Path, items: Path, out: Path) -> None:
    try:
        info = prepare(dataset, str(source), out, items=str(items), min_item_count=1)
    except MadrecError as exc:
        assert len(str(exc)) < 2000, str(exc)[:300]
        assert not out.exists(), "an output was written despite the error"
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert not leftovers, leftovers
        return
    assert (out / "dataset.json").is_file() and info["num_users"] >= 1


@FUZZ
@given(
    lines=st.lists(st.lists(ids, max_size=6).map(" ".join), max_size=6),
    kind=st.sampled_from(["jsonl", "csv", "dat", "raw"]),
    rows=st.lists(item_rows, max_size=6),
    raw=st.binary(max_size=64),
)
def test_sequences_and_items_files(lines, kind, rows, raw):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "seq.txt").write_text("\n".join(lines) + "\n")
        _prepared_or_refused("sequences", folder / "seq.txt", _items_file(folder, kind, rows, raw), folder / "out")


@FUZZ
@given(
    header=st.sampled_from(["user_id,item_id,timestamp", "item_id,user_id,timestamp", "user_id,item_id", "a,b,c"]),
    rows=st.lists(st.tuples(csv_cells | ids, csv_cells | ids, timestamps), max_size=6),
    items=st.lists(item_rows, max_size=6),
    kind=st.sampled_from(["jsonl", "csv"]),
)
def test_interactions_tables(header, rows, items, kind):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        body = "".join(f"{u},{i},{t}\n" for u, i, t in rows)
        (folder / "log.csv").write_text(f"{header}\n{body}")
        _prepared_or_refused("interactions", folder / "log.csv", _items_file(folder, kind, items, b""), folder / "out")


def test_a_known_good_input_still_prepares(tmp_path):
    """The properties above hold trivially if everything is refused: one input that must prepare."""
    (tmp_path / "seq.txt").write_text("u1 1 2 3\nu2 2 3 1\n")
    items = _items_file(tmp_path, "jsonl", [{"item_id": i, "text": f"item {i}"} for i in (1, 2, 3)], b"")
    _prepared_or_refused("sequences", tmp_path / "seq.txt", items, tmp_path / "out")
    assert (tmp_path / "out" / "dataset.json").is_file()
    shutil.rmtree(tmp_path / "out")
