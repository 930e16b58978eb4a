"""MNIST from the standard IDX files in a local directory (plain or .gz):
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``.

IDX header (big-endian, LeCun et al., http://yann.lecun.com/exdb/mnist/ "FILE FORMATS"): magic
0x00000803 (uint8 images, 3 dims) or 0x00000801 (uint8 labels, 1 dim), then one uint32 per
dimension; the payload must have exactly prod(dims) bytes.

Reading is bounded by what the header promises: the header is read first (through a streaming
gunzip for a .gz file), the promised size is checked against ``MAX_IDX_BYTES`` and against the file
(a raw file must be exactly header + payload; a gzip stream cannot inflate more than
``MAX_DEFLATE_RATIO`` times its compressed size), then exactly the promised bytes are decompressed
into one preallocated array. A stream that ends early is refused as truncated and one that has even
one byte more is refused as longer than promised, without inflating the rest. The memory used is
the promised payload plus the decompressor's fixed-size buffers, whatever the file inflates to.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
# The largest payload an IDX file may promise (1 GiB; MNIST's training images are 47 MB).
MAX_IDX_BYTES = 1 << 30
# DEFLATE cannot compress better than about 1032:1 (a 258-byte match per 2 bits, RFC 1951); a
# gzip file promising more than this ratio times its size is refused before anything is inflated.
MAX_DEFLATE_RATIO = 1032
# The smallest sets the training loop can use: a training batch needs 2 samples for batch norm
# (refbnn.train drops a last batch of 1), and a test set must not be empty.
MIN_SAMPLES = {"train": 2, "test": 1}
_CHUNK = 1 << 20


def _find(data_dir, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        p = os.path.join(data_dir, name)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"MNIST: expected {stem} (or {stem}.gz) in {data_dir!r}")


def _describe(head: bytes) -> str:
    """What the first bytes of a file look like, for error messages."""
    if not head:
        return "the file is empty"
    if head[:1] == b"\x80":
        return "it looks like a Python pickle"
    if head[:6] == b"\x93NUMPY":
        return "it looks like a NumPy .npy file"
    if head[:2] == b"PK":
        return "it looks like a zip archive (.npz?)"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "it looks like a text file"
    return f"it starts with bytes {head[:8].hex(' ')}"


def _expected(ndim):
    kind = "images" if ndim == 3 else "labels" if ndim == 1 else "data"
    return (f"expected an IDX file: magic 0x{0x0800 | ndim:08x} (uint8, {ndim}-D {kind}), then {ndim} big-endian "
            f"uint32 dimension(s), then their product in bytes")


def _read_exact(f, n):
    """Up to n bytes from a (decompressing) stream, stopping early only at its end."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def read_idx(path, ndim, max_bytes=MAX_IDX_BYTES):
    """Read a uint8 IDX file with ``ndim`` dimensions (raw or gzip), validating magic number and size
    before reading the payload; memory is bounded by the promised size (see the module docstring)."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        what = "gzip-compressed IDX" if gz else "IDX"
        try:
            header_len = 4 + 4 * ndim
            header = _read_exact(f, header_len)
            if len(header) < header_len:
                raise ValueError(f"{path}: {len(header)} bytes is too short for an IDX header of {header_len} bytes "
                                 f"({_describe(header)}); {_expected(ndim)}")
            magic = int.from_bytes(header[:4], "big")
            expected = 0x00000800 | ndim
            if magic != expected:
                raise ValueError(f"{path}: magic number 0x{magic:08x} ({_describe(header)}); {_expected(ndim)}")
            dims = [int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
            size = math.prod(dims)  # Python ints: no wrap-around
            if size > max_bytes:
                raise ValueError(f"{path}: header promises dimensions {dims} = {size} bytes, more than the maximum "
                                 f"{max_bytes} bytes an IDX file may hold here")
            if not gz and file_size != header_len + size:
                raise ValueError(f"{path}: header says {dims} = {size} bytes of data, the file has "
                                 f"{file_size - header_len}; {_expected(ndim)}")
            if gz and size + header_len > MAX_DEFLATE_RATIO * file_size:
                raise ValueError(f"{path}: header says {dims} = {size} bytes of data, more than a {file_size}-byte "
                                 "gzip file can hold (DEFLATE compresses at most about 1032:1)")
            out = np.empty(size, dtype=np.uint8)
            view = memoryview(out)
            got = 0
            while got < size:
                n = f.readinto(view[got:got + _CHUNK])
                if not n:
                    break
                got += n
            if got < size:
                raise ValueError(f"{path}: truncated {what} file: header says {dims} = {size} bytes of data, the "
                                 f"file has {got}")
            if f.read(1):
                extra = "the gzip stream inflates to more" if gz else "the file has more"
                raise ValueError(f"{path}: header says {dims} = {size} bytes of data, {extra} (not read); "
                                 f"{_expected(ndim)}")
        except EOFError as exc:
            raise ValueError(f"{path}: truncated gzip file ({exc}); {_expected(ndim)}, optionally gzip-compressed") \
                from exc
        except (OSError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt gzip file ({exc}); {_expected(ndim)}, optionally gzip-compressed") \
                from exc
    return out.reshape(dims)


def load_mnist(data_dir):
    """((x_train, y_train), (x_test, y_test)): uint8 images (N, 1, 28, 28) and int64 labels 0..9.
    Refuses sets with fewer than ``MIN_SAMPLES`` samples (2 for training, 1 for test), naming the file."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"MNIST: data directory {data_dir!r} does not exist")
    paths = {k: _find(data_dir, stem) for k, stem in FILES.items()}
    arrays = {k: read_idx(p, 3 if k.endswith("images") else 1) for k, p in paths.items()}
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        xp, yp = paths[f"{split}_images"], paths[f"{split}_labels"]
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"MNIST {split}: {xp} has {x.shape[0]} images but {yp} has {y.shape[0]} labels")
        if x.shape[0] < MIN_SAMPLES[split]:
            raise ValueError(f"MNIST {split}: {xp} holds {x.shape[0]} image(s); expected at least "
                             f"{MIN_SAMPLES[split]} for a {split} set")
        if x.shape[1:] != (28, 28):
            raise ValueError(f"MNIST {split}: {xp}: expected 28x28 images, got {x.shape[1:]}")
        if y.size and y.max() > 9:
            bad = int(np.argmax(y > 9))
            raise ValueError(f"MNIST {split}: {yp}: label {int(y[bad])} at index {bad}; expected labels 0..9")
        out.append((x[:, None].copy(), y.astype(np.int64)))
    return tuple(out)
