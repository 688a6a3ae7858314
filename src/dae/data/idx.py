"""Strict IDX (MNIST file format) reader and writer; malformed files raise DataError naming file and field."""

from __future__ import annotations

import gzip as _gzip
import hashlib
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dae.errors import DataError, UsageError
from dae.fileio import atomic_write_bytes

# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
TYPE_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_FOR_KIND = {(dt.kind, dt.itemsize): code for code, dt in TYPE_CODES.items()}

# A dimension above 2**31 - 1 cannot come from a sane writer, and capping the payload keeps a hostile
# header from asking us to allocate terabytes before the length check can fail.
MAX_DIM = 2**31 - 1
MAX_NDIM = 32  # numpy's own limit (32 before numpy 2, 64 since); the format's byte would allow 255
MAX_PAYLOAD_BYTES = 16 * 2**30
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 22


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a plain or gzipped IDX file (detected by magic bytes) into a native-endian numpy array.

    Example:
        >>> images = read_idx("mnist/t10k-images-idx3-ubyte.gz")  # (10000, 28, 28) uint8
    """
    return read_idx_with_digest(path)[0]


def read_idx_with_digest(
    path: str | os.PathLike, max_payload: int = MAX_PAYLOAD_BYTES
) -> tuple[np.ndarray, str]:
    """Read an IDX file and return it with the SHA-256 hex digest of its uncompressed bytes.

    A header that declares more than `max_payload` bytes is refused before anything is read past it.

    Example:
        >>> labels, sha = read_idx_with_digest("mnist/t10k-labels-idx1-ubyte.gz")
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if compressed:
                with _gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    return _read_stream(stream, str(path), max_payload)
            return _read_stream(raw, str(path), max_payload)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected an IDX file") from None
    except (EOFError, _gzip.BadGzipFile, zlib.error) as e:
        # EOFError: gzip stream ends before its end marker; BadGzipFile/zlib.error: corrupt stream or CRC.
        raise DataError(f"{path}: corrupt or truncated gzip stream ({e})") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None


def _read_exact(stream: BinaryIO, n: int) -> bytearray:
    """Read up to n bytes into a writable buffer (short only at end of stream).

    The buffer grows with what arrives (doubling), so a header that declares gigabytes over a short file costs
    no more memory than the file: it is then refused as truncated.
    """
    buf = bytearray(min(n, _CHUNK))
    got = 0
    while got < n:
        if got == len(buf):
            buf.extend(bytes(min(n, 2 * len(buf)) - len(buf)))
        with memoryview(buf) as view:
            k = stream.readinto(view[got : min(len(buf), got + _CHUNK)])
        if not k:
            break
        got += k
    del buf[got:]
    return buf


def _read_stream(stream: BinaryIO, where: str, max_payload: int) -> tuple[np.ndarray, str]:
    digest = hashlib.sha256()
    magic = _read_exact(stream, 4)
    if len(magic) < 4:
        raise DataError(f"{where}: file is {len(magic)} bytes, too short for an IDX header")
    if magic[0] != 0 or magic[1] != 0:
        raise DataError(
            f"{where}: bad magic number 0x{bytes(magic).hex()} (first two bytes must be 0): not an IDX file"
        )
    code, ndim = magic[2], magic[3]
    if code not in TYPE_CODES:
        valid = ", ".join(f"0x{c:02X}" for c in TYPE_CODES)
        raise DataError(f"{where}: bad type code 0x{code:02X} in header; valid codes are {valid}")
    if ndim == 0 or ndim > MAX_NDIM:
        raise DataError(f"{where}: header says {ndim} dimensions; an IDX file here has 1..{MAX_NDIM}")
    dims_raw = _read_exact(stream, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{where}: header truncated: {ndim} dimension sizes expected, file ends first")
    shape = struct.unpack(f">{ndim}I", dims_raw)
    for i, size in enumerate(shape):
        if size == 0 or size > MAX_DIM:
            raise DataError(f"{where}: dimension {i} has size {size}; each size must be in 1..{MAX_DIM}")
    dtype = TYPE_CODES[code]
    expected = math.prod(shape) * dtype.itemsize
    if expected > max_payload:
        raise DataError(
            f"{where}: header declares shape {shape} = {expected} bytes, over the {max_payload} byte cap"
        )
    payload = _read_exact(stream, expected)
    if len(payload) < expected:
        raise DataError(
            f"{where}: payload is {len(payload)} bytes, header says {expected}; file is truncated"
        )
    extra = stream.read(_CHUNK)
    if extra:
        # Counted only up to one chunk: a hostile gzip tail could inflate without end.
        count = f"{len(extra)}" if len(extra) < _CHUNK else f"at least {_CHUNK}"
        raise DataError(
            f"{where}: {count} trailing bytes after the {expected} byte payload the header declares"
        )
    digest.update(magic)
    digest.update(dims_raw)
    digest.update(payload)
    array = np.frombuffer(payload, dtype=dtype).reshape(shape)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
    return array, digest.hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as uncompressed IDX bytes (header + big-endian payload).

    Example:
        >>> idx_bytes(np.zeros(3, np.uint8)).hex()
        '0000080100000003000000'
    """
    array = np.asarray(array)
    code = _CODE_FOR_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        valid = "uint8, int8, int16, int32, float32, float64"
        raise UsageError(f"cannot write dtype {array.dtype} as IDX; valid dtypes: {valid}")
    if not 1 <= array.ndim <= MAX_NDIM:
        raise UsageError(
            f"cannot write a {array.ndim}-dimensional array as IDX; need 1..{MAX_NDIM} dimensions"
        )
    if any(s == 0 for s in array.shape):
        raise UsageError(f"cannot write an empty array of shape {array.shape} as IDX")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=TYPE_CODES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, gzip: bool | None = None) -> Path:
    """Write an array as IDX atomically; gzip=None compresses when the name ends in .gz.

    Example:
        >>> write_idx("labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8))
        PosixPath('labels-idx1-ubyte.gz')
    """
    path = Path(path)
    if gzip is None:
        gzip = path.suffix == ".gz"
    data = idx_bytes(array)
    if gzip:
        # mtime=0 so the same array always gives the same bytes.
        data = _gzip.compress(data, compresslevel=6, mtime=0)
    write_atomic(path, data)
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes so readers never see a partial file (creates the parent directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
