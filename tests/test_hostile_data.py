"""Hostile files for the data loaders: truncations, bit flips, headers that lie, gzip bombs, text.

The property: a loader either returns exactly the data the file holds, or raises a ``ValueError``
naming the file and what it should be; memory stays within a small multiple of what the header
promises, whatever a gzip stream inflates to.

REFBNN_HOSTILE_EXAMPLES=N sets the number of hypothesis examples per property (default 150).
"""
import gzip
import os
import tempfile
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refbnn.data import load_dataset
from refbnn.data.cifar10 import RECORD, read_cifar_file
from refbnn.data.mnist import load_mnist, read_idx

EXAMPLES = int(os.environ.get("REFBNN_HOSTILE_EXAMPLES", "150"))
HOSTILE = settings(max_examples=EXAMPLES, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.function_scoped_fixture])
# slack for the decompressor's fixed buffers and Python objects, on top of the promised payload
BUFFER_SLACK = 2 << 20


def idx_bytes(arr, ndim=None, dims=None):
    ndim = arr.ndim if ndim is None else ndim
    dims = arr.shape if dims is None else dims
    return ((0x0800 | ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in dims)
            + np.asarray(arr, np.uint8).tobytes())


def write_mnist(d, n_train=4, n_test=3, gz=False, labels=None):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        for kind, arr in (("images-idx3", rng.integers(0, 256, (n, 28, 28))),
                          ("labels-idx1", rng.integers(0, 10, n) if labels is None else labels[:n])):
            data = idx_bytes(arr)
            with open(os.path.join(d, f"{split}-{kind}-ubyte{ext}"), "wb") as f:
                f.write(gzip.compress(data) if gz else data)


def peak_memory(fn):
    """(result or exception, peak bytes allocated while running fn) via tracemalloc (NumPy reports its
    buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - returned to the caller to assert on
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- the sizes of a set ------------------------------------------------------------------------------
@pytest.mark.parametrize("n_train,n_test,split,count", [(0, 3, "train", 0), (1, 3, "train", 1), (4, 0, "test", 0)])
def test_mnist_refuses_too_small_sets_naming_file_and_count(tmp_path, n_train, n_test, split, count):
    write_mnist(tmp_path, n_train, n_test)
    stem = "train" if split == "train" else "t10k"
    with pytest.raises(ValueError, match=rf"MNIST {split}: .*{stem}-images-idx3-ubyte holds {count} image"):
        load_mnist(str(tmp_path))
    with pytest.raises(ValueError, match=rf"holds {count} image"):
        load_dataset("mnist", str(tmp_path))


def test_smallest_mnist_sets_load(tmp_path):
    write_mnist(tmp_path, 2, 1)
    (x, y), (xt, yt) = load_mnist(str(tmp_path))
    assert x.shape == (2, 1, 28, 28) and xt.shape == (1, 1, 28, 28)


# -- gzip bombs and short streams --------------------------------------------------------------------
def test_gzip_bomb_is_refused_within_the_promised_memory(tmp_path):
    """The header promises 1 image (784 bytes); the stream inflates to 64 MB of zeros (64 KB on disk)."""
    p = tmp_path / "bomb-idx3-ubyte.gz"
    payload = idx_bytes(np.zeros((1, 28, 28), np.uint8)) + bytes(64 << 20)
    p.write_bytes(gzip.compress(payload, compresslevel=9))
    assert p.stat().st_size < 200_000
    out, peak = peak_memory(lambda: read_idx(str(p), 3))
    assert isinstance(out, ValueError), out
    assert str(p) in str(out) and "inflates to more" in str(out)
    assert peak < 8 * 784 + BUFFER_SLACK, f"loading the bomb allocated {peak} bytes"


def test_gzip_stream_shorter_than_promised_is_truncated(tmp_path):
    """The reverse: the header promises 1000 images, the stream holds 10 (and the file is big enough
    for the promise to be possible, so it is the stream's end that is detected)."""
    rng = np.random.default_rng(1)
    p = tmp_path / "short-idx3-ubyte.gz"
    imgs = rng.integers(0, 256, (10, 28, 28)).astype(np.uint8)
    p.write_bytes(gzip.compress(idx_bytes(imgs, dims=(1000, 28, 28)), compresslevel=0))
    out, peak = peak_memory(lambda: read_idx(str(p), 3))
    assert isinstance(out, ValueError) and str(p) in str(out) and "truncated" in str(out), out
    assert peak < 2 * 1000 * 784 + BUFFER_SLACK
    # a promise no gzip file of this size can keep is refused before anything is inflated
    p.write_bytes(gzip.compress(idx_bytes(imgs, dims=(60000, 28, 28))))
    with pytest.raises(ValueError, match="more than a .*-byte gzip file can hold"):
        read_idx(str(p), 3)


def test_cut_gzip_file_is_truncated(tmp_path):
    p = tmp_path / "cut-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.arange(10, dtype=np.uint8) % 10))[:-12])
    with pytest.raises(ValueError, match=r"cut-idx1-ubyte.gz: truncated"):
        read_idx(str(p), 1)


def test_header_product_does_not_wrap(tmp_path):
    """dims 2^31 x 2^31 x 4 = 2^64 wraps to 0 in int64: the old check accepted an empty payload."""
    p = tmp_path / "wrap-idx3-ubyte"
    p.write_bytes(idx_bytes(np.zeros(0, np.uint8), ndim=3, dims=(2 ** 31, 2 ** 31, 4)))
    with pytest.raises(ValueError, match=rf"{p}: header promises dimensions .* = {2 ** 64} bytes, more than the "
                                         "maximum"):
        read_idx(str(p), 3)


@pytest.mark.parametrize("content,looks", [
    (b"label,pixel0,pixel1\n3,0,0\n" * 20, "text file"),
    (b"\x80\x04\x95" + bytes(100), "pickle"),
    (b"\x93NUMPY\x01\x00" + bytes(100), "NumPy .npy"),
    (b"", "empty"),
], ids=["text", "pickle", "npy", "empty"])
def test_non_idx_files_say_what_an_idx_file_is(tmp_path, content, looks):
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{p}: .*{looks}.*; expected an IDX file: magic 0x00000803 \(uint8, 3-D "
                                         "images\\)"):
        read_idx(str(p), 3)


def test_mnist_bad_label_names_file_and_index(tmp_path):
    write_mnist(tmp_path, labels=np.array([1, 2, 11, 3]))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: label 11 at index 2; expected labels 0..9"):
        load_mnist(str(tmp_path))


# -- CIFAR-10 ---------------------------------------------------------------------------------------
def _cifar_records(n, rng, labels_max=9):
    rec = rng.integers(0, 256, (n, RECORD)).astype(np.uint8)
    rec[:, 0] = rng.integers(0, labels_max + 1, n)
    return rec


def test_cifar_label_out_of_range_names_the_record(tmp_path):
    rec = _cifar_records(5, np.random.default_rng(0))
    rec[3, 0] = 10
    p = tmp_path / "test_batch.bin"
    rec.tofile(p)
    with pytest.raises(ValueError, match=rf"{p}: record 3 \(byte offset {3 * RECORD}\) has label byte 10"):
        read_cifar_file(str(p), records=5)


@pytest.mark.parametrize("size,detail", [
    (4 * RECORD, "a truncated batch"), (5 * RECORD + 7, "not a whole number"), (6 * RECORD, "expected 15365 bytes"),
])
def test_cifar_wrong_sizes(tmp_path, size, detail):
    p = tmp_path / "data_batch_1.bin"
    p.write_bytes(bytes(size))
    with pytest.raises(ValueError, match=rf"{p}: {size} bytes .*{detail}"):
        read_cifar_file(str(p), records=5)


def test_cifar_text_file_says_what_a_batch_is(tmp_path):
    p = tmp_path / "data_batch_1.bin"
    p.write_text("airplane,automobile\n" * 100)
    with pytest.raises(ValueError, match=r"looks like a text file.*expected 30730000 bytes, a CIFAR-10 binary batch"):
        read_cifar_file(str(p))


# -- hypothesis: mutated files -----------------------------------------------------------------------
def _reference_idx(data: bytes, ndim):
    """What a correct IDX reader must return for these (decompressed) bytes, or None if invalid."""
    h = 4 + 4 * ndim
    if len(data) < h or int.from_bytes(data[:4], "big") != (0x0800 | ndim):
        return None
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    size = 1
    for d in dims:
        size *= d
    if len(data) - h != size:
        return None
    return np.frombuffer(data, np.uint8, offset=h).reshape(dims)


@st.composite
def mutated_idx(draw):
    ndim = draw(st.sampled_from([1, 3]))
    n = draw(st.integers(0, 4))
    shape = (n,) if ndim == 1 else (n, draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    arr = np.frombuffer(draw(st.binary(min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                        np.uint8).reshape(shape)
    data = bytearray(idx_bytes(arr))
    gz = draw(st.booleans())
    ops = draw(st.lists(st.sampled_from(["truncate", "flip", "dims", "append", "magic", "bomb"]), max_size=3))
    promised = len(data)
    for op in ops:
        if op == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)):]
        elif op == "flip" and data and not gz:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "dims" and len(data) >= 4 + 4 * ndim:
            i = draw(st.integers(0, ndim - 1))
            data[4 + 4 * i:8 + 4 * i] = draw(st.integers(0, 2 ** 32 - 1)).to_bytes(4, "big")
        elif op == "append":
            data += b"\x00" * draw(st.integers(1, 3000))
        elif op == "magic" and len(data) >= 4:
            data[:4] = draw(st.sampled_from([b"\x00\x00\x08\x01", b"\x00\x00\x08\x03", b"\x00\x00\x0d\x03",
                                             b"P1\n2", b"\x80\x04\x95\x00"]))
        elif op == "bomb":
            data += bytes(draw(st.integers(1 << 16, 4 << 20)))
    raw = bytes(data)
    if gz:
        raw = bytearray(gzip.compress(raw))
        for op in draw(st.lists(st.sampled_from(["cut", "flip"]), max_size=2)):
            if op == "cut" and raw:
                del raw[draw(st.integers(0, len(raw) - 1)):]
            elif raw:
                i = draw(st.integers(0, len(raw) - 1))
                raw[i] ^= 1 << draw(st.integers(0, 7))
        raw = bytes(raw)
    return ndim, raw, promised


@HOSTILE
@given(case=mutated_idx())
def test_read_idx_on_mutated_files(case):
    ndim, raw, _ = case
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x-idx-ubyte")
        with open(p, "wb") as f:
            f.write(raw)
        out, peak = peak_memory(lambda: read_idx(p, ndim))
    try:
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except Exception:  # noqa: BLE001 - a corrupt stream: the reader must refuse it
        data = None
    ref = None if data is None else _reference_idx(data, ndim)
    if isinstance(out, Exception):
        assert isinstance(out, ValueError), repr(out)
        assert str(out).startswith(p + ":"), str(out)
        assert ref is None, f"refused a valid file: {out}"
    else:
        assert ref is not None, "accepted an invalid file"
        assert out.dtype == np.uint8 and out.shape == ref.shape and np.array_equal(out, ref)
    # memory: what the header promised (at most the reader's maximum) plus fixed buffers
    promised = 0
    h = 4 + 4 * ndim
    head = data[:h] if data is not None else b""
    if len(head) == h:
        promised = 1
        for i in range(ndim):
            promised *= int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big")
        promised = min(promised, 1 << 30)
    assert peak < 2 * promised + BUFFER_SLACK, f"peak {peak} bytes for a promise of {promised}"


@HOSTILE
@given(n=st.integers(0, 4), cut=st.integers(-RECORD - 1, RECORD + 1), label=st.integers(0, 255),
       where=st.integers(0, 3), flips=st.lists(st.integers(0, 4 * RECORD * 8 - 1), max_size=3))
def test_read_cifar_on_mutated_files(n, cut, label, where, flips):
    rec = _cifar_records(4, np.random.default_rng(n))
    rec[where, 0] = label
    raw = bytearray(rec.tobytes())
    for b in flips:
        raw[b // 8] ^= 1 << (b % 8)
    raw = bytes(raw[:len(raw) + cut] if cut < 0 else raw + bytes(cut))
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "data_batch_1.bin")
        with open(p, "wb") as f:
            f.write(raw)
        try:
            x, y = read_cifar_file(p, records=4)
        except ValueError as exc:
            assert str(exc).startswith(p + ":") and "CIFAR-10 binary batch" in str(exc)
            assert len(raw) != 4 * RECORD or max(raw[i * RECORD] for i in range(4)) > 9
            return
    assert len(raw) == 4 * RECORD
    ref = np.frombuffer(raw, np.uint8).reshape(4, RECORD)
    assert (ref[:, 0] <= 9).all()
    assert np.array_equal(y, ref[:, 0]) and np.array_equal(x.reshape(4, -1), ref[:, 1:])
