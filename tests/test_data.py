"""Data loaders: the embedded digits, synthetic MNIST IDX and CIFAR-10 binary files, MNIST-1D."""
import gzip
import os

import numpy as np
import pytest

from refbnn.data import load_dataset
from refbnn.data.cifar10 import RECORD, load_cifar10
from refbnn.data.digits import read_digits_file
from refbnn.data.mnist import load_mnist, read_idx


def test_digits_embedded():
    x, y = read_digits_file()
    assert x.shape == (1797, 1, 8, 8) and x.min() == 0 and x.max() == 16
    assert np.array_equal(np.bincount(y), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    d = load_dataset("digits")
    assert d.x_train.shape == (1437, 1, 8, 8) and d.x_test.shape == (360, 1, 8, 8)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert abs(d.x_train.mean()) < 1e-5 and abs(d.x_train.std() - 1) < 1e-4
    # the split is fixed: the same on every call, disjoint, and covering all images
    d2 = load_dataset("digits")
    assert np.array_equal(d.x_test, d2.x_test)
    assert len({r.tobytes() for r in np.concatenate([d.x_train, d.x_test])}) > 1700


def test_digits_match_scikit_learn_when_installed():
    sk = pytest.importorskip("sklearn.datasets", reason="scikit-learn not installed (optional cross-check)")
    ref = sk.load_digits()
    x, y = read_digits_file()
    assert np.array_equal(x.reshape(-1, 64), ref.data.astype(np.uint8)) and np.array_equal(y, ref.target)


def _write_idx(path, arr, magic_dims, gz=False):
    header = (0x0800 | magic_dims).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)


def _fake_mnist(d, n_train=20, n_test=10, gz=False):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(os.path.join(d, f"{split}-images-idx3-ubyte{ext}"), rng.integers(0, 256, (n, 28, 28)), 3, gz)
        _write_idx(os.path.join(d, f"{split}-labels-idx1-ubyte{ext}"), rng.integers(0, 10, n), 1, gz)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    _fake_mnist(tmp_path, gz=gz)
    (x, y), (xt, yt) = load_mnist(str(tmp_path))
    assert x.shape == (20, 1, 28, 28) and xt.shape == (10, 1, 28, 28) and y.shape == (20,)
    d = load_dataset("mnist", str(tmp_path))
    assert d.input_shape == (1, 28, 28)


def test_mnist_bad_files(tmp_path):
    _fake_mnist(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    raw = p.read_bytes()
    p.write_bytes(raw[:-5])  # truncated
    with pytest.raises(ValueError, match="header says .* the file has"):
        load_mnist(str(tmp_path))
    p.write_bytes(b"\x00\x00\x08\x01" + raw[4:])  # wrong magic (labels magic on an image file)
    with pytest.raises(ValueError, match="magic number"):
        read_idx(str(p), 3)
    p.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(ValueError, match="corrupt gzip"):
        read_idx(str(p), 3)
    os.remove(p)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(str(tmp_path / "nowhere"))


def _fake_cifar(d, labels_max=9):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = rng.integers(0, 256, (10000, RECORD)).astype(np.uint8)
        rec[:, 0] = rng.integers(0, labels_max + 1, 10000)
        rec.tofile(os.path.join(d, name))


def test_cifar10_binary(tmp_path):
    sub = tmp_path / "cifar-10-batches-bin"
    sub.mkdir()
    _fake_cifar(sub)
    (x, y), (xt, yt) = load_cifar10(str(tmp_path))
    assert x.shape == (50000, 3, 32, 32) and xt.shape == (10000, 3, 32, 32)
    raw = np.fromfile(sub / "data_batch_1.bin", dtype=np.uint8).reshape(10000, RECORD)
    assert np.array_equal(x[0, 1].reshape(-1), raw[0, 1025:2049])  # channel-major: R, G, B planes
    assert y[0] == raw[0, 0]


def test_cifar10_bad_files(tmp_path):
    _fake_cifar(tmp_path, labels_max=12)
    with pytest.raises(ValueError, match="label byte .* out of range"):
        load_cifar10(str(tmp_path))
    with open(tmp_path / "test_batch.bin", "ab") as f:
        f.write(b"x")
    from refbnn.data.cifar10 import read_cifar_file
    with pytest.raises(ValueError, match="expected 30730000 bytes"):
        read_cifar_file(str(tmp_path / "test_batch.bin"))
    _fake_cifar(tmp_path)
    os.remove(tmp_path / "data_batch_3.bin")
    with pytest.raises(FileNotFoundError, match="data_batch_3.bin"):
        load_cifar10(str(tmp_path))


def test_mnist1d_generated():
    pytest.importorskip("mnist1d", reason="mnist1d not installed (pip install 'refbnn[mnist1d]')")
    d = load_dataset("mnist1d")
    assert d.x_train.shape == (4000, 1, 1, 40) and d.x_test.shape == (1000, 1, 1, 40)
    assert set(np.unique(d.y_train)) == set(range(10))
    assert np.array_equal(load_dataset("mnist1d").x_train, d.x_train)  # deterministic generator


def test_remote_datasets_need_a_directory():
    with pytest.raises(ValueError, match="--data-dir"):
        load_dataset("cifar10")
