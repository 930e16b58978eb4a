"""The bit-packed kernels against the NumPy reference: packing, bgemm, binary max pool, path
selection, bad input. Every comparison is exact (integers), on every SIMD path the CPU has
(the ``kernel_path`` fixture forces each through $REFBNN_KERNEL_PATH).

Long fuzzing run: REFBNN_HYPOTHESIS_EXAMPLES=100000 pytest tests/test_kernels*.py
"""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refbnn import ops
from refbnn.kernels import compiled, reference

K = compiled()   # ImportError with the build command when the extension is not built
seeds = st.integers(0, 2**32 - 1)


def signs(rng, shape, dtype=np.float64, zeros=False):
    x = np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(dtype)
    if zeros:
        x[rng.random(shape) < 0.2] = 0.0
    return x


def with_tail_garbage(words, bits, rng):
    """The same words with random bits past ``bits`` in the last word (the kernels must ignore them)."""
    words = words.copy()
    r = bits % 64
    if r and words.size:
        garbage = rng.integers(0, 2**63, words.shape[:-1], dtype=np.uint64) << np.uint64(r)
        words[..., -1] |= garbage
    return words


# ---- pack / unpack ---------------------------------------------------------------------------

def test_pack_bits_known_words():
    x = np.array([-1.0, 1.0, 0.0, -2.0, 3.0], np.float32)
    # LCE: bit 1 = -1 (x < 0), 0.0 packs as +1; element i -> bit i
    assert K.pack_bits(x).tolist() == [0b01001]
    assert K.pack_bits(x, polarity="dabnn").tolist() == [0b10010]     # bit 1 = x > 0
    assert K.pack_bits(x, polarity="bitorch").tolist() == [0b10110]   # bit 1 = x >= 0
    long = -np.ones(70)
    assert K.pack_bits(long).tolist() == [2**64 - 1, 0b111111]           # tail bits past 70 are 0


@given(seeds, st.sampled_from(["lce", "dabnn", "bitorch"]), st.sampled_from([np.float32, np.float64]))
def test_pack_bits_matches_reference(kernel_path, seed, polarity, dtype):
    rng = np.random.default_rng(seed)
    ndim = int(rng.integers(1, 5))
    shape = tuple(int(s) for s in rng.integers(0, 5, ndim))
    shape = shape[:-1] + (int(rng.choice([0, 1, 63, 64, 65, 130])),) if rng.random() < 0.5 else shape
    big = rng.standard_normal(tuple(2 * s + 1 for s in shape)).astype(dtype)
    big[rng.random(big.shape) < 0.1] = 0.0
    x = big[tuple(slice(None, None, int(rng.choice([2, -2]))) for _ in shape)]    # non-contiguous, reversed
    x = x.transpose(tuple(rng.permutation(ndim)))
    axis = int(rng.integers(-ndim, ndim))
    words = K.pack_bits(x, axis=axis, polarity=polarity, threads=int(rng.integers(1, 3)))
    expect = reference.pack_bits(x, axis=axis, polarity=polarity)
    assert words.dtype == np.uint64 and words.shape == expect.shape
    assert np.array_equal(words, expect)
    n = x.shape[axis]
    values = reference.unpack_bits(words, n, axis=axis, polarity=polarity, dtype=dtype)
    sign0 = {"lce": 1.0, "dabnn": -1.0, "bitorch": 1.0}[polarity]
    assert np.array_equal(values, np.where(x > 0, 1.0, np.where(x < 0, -1.0, sign0)))


# ---- bgemm -----------------------------------------------------------------------------------

@given(seeds, st.integers(0, 40), st.integers(0, 70),
       st.one_of(st.integers(1, 200), st.sampled_from([64, 128, 1000, 4097])), st.integers(1, 2))
def test_bgemm_matches_float_matmul(kernel_path, seed, m, n, k, threads):
    rng = np.random.default_rng(seed)
    a, b = signs(rng, (m, k)), signs(rng, (n, k))
    aw, bw = reference.pack_bits(a), reference.pack_bits(b)
    if rng.random() < 0.5:      # bits past k are ignored
        aw, bw = with_tail_garbage(aw, k, rng), with_tail_garbage(bw, k, rng)
    if rng.random() < 0.5:      # non-contiguous operands: every other row of a larger array, a Fortran copy
        big = np.zeros((2 * m, aw.shape[1] + 3), np.uint64)
        big[::2, 1:1 + aw.shape[1]] = aw
        aw = big[::2, 1:1 + aw.shape[1]]
        bw = np.asfortranarray(bw)
    out = K.bgemm(aw, bw, k, threads=threads)
    assert out.dtype == np.int32 and out.shape == (m, n)
    assert np.array_equal(out, a @ b.T)


@pytest.mark.parametrize("k", [1, 63, 64, 65, 31 * 64, 32 * 64 + 7, 100 * 64])
def test_bgemm_extreme_operands(kernel_path, k):
    """All signs equal or all opposite: dot = +-k, the largest counts (byte counters must not wrap)."""
    plus, minus = np.ones((3, k)), -np.ones((5, k))
    pw, mw = K.pack_bits(plus), K.pack_bits(minus)
    assert (K.bgemm(pw, mw, k) == -k).all() and (K.bgemm(mw, mw, k) == k).all()
    assert (K.bgemm(mw, pw, k, threads=2) == -k).all() and (K.bgemm(pw, pw, k) == k).all()


def test_bgemm_other_polarities_and_out(kernel_path):
    """xor-popcount does not depend on the polarity when both operands share it."""
    rng = np.random.default_rng(0)
    a, b = signs(rng, (9, 150), zeros=True), signs(rng, (37, 150), zeros=True)
    for polarity, zero in (("dabnn", -1.0), ("bitorch", 1.0), ("lce", 1.0)):
        sa, sb = np.where(a == 0, zero, a), np.where(b == 0, zero, b)
        out = np.full((9, 37), 12345, np.int32)
        res = K.bgemm(K.pack_bits(a, polarity=polarity), K.pack_bits(b, polarity=polarity), 150, out=out)
        assert res is out and np.array_equal(out, sa @ sb.T)


# ---- binary max pool -------------------------------------------------------------------------

@given(seeds)
def test_bmaxpool2d_matches_float_maxpool(kernel_path, seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(0, 3)), int(rng.integers(1, 140))
    kh, kw = (int(v) for v in rng.integers(1, 4, 2))
    sh, sw = (int(v) for v in rng.integers(1, 4, 2))
    ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
    h, w = int(rng.integers(kh, 9)), int(rng.integers(kw, 9))
    x = signs(rng, (n, c, h, w))
    out = K.bmaxpool2d(K.pack_bits(x, axis=1), (kh, kw), (sh, sw), (ph, pw), threads=int(rng.integers(1, 3)))
    expect, _ = ops.maxpool2d_forward(x, (kh, kw), (sh, sw), (ph, pw))
    assert np.array_equal(out, reference.pack_bits(expect, axis=1))


# ---- paths, threads, info --------------------------------------------------------------------

def test_paths_are_reported_and_forced(monkeypatch):
    info = K.info()
    assert "scalar" in info["compiled"] and "scalar" in info["supported"]
    assert set(info["supported"]) <= set(info["compiled"])
    assert info["active"] in info["supported"]             # the fastest measured (tests/test_dispatch.py)
    for p in info["supported"]:
        monkeypatch.setenv("REFBNN_KERNEL_PATH", p)
        assert K.resolve_path() == p
        assert K.info()["active"] == p
    monkeypatch.setenv("REFBNN_KERNEL_PATH", "avx999")
    with pytest.raises(ValueError, match="REFBNN_KERNEL_PATH"):
        K.bgemm(np.zeros((1, 1), np.uint64), np.zeros((1, 1), np.uint64), 1)


def test_forcing_an_unsupported_path_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(K, "_SUPPORTED", ("scalar",))      # as on a CPU without AVX2/AVX-512
    monkeypatch.setenv("REFBNN_KERNEL_PATH", "avx512")
    with pytest.raises(RuntimeError, match="avx512.*not support"):
        K.bgemm(np.zeros((1, 1), np.uint64), np.zeros((1, 1), np.uint64), 1)
    with pytest.raises(RuntimeError, match="avx2"):
        K.resolve_path("avx2")
    assert K.resolve_path("scalar") == "scalar"


def test_forcing_the_mixed_path_names_what_it_needs(monkeypatch):
    monkeypatch.setattr(K, "_SUPPORTED", ("avx2", "scalar"))   # as on a CPU with AVX2 but no POPCNT
    with pytest.raises(RuntimeError, match=r"'avx2\+popcnt' needs AVX2 and POPCNT.*supports \['avx2', 'scalar'\]"):
        K.resolve_path("avx2+popcnt")


def test_cli_info_lists_the_paths():
    from refbnn.cli import info

    data = info()
    assert data["kernel_paths"]["active"] in data["kernel_paths"]["supported"]
    assert data["kernel_paths"]["openmp"] in (True, False) and data["kernel_paths"]["threads"] >= 1


def test_peak_measurement_runs(kernel_path):
    assert K.measure_peak(seconds=0.01) > 0


# ---- the mixed path's splits -------------------------------------------------------------------

needs_mixed = pytest.mark.skipif("avx2+popcnt" not in K.supported_paths(),
                                 reason="this CPU does not run the avx2+popcnt path (AVX2 and POPCNT)")


@pytest.fixture(params=K.MIX_SPLITS)
def mix_split(request, monkeypatch):
    """The avx2+popcnt path forced, with each compiled split of its columns in turn."""
    if "avx2+popcnt" not in K.supported_paths():
        pytest.skip("this CPU does not run the avx2+popcnt path (AVX2 and POPCNT)")
    monkeypatch.setenv("REFBNN_KERNEL_PATH", "avx2+popcnt")
    keep = K.mix_split()
    K.set_mix_split(request.param)
    yield request.param
    K.set_mix_split(keep)


@given(seeds, st.integers(1, 40), st.integers(1, 100),
       st.one_of(st.integers(1, 300), st.sampled_from([64, 31 * 64, 31 * 64 + 1, 62 * 64 + 5])))
def test_every_mix_split_is_exact(mix_split, seed, m, n, k):
    """Each split counts its columns on other ports; the integers are the float product's. K past
    31 words crosses the byte counters' flush; random words (not +-1 patterns) exercise every bit."""
    rng = np.random.default_rng(seed)
    a, b = signs(rng, (m, k)), signs(rng, (n, k))
    aw, bw = with_tail_garbage(reference.pack_bits(a), k, rng), with_tail_garbage(reference.pack_bits(b), k, rng)
    assert K.mix_split() == mix_split
    assert np.array_equal(K.bgemm(aw, bw, k, threads=int(rng.integers(1, 3))), a @ b.T)


@pytest.mark.parametrize("k", [1, 64, 31 * 64, 31 * 64 + 7, 100 * 64])
def test_every_mix_split_extreme_operands(mix_split, k):
    """dot = +-k in every column: the largest counts, in both the byte counters and popcnt sums."""
    plus, minus = np.ones((7, k)), -np.ones((33, k))
    pw, mw = K.pack_bits(plus), K.pack_bits(minus)
    assert (K.bgemm(pw, mw, k) == -k).all() and (K.bgemm(mw, mw, k) == k).all()


@needs_mixed
def test_mix_peak_measures_the_paths_own_mix(monkeypatch):
    keep = K.mix_split()
    try:
        for s in K.MIX_SPLITS:
            K.set_mix_split(s)
            assert K.measure_peak("avx2+popcnt", seconds=0.002) > 0
    finally:
        K.set_mix_split(keep)
    mixes = K.peak_mixes()
    assert mixes["avx2+popcnt"] == ("avx2+popcnt", -1, -1)
    assert not any(m.startswith("avx2+popcnt x") for m in mixes)     # no mix of the mixed path


# ---- memory ----------------------------------------------------------------------------------

def _view(base, rng):
    """A random view of ``base`` (1-D uint8 buffer): offset, dtype, 1-3 axes, negative and zero-size
    axes, steps."""
    dtype = np.dtype(rng.choice(["u1", "i4", "u8"]))
    start = int(rng.integers(0, 24)) * dtype.itemsize
    v = base[start:start + (base.size - start) // dtype.itemsize * dtype.itemsize].view(dtype)
    nd = int(rng.integers(1, 4))
    shape = tuple(int(rng.integers(0 if rng.random() < 0.1 else 1, 6)) for _ in range(nd))
    n = int(np.prod(shape))
    v = v[:n * 2].reshape(-1)[:n] if n else v[:0]
    v = v.reshape(shape) if n else np.empty(shape, dtype)[...]
    if v.ndim and rng.random() < 0.4 and n:
        v = v[::-1]
    if v.ndim > 1 and rng.random() < 0.4:
        v = v[:, ::2]
    return v


@given(seeds)
def test_the_overlap_check_agrees_with_numpy(seed):
    """out= sharing memory with an operand is refused; the check is a bounds test in C (a call's
    budget is microseconds), the same test as np.may_share_memory's default."""
    rng = np.random.default_rng(seed)
    base = np.zeros(2048, np.uint8)
    other = np.zeros(2048, np.uint8)
    for _ in range(20):
        out = _view(base, rng)
        a = _view(base if rng.random() < 0.7 else other, rng)
        try:
            K._check_no_overlap(out, None, a_words=a)
            refused = False
        except ValueError as exc:
            assert "out: shares memory with a_words" in str(exc)
            refused = True
        assert refused == np.may_share_memory(out, a), (out.shape, out.strides, a.shape, a.strides)

def test_kernels_allocate_nothing_but_output_and_workspace():
    rng = np.random.default_rng(0)
    aw = rng.integers(0, 2**63, (300, 20), dtype=np.uint64)
    bw = rng.integers(0, 2**63, (200, 20), dtype=np.uint64)
    out = np.empty((300, 200), np.int32)
    xw = rng.integers(0, 2**63, (2, 20, 20, 2), dtype=np.uint64)
    ww = rng.integers(0, 2**63, (70, 3, 3, 2), dtype=np.uint64)
    cout = np.empty((2, 20, 20, 70), np.int32)
    K.bgemm(aw, bw, 1280, out=out)                             # grows the workspace
    K.bconv2d(xw, ww, 128, padding=1, out=cout)
    tracemalloc.start()
    try:
        K.bgemm(aw, bw, 1280, out=out)
        K.bconv2d(xw, ww, 128, padding=1, out=cout)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4096, f"{peak} bytes allocated per call"   # panels alone would be 32 KB


# ---- bad input: a clear error before any C code runs ------------------------------------------

def test_bad_input_is_rejected_before_c_runs():
    w = np.zeros((4, 2), np.uint64)
    with pytest.raises(TypeError, match="uint64"):
        K.bgemm(np.zeros((4, 2), np.int64), w, 100)
    with pytest.raises(TypeError, match="uint64"):
        K.bgemm(w, np.zeros((4, 2), np.float32), 100)
    with pytest.raises(TypeError, match="NumPy array"):
        K.bgemm([[0, 0]], w, 100)
    with pytest.raises(ValueError, match="needs 1 words per row"):
        K.bgemm(w, w, 64)                       # k = 64 needs 1 word per row, not 2
    with pytest.raises(ValueError, match="words per row"):
        K.bgemm(w, np.zeros((4, 3), np.uint64), 100)
    with pytest.raises(ValueError, match=">= 1"):
        K.bgemm(np.zeros((4, 0), np.uint64), np.zeros((4, 0), np.uint64), 0)
    with pytest.raises(ValueError, match=">= 1"):
        K.bgemm(w, w, -5)
    with pytest.raises(TypeError, match="int"):
        K.bgemm(w, w, 100.0)
    with pytest.raises(ValueError, match="2-D"):
        K.bgemm(np.zeros((4, 2, 1), np.uint64), w, 100)
    with pytest.raises(ValueError, match="threads"):
        K.bgemm(w, w, 100, threads=0)
    ro = np.zeros((4, 4), np.int32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        K.bgemm(w, w, 100, out=ro)
    misaligned = np.zeros(4 * 4 * 4 + 1, np.uint8)[1:].view(np.int32).reshape(4, 4)
    with pytest.raises(ValueError, match="aligned"):
        K.bgemm(w, w, 100, out=misaligned)
    with pytest.raises(ValueError, match="C-contiguous"):
        K.bgemm(w, w, 100, out=np.zeros((4, 8), np.int32)[:, ::2])
    with pytest.raises(ValueError, match="shape"):
        K.bgemm(w, w, 100, out=np.zeros((4, 5), np.int32))
    with pytest.raises(TypeError, match="int32"):
        K.bgemm(w, w, 100, out=np.zeros((4, 4), np.int64))


def test_misaligned_inputs_are_copied_not_misread():
    rng = np.random.default_rng(0)
    a, b = signs(rng, (5, 100)), signs(rng, (6, 100))
    aw = reference.pack_bits(a)
    raw = np.zeros(aw.nbytes + 1, np.uint8)
    mis = raw[1:].view(np.uint64).reshape(aw.shape)           # 1-byte misaligned uint64 view
    mis[...] = aw
    assert not mis.flags.aligned
    assert np.array_equal(K.bgemm(mis, reference.pack_bits(b), 100), a @ b.T)


def test_pack_and_pool_bad_input():
    with pytest.raises(TypeError, match="float32/float64"):
        K.pack_bits(np.zeros(3, bool))
    with pytest.raises(TypeError, match="NumPy array"):
        K.pack_bits([1.0, -1.0])
    with pytest.raises(ValueError, match="NaN"):
        K.pack_bits(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="polarity"):
        K.pack_bits(np.ones(3), polarity="xnor")
    with pytest.raises(ValueError, match="axis"):
        K.pack_bits(np.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match="scalar"):
        K.pack_bits(np.array(1.0))
    with pytest.raises(ValueError, match="half the kernel"):
        K.bmaxpool2d(np.zeros((1, 4, 4, 1), np.uint64), 2, padding=2)
    with pytest.raises(ValueError, match="smaller than the window"):
        K.bmaxpool2d(np.zeros((1, 2, 2, 1), np.uint64), 3)
    with pytest.raises(TypeError, match="uint64"):
        K.bmaxpool2d(np.zeros((1, 4, 4, 1), np.int32), 2)
    with pytest.raises(ValueError, match="words on the last axis"):
        reference.unpack_bits(np.zeros((2, 2), np.uint64), 200)
    with pytest.raises(TypeError, match="uint64"):
        reference.unpack_bits(np.zeros((2, 2), np.int64), 100)
