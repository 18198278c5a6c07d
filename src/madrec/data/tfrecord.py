"""GZIP TFRecord files of `tf.train.Example`, read and written without tensorflow.

Training only needs int64 lists and byte strings, so this module speaks the small part of
the protobuf wire format that `tf.train.Example` uses. Tests check it against tensorflow
both ways (tests/test_tfrecord_interop.py), so files stay interchangeable with the prior
research system while the training image carries no tensorflow.

Record framing (TensorFlow's `RecordWriter`):
    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import google_crc32c

from madrec.errors import MadrecError

FeatureValue = Sequence[int] | Sequence[bytes]
_MASK_DELTA = 0xA282EAD8
_U64 = (1 << 64) - 1


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


# --- protobuf wire format ------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= _U64  # negative int64 -> two's complement, as protobuf does
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long")


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def encode_example(features: Mapping[str, FeatureValue]) -> bytes:
    """Serialise {name: list of int | list of bytes} as a `tf.train.Example` (keys sorted)."""
    entries = bytearray()
    for name in sorted(features):
        values = features[name]
        if len(values) and isinstance(values[0], (bytes, bytearray)):
            inner = b"".join(_len_field(1, bytes(v)) for v in values)
            feature = _len_field(1, inner)  # Feature.bytes_list
        else:
            packed = b"".join(_varint(int(v)) for v in values)
            inner = _len_field(1, packed) if values else b""
            feature = _len_field(3, inner)  # Feature.int64_list
        entry = _len_field(1, name.encode()) + _len_field(2, feature)
        entries += _len_field(1, entry)
    return _len_field(1, bytes(entries))


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """Yield (field number, wire type, value) of one protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            value = buf[pos : pos + size]
            if len(value) != size:
                raise ValueError("truncated field")
            pos += size
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield field, wire, value


def _to_int64(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def _decode_feature(buf: bytes) -> FeatureValue:
    for kind, _, list_buf in _fields(buf):
        if kind == 1:  # bytes_list
            return [bytes(v) for f, _, v in _fields(list_buf) if f == 1]
        if kind == 3:  # int64_list: packed (wire 2) or not (wire 0)
            out: list[int] = []
            for f, wire, v in _fields(list_buf):
                if f != 1:
                    continue
                if wire == 0:
                    out.append(_to_int64(v))
                else:
                    pos = 0
                    while pos < len(v):
                        u, pos = _read_varint(v, pos)
                        out.append(_to_int64(u))
            return out
        if kind == 2:  # float_list
            raise ValueError("float features are not used by madrec")
    return []


def decode_example(data: bytes) -> dict[str, FeatureValue]:
    """Parse a serialised `tf.train.Example` into {name: list of int | list of bytes}."""
    out: dict[str, FeatureValue] = {}
    for f, _, features in _fields(data):
        if f != 1:
            continue
        for g, _, entry in _fields(features):
            if g != 1:
                continue
            name, value = "", b""
            for h, _, v in _fields(entry):
                if h == 1:
                    name = bytes(v).decode()
                elif h == 2:
                    value = v
            out[name] = _decode_feature(value)
    return out


# --- files ---------------------------------------------------------------------------


def write_records(path: str | Path, records: Iterable[bytes]) -> int:
    """Write serialised records to a GZIP TFRecord file (deterministic bytes: mtime 0)."""
    n = 0
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        for data in records:
            header = struct.pack("<Q", len(data))
            gz.write(header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data)))
            n += 1
    return n


def read_records(path: str | Path) -> Iterator[bytes]:
    """Yield the records of a GZIP TFRecord file, checking both checksums of each."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as fh:
            buf = fh.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise MadrecError(f"{path}: not a readable GZIP TFRecord file ({exc}); re-create or re-download it") from exc
    pos, index = 0, 0
    while pos < len(buf):
        if pos + 12 > len(buf):
            raise MadrecError(f"{path}: record {index} is truncated (file cut short?)")
        header = buf[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", buf[pos + 8 : pos + 12])
        if crc != _masked_crc(header):
            raise MadrecError(f"{path}: record {index} has a corrupt length header (checksum mismatch)")
        data = buf[pos + 12 : pos + 12 + length]
        end = pos + 12 + length + 4
        if end > len(buf):
            raise MadrecError(f"{path}: record {index} is truncated (file cut short?)")
        (dcrc,) = struct.unpack("<I", buf[end - 4 : end])
        if dcrc != _masked_crc(data):
            raise MadrecError(f"{path}: record {index} is corrupt (data checksum mismatch)")
        yield data
        pos, index = end, index + 1


def read_examples(path: str | Path) -> Iterator[dict[str, FeatureValue]]:
    """Yield each record of a GZIP TFRecord file parsed as a `tf.train.Example`."""
    for index, data in enumerate(read_records(path)):
        try:
            yield decode_example(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MadrecError(f"{Path(path)}: record {index} is not a tf.train.Example ({exc})") from exc
