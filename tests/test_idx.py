"""IDX reader/writer: round trips for every type code, and every malformed file named in a DataError."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from dae.data.idx import TYPE_CODES, idx_bytes, read_idx, read_idx_with_digest, write_idx
from dae.errors import DataError, UsageError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def sample(dtype, shape=(3, 5, 4)) -> np.ndarray:
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_type_code(tmp_path, dtype, compress):
    array = sample(dtype)
    path = write_idx(tmp_path / "a.idx", array, gzip=compress)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == compress
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_round_trip_dimension_counts(tmp_path, ndim):
    array = np.arange(2 * 3**ndim, dtype=np.int16)[: 3**ndim].reshape((3,) * ndim)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "x-idx.gz", array)), array)


def test_gzip_detected_by_magic_not_name(tmp_path):
    array = sample(np.uint8, (4, 2))
    plain_named_gz = write_idx(tmp_path / "plain.gz", array, gzip=False)
    gz_named_plain = write_idx(tmp_path / "packed-idx1-ubyte", array, gzip=True)
    assert plain_named_gz.read_bytes()[:2] == b"\x00\x00"
    np.testing.assert_array_equal(read_idx(plain_named_gz), array)
    np.testing.assert_array_equal(read_idx(gz_named_plain), array)


def test_header_layout_and_digest_are_of_uncompressed_bytes(tmp_path):
    array = np.arange(6, dtype=np.int32).reshape(2, 3)
    data = idx_bytes(array)
    assert data[:4] == bytes([0, 0, 0x0C, 2]) and struct.unpack(">II", data[4:12]) == (2, 3)
    assert struct.unpack(">6i", data[12:]) == tuple(range(6))
    import hashlib

    _, digest = read_idx_with_digest(write_idx(tmp_path / "d.gz", array))
    assert digest == hashlib.sha256(data).hexdigest()


def test_write_is_deterministic_and_leaves_no_temp_files(tmp_path):
    array = sample(np.float32, (2, 2))
    a = write_idx(tmp_path / "a.gz", array).read_bytes()
    b = write_idx(tmp_path / "a.gz", array).read_bytes()
    assert a == b
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gz"]


@pytest.mark.parametrize(
    "array",
    [np.zeros(3, np.int64), np.zeros(3, bool), np.zeros((0, 2), np.uint8), np.zeros((1,) * 33, np.uint8)],
)
def test_write_refuses_unrepresentable_arrays(tmp_path, array):
    with pytest.raises(UsageError):
        write_idx(tmp_path / "bad", array)
    assert not (tmp_path / "bad").exists()


def header(code=0x08, dims=(2, 3), magic=b"\x00\x00") -> bytes:
    return magic + bytes([code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


MALFORMED = {
    "bad magic": (b"\x01\x00\x08\x01" + struct.pack(">I", 2) + b"ab", "magic"),
    "bad type code": (header(code=0x0A) + b"\x00" * 6, "type code 0x0A"),
    "zero dims": (b"\x00\x00\x08\x00", "0 dimensions"),
    "more dims than numpy has": (header(dims=(1,) * 65) + b"\x07", "65 dimensions"),  # was a ValueError
    "zero dimension size": (header(dims=(2, 0)), "dimension 1 has size 0"),
    "dimension over cap": (header(dims=(2**32 - 1,)), "dimension 0 has size"),
    "payload over cap": (header(code=0x0E, dims=(2**31 - 1, 2**31 - 1)), "cap"),
    "truncated payload": (header() + b"\x00" * 5, "payload is 5 bytes, header says 6"),
    "trailing bytes": (header() + b"\x00" * 9, "3 trailing bytes"),
    "truncated header": (b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02", "header truncated"),
    "too short": (b"\x00\x00", "too short"),
    "empty": (b"", "too short"),
}


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_raises_data_error_naming_file_and_field(tmp_path, case, compress):
    data, field = MALFORMED[case]
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and field in message
    assert "\n" not in message


def test_truncated_payload_message_matches_the_documented_form(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header(dims=(10, 28, 28)) + b"\x00" * 7839))
    with pytest.raises(
        DataError, match=r"t10k-images-idx3-ubyte.gz: payload is 7839 bytes, header says 7840"
    ):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_header_declaring_gigabytes_over_a_short_file_costs_no_such_memory(tmp_path, compress, traced_peak):
    data = header(dims=(2048, 1024, 1024)) + b"\x00" * 100  # 2 GiB declared, 100 bytes present
    path = tmp_path / "big"
    path.write_bytes(gzip.compress(data) if compress else data)
    with (
        traced_peak() as peak,
        pytest.raises(DataError, match="payload is 100 bytes, header says 2147483648"),
    ):
        read_idx(path)
    assert peak[0] < 64 * 2**20  # was a 2 GiB buffer allocated before reading


def test_truncated_gzip_stream(tmp_path):
    good = gzip.compress(idx_bytes(sample(np.uint8, (50, 50))))
    path = tmp_path / "cut.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: corrupt or truncated gzip"):
        read_idx(path)


def test_gzip_with_bad_crc(tmp_path):
    good = bytearray(gzip.compress(idx_bytes(sample(np.uint8, (8, 8)))))
    good[-8] ^= 0xFF  # CRC32 field of the gzip trailer
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(good))
    with pytest.raises(DataError, match=r"crc\.gz: corrupt or truncated gzip"):
        read_idx(path)


def test_bad_gzip_header(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(b"\x1f\x8b\x07garbage-not-deflate")
    with pytest.raises(DataError, match=r"bad\.gz"):
        read_idx(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="nope.idx: no such file"):
        read_idx(tmp_path / "nope.idx")
    with pytest.raises(DataError, match="directory"):
        read_idx(tmp_path)


def test_every_type_code_is_big_endian():
    assert set(TYPE_CODES) == {0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E}
    assert all(dt.byteorder in (">", "|") for dt in TYPE_CODES.values())
