"""IDX reader: round trips, the exact byte layout, and every way a file can be broken."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from retain.data import DataError, read_idx, write_idx
from retain.data.idx import parse_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _raise_one_line(path: Path, *fragments: str) -> None:
    with pytest.raises(DataError) as err:
        read_idx(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg
    for f in fragments:
        assert f in msg, msg


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip_every_type(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, a)
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    assert b.flags.writeable and b.dtype.isnative


def test_hand_written_big_endian_layout(tmp_path):
    # Built byte by byte, independent of write_idx: int16 (0x0B), 2 dims (2, 3), big-endian.
    values = [1, -2, 300, -400, 5, 32767]
    raw = bytes([0, 0, 0x0B, 2]) + struct.pack(">II", 2, 3) + struct.pack(">6h", *values)
    (tmp_path / "plain").write_bytes(raw)
    (tmp_path / "zipped.gz").write_bytes(gzip.compress(raw))
    for name in ("plain", "zipped.gz"):
        out = read_idx(tmp_path / name)
        assert out.shape == (2, 3)
        assert out.ravel().tolist() == values


def test_gzip_detected_by_content_not_suffix(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "x.gz", a)
    (tmp_path / "x.gz").rename(tmp_path / "no-suffix")
    np.testing.assert_array_equal(read_idx(tmp_path / "no-suffix"), a)


def test_truncated_payload(tmp_path):
    write_idx(tmp_path / "full", np.zeros((10, 28, 28), np.uint8))
    data = (tmp_path / "full").read_bytes()
    (tmp_path / "cut").write_bytes(data[:-5])
    _raise_one_line(tmp_path / "cut", "truncated", "7840", "7835")


def test_extra_bytes(tmp_path):
    write_idx(tmp_path / "full", np.zeros((4,), np.uint8))
    (tmp_path / "long").write_bytes((tmp_path / "full").read_bytes() + b"\x00\x00")
    _raise_one_line(tmp_path / "long", "2 unexpected bytes")


def test_bad_magic(tmp_path):
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    _raise_one_line(tmp_path / "png", "not an IDX file")


def test_unknown_type_code(tmp_path):
    (tmp_path / "f").write_bytes(bytes([0, 0, 0x0A, 1]) + struct.pack(">I", 1) + b"\x00")
    _raise_one_line(tmp_path / "f", "unknown IDX type code 0x0A")


def test_short_and_truncated_header(tmp_path):
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    _raise_one_line(tmp_path / "tiny", "too short")
    (tmp_path / "hdr").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">I", 5))
    _raise_one_line(tmp_path / "hdr", "truncated header")
    (tmp_path / "zero").write_bytes(bytes([0, 0, 8, 0]))
    _raise_one_line(tmp_path / "zero", "0 dimensions")


def test_truncated_gzip(tmp_path):
    write_idx(tmp_path / "a.gz", np.arange(1000, dtype=np.int32))
    data = (tmp_path / "a.gz").read_bytes()
    (tmp_path / "b.gz").write_bytes(data[: len(data) // 2])
    _raise_one_line(tmp_path / "b.gz", "gzip")


def test_missing_file(tmp_path):
    _raise_one_line(tmp_path / "nope", "no such file")


def test_parse_idx_names_its_source():
    with pytest.raises(DataError, match=r"^labels\.bin: "):
        parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01", "labels.bin")


def test_write_idx_rejects_unstorable_dtype(tmp_path):
    with pytest.raises(DataError, match="cannot store"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))


@pytest.mark.skipif(not (FASHION / "t10k-labels-idx1-ubyte.gz").exists(), reason="no Fashion-MNIST")
def test_real_fashion_labels():
    y = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10
