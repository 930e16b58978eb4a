"""CIFAR-10 from the *binary* distribution (``cifar-10-binary.tar.gz`` unpacked): ``data_batch_1.bin``
... ``data_batch_5.bin`` and ``test_batch.bin``, in DIR or DIR/cifar-10-batches-bin.

Each file holds 10000 records of 3073 bytes: one label byte (0..9), then 3072 pixel bytes
(1024 red, 1024 green, 1024 blue, row-major 32x32) (Krizhevsky 2009, "Learning Multiple Layers of
Features from Tiny Images", and https://www.cs.toronto.edu/~kriz/cifar.html "Binary version").
The size is checked before anything is read, so a truncated or oversized file is refused without
loading it. The Python (pickle) version is never read.
"""
from __future__ import annotations

import os

import numpy as np

from .mnist import _describe

RECORD = 1 + 3 * 32 * 32
PER_FILE = 10000
NUM_CLASSES = 10
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILES = ["test_batch.bin"]
EXPECTED = (f"expected {RECORD * PER_FILE} bytes, a CIFAR-10 binary batch: {PER_FILE} records of {RECORD} bytes, "
            f"each a label byte 0..{NUM_CLASSES - 1} then 3072 pixel bytes (the binary version, "
            "cifar-10-binary.tar.gz)")


def read_cifar_file(path, records=PER_FILE):
    """(images (records, 3, 32, 32) uint8, labels (records,) int64) of one binary batch file of
    ``records`` records (10000 in the distribution)."""
    expected = EXPECTED if records == PER_FILE else EXPECTED.replace(
        f"{RECORD * PER_FILE} bytes", f"{RECORD * records} bytes").replace(f"{PER_FILE} records", f"{records} records")
    size = os.path.getsize(path)
    if size != RECORD * records:
        with open(path, "rb") as f:
            head = f.read(16)
        detail = "a truncated batch" if 0 < size < RECORD * records and size % RECORD == 0 else _describe(head)
        if size % RECORD:
            detail += f"; not a whole number of {RECORD}-byte records ({size // RECORD} and {size % RECORD} bytes)"
        raise ValueError(f"{path}: {size} bytes ({detail}); {expected}")
    with open(path, "rb") as f:
        raw = np.fromfile(f, dtype=np.uint8, count=RECORD * records)
    if raw.size != RECORD * records:  # the file changed size after the check
        raise ValueError(f"{path}: could read only {raw.size} bytes; {expected}")
    raw = raw.reshape(records, RECORD)
    labels = raw[:, 0].astype(np.int64)
    bad = labels >= NUM_CLASSES
    if bad.any():
        rec = int(np.argmax(bad))
        raise ValueError(f"{path}: record {rec} (byte offset {rec * RECORD}) has label byte {int(labels[rec])}, out "
                         f"of range ({int(bad.sum())} such records); {expected}")
    return raw[:, 1:].reshape(records, 3, 32, 32), labels


def load_cifar10(data_dir):
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"CIFAR-10: data directory {data_dir!r} does not exist")
    sub = os.path.join(data_dir, "cifar-10-batches-bin")
    base = sub if os.path.isdir(sub) else data_dir
    out = []
    for files in (TRAIN_FILES, TEST_FILES):
        parts = []
        for name in files:
            p = os.path.join(base, name)
            if not os.path.isfile(p):
                raise FileNotFoundError(f"CIFAR-10: expected {name} in {base!r} (the binary version, "
                                        "cifar-10-binary.tar.gz)")
            parts.append(read_cifar_file(p))
        out.append((np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])))
    return tuple(out)
