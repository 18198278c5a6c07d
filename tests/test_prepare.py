"""Data preparation: reference counts on the real data, ML-1M archive format, interactions
tables, bad input, atomic and byte-identical output."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import random
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from madrec.cli import main
from madrec.data.dataset import load_dataset
from madrec.data.prepare import prepare
from madrec.errors import MadrecError

REFERENCE = {
    # name: (sequences file, items file, users, items, interactions)
    "beauty": ("amazon_beauty/Beauty.txt", "amazon_beauty/items.jsonl.gz", 22_363, 12_101, 198_502),
    "toys": ("amazon_toys/Toys_p5_sequential.txt", "amazon_toys/items.jsonl.gz", 19_412, 11_924, 167_597),
    "ml1m": ("movielens_1m/sequences_chrono.txt", "movielens_1m/movies.dat", 6_040, 3_416, 999_611),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.slow
def test_real_datasets_reproduce_reference_counts(shared_data, tmp_path, name):
    seq_file, items_file, users, items, interactions = REFERENCE[name]
    out = tmp_path / name
    info = prepare("sequences", str(shared_data / seq_file), out, items=str(shared_data / items_file))
    assert (info["num_users"], info["num_items"], info["num_interactions"]) == (users, items, interactions)
    on_disk = json.loads((out / "dataset.json").read_text())
    assert on_disk["num_interactions"] == interactions and len(on_disk["item_ids"]) == items

    data = load_dataset(out)
    train, val, test = (data.splits[s] for s in ("training", "evaluation", "testing"))
    assert len(train) == len(val) == len(test) == users
    assert sum(len(s) for s in test.sequences) == interactions
    # leave-one-out: each split drops one more item from the end
    for a, b, c in zip(train.sequences[:200], val.sequences[:200], test.sequences[:200]):
        assert np.array_equal(b, c[:-1]) and np.array_equal(a, c[:-2])
    if name == "ml1m":
        assert info["before_filter"] == {"num_users": 6_040, "num_items": 3_706, "num_interactions": 1_000_209}
        assert data.item_texts[0] == "Toy Story (1995) (Animation, Children's, Comedy)"
    else:
        # the Amazon 5-core sets lose nothing to the item filter, and P5 item k gets index k-1
        assert info["dropped"]["items_below_min_count"] == 0
        assert data.item_ids[:3] == ["1", "2", "3"] and data.item_ids[-1] == str(items)
        first_line = (shared_data / seq_file).read_text().split("\n", 1)[0].split()
        assert test.sequences[0].tolist() == [int(i) - 1 for i in first_line[1:]]


# --- ML-1M official format, on a fixture built from real rows ------------------------


@pytest.fixture(scope="module")
def ml1m_fixture(shared_data, tmp_path_factory):
    """A small `ml-1m.zip` in the official `::` format from real ratings and movies.

    Rows of each user are shuffled (the official file is not in time order) and one movie is
    given fewer than 5 ratings so the filter has something to remove.
    """
    # users 635-659, plus five users who rated Les Misérables (a non-ASCII ISO-8859-1 title)
    users = {str(u) for u in range(635, 660)} | {"716", "721", "746", "845", "858"}
    rows = []
    with gzip.open(shared_data / "movielens_1m/ratings_partial_with_timestamps.csv.gz", "rt") as fh:
        for r in csv.DictReader(fh):
            if r["user_id"] in users:
                rows.append((r["user_id"], r["movie_id"], r["rating"], r["timestamp"]))
    rng = random.Random(0)
    by_user: dict[str, list] = {}
    for r in rows:
        by_user.setdefault(r[0], []).append(r)
    lines = []
    for u in sorted(by_user, key=int):
        user_rows = by_user[u]
        rng.shuffle(user_rows)
        lines += ["::".join(r) for r in user_rows]
    movies_needed = {r[1] for r in rows}
    movies = [
        line
        for line in (shared_data / "movielens_1m/movies.dat").read_bytes().split(b"\n")
        if line and line.split(b"::")[0].decode() in movies_needed
    ]
    root = tmp_path_factory.mktemp("ml1m")
    (root / "ml-1m").mkdir()
    (root / "ml-1m/ratings.dat").write_bytes(("\n".join(lines) + "\n").encode())
    (root / "ml-1m/movies.dat").write_bytes(b"\n".join(movies) + b"\n")
    with zipfile.ZipFile(root / "ml-1m.zip", "w") as zf:
        zf.write(root / "ml-1m/ratings.dat", "ml-1m/ratings.dat")
        zf.write(root / "ml-1m/movies.dat", "ml-1m/movies.dat")
    return root, lines


def _expected_ml1m(lines, min_count=5):
    """Independent oracle: sort (timestamp, line number) per user, filter items, index by id."""
    parsed = [(int(u), int(m), int(t), n) for n, (u, m, _, t) in enumerate(x.split("::") for x in lines)]
    counts: dict[int, int] = {}
    for _, m, _, _ in parsed:
        counts[m] = counts.get(m, 0) + 1
    kept = sorted(m for m, c in counts.items() if c >= min_count)
    index = {m: k for k, m in enumerate(kept)}
    seqs = {}
    for u, m, _t, _n in sorted(parsed, key=lambda r: (r[0], r[2], r[3])):
        if m in index:
            seqs.setdefault(u, []).append(index[m])
    return kept, {u: s for u, s in seqs.items() if len(s) >= 3}


def test_ml1m_zip_follows_the_protocol(ml1m_fixture, tmp_path):
    root, lines = ml1m_fixture
    kept, expected = _expected_ml1m(lines)
    info = prepare("ml-1m", str(root / "ml-1m.zip"), tmp_path / "out")
    data = load_dataset(tmp_path / "out")
    assert info["dropped"]["items_below_min_count"] > 0  # the filter removed the rare movies
    assert data.item_ids == [str(m) for m in kept]
    test = data.splits["testing"]
    got = {int(info["user_ids"][u]): s.tolist() for u, s in zip(test.user_ids, test.sequences)}
    assert got == expected
    assert info["before_filter"]["num_interactions"] == len(lines)
    # ISO-8859-1 titles decode correctly; text is "<title> (<genres>)"
    assert "73" in data.item_ids
    assert data.item_texts[data.item_ids.index("73")] == "Misérables, Les (1995) (Drama, Musical)"


def test_ml1m_folder_equals_zip(ml1m_fixture, tmp_path):
    root, _ = ml1m_fixture
    prepare("ml-1m", str(root / "ml-1m.zip"), tmp_path / "a")
    prepare("ml-1m", str(root), tmp_path / "b")
    assert _tree_digest(tmp_path / "a", skip_json=True) == _tree_digest(tmp_path / "b", skip_json=True)


def test_ml1m_unreachable_url_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MADREC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MadrecError, match=r"http://127\.0\.0\.1:9/ml-1m\.zip: cannot download"):
        prepare("ml-1m", "http://127.0.0.1:9/ml-1m.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- interactions tables ------------------------------------------------------------


def test_interactions_csv_and_parquet_agree_with_ml1m_path(ml1m_fixture, tmp_path):
    root, lines = ml1m_fixture
    _, expected = _expected_ml1m(lines)
    rows = [x.split("::") for x in lines]
    with open(tmp_path / "log.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "rating", "timestamp"])
        w.writerows([u, m, r, t] for u, m, r, t in rows)
    movies = (root / "ml-1m/movies.dat").read_bytes().decode("iso-8859-1").strip().split("\n")
    with open(tmp_path / "items.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["item_id", "text"])
        w.writerows(line.split("::")[:2] for line in movies)
    pq.write_table(
        pa.table(
            {
                "user_id": [int(r[0]) for r in rows],
                "item_id": [int(r[1]) for r in rows],
                "timestamp": [int(r[3]) for r in rows],
            }
        ),
        tmp_path / "log.parquet",
    )
    for table in ("log.csv", "log.parquet"):
        info = prepare(
            "interactions", str(tmp_path / table), tmp_path / table.replace(".", "_"), items=str(tmp_path / "items.csv")
        )
        test = load_dataset(tmp_path / table.replace(".", "_"), splits=("testing",)).splits["testing"]
        got = {int(info["user_ids"][u]): s.tolist() for u, s in zip(test.user_ids, test.sequences)}
        assert got == expected, table


def test_interactions_missing_column_names_file_and_columns(tmp_path):
    (tmp_path / "log.csv").write_text("user,item_id,timestamp\n1,2,3\n")
    (tmp_path / "items.csv").write_text("item_id,text\n2,x\n")
    with pytest.raises(
        MadrecError, match=r"log\.csv: missing column\(s\) \['user_id'\]; found \['user', 'item_id', 'timestamp'\]"
    ):
        prepare("interactions", str(tmp_path / "log.csv"), tmp_path / "out", items=str(tmp_path / "items.csv"))


# --- bad input ----------------------------------------------------------------------


def _seq_inputs(tmp_path: Path, lines: list[str], items: dict[str, str] | None = None):
    seq = tmp_path / "seq.txt"
    seq.write_text("\n".join(lines) + "\n")
    items = items or {str(i): f"item {i}" for i in range(1, 20)}
    jl = tmp_path / "items.jsonl"
    jl.write_text("".join(json.dumps({"item_id": int(k), "text": v}) + "\n" for k, v in items.items()))
    return str(seq), str(jl)


GOOD = ["1 1 2 3 4", "2 2 3 4 1", "3 3 4 1 2", "4 4 1 2 3", "5 1 2 3 4"]


def test_malformed_line_names_file_and_line(tmp_path):
    seq, items = _seq_inputs(tmp_path, GOOD[:2] + ["7"] + GOOD[2:])
    with pytest.raises(MadrecError, match=r"seq\.txt:3: user '7' has no items"):
        prepare("sequences", seq, tmp_path / "out", items=items)


def test_unknown_item_without_text_names_line_and_item(tmp_path):
    seq, items = _seq_inputs(tmp_path, GOOD + ["6 1 2 99 3"], {str(i): "t" for i in range(1, 5)})
    with pytest.raises(MadrecError, match=r"seq\.txt:6: item '99' has no text in .*items\.jsonl"):
        prepare("sequences", seq, tmp_path / "out", items=items, min_item_count=1)


def test_short_users_are_dropped_and_counted(tmp_path):
    seq, items = _seq_inputs(tmp_path, GOOD + ["6 1 2", "7 3"])
    info = prepare("sequences", seq, tmp_path / "out", items=items, min_item_count=1)
    assert info["num_users"] == 5
    assert info["dropped"]["users_with_fewer_than_3_items"] == 2


def test_item_filter_applies_and_then_drops_users(tmp_path):
    # item 9 occurs once: filtered at min count 2, which leaves user 6 with 2 items
    seq, items = _seq_inputs(tmp_path, GOOD + ["6 1 9 2"])
    info = prepare("sequences", seq, tmp_path / "out", items=items, min_item_count=2)
    assert info["dropped"]["items_below_min_count"] == 1
    assert info["dropped"]["interactions_of_dropped_items"] == 1
    assert info["dropped"]["users_with_fewer_than_3_items"] == 1
    assert info["item_ids"] == ["1", "2", "3", "4"]


def test_duplicate_lines_are_skipped_and_counted_conflicts_are_errors(tmp_path):
    seq, items = _seq_inputs(tmp_path, GOOD + [GOOD[1]])
    info = prepare("sequences", seq, tmp_path / "out", items=items, min_item_count=1)
    assert info["num_users"] == 5 and info["dropped"]["duplicate_lines"] == 1
    seq, items = _seq_inputs(tmp_path, GOOD + ["2 4 3 2 1"])
    with pytest.raises(
        MadrecError, match=r"seq\.txt:6: user '2' appears again with a different sequence \(first at line 2\)"
    ):
        prepare("sequences", seq, tmp_path / "out2", items=items, min_item_count=1)


def test_wrong_encoding_names_file_and_line(tmp_path):
    seq, _ = _seq_inputs(tmp_path, GOOD)
    bad = tmp_path / "items_latin1.jsonl"
    bad.write_bytes(b'{"item_id": 1, "text": "a"}\n{"item_id": 2, "text": "Mis\xe9rables"}\n')
    with pytest.raises(MadrecError, match=r"items_latin1\.jsonl:2: not valid utf-8 .* re-save the file as utf-8"):
        prepare("sequences", seq, tmp_path / "out", items=str(bad))


def test_truncated_gzip_is_a_clear_error(shared_data, tmp_path):
    data = (shared_data / "amazon_beauty/items.jsonl.gz").read_bytes()
    cut = tmp_path / "items.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MadrecError, match=r"items\.jsonl\.gz: corrupt or truncated gzip"):
        prepare("sequences", str(shared_data / "amazon_beauty/Beauty.txt"), tmp_path / "out", items=str(cut))


def _tree_digest(root: Path, skip_json: bool = False) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not (skip_json and p.name == "dataset.json")
    }


def test_rerun_is_byte_identical_and_failure_leaves_previous_output(tmp_path):
    seq, items = _seq_inputs(tmp_path, GOOD)
    out = tmp_path / "out"
    prepare("sequences", seq, out, items=items, min_item_count=1)
    first = _tree_digest(out)
    prepare("sequences", seq, out, items=items, min_item_count=1)
    assert _tree_digest(out) == first
    bad_seq, _ = _seq_inputs(tmp_path, GOOD + ["9"])
    with pytest.raises(MadrecError):
        prepare("sequences", bad_seq, out, items=items, min_item_count=1)
    assert _tree_digest(out) == first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_cli_reports_counts_and_errors_in_one_line(tmp_path, capsys, cli_stderr):
    seq, items = _seq_inputs(tmp_path, GOOD)
    assert (
        main(
            [
                "prepare-data",
                "--dataset",
                "sequences",
                "--source",
                seq,
                "--items",
                items,
                "--min-item-count",
                "1",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    assert "5 users, 4 items, 20 interactions" in capsys.readouterr().out
    assert main(["prepare-data", "--dataset", "sequences", "--source", seq, "--out", str(tmp_path / "o2")]) == 2
    err = cli_stderr()
    assert len(err) == 1 and "needs --source" in err[0] and "--items" in err[0]


ITEMS_OK = '{"item_id": 1, "text": "a"}\n{"item_id": 2, "text": "b"}\n'
ONE = "user_id,item_id,timestamp\nu,1,5\n"
BAD_INPUTS = {  # name: (interactions CSV, items file name, items content, the error)
    "header-only interactions": (
        "user_id,item_id,timestamp\n",
        "items.jsonl",
        ITEMS_OK,
        r"log\.csv: the table has a header but no rows",
    ),
    "header-only items": (
        ONE,
        "items.csv",
        "item_id,text\n",
        r"items\.csv: the table has a header but no rows",
    ),
    "empty items file": (
        ONE,
        "items.jsonl",
        "",
        r"items\.jsonl: no items found",
    ),
    "infinite timestamp": (
        "user_id,item_id,timestamp\nu,1,5\nu,2,1e400\n",
        "items.jsonl",
        ITEMS_OK,
        r"log\.csv: row 2 has timestamp inf, which is not a finite",
    ),
    "text null": (
        ONE,
        "items.jsonl",
        '{"item_id": 1, "text": null}\n',
        r"items\.jsonl:1: item '1' has text null; the 'text' field must be a string",
    ),
    "text a number": (
        ONE,
        "items.jsonl",
        '{"item_id": 1, "text": 5}\n',
        r"items\.jsonl:1: item '1' has text 5;",
    ),
    "item_id a list": (
        ONE,
        "items.jsonl",
        '{"item_id": [1], "text": "a"}\n',
        r"items\.jsonl:1: item_id \[1\] must be",
    ),
    "duplicate id, other text": (
        ONE,
        "items.jsonl",
        ITEMS_OK + '{"item_id": "1", "text": "z"}\n',
        r"items\.jsonl:3: item '1' appears again with a different text \(first at .*items\.jsonl:1\)",
    ),
    "duplicate id in a table": (
        ONE,
        "items.csv",
        "item_id,text\n1,a\n1,b\n",
        r"items\.csv: row 2: item '1' appears again",
    ),
    "JSON nested deeply": (
        ONE,
        "items.jsonl",
        "[" * 100_000 + "\n",
        r"items\.jsonl:1: not valid JSON",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_interactions_and_items_are_named_errors_and_nothing_is_written(tmp_path, case, cli_stderr):
    log_csv, items_name, items_text, error = BAD_INPUTS[case]
    (tmp_path / "log.csv").write_text(log_csv)
    (tmp_path / items_name).write_text(items_text)
    with pytest.raises(MadrecError, match=error):
        prepare("interactions", str(tmp_path / "log.csv"), tmp_path / "out", items=str(tmp_path / items_name))
    assert not (tmp_path / "out").exists()
    argv = ["--dataset", "interactions", "--source", str(tmp_path / "log.csv"), "--items", str(tmp_path / items_name)]
    assert main(["prepare-data", *argv, "--out", str(tmp_path / "out")]) == 2
    err = cli_stderr()
    assert len(err) == 1 and err[0].startswith("madrec prepare-data: error: ") and len(err[0]) < 600, err


def test_repeated_item_lines_with_the_same_text_are_kept_once_and_counted(tmp_path, caplog):
    seq, _ = _seq_inputs(tmp_path, GOOD)
    items = tmp_path / "items_twice.jsonl"
    items.write_text("".join(json.dumps({"item_id": i, "text": f"item {i}"}) + "\n" for i in [1, 2, 3, 4, 1, 2]))
    with caplog.at_level("WARNING", logger="madrec.data.prepare"):
        info = prepare("sequences", seq, tmp_path / "out", items=str(items), min_item_count=1)
    assert info["num_items"] == 4
    assert any("2 repeated line(s) of an item with the same text" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("which", ["--source", "--items"])
def test_a_folder_where_a_file_is_expected_is_named(tmp_path, which, cli_stderr):
    seq, items = _seq_inputs(tmp_path, GOOD)
    (tmp_path / "folder").mkdir()
    paths = {"--source": seq, "--items": items, which: str(tmp_path / "folder")}
    for dataset in ("sequences", "interactions"):
        argv = ["prepare-data", "--dataset", dataset, "--out", str(tmp_path / "out")]
        assert main(argv + ["--source", paths["--source"], "--items", paths["--items"]]) == 2
        err = cli_stderr()
        assert err == [
            f"madrec prepare-data: error: {tmp_path / 'folder'}: {which} is a folder; give the "
            + err[0].split("give the ", 1)[1]
        ]


def test_ids_that_look_numeric_to_python_but_not_to_int_sort_as_text(tmp_path):
    """'²' is str.isdigit() and '--1' survives lstrip('-'): neither is an integer id, so the
    catalogue sorts as text instead of raising ValueError (found by tests/test_fuzz_prepare.py)."""
    from madrec.data.prepare import id_sort_key

    for ids in (["²", "2"], ["--1", "3"], ["٣", "1"]):
        assert sorted(ids, key=id_sort_key(ids)) == sorted(ids)
    assert sorted(["10", "9", "-1"], key=id_sort_key(["10", "9", "-1"])) == ["-1", "9", "10"]
    (tmp_path / "log.csv").write_text("user_id,item_id,timestamp\n²,a,0\n²,b,1\n²,c,2\n")
    (tmp_path / "items.jsonl").write_text("".join(f'{{"item_id": "{i}", "text": "{i}"}}\n' for i in "abc"))
    info = prepare("interactions", str(tmp_path / "log.csv"), tmp_path / "out", items=str(tmp_path / "items.jsonl"),
                   min_item_count=1)  # fmt: skip
    assert info["num_users"] == 1


def test_a_monitor_or_world_size_with_a_non_ascii_digit_is_a_named_error(monkeypatch):
    from madrec.config import load_config
    from madrec.dist import launch_layout

    with pytest.raises(MadrecError, match="eval.monitor"):
        load_config(["experiment=tiny", "data_dir=d", "sid_data_path=s", "eval.monitor=recall@²"])
    monkeypatch.setenv("WORLD_SIZE", "²")
    with pytest.raises(MadrecError, match="WORLD_SIZE"):
        launch_layout()
