"""`madrec run-local` / `make run DATA=...` recognise the input folder's layout."""

from __future__ import annotations

import gzip
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from madrec.data.prepare import ML1M_URL
from madrec.errors import MadrecError
from madrec.ops.local_run import find_data, stage_input

from conftest import REPO

SEQUENCES = "1 10 11 12\n2 11 12 13 10\n"
MOVIES = "10::Toy Story (1995)::Animation\n11::Heat (1995)::Action\n"


def _write(path, text=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _items_jsonl_gz(path):
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps({"item_id": 10, "text": "a"}) + "\n")
    return path


def _ml1m_zip(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", "1::10::5::978300760\n")
        zf.writestr("ml-1m/movies.dat", MOVIES)
    return path


# --- the real folders the README names -------------------------------------------------


@pytest.mark.parametrize(
    "name, sequences, items",
    [
        # Beauty.txt is the only *.txt of integer sequences; the phrase / keyword .txt files are not
        ("amazon_beauty", "Beauty.txt", "items.jsonl.gz"),
        ("movielens_1m", "sequences_chrono.txt", "movies.dat"),
    ],
)
def test_real_sequences_folders(shared_data, name, sequences, items):
    folder = shared_data / name
    spec = find_data(str(folder))
    assert (spec.kind, spec.source, spec.items) == ("sequences", str(folder / sequences), str(folder / items))


def test_toys_folder_is_ambiguous_and_sequences_picks(shared_data):
    folder = shared_data / "amazon_toys"
    with pytest.raises(MadrecError) as err:
        find_data(str(folder))
    message = str(err.value)
    assert "Toys_and_Games.txt" in message and "Toys_p5_sequential.txt" in message and "SEQUENCES=" in message
    spec = find_data(str(folder), sequences=str(folder / "Toys_p5_sequential.txt"))
    assert (spec.source, spec.items) == (str(folder / "Toys_p5_sequential.txt"), str(folder / "items.jsonl.gz"))


# --- MovieLens-1M layouts ----------------------------------------------------------------


def test_default_is_movielens_download():
    assert find_data() == find_data(None, None, None)
    spec = find_data()
    assert (spec.kind, spec.source, spec.items) == ("ml-1m", ML1M_URL, "")


def test_ml1m_zip_in_folder_and_as_file(tmp_path):
    archive = _ml1m_zip(tmp_path / "ml-1m.zip")
    for data in (tmp_path, archive):
        spec = find_data(str(data))
        assert (spec.kind, spec.source) == ("ml-1m", str(archive))


def test_extracted_ml1m_folder(tmp_path):
    for folder in (tmp_path, tmp_path / "ml-1m"):
        _write(folder / "ratings.dat", "1::10::5::978300760\n")
        _write(folder / "movies.dat", MOVIES)
    (tmp_path / "ratings.dat").unlink()
    spec = find_data(str(tmp_path))  # the archive's own ml-1m/ subfolder
    assert (spec.kind, spec.source) == ("ml-1m", str(tmp_path / "ml-1m"))
    _write(tmp_path / "ratings.dat", "1::10::5::978300760\n")
    with pytest.raises(MadrecError, match="several MovieLens-1M sources"):
        find_data(str(tmp_path))


def test_zip_plus_ratings_is_ambiguous(tmp_path):
    _ml1m_zip(tmp_path / "ml-1m.zip")
    _write(tmp_path / "ratings.dat", "1::10::5::978300760\n")
    _write(tmp_path / "movies.dat", MOVIES)
    with pytest.raises(MadrecError, match=r"several MovieLens-1M sources \(ml-1m.zip, ratings.dat\)"):
        find_data(str(tmp_path))


def test_ratings_and_sequences_together_is_ambiguous(tmp_path):
    _write(tmp_path / "ratings.dat", "1::10::5::978300760\n")
    _write(tmp_path / "movies.dat", MOVIES)
    seq = _write(tmp_path / "seq.txt", SEQUENCES)
    with pytest.raises(
        MadrecError, match=r"both MovieLens-1M files \(ratings.dat\) and sequences or interactions \(seq.txt\)"
    ):
        find_data(str(tmp_path))
    spec = find_data(str(tmp_path), sequences=str(seq))
    assert (spec.kind, spec.source, spec.items) == ("sequences", str(seq), str(tmp_path / "movies.dat"))


# --- sequences layouts ---------------------------------------------------------------------


def test_sequences_file_given_as_data(tmp_path):
    seq = _write(tmp_path / "s.txt", SEQUENCES)
    items = _items_jsonl_gz(tmp_path / "items.jsonl.gz")
    spec = find_data(str(seq))
    assert (spec.kind, spec.source, spec.items) == ("sequences", str(seq), str(items))


def test_several_items_files_are_ambiguous_and_items_picks(tmp_path):
    _write(tmp_path / "s.txt", SEQUENCES)
    _items_jsonl_gz(tmp_path / "items.jsonl.gz")
    movies = _write(tmp_path / "movies.dat", MOVIES)
    with pytest.raises(MadrecError, match=r"several items files \(items.jsonl.gz, movies.dat\).*ITEMS="):
        find_data(str(tmp_path))
    assert find_data(str(tmp_path), items=str(movies)).items == str(movies)


def test_missing_items_file(tmp_path):
    _write(tmp_path / "s.txt", SEQUENCES)
    with pytest.raises(MadrecError, match="no items file.*--items FILE"):
        find_data(str(tmp_path))


def test_text_files_that_are_not_sequences(tmp_path):
    _write(tmp_path / "notes.txt", "B00ABC nail polish\nB00XYZ lip gloss\n")
    with pytest.raises(MadrecError, match=r"notes.txt\) are not 'user item item \.\.\.' lines"):
        find_data(str(tmp_path))


def test_empty_folder_and_missing_paths(tmp_path):
    with pytest.raises(MadrecError, match="no recognised data: expected ml-1m.zip"):
        find_data(str(tmp_path))
    with pytest.raises(MadrecError, match=r"--data .*nowhere: no such file"):
        find_data(str(tmp_path / "nowhere"))
    with pytest.raises(MadrecError, match="--items / --dataset need --data"):
        find_data(items=str(tmp_path / "items.jsonl"))


# --- interactions tables (prepare-data --dataset interactions) --------------------------


def _interactions_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "a"], "timestamp": [1, 2, 3]}), path)
    return path


def test_interactions_table_given_as_data_with_items(tmp_path):
    logs = _interactions_parquet(tmp_path / "logs.parquet")
    items = _write(tmp_path / "elsewhere" / "texts.csv", "item_id,text\na,A\nb,B\n")
    spec = find_data(str(logs), items=str(items))
    assert (spec.kind, spec.source, spec.items) == ("interactions", str(logs), str(items))


def test_interactions_folder_finds_table_and_items(tmp_path):
    logs = _write(tmp_path / "logs.csv", "user_id,item_id,timestamp\nu1,a,1\nu1,b,2\n")
    items = _write(tmp_path / "items.csv", "item_id,text\na,A\nb,B\n")  # a table, but not interactions
    for data in (tmp_path, logs):
        spec = find_data(str(data))
        assert (spec.kind, spec.source, spec.items) == ("interactions", str(logs), str(items))
    _interactions_parquet(tmp_path / "more.parquet")
    with pytest.raises(MadrecError, match=r"several interactions tables \(logs.csv, more.parquet\)"):
        find_data(str(tmp_path))
    _write(tmp_path / "s.txt", SEQUENCES)
    with pytest.raises(MadrecError, match="both sequences .* and interactions tables"):
        find_data(str(tmp_path))
    assert find_data(str(tmp_path), sequences=str(tmp_path / "s.txt")).kind == "sequences"


def test_interactions_without_items_file(tmp_path):
    logs = _interactions_parquet(tmp_path / "logs.parquet")
    with pytest.raises(MadrecError, match="no items file.*ITEMS="):
        find_data(str(logs))


def test_dataset_kind_forced_and_remote_sources(tmp_path):
    odd = _write(tmp_path / "export.tsv", "1 10 11\n2 11 12\n")
    items = _items_jsonl_gz(tmp_path / "items.jsonl.gz")
    assert find_data(str(odd), kind="sequences") == find_data(str(odd))
    spec = find_data("gs://bucket/logs.parquet", items="gs://bucket/items.csv")
    assert (spec.kind, spec.source, spec.items) == ("interactions", "gs://bucket/logs.parquet", "gs://bucket/items.csv")
    assert find_data("https://host/ml-1m.zip").kind == "ml-1m"
    with pytest.raises(MadrecError, match="need their item texts too"):
        find_data("gs://bucket/Beauty.txt")
    assert find_data("gs://bucket/x", items=str(items), kind="sequences").items == str(items)


def test_make_run_takes_an_interactions_table():
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "run", "DATA=logs.parquet", "ITEMS=items.csv"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert (
        " ".join(out.replace("\\\n", " ").split())
        == '.venv/bin/madrec run-local --data "logs.parquet" --items "items.csv"'
    )


def test_make_run_passes_data_sequences_items():
    out = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-n",
            "run",
            "DATA=d i r",
            "SEQUENCES=s.txt",
            "ITEMS=i.jsonl",
            "ARGS=trainer.max_steps=5",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    command = " ".join(out.replace("\\\n", " ").split())
    assert command == (
        '.venv/bin/madrec run-local --data "d i r" --sequences "s.txt" --items "i.jsonl" trainer.max_steps=5'
    )


def test_staged_inputs_follow_content(tmp_path):
    store = tmp_path / "store"
    seq = _write(tmp_path / "data" / "s.txt", SEQUENCES)
    first = stage_input(str(seq), store)
    assert Path(first).name == "s.txt" and Path(first).read_text() == SEQUENCES
    assert stage_input(str(seq), store) == first  # same content, same argument: a cache hit
    seq.write_text(SEQUENCES + "3 10 11 12\n")
    assert stage_input(str(seq), store) != first  # edited in place: a new argument
    folder = tmp_path / "data"
    assert Path(stage_input(str(folder), store)).is_dir()
    assert stage_input(ML1M_URL, store) == ML1M_URL and stage_input("", store) == ""


def test_result_pages_open_as_html_and_the_rest_are_symlinks(tmp_path):
    """KFP artifacts have no extension (evaluate-2-2/report): a symlink named report.html still
    opens as plain text in a browser, which follows it to the target's name."""
    import os

    from madrec.ops.local_run import RESULT_LINKS, link_results

    run = tmp_path / "run" / "evaluate-2-2"
    report = _write(run / "report", "<!doctype html><p>metrics</p>")
    sid_report = _write(tmp_path / "run" / "build-sids" / "sid_report", "<!doctype html><p>sids</p>")
    metrics = _write(run / "metrics", "{}")
    folder = link_results(
        {"report": str(report), "sid_report": str(sid_report), "metrics": str(metrics)}, tmp_path / "r"
    )
    for name, source in (("report.html", report), ("sid_report.html", sid_report)):
        page = folder / name
        assert not page.is_symlink() and os.path.realpath(page).endswith(".html")
        assert page.read_text() == source.read_text()
    assert (folder / "metrics.json").is_symlink() and (folder / "metrics.json").resolve() == metrics
    again = link_results({"report": str(report)}, folder)  # a re-run replaces the page
    assert (again / "report.html").read_text().startswith("<!doctype html>")
    assert "report.html" in RESULT_LINKS and "sid_report.html" in RESULT_LINKS
