"""Data sets: the embedded digits (default), MNIST-1D (generated), MNIST IDX and CIFAR-10 binary files.

Every loader returns a :class:`Dataset` of float32 NCHW images (or (N, 1, 1, L) signals) with
int64 labels, normalised with the training set's statistics. Files are validated against their
headers and sizes and read as raw bytes: nothing is ever unpickled.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cifar10 import load_cifar10
from .digits import load_digits
from .mnist import load_mnist
from .mnist1d import load_mnist1d


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    augment: bool = False  # random crop (pad 4) + horizontal flip during training (CIFAR-10)

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])


def _normalise(x_train, x_test):
    """Per-channel standardisation with the training set's mean and std."""
    axes = (0, 2, 3)
    mean = x_train.mean(axis=axes, keepdims=True)
    std = x_train.std(axis=axes, keepdims=True) + 1e-8
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


DATASETS = ("digits", "mnist1d", "mnist", "cifar10")
# The loaders' contract: at least 2 training samples (a training batch of 1 cannot be batch-normalised)
# and at least 1 test sample; as many labels as samples; labels 0..9; finite values.
MIN_SAMPLES = {"train": 2, "test": 1}


def check_splits(name, train, test):
    """Refuse a data set the training loop cannot use, naming the split and the count."""
    for split, (x, y) in (("train", train), ("test", test)):
        if len(x) != len(y):
            raise ValueError(f"dataset {name!r} {split}: {len(x)} samples but {len(y)} labels")
        if len(x) < MIN_SAMPLES[split]:
            raise ValueError(f"dataset {name!r} {split}: {len(x)} sample(s); expected at least {MIN_SAMPLES[split]}")
        if len(y) and (int(np.min(y)) < 0 or int(np.max(y)) > 9):
            raise ValueError(f"dataset {name!r} {split}: labels in [{int(np.min(y))}, {int(np.max(y))}]; "
                             "expected 0..9")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError(f"dataset {name!r} {split}: the samples contain NaN or Inf")


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known data sets: {', '.join(DATASETS)}")
    if name in ("mnist", "cifar10") and data_dir is None:
        raise ValueError(f"dataset {name!r} is read from local files: pass --data-dir DIR")
    if name == "digits":
        (xtr, ytr), (xte, yte) = load_digits()
    elif name == "mnist1d":
        (xtr, ytr), (xte, yte) = load_mnist1d()
    elif name == "mnist":
        (xtr, ytr), (xte, yte) = load_mnist(data_dir)
    else:
        (xtr, ytr), (xte, yte) = load_cifar10(data_dir)
    check_splits(name, (xtr, ytr), (xte, yte))
    xtr, xte = _normalise(xtr.astype(np.float64), xte.astype(np.float64))
    return Dataset(name, xtr, ytr.astype(np.int64), xte, yte.astype(np.int64), 10, augment=name == "cifar10")


__all__ = ["DATASETS", "Dataset", "load_dataset", "load_digits", "load_mnist", "load_mnist1d", "load_cifar10"]
