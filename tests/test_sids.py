"""build-sids / ingest-sids end to end on a real Beauty slice, and the SID file validator."""

from __future__ import annotations

import gzip
import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

from madrec import cli
from madrec.data.tfrecord import encode_example, write_records
from madrec.errors import MadrecError
from madrec.sids.build import ingest_sids
from madrec.sids.format import load_sids, validate_sids
from madrec.sids.rkmeans import assign_codes, dedup_digit

N = 300
V = 16  # small codebook for a 300-item slice


def write_dataset(root: Path, texts: list[str]) -> Path:
    """A prepared dataset folder as far as SIDs need it: items/ shard + dataset.json."""
    (root / "items").mkdir(parents=True)
    records = [encode_example({"id": [i], "text": [t.encode()]}) for i, t in enumerate(texts)]
    write_records(root / "items" / "data-00000-of-00001.tfrecord.gz", records)
    (root / "dataset.json").write_text(json.dumps({"num_items": len(texts)}))
    return root


@pytest.fixture(scope="module")
def beauty(shared_data, tmp_path_factory) -> Path:
    with gzip.open(shared_data / "amazon_beauty" / "items.jsonl.gz", "rt") as fh:
        texts = [json.loads(line)["text"] for line, _ in zip(fh, range(N))]
    return write_dataset(tmp_path_factory.mktemp("beauty") / "data", texts)


@pytest.fixture(scope="module")
def built(beauty, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build") / "sids"
    argv = ["build-sids", "--data", str(beauty), "--out", str(out), "--codebook-size", str(V), "--device", "cpu"]
    assert cli.main(argv) == 0
    return out


def grid_style_sids(n: int = N, levels: int = 4, seed: int = 0) -> torch.Tensor:
    """A valid file as GRID writes it: (L + 1, N) int64, last row the de-dup digit."""
    codes = torch.randint(0, 256, (levels, n), generator=torch.Generator().manual_seed(seed))
    return torch.cat([codes, dedup_digit(codes)[0].unsqueeze(0)])


@pytest.mark.slow
def test_build_writes_valid_sids_and_report(built):
    sids = load_sids(built / "sids.pt", num_items=N, codebook_size=V)
    assert sids.shape == (4, N) and sids.dtype == torch.int64
    assert torch.unique(sids.t(), dim=0).shape[0] == N
    report = json.loads((built / "sid_report.json").read_text())
    assert (report["sid_len"], report["levels"], report["codebook_size"], report["num_items"]) == (4, 3, V, N)
    _, groups = torch.unique(sids[:3].t(), dim=0, return_counts=True)
    assert report["collision_rate"] == pytest.approx(1 - groups.numel() / N)
    assert report["largest_collision_group"] == int(groups.max()) == int(sids[3].max()) + 1
    assert sum(int(s) * c for s, c in report["collision_group_sizes"].items()) == N
    assert report["dedup_digit_follows_rule"] is True
    for pos, row in zip(report["positions"], sids):
        assert pos["codes_used"] == torch.unique(row).numel()
        assert 0 < pos["entropy_bits"] <= pos["max_entropy_bits"] + 1e-9
    assert all(km["converged"] for km in report["kmeans"])
    assert {"read_items", "embed", "rkmeans", "rkmeans_level_1", "dedup", "total"} <= report["timings_s"].keys()
    html = (built / "sid_report.html").read_text()
    assert html.count("<svg") == 2 + 4 and "Collision-group sizes" in html
    emb = torch.load(built / "embeddings.pt", weights_only=True)["embeddings"]
    codebooks = torch.load(built / "codebooks.pt", weights_only=True)["codebooks"]
    assert emb.shape == (N, 384) and codebooks.shape == (3, V, 384)
    assert torch.equal(assign_codes(emb, codebooks), sids[:3])


@pytest.mark.slow
def test_rebuild_reuses_embeddings_same_seed_same_sids(beauty, built, tmp_path):
    base = ["build-sids", "--data", str(beauty), "--codebook-size", str(V), "--device", "cpu"]
    for name, seed in (("same", "42"), ("other", "43")):
        (tmp_path / name).mkdir()
        shutil.copy(built / "embeddings.pt", tmp_path / name / "embeddings.pt")
        assert cli.main(base + ["--out", str(tmp_path / name), "--seed", seed]) == 0
        assert json.loads((tmp_path / name / "sid_report.json").read_text())["embeddings_reused"] is True
    reference = load_sids(built / "sids.pt")
    assert torch.equal(load_sids(tmp_path / "same" / "sids.pt"), reference)
    assert not torch.equal(load_sids(tmp_path / "other" / "sids.pt"), reference)


@pytest.mark.slow
def test_round_trip_build_output_passes_ingest_unchanged(beauty, built, tmp_path, capsys):
    argv = [
        "ingest-sids",
        "--source",
        str(built / "sids.pt"),
        "--data",
        str(beauty),
        "--out",
        str(tmp_path / "in"),
        "--codebook-size",
        str(V),
    ]
    assert cli.main(argv) == 0
    assert "all unique" in capsys.readouterr().out
    assert torch.equal(torch.load(tmp_path / "in" / "sids.pt"), torch.load(built / "sids.pt"))
    before = json.loads((built / "sid_report.json").read_text())
    after = json.loads((tmp_path / "in" / "sid_report.json").read_text())
    for key in ("collision_rate", "largest_collision_group", "collision_group_sizes", "positions"):
        assert after[key] == before[key]
    assert (tmp_path / "in" / "sid_report.html").is_file()


def test_ingest_accepts_grid_format_file(beauty, tmp_path):
    sids = grid_style_sids()
    torch.save(sids, tmp_path / "flan-t5-xl_rkmeans_4_256_seed43.pt")
    report = ingest_sids(str(tmp_path / "flan-t5-xl_rkmeans_4_256_seed43.pt"), beauty, tmp_path / "out")
    assert torch.equal(load_sids(tmp_path / "out" / "sids.pt", N, 256), sids)
    assert report["sid_len"] == 5 and report["dedup_digit_follows_rule"]
    # Integral floats are digits too.
    torch.save(sids.double(), tmp_path / "float.pt")
    assert torch.equal(load_sids(tmp_path / "float.pt", N, 256), sids)


def bad_cases() -> dict[str, tuple[object, str]]:
    good = grid_style_sids()
    frac = good.float()
    frac[1, 7] = 3.5
    dup = good.clone()
    dup[:, 9] = dup[:, 4]
    neg = good.clone()
    neg[2, 11] = -1
    big = good.clone()
    big[0, 5] = 256
    return {
        "dict": ({"sids": good}, r"holds a dict with keys \[.sids.\], not a tensor"),
        "1-D": (good[0], r"a 1-D tensor of shape \(300,\)"),
        "3-D": (good.unsqueeze(0), r"a 3-D tensor"),
        "fraction": (frac, r"float tensor with non-integral values \(e\.g\. 3\.5 at row 1, column 7\)"),
        "transposed": (good.t().contiguous(), r"shape \(300, 5\) looks transposed.*sids\.T\.contiguous\(\)"),
        "columns": (good[:, :250], r"250 columns \(items\) but the dataset has 300 items"),
        "duplicates": (dup, r"duplicate SID.*items 4 and 9 share.*lacks the de-duplication digit"),
        "negative": (neg, r"1 negative digit\(s\) \(e\.g\. -1 at row 2, column 11\)"),
        "too big": (big, r"1 digit\(s\) >= the codebook size 256 \(largest 256 at row 0, column 5\)"),
        "too long": (torch.cat([good, good[:4]]), r"9 SID positions \(rows\), at most 8"),
    }


def test_ingest_rejects_each_bad_case_with_its_own_message(beauty, tmp_path):
    messages = set()
    for name, (obj, pattern) in bad_cases().items():
        torch.save(obj, tmp_path / f"{name}.pt")
        with pytest.raises(MadrecError, match=pattern) as err:
            ingest_sids(str(tmp_path / f"{name}.pt"), beauty, tmp_path / "out")
        assert str(tmp_path / f"{name}.pt") in str(err.value)
        messages.add(str(err.value).split(": ", 1)[1])
        assert not (tmp_path / "out").exists(), f"{name}: output written despite the error"
    assert len(messages) == len(bad_cases())


def test_transposed_hint_without_item_count_and_unreadable_file(beauty, tmp_path, cli_stderr):
    with pytest.raises(MadrecError, match="looks transposed"):
        validate_sids(grid_style_sids().t(), "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    (tmp_path / "zero.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("hello\n")  # the unpickler raised KeyError / IndexError on these
    for name in ("junk.pt", "zero.pt", "text.pt"):
        with pytest.raises(MadrecError, match=r"not a readable SID file \(\d+ bytes\).*int64 tensor \(H, N\)"):
            load_sids(tmp_path / name)
    for name in ("junk.pt", "zero.pt", "text.pt"):
        rc = cli.main(
            ["ingest-sids", "--source", str(tmp_path / name), "--data", str(beauty), "--out", str(tmp_path / "o")]
        )
        assert rc == 2
        err = cli_stderr()
        assert len(err) == 1 and err[0].startswith(f"madrec ingest-sids: error: {tmp_path / name}: not a readable SID")
        assert "Re-running" not in err[0], err  # torch's advice to load it with weights_only=False is not passed on
        assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_ingest_from_gcs_emulator(beauty, tmp_path, monkeypatch):
    from gcp_storage_emulator.server import create_server
    from google.cloud import storage

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("MADREC_CACHE", str(tmp_path / "cache"))
        sids = grid_style_sids(seed=3)
        torch.save(sids, tmp_path / "up.pt")
        storage.Client().create_bucket("grid-sids").blob(
            "beauty/flan-t5-xl_rkmeans_4_256_seed43.pt"
        ).upload_from_filename(str(tmp_path / "up.pt"))
        report = ingest_sids("gs://grid-sids/beauty/flan-t5-xl_rkmeans_4_256_seed43.pt", beauty, tmp_path / "out")
        assert report["source_uri"].startswith("gs://grid-sids/")
        assert torch.equal(torch.load(tmp_path / "out" / "sids.pt"), sids)
        with pytest.raises(MadrecError, match="object not found"):
            ingest_sids("gs://grid-sids/beauty/missing.pt", beauty, tmp_path / "out2")
    finally:
        server.stop()


def test_collapsed_level_is_an_error(tmp_path):
    data = write_dataset(tmp_path / "same", ["Title: the very same lipstick; Brand: X"] * 40)
    with pytest.raises(MadrecError, match=r"SID level 1 collapsed: 1 of 4 codes used"):
        cli_build(data, tmp_path / "out", "--codebook-size", "4", "--levels", "2")
    assert not (tmp_path / "out").exists()
    collapsed = grid_style_sids()
    collapsed[0] = 7
    collapsed[-1] = dedup_digit(collapsed[:-1])[0]
    torch.save(collapsed, tmp_path / "c.pt")
    data = write_dataset(tmp_path / "d", ["x"] * N)
    with pytest.raises(MadrecError, match=r"level 1 collapsed: 1 of 256 codes used"):
        ingest_sids(str(tmp_path / "c.pt"), data, tmp_path / "out")


def test_collision_group_larger_than_codebook_is_an_error(tmp_path):
    data = write_dataset(tmp_path / "two", ["Title: red nail polish"] * 20 + ["Title: hair shampoo for men"] * 20)
    with pytest.raises(MadrecError, match=r"20 items share the SID prefix .* codebook size 4"):
        cli_build(data, tmp_path / "out", "--codebook-size", "4", "--levels", "1")


def test_build_input_errors(beauty, tmp_path):
    with pytest.raises(MadrecError, match="dataset folder not found"):
        cli_build(tmp_path / "nope", tmp_path / "out")
    data = write_dataset(tmp_path / "d", ["a", "b", "c"])
    (data / "dataset.json").write_text(json.dumps({"num_items": 4}))
    with pytest.raises(MadrecError, match="num_items is 4 but items/ holds 3 records"):
        cli_build(data, tmp_path / "out")
    with pytest.raises(MadrecError, match="--levels 8: must be 1..7"):
        cli_build(beauty, tmp_path / "out", "--levels", "8")
    with pytest.raises(MadrecError, match="larger than the number of items"):
        cli_build(beauty, tmp_path / "out", "--codebook-size", "512")


def cli_build(data: Path, out: Path, *extra: str) -> int:
    """build_cli directly, so MadrecError reaches the test instead of becoming exit code 2."""
    from madrec.sids.cli import build_cli

    return build_cli(["--data", str(data), "--out", str(out), "--device", "cpu", *extra])
