"""Reading ``.npz`` files without trusting them: every size is checked before anything is decompressed.

``numpy.load`` decompresses an ``.npz`` member whole before it looks at it, so a small file whose
member claims a huge array (a "zip bomb", or a header that lies) costs that memory first; it also
accepts members that are not arrays. :func:`read_npz` reads an ``.npz`` in this order:

1. the zip's end-of-central-directory record: the number of entries and the size of the central
   directory are bounded before :mod:`zipfile` parses the directory, the directory must end where
   the end record begins (nothing cut out or prepended), and list exactly the entries counted;
2. each entry's declared sizes: an ``.npy`` name, unique, not encrypted, stored or deflated, its
   uncompressed size at most ``max_member_bytes`` (and all of them together at most
   ``max_total_bytes``), and no more than deflate can produce from its compressed size (at most
   about 1032 : 1, RFC 1951's longest match of 258 bytes per 2-bit code, rounded up);
3. the member's ``.npy`` header (the format of ``numpy.lib.format``: magic, version 1.0/2.0/3.0,
   header length, a Python-literal dict read with :func:`ast.literal_eval`), through the
   decompressing stream, at most :data:`MAX_HEADER_BYTES` of it: a dtype of plain numbers, bools or
   strings (never ``object``, so never pickle; no structured or sub-array dtypes), a shape of
   non-negative ints, and data bytes ``prod(shape) * itemsize`` that must equal what the zip entry
   declares after the header;
4. ``check(name, shape, dtype)``, the caller's own expectations (e.g. the exact shapes a checkpoint
   of this model holds), before the array is allocated;
5. the data, decompressed in chunks of at most :data:`CHUNK_BYTES` straight into the array, exactly
   the promised number of bytes (:mod:`zipfile` checks the CRC-32 at the end).

Anything else is an :class:`NpzError` (a ``ValueError``) naming the file, the entry and the limit.
"""
from __future__ import annotations

import ast
import math
import os
import struct
import zipfile

import numpy as np
from numpy.lib import format as npy_format

MAX_HEADER_BYTES = 10_000      # numpy.lib.format's own limit for headers read without allow_pickle
CHUNK_BYTES = 1 << 20
MAX_DEFLATE_RATIO = 1032 + 1   # deflate's largest expansion: 258 bytes from one 2-bit symbol (RFC 1951)
ALLOWED_KINDS = "biufUS"       # bool, signed/unsigned int, float, str, bytes
_EOCD, _ZIP64_LOCATOR, _ZIP64_EOCD = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
_CENTRAL_ENTRY_BYTES = 512     # per entry: 46 fixed bytes + name + extra fields, generously


class NpzError(ValueError):
    """An ``.npz`` that is corrupt, not made of plain arrays, or larger than the reader allows."""


class _Refused(Exception):
    """Carries the caller's ``check`` error past the handlers that turn zip errors into NpzError."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _directory_size(f, size: int, path: str, max_members: int):
    """Bound the central directory from the end record before zipfile reads it."""
    tail_len = min(size, 22 + 65535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < 22:
        raise NpzError(f"{path}: not a zip archive (.npz): no end-of-central-directory record "
                       f"(truncated, or not an .npz at all)")
    entries, directory_bytes, directory_offset = struct.unpack("<HII", tail[at + 10:at + 20])
    directory_end = size - tail_len + at
    if entries == 0xFFFF or directory_bytes == 0xFFFFFFFF or directory_offset == 0xFFFFFFFF:
        locator = tail[at - 20:at] if at >= 20 else b""
        if len(locator) != 20 or locator[:4] != _ZIP64_LOCATOR:
            raise NpzError(f"{path}: corrupt zip64 end record (no locator)")
        (record_at,) = struct.unpack("<Q", locator[8:16])
        if record_at + 56 > size:
            raise NpzError(f"{path}: corrupt zip64 end record (points past the end of the file)")
        f.seek(record_at)
        record = f.read(56)
        if record[:4] != _ZIP64_EOCD:
            raise NpzError(f"{path}: corrupt zip64 end record")
        entries, directory_bytes, directory_offset = struct.unpack("<QQQ", record[32:56])
        directory_end = record_at
    if entries > max_members:
        raise NpzError(f"{path}: {entries} entries; at most {max_members} are read")
    if directory_bytes > size or directory_bytes > max_members * _CENTRAL_ENTRY_BYTES:
        raise NpzError(f"{path}: the zip's central directory claims {_human(directory_bytes)}; the file has "
                       f"{_human(size)} and at most {max_members} entries are read")
    if directory_offset + directory_bytes != directory_end:
        raise NpzError(f"{path}: the zip's central directory ({_human(directory_bytes)} at offset {directory_offset}) "
                       f"does not end where its end record begins (offset {directory_end}): a corrupt or altered zip")
    return entries


class _Counted:
    """A read-only stream that counts the bytes read from it."""

    def __init__(self, stream):
        self.stream, self.count = stream, 0

    def read(self, n: int) -> bytes:
        data = self.stream.read(n)
        self.count += len(data)
        return data

    def exactly(self, n: int, what: str) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise NpzError(f"ends inside the {what} (wanted {n} bytes, got {len(data)})")
        return data


def _read_header(s: _Counted):
    """(shape, fortran_order, dtype) of an .npy header, read without trusting any of it."""
    magic = s.exactly(8, ".npy magic")
    if magic[:6] != npy_format.MAGIC_PREFIX:
        raise NpzError("is not an .npy array (no \\x93NUMPY magic)")
    version = (magic[6], magic[7])
    if version == (1, 0):
        (length,) = struct.unpack("<H", s.exactly(2, ".npy header length"))
    elif version in ((2, 0), (3, 0)):
        (length,) = struct.unpack("<I", s.exactly(4, ".npy header length"))
    else:
        raise NpzError(f"unknown .npy format version {version[0]}.{version[1]} (known: 1.0, 2.0, 3.0)")
    if length > MAX_HEADER_BYTES:
        raise NpzError(f".npy header of {length} bytes; at most {MAX_HEADER_BYTES} are read")
    raw = s.exactly(length, ".npy header")
    try:
        header = ast.literal_eval(raw.decode("utf-8" if version == (3, 0) else "latin-1"))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        raise NpzError(f".npy header is not a Python literal ({type(exc).__name__})") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise NpzError(".npy header: expected a dict with keys descr, fortran_order, shape")
    shape, fortran = header["shape"], header["fortran_order"]
    if (not isinstance(shape, tuple) or len(shape) > 64
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise NpzError(f".npy header: shape {shape!r} is not a tuple of at most 64 non-negative ints")
    if type(fortran) is not bool:
        raise NpzError(f".npy header: fortran_order {fortran!r} is not a bool")
    descr = header["descr"]
    if not isinstance(descr, str):  # lists are structured dtypes, tuples sub-arrays: refused either way
        raise NpzError(f".npy header: dtype {descr!r} is not a plain dtype (structured or sub-array dtypes "
                       f"are not read)")
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError, SyntaxError, RecursionError, MemoryError, OverflowError) as exc:
        raise NpzError(f".npy header: {descr!r} is not a dtype ({exc})") from None
    if (dtype.kind not in ALLOWED_KINDS or dtype.hasobject or dtype.names is not None
            or dtype.subdtype is not None):
        raise NpzError(f"dtype {dtype} cannot be read without pickle or is not a plain array; only bool, int, "
                       f"uint, float, str and bytes arrays are read")
    return shape, fortran, dtype


def _read_member(zf, info, path, check):
    name = info.filename[:-4]
    with zf.open(info) as raw:
        s = _Counted(raw)
        shape, fortran, dtype = _read_header(s)
        data_bytes = math.prod(shape) * dtype.itemsize
        if s.count + data_bytes != info.file_size:
            raise NpzError(f"its .npy header promises {dtype} {shape} ({_human(data_bytes)} of data) but the zip "
                           f"entry holds {_human(info.file_size - s.count)} after the header")
        if check is not None:
            try:
                check(name, shape, dtype)
            except ValueError as exc:
                raise _Refused(exc) from None
        count = math.prod(shape)
        flat = np.empty(count, dtype=dtype)
        if data_bytes:
            view = memoryview(flat.view(np.uint8))
            pos = 0
            while pos < data_bytes:
                chunk = raw.read(min(CHUNK_BYTES, data_bytes - pos))
                if not chunk:
                    raise NpzError(f"ends after {pos} of {data_bytes} data bytes")
                view[pos:pos + len(chunk)] = chunk
                pos += len(chunk)
        if raw.read(1):  # cannot happen with the sizes above; reading to the end also checks the CRC
            raise NpzError("holds more data than its header promises")
        if dtype.kind == "b" and data_bytes and flat.view(np.uint8).max() > 1:
            raise NpzError("is a bool array holding bytes other than 0 and 1")
    return flat.reshape(shape, order="F" if fortran else "C")


def read_npz(path, *, max_member_bytes: int, max_total_bytes: int, max_members: int = 100_000,
             check=None) -> dict:
    """name -> array for each member of the ``.npz`` at ``path``, each size checked before it is
    decompressed (see the module docstring). ``check(name, shape, dtype)`` may raise ``ValueError``
    to refuse a member before its data is read; the message is kept. Raises :class:`NpzError`
    (``FileNotFoundError`` when there is no such file)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise NpzError(f"{path}: not a regular file (a directory?); expected an .npz file")
    member = None
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            entries = _directory_size(f, size, path, max_members)
            f.seek(0)
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
                if len(infos) != entries:
                    raise NpzError(f"{path}: the zip's end record counts {entries} entries, its central directory "
                                   f"lists {len(infos)}: a corrupt or altered zip")
                names, total = set(), 0
                for info in infos:
                    member = info.filename
                    if not info.filename.endswith(".npy"):
                        raise NpzError(f"{path}: entry {info.filename!r} is not an .npy array")
                    if info.filename in names:
                        raise NpzError(f"{path}: entry {info.filename!r} appears twice")
                    names.add(info.filename)
                    if info.flag_bits & 0x1:
                        raise NpzError(f"{path}: entry {info.filename!r} is encrypted")
                    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                        raise NpzError(f"{path}: entry {info.filename!r} uses zip compression method "
                                       f"{info.compress_type}; expected stored or deflated (numpy.savez or "
                                       f"numpy.savez_compressed)")
                    if info.file_size > max_member_bytes:
                        raise NpzError(f"{path}: entry {info.filename!r} declares {_human(info.file_size)}; at "
                                       f"most {_human(max_member_bytes)} per array are read")
                    if (info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size) or \
                            info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
                        raise NpzError(f"{path}: entry {info.filename!r} declares {_human(info.file_size)} from "
                                       f"{_human(info.compress_size)} compressed, which its compression cannot "
                                       f"produce (a corrupt or forged zip)")
                    total += info.file_size
                    if total > max_total_bytes:
                        raise NpzError(f"{path}: the arrays declare more than {_human(max_total_bytes)} in all; "
                                       f"at most that is read")
                out = {}
                for info in infos:
                    member = info.filename
                    try:
                        out[info.filename[:-4]] = _read_member(zf, info, path, check)
                    except NpzError as exc:
                        raise NpzError(f"{path}: entry {info.filename!r} {exc}") from None
                return out
    except NpzError:
        raise
    except _Refused as refused:
        raise refused.error from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, RuntimeError,
            struct.error, UnicodeError, OverflowError, ValueError) as exc:
        where = f" (entry {member!r})" if member else ""
        raise NpzError(f"{path}: corrupt or truncated .npz{where}: {type(exc).__name__}: {exc}") from None
