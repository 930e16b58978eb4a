"""MNIST-1D (Greydanus 2020), generated procedurally by the ``mnist1d`` package's generator
(``mnist1d.data.make_dataset`` with its default arguments: 5000 signals of length 40, 4000 train /
1000 test, seed 42). Its download and pickle paths are never used.

Signals come back as (N, 1, 1, 40) so that they flow through the same NCHW pipeline (use the MLP).
"""
from __future__ import annotations

import numpy as np


def load_mnist1d():
    try:
        from mnist1d.data import get_dataset_args, make_dataset  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise ImportError("dataset 'mnist1d' needs the mnist1d package: pip install 'refbnn[mnist1d]'") from exc
    data = make_dataset(get_dataset_args())
    x, xt = (np.asarray(data[k], dtype=np.float64)[:, None, None, :] for k in ("x", "x_test"))
    return (x, np.asarray(data["y"])), (xt, np.asarray(data["y_test"]))
