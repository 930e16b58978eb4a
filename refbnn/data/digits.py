"""scikit-learn's handwritten digits, embedded (``digits.csv.gz``, 1797 images of 8x8 pixels in
0..16, the test set of the UCI "Optical Recognition of Handwritten Digits" data, E. Alpaydin and
C. Kaynak 1998, CC BY 4.0; the file is the one scikit-learn ships as ``sklearn/datasets/data``).

The train/test split is fixed: a permutation drawn with seed 0, 80 % train (1437), 20 % test (360),
independent of the training seed.
"""
from __future__ import annotations

import gzip
import hashlib
from importlib import resources

import numpy as np

SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
N_IMAGES = 1797
N_TRAIN = 1437
SPLIT_SEED = 0


def read_digits_file():
    """All 1797 images as (N, 1, 8, 8) uint8 in 0..16 and labels (N,), checked against the checksum."""
    raw = resources.files(__package__).joinpath("digits.csv.gz").read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256:
        raise ValueError(f"embedded digits.csv.gz is corrupt: sha256 {digest}, expected {SHA256}; reinstall refbnn")
    table = np.loadtxt(gzip.decompress(raw).decode("ascii").splitlines(), delimiter=",", dtype=np.int64)
    if table.shape != (N_IMAGES, 65):
        raise ValueError(f"digits.csv.gz: expected a {N_IMAGES} x 65 table, got {table.shape}")
    return table[:, :64].reshape(-1, 1, 8, 8).astype(np.uint8), table[:, 64]


def load_digits():
    x, y = read_digits_file()
    perm = np.random.default_rng(SPLIT_SEED).permutation(N_IMAGES)
    tr, te = perm[:N_TRAIN], perm[N_TRAIN:]
    return (x[tr], y[tr]), (x[te], y[te])
