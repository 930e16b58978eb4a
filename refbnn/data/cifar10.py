"""CIFAR-10 from the *binary* distribution (``cifar-10-binary.tar.gz`` unpacked): ``data_batch_1.bin``
... ``data_batch_5.bin`` and ``test_batch.bin``, in DIR or DIR/cifar-10-batches-bin.

Each file holds 10000 records of 3073 bytes: one label byte (0..9), then 3072 pixel bytes
(1024 red, 1024 green, 1024 blue, row-major 32x32). The Python (pickle) version is never read.
"""
from __future__ import annotations

import os

import numpy as np

RECORD = 1 + 3 * 32 * 32
PER_FILE = 10000
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILES = ["test_batch.bin"]


def read_cifar_file(path):
    size = os.path.getsize(path)
    if size != RECORD * PER_FILE:
        raise ValueError(f"{path}: expected {RECORD * PER_FILE} bytes ({PER_FILE} records of {RECORD}), got {size}"
                         " - is this the CIFAR-10 binary version?")
    raw = np.fromfile(path, dtype=np.uint8).reshape(PER_FILE, RECORD)
    labels = raw[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path}: label byte {int(labels.max())} out of range 0..9 - not a CIFAR-10 binary file")
    return raw[:, 1:].reshape(PER_FILE, 3, 32, 32), labels


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
