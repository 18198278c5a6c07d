"""Our TFRecord codec against tensorflow, the reference: each reads what the other writes."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from madrec.data.dataset import load_dataset
from madrec.data.prepare import prepare
from madrec.data.tfrecord import encode_example, read_examples, write_records
from madrec.errors import MadrecError

pytestmark = pytest.mark.slow  # imports tensorflow (only when these tests run, not when collected)


@pytest.fixture(scope="module")
def tf():
    import tensorflow  # a test dependency: the interop tests must run, never skip

    return tensorflow


def _specs(tf):
    """The feature specs of sequence and item records."""
    sequences = {"user_id": tf.io.FixedLenFeature([1], tf.int64), "sequence_data": tf.io.VarLenFeature(tf.int64)}
    items = {"id": tf.io.FixedLenFeature([1], tf.int64), "text": tf.io.FixedLenFeature([1], tf.string)}
    return sequences, items


def _tf_read(tf, files, spec):
    ds = tf.data.TFRecordDataset([str(f) for f in files], compression_type="GZIP")
    return [tf.io.parse_single_example(r, spec) for r in ds]


def test_tensorflow_reads_what_prepare_data_writes(shared_data, tmp_path, tf):
    lines = (shared_data / "amazon_beauty/Beauty.txt").read_text().splitlines()[:300]
    (tmp_path / "seq.txt").write_text("\n".join(lines) + "\n")
    prepare(
        "sequences",
        str(tmp_path / "seq.txt"),
        tmp_path / "out",
        items=str(shared_data / "amazon_beauty/items.jsonl.gz"),
        min_item_count=1,
    )
    ours = load_dataset(tmp_path / "out")
    for split in ("training", "evaluation", "testing"):
        parsed = _tf_read(tf, sorted((tmp_path / "out" / split).glob("*.tfrecord.gz")), _specs(tf)[0])
        assert len(parsed) == 300
        for ex, uid, seq in zip(parsed, ours.splits[split].user_ids, ours.splits[split].sequences):
            assert int(ex["user_id"][0]) == uid
            assert ex["sequence_data"].dtype == tf.int64
            np.testing.assert_array_equal(tf.sparse.to_dense(ex["sequence_data"]).numpy(), seq)
    items = _tf_read(tf, sorted((tmp_path / "out/items").glob("*.tfrecord.gz")), _specs(tf)[1])
    assert [int(e["id"][0]) for e in items] == list(range(ours.num_items))
    assert [e["text"][0].numpy().decode() for e in items] == ours.item_texts
    assert ours.item_texts[0].startswith("Title: OPI Nail Lacquer")


def test_we_read_what_tensorflow_writes(tmp_path, tf):
    rng = np.random.default_rng(0)
    rows = [(u, rng.integers(0, 5000, size=rng.integers(1, 60)).tolist()) for u in range(50)]
    rows.append((50, [0, 2**40, -3]))  # large and negative int64 values use 10-byte varints
    path = tmp_path / "tf.tfrecord.gz"
    with tf.io.TFRecordWriter(str(path), options=tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for uid, seq in rows:
            ex = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "user_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[uid])),
                        "sequence_data": tf.train.Feature(int64_list=tf.train.Int64List(value=seq)),
                        "note": tf.train.Feature(bytes_list=tf.train.BytesList(value=["é".encode(), b""])),
                    }
                )
            )
            w.write(ex.SerializeToString())
    got = list(read_examples(path))
    assert [(g["user_id"][0], g["sequence_data"]) for g in got] == rows
    assert got[0]["note"] == ["é".encode(), b""]


def test_encoding_is_byte_identical_to_tensorflow_serialisation(tf):
    feats = {"sequence_data": [3, 0, 300, 2**33], "user_id": [7]}
    ex = tf.train.Example(
        features=tf.train.Features(
            feature={k: tf.train.Feature(int64_list=tf.train.Int64List(value=v)) for k, v in feats.items()}
        )
    )
    assert tf.train.Example.FromString(encode_example(feats)) == ex


def test_corrupt_and_truncated_files_are_named(tmp_path):
    path = tmp_path / "x.tfrecord.gz"
    write_records(path, [encode_example({"user_id": [i], "sequence_data": [1, 2, 3]}) for i in range(20)])
    raw = gzip.decompress(path.read_bytes())
    flipped = bytearray(raw)
    first_record = 16 + len(encode_example({"user_id": [0], "sequence_data": [1, 2, 3]}))
    flipped[first_record + 14] ^= 0xFF  # a byte of record 1's payload
    (tmp_path / "bad.tfrecord.gz").write_bytes(gzip.compress(bytes(flipped)))
    with pytest.raises(MadrecError, match=r"bad\.tfrecord\.gz: record 1 .*checksum mismatch"):
        list(read_examples(tmp_path / "bad.tfrecord.gz"))
    (tmp_path / "cut.tfrecord.gz").write_bytes(gzip.compress(raw[:-7]))
    with pytest.raises(MadrecError, match=r"cut\.tfrecord\.gz: record 19 is truncated"):
        list(read_examples(tmp_path / "cut.tfrecord.gz"))
    (tmp_path / "cutgz.tfrecord.gz").write_bytes(path.read_bytes()[:-20])
    with pytest.raises(MadrecError, match=r"cutgz\.tfrecord\.gz: not a readable GZIP TFRecord"):
        list(read_examples(tmp_path / "cutgz.tfrecord.gz"))
