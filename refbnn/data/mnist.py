"""MNIST from the standard IDX files in a local directory (plain or .gz):
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``.

IDX header (big-endian): magic 0x00000803 (uint8 images, 3 dims) or 0x00000801 (uint8 labels,
1 dim), then one uint32 per dimension; the payload must have exactly prod(dims) bytes.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def _find(data_dir, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        p = os.path.join(data_dir, name)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"MNIST: expected {stem} (or {stem}.gz) in {data_dir!r}")


def read_idx(path, ndim):
    """Read a uint8 IDX file with ``ndim`` dimensions, validating magic number and size."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt gzip file ({exc})") from exc
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    expected = 0x00000800 | ndim
    if magic != expected:
        raise ValueError(f"{path}: IDX magic number {magic:#010x}, expected {expected:#010x} (uint8, {ndim}-D)")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise ValueError(f"{path}: header says {dims} = {size} bytes of data, the file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist(data_dir):
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"MNIST: data directory {data_dir!r} does not exist")
    arrays = {k: read_idx(_find(data_dir, stem), 3 if k.endswith("images") else 1) for k, stem in FILES.items()}
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"MNIST {split}: {x.shape[0]} images but {y.shape[0]} labels")
        if x.shape[1:] != (28, 28):
            raise ValueError(f"MNIST {split}: expected 28x28 images, got {x.shape[1:]}")
        if y.size and y.max() > 9:
            raise ValueError(f"MNIST {split}: labels must be 0..9, found {int(y.max())}")
        out.append((x[:, None].copy(), y.astype(np.int64)))
    return tuple(out)
