"""refbnn.kernels._floatops' batch norm and element-wise ops (src_cython/fo_norm.c) against the
NumPy reference (refbnn.ops, refbnn.conventions, refbnn.quantizers, refbnn.checks):

- batch norm statistics and gradients within the bounds their docstrings state, against the exact
  float64 formulas of the same float32 inputs (the bounds are shown to catch wrong formulas: the
  unbiased variance, a dropped term), and bit for bit against a NumPy emulation of the kernel
  (double sums in its order: 16 or 32 lanes, added pairwise; emulating the order exactly keeps
  the test from failing in the rare cases where another order would round differently);
- xhat, y and dx: the reference's float32 operations, bit for bit, given the statistics;
- the element-wise ops bit for bit against the reference, NaN, +-Inf, +-0 and the bounds included;
- first_nonfinite_index against refbnn.checks.first_nonfinite;
- every result bit-identical for 1, 2 and 3 threads (capped at the usable CPUs: on a 2-CPU machine
  3 runs as 2); bad input refused before any C code runs.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

F = pytest.importorskip("refbnn.kernels._floatops",
                        reason="refbnn.kernels._floatops is not built (python setup.py build_ext --inplace)")

from refbnn import ops  # noqa: E402
from refbnn.checks import first_nonfinite  # noqa: E402
from refbnn.conventions import clip_mask  # noqa: E402
from refbnn.quantizers.sign import SteSign  # noqa: E402

seeds = st.integers(0, 2**32 - 1)
THREADS = (1, 2, 3)
U32, U64 = 2.0 ** -24, 2.0 ** -53


def bits(a):
    """An array's bytes, for bit-for-bit comparisons (NaN payloads and the sign of zero count)."""
    return np.ascontiguousarray(a).view(np.uint8)


def same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(bits(a), bits(b))


# ---- batch norm data ------------------------------------------------------------------------------

def random_bn_input(rng):
    """(x, gamma, beta): 2-D (N, C) or 4-D (N, C, H, W), C in 1..70, odd sizes, magnitudes from
    1e-15 to 1e15, channel means up to 1e3 standard deviations away from 0, constant channels."""
    c = int(rng.integers(1, 71))
    if rng.random() < 0.3:
        shape = (int(rng.integers(2, 60)), c)
    else:
        h, w = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        shape = (int(rng.integers(1 if h * w >= 2 else 2, 7)), c, h, w)
    bs = (1, c) + (1,) * (len(shape) - 2)
    scale = 10.0 ** rng.uniform(-15, 15, c)
    offset = scale * rng.choice([0.0, 1.0, 30.0, 1e3], c) * rng.choice([-1.0, 1.0], c)
    x = rng.standard_normal(shape) * scale.reshape(bs) + offset.reshape(bs)
    const = rng.random(c) < 0.15
    x = np.where(const.reshape(bs), offset.reshape(bs) + scale.reshape(bs), x).astype(np.float32)
    gamma = (rng.standard_normal(c) * 10.0 ** rng.uniform(-3, 3, c)).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    return x, gamma, beta


def per_channel(a):
    """(N, C[, H, W]) -> (C, N, H*W) in float64."""
    hw = 1 if a.ndim == 2 else a.shape[2] * a.shape[3]
    return a.reshape(a.shape[0], a.shape[1], hw).transpose(1, 0, 2).astype(np.float64)


def bshape(a):
    return (1, a.shape[1]) + (1,) * (a.ndim - 2)


def _lane_rows(v, lanes=16):
    """(C, N, HW) -> (C, N, R, lanes): each strip's elements in blocks of ``lanes`` (lane j =
    position mod lanes), the last block zero-padded, as fo_norm.c's lanes take them."""
    c, n, hw = v.shape
    full, r = divmod(hw, lanes)
    body = v[:, :, :full * lanes].reshape(c, n, full, lanes)
    tail = np.zeros((c, n, 1 if r else 0, lanes))
    if r:
        tail[:, :, 0, :r] = v[:, :, full * lanes:]
    return np.concatenate([body, tail], axis=2)


def _combine(s):
    """The lanes (last axis, 16 or 32) added pairwise: s[j] += s[j + w] for w = 16 (32 lanes),
    8, 4, 2, 1."""
    w = s.shape[-1] // 2
    while w:
        s = s[..., :w] + s[..., w:2 * w]
        w //= 2
    return s[..., 0]


def _running_sum(rows, axis):
    """+0.0 + rows[0] + rows[1] + ... along ``axis``, strictly in sequence (np.cumsum)."""
    zero = np.zeros_like(np.take(rows, [0], axis=axis))
    return np.take(np.cumsum(np.concatenate([zero, rows], axis=axis), axis=axis), -1, axis=axis)


def lane_sums(v):
    """The backward's per-channel sums of v (C, N, HW) in fo_norm.c's order, exactly: HW == 1,
    one running sum over n; else 16 double lanes running over all strips of the channel in turn,
    then combined."""
    c, n, hw = v.shape
    if hw == 1:
        return _running_sum(v[:, :, 0], axis=1)
    return _combine(_running_sum(_lane_rows(v).reshape(c, -1, 16), axis=1))


def strip_sums(v):
    """Each strip's own sum (C, N): 32 lanes from zero over the strip, combined."""
    return _combine(_running_sum(_lane_rows(v, 32), axis=2))


def emulate_forward(x, eps):
    """mean, var, inv_std as fo_norm.c computes them, in its order: HW == 1, the two-pass running
    sums; else per strip k its sum S_k, mean m_k = S_k / HW and squared deviations Q_k, then
    mean = (S_0 + S_1 + ...) / m and var = ((Q_0 + HW (m_0 - mean)^2) + ...) / m."""
    v = per_channel(x)
    n, hw = v.shape[1], v.shape[2]
    m = n * hw
    if hw == 1:
        mu = lane_sums(v) / m
        var = lane_sums((v - mu[:, None, None]) ** 2) / m
    else:
        sk = strip_sums(v)
        mk = sk / hw
        qk = strip_sums((v - mk[:, :, None]) ** 2)
        mu = _running_sum(sk, axis=1) / m
        dm = mk - mu[:, None]
        var = _running_sum(qk + hw * (dm * dm), axis=1) / m
    return mu.astype(np.float32), var.astype(np.float32), (1.0 / np.sqrt(var + eps)).astype(np.float32)


def exact_stats(x, eps):
    """float64 mean, var, inv_std of the float32 input and the bounds of the docstring."""
    v = per_channel(x)
    m = v.shape[1] * v.shape[2]
    mean64 = v.mean(axis=(1, 2))
    var64 = ((v - mean64[:, None, None]) ** 2).mean(axis=(1, 2))
    inv64 = 1.0 / np.sqrt(var64 + eps)
    mean_abs = np.abs(v).mean(axis=(1, 2))
    tol_mean = U32 * np.abs(mean64) + m * 2.0 ** -52 * mean_abs
    e = m * 2.0 ** -51 * mean_abs
    dvar = (m + 3) * 2.0 ** -52 * var64 + 2 * e * np.sqrt(var64) + 3 * e * e
    tol_var = U32 * var64 + dvar
    tol_inv = inv64 * (2.0 ** -23 + dvar / (var64 + eps))
    return (mean64, var64, inv64), (tol_mean, tol_var, tol_inv)


def within(got, exact, tol):
    """|got - exact| <= 2 tol: tol bounds the kernel's error, the other tol the float64
    reference's own (NumPy's pairwise float64 sums err by far less than the kernel's bound)."""
    return bool(np.all(np.abs(got.astype(np.float64) - exact) <= 2 * tol))


def exact_backward(dout, xhat, gamma, inv_std):
    """float64 dx, dgamma, dbeta of the float32 inputs and the bounds of the docstring."""
    d, xh = per_channel(dout), per_channel(xhat)
    m = d.shape[1] * d.shape[2]
    g, inv = gamma.astype(np.float64), inv_std.astype(np.float64)
    dbeta, dgamma = d.sum(axis=(1, 2)), (d * xh).sum(axis=(1, 2))
    a64, b64 = g * dbeta / m, g * dgamma / m
    b3 = lambda t: t[:, None, None]  # noqa: E731
    dx = (d * b3(g) - b3(a64) - xh * b3(b64)) * b3(inv)
    terms = np.abs(d * b3(g)) + np.abs(b3(a64)) + np.abs(xh * b3(b64))
    mean_d, mean_dx = np.abs(d).mean(axis=(1, 2)), np.abs(d * xh).mean(axis=(1, 2))
    sums_err = b3(np.abs(g)) * m * U64 * (b3(mean_d) + np.abs(xh) * b3(mean_dx))
    tol_dx = b3(inv) * (5 * U32 * terms + sums_err)
    tol_db = U32 * np.abs(dbeta) + m * U64 * np.abs(d).sum(axis=(1, 2))
    tol_dg = U32 * np.abs(dgamma) + m * U64 * np.abs(d * xh).sum(axis=(1, 2))
    return (dx, dgamma, dbeta), (tol_dx, tol_dg, tol_db)


def to_nchw(t, like):
    """(C, N, HW) -> like's shape."""
    return t.transpose(1, 0, 2).reshape(like.shape)


# ---- batch norm -------------------------------------------------------------------------------------

@given(seeds, st.sampled_from([1e-5, 1e-3, 0.1]))
def test_batchnorm_forward(seed, eps):
    rng = np.random.default_rng(seed)
    x, gamma, beta = random_bn_input(rng)
    outs = [F.batchnorm_train_forward(x, gamma, beta, eps, threads=t) for t in THREADS]
    for o in outs[1:]:
        assert all(same_bits(a, b) for a, b in zip(outs[0], o))
    y, xhat, mean, var, inv_std = outs[0]
    assert y.shape == xhat.shape == x.shape and mean.shape == var.shape == inv_std.shape == (x.shape[1],)
    # bit for bit: the statistics in the kernel's order, xhat and y in the reference's float32 ops
    emu = emulate_forward(x, eps)
    assert same_bits(mean, emu[0]) and same_bits(var, emu[1]) and same_bits(inv_std, emu[2])
    bs = bshape(x)
    assert same_bits(xhat, (x - mean.reshape(bs)) * inv_std.reshape(bs))
    assert same_bits(y, xhat * gamma.reshape(bs) + beta.reshape(bs))
    # within the docstring's bounds of the exact statistics
    exact, tol = exact_stats(x, eps)
    for got, e, t in zip((mean, var, inv_std), exact, tol):
        assert within(got, e, t)
    const = np.ptp(per_channel(x), axis=(1, 2)) == 0
    assert np.all(var[const] == 0)


@given(seeds)
def test_batchnorm_forward_close_to_reference_op(seed):
    """The same y as refbnn.ops.batchnorm_forward up to the float32 rounding of its statistics
    (ordinary data: unit scale, moderate means)."""
    rng = np.random.default_rng(seed)
    c = int(rng.integers(1, 40))
    x = (rng.standard_normal((int(rng.integers(2, 9)), c, 5, 7)) * 3 + 1).astype(np.float32)
    gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    y_ref, cache_ref = ops.batchnorm_forward(x, gamma, beta, rm, rv)
    xhat_ref, inv_ref = cache_ref.xhat, cache_ref.inv_std
    y, xhat, mean, var, inv_std = F.batchnorm_train_forward(x, gamma, beta, 1e-5)
    np.testing.assert_allclose(inv_std, inv_ref, rtol=1e-5)
    np.testing.assert_allclose(xhat, xhat_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4 * np.abs(gamma).max())


@given(seeds)
def test_batchnorm_backward(seed):
    rng = np.random.default_rng(seed)
    x, gamma, beta = random_bn_input(rng)
    _, xhat, _, _, inv_std = F.batchnorm_train_forward(x, gamma, beta, 1e-5)
    dout = (rng.standard_normal(x.shape) * 10.0 ** rng.uniform(-10, 10)).astype(np.float32)
    outs = [F.batchnorm_train_backward(dout, xhat, gamma, inv_std, threads=t) for t in THREADS]
    for o in outs[1:]:
        assert all(same_bits(a, b) for a, b in zip(outs[0], o))
    dx, dgamma, dbeta = outs[0]
    assert dx.shape == x.shape and dgamma.shape == dbeta.shape == (x.shape[1],)
    # bit for bit: the sums in the kernel's order, dx in the reference's float32 operations
    d, xh = per_channel(dout), per_channel(xhat)
    m = d.shape[1] * d.shape[2]
    sd, sdx = lane_sums(d), lane_sums(d * xh)
    assert same_bits(dbeta, sd.astype(np.float32)) and same_bits(dgamma, sdx.astype(np.float32))
    g64 = gamma.astype(np.float64)
    a, b = (g64 * sd / m).astype(np.float32), (g64 * sdx / m).astype(np.float32)
    bs = bshape(x)
    expect = dout * gamma.reshape(bs)
    expect -= a.reshape(bs)
    expect -= xhat * b.reshape(bs)
    expect *= inv_std.reshape(bs)
    assert same_bits(dx, expect)
    # within the docstring's bounds of the exact gradients
    exact, tol = exact_backward(dout, xhat, gamma, inv_std)
    assert within(dx, to_nchw(exact[0], x), to_nchw(tol[0], x))
    assert within(dgamma, exact[1], tol[1]) and within(dbeta, exact[2], tol[2])


@given(seeds)
def test_batchnorm_backward_close_to_reference_op(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(1, 40))
    x = rng.standard_normal((int(rng.integers(2, 9)), c, 6, 3)).astype(np.float32)
    gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    _, cache = ops.batchnorm_forward(x, gamma, beta, np.zeros(c, np.float32), np.ones(c, np.float32))
    dout = rng.standard_normal(x.shape).astype(np.float32)
    dx_ref, grads = ops.batchnorm_backward(dout, cache)
    dx, dgamma, dbeta = F.batchnorm_train_backward(dout, cache[0], gamma, cache[2])
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-3, atol=1e-5 * np.abs(dx_ref).max())
    np.testing.assert_allclose(dgamma, grads["gamma"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbeta, grads["beta"], rtol=1e-4, atol=1e-4)


def test_bounds_catch_wrong_formulas():
    """The checks above would fail for plausible mistakes: the unbiased variance, the mean off by
    a few float32 ulps, dx without the xhat mean(dxhat xhat) term, dgamma as sum(dout)."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((16, 5, 9, 7)) * 2 + 300).astype(np.float32)
    gamma, beta = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    y, xhat, mean, var, inv_std = F.batchnorm_train_forward(x, gamma, beta, 1e-5)
    (mean64, var64, inv64), (tm, tv, ti) = exact_stats(x, 1e-5)
    m = x.size // 5
    assert within(mean, mean64, tm) and within(var, var64, tv) and within(inv_std, inv64, ti)
    assert not within(var * np.float32(m / (m - 1)), var64, tv)
    assert not within(mean + 4 * np.spacing(mean), mean64, tm)
    assert not within((1.0 / np.sqrt(var * m / (m - 1) + 1e-5)).astype(np.float32), inv64, ti)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    dx, dgamma, dbeta = F.batchnorm_train_backward(dout, xhat, gamma, inv_std)
    (dx64, dg64, db64), (tdx, tdg, tdb) = exact_backward(dout, xhat, gamma, inv_std)
    assert within(dx, to_nchw(dx64, x), to_nchw(tdx, x))
    bs = bshape(x)
    b = (gamma.astype(np.float64) * dg64 / m).reshape(bs)
    wrong = (dx + xhat * b * inv_std.reshape(bs)).astype(np.float32)
    assert not within(wrong, to_nchw(dx64, x), to_nchw(tdx, x))
    assert not within(dbeta, dg64, tdg)


def test_reference_float32_statistics_differ():
    """The bit-for-bit checks above are not met by the reference's float32 method: on data with a
    large mean its variance differs from the kernel's (double) one."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 3, 16, 16)) + 1000).astype(np.float32)
    _, _, mean, var, _ = F.batchnorm_train_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32), 1e-5)
    xc = x - x.mean(axis=(0, 2, 3)).reshape(1, 3, 1, 1)
    assert not same_bits(var, (xc * xc).mean(axis=(0, 2, 3)))


def test_batchnorm_resnet20_shapes_threads():
    rng = np.random.default_rng(1)
    for shape in ((16, 16, 32, 32), (32, 32, 16, 16), (64, 64, 8, 8), (128, 10)):
        c = shape[1]
        x = rng.standard_normal(shape).astype(np.float32)
        gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
        fwd = [F.batchnorm_train_forward(x, gamma, beta, 1e-5, threads=t) for t in THREADS]
        dout = rng.standard_normal(shape).astype(np.float32)
        bwd = [F.batchnorm_train_backward(dout, fwd[0][1], gamma, fwd[0][4], threads=t) for t in THREADS]
        for outs in (fwd, bwd):
            for o in outs[1:]:
                assert all(same_bits(a, b) for a, b in zip(outs[0], o))
        emu = emulate_forward(x, 1e-5)
        assert all(same_bits(a, b) for a, b in zip(fwd[0][2:], emu))


def test_batchnorm_bad_input():
    x = np.ones((4, 3, 2, 2), np.float32)
    g = np.ones(3, np.float32)
    cases = [
        (TypeError, "float32", lambda: F.batchnorm_train_forward(x.astype(np.float64), g, g, 1e-5)),
        (TypeError, "numpy.ndarray", lambda: F.batchnorm_train_forward(x.tolist(), g, g, 1e-5)),
        (ValueError, "C-contiguous", lambda: F.batchnorm_train_forward(x[:, :, ::2], g, g, 1e-5)),
        (ValueError, "dimensions", lambda: F.batchnorm_train_forward(x[0], g, g, 1e-5)),
        (ValueError, r"gamma: expected shape \(3,\)", lambda: F.batchnorm_train_forward(x, g[:2], g, 1e-5)),
        (ValueError, "beta", lambda: F.batchnorm_train_forward(x, g, np.ones((3, 1), np.float32), 1e-5)),
        (TypeError, "gamma", lambda: F.batchnorm_train_forward(x, g.astype(np.float64), g, 1e-5)),
        (ValueError, "eps", lambda: F.batchnorm_train_forward(x, g, g, 0.0)),
        (ValueError, "eps", lambda: F.batchnorm_train_forward(x, g, g, float("nan"))),
        (ValueError, "more than 1 value", lambda: F.batchnorm_train_forward(np.ones((1, 3), np.float32), g, g, 1e-5)),
        (ValueError, "more than 1 value",
         lambda: F.batchnorm_train_forward(np.ones((1, 3, 1, 1), np.float32), g, g, 1e-5)),
        (ValueError, "more than 1 value",
         lambda: F.batchnorm_train_forward(np.ones((0, 3, 4, 4), np.float32), g, g, 1e-5)),
        (ValueError, "channel", lambda: F.batchnorm_train_forward(np.ones((4, 0), np.float32), g[:0], g[:0], 1e-5)),
        (ValueError, "threads", lambda: F.batchnorm_train_forward(x, g, g, 1e-5, threads=0)),
        (ValueError, "dout: expected xhat's shape", lambda: F.batchnorm_train_backward(x[:2], x, g, g)),
        (ValueError, "inv_std", lambda: F.batchnorm_train_backward(x, x, g, g[:1])),
        (TypeError, "dout", lambda: F.batchnorm_train_backward(x.astype(np.float16), x, g, g)),
        (ValueError, "more than 1 value",
         lambda: F.batchnorm_train_backward(np.ones((0, 3), np.float32), np.ones((0, 3), np.float32), g, g)),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()


def test_batchnorm_nonfinite_input_stays_in_its_channel():
    """NaN/Inf are not checked (the reference refuses them first): they reach their own channel's
    outputs only, and nothing crashes."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    x[2, 1, 3, 4] = np.nan
    g, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    y, xhat, mean, var, inv_std = F.batchnorm_train_forward(x, g, b, 1e-5)
    assert np.isnan(mean[1]) and np.isnan(y[:, 1]).all()
    assert np.isfinite(y[:, [0, 2]]).all() and np.isfinite(mean[[0, 2]]).all()
    dout = np.ones_like(x)
    dout[0, 2, 0, 0] = np.inf
    dx, dgamma, dbeta = F.batchnorm_train_backward(dout, xhat, g, inv_std)
    assert np.isfinite(dx[:, 0]).all() and np.isinf(dbeta[2])


# ---- element-wise ops -------------------------------------------------------------------------------

SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 1e-45, -1e-45,
                    3.4e38, -3.4e38, np.nextafter(np.float32(1), np.float32(2)),
                    np.nextafter(np.float32(1), np.float32(0)), -np.nextafter(np.float32(1), np.float32(2)),
                    -np.nextafter(np.float32(1), np.float32(0))], np.float32)


def random_values(rng, shape):
    """float32 data with the special values above (and NaNs with other payloads) mixed in."""
    x = (rng.standard_normal(shape) * rng.choice([0.5, 1.0, 3.0])).astype(np.float32)
    flat = x.reshape(-1)
    pick = rng.random(flat.size) < 0.3
    flat[pick] = rng.choice(SPECIAL, int(pick.sum()))
    nan2 = rng.random(flat.size) < 0.02
    flat[nan2] = np.array([0x7fc01234, 0xffa00001], np.uint32).view(np.float32)[rng.integers(0, 2, int(nan2.sum()))]
    return x


shapes = st.one_of(st.tuples(st.integers(0, 3), st.integers(1, 70), st.integers(1, 9), st.integers(1, 9)),
                   st.tuples(st.integers(0, 300), st.integers(1, 70)),
                   st.tuples(st.integers(30000, 80000)))


@given(seeds, shapes, st.sampled_from([(-1.0, 1.0), (0.0, 1.0), (-0.0, 6.0), (-0.5, 1e-45), (-1e300, 1e300)]))
def test_hardtanh_forward_bits(seed, shape, bounds):
    rng = np.random.default_rng(seed)
    x = random_values(rng, shape)
    lo, hi = bounds
    with np.errstate(over="ignore"):
        y_ref, m_ref = x.clip(lo, hi), (x > lo) & (x < hi)   # refbnn.ops.hardtanh_forward's operations
        outs = [F.hardtanh_forward(x, lo, hi, threads=t) for t in THREADS]
    for y, m in outs:
        assert same_bits(y, y_ref) and same_bits(m, m_ref)
    finite = np.nan_to_num(x, nan=0.0, posinf=5.0, neginf=-5.0)
    if abs(lo) < 1e30:
        y_op, m_op = ops.hardtanh_forward(finite, lo, hi)
        y, m = F.hardtanh_forward(finite, lo, hi)
        assert same_bits(y, y_op) and same_bits(m, m_op)


@given(seeds, shapes)
def test_mask_multiply_bits(seed, shape):
    rng = np.random.default_rng(seed)
    dout = random_values(rng, shape)
    mask = rng.random(shape) < 0.5
    with np.errstate(invalid="ignore"):   # Inf * 0
        expect = ops.hardtanh_backward(dout, mask)[0]
        raw = rng.integers(0, 256, shape, dtype=np.uint8).view(np.bool_)   # bytes other than 0/1: NumPy's True
        expect_raw = dout * raw
    for t in THREADS:
        assert same_bits(F.mask_multiply(dout, mask, threads=t), expect)
    assert same_bits(F.mask_multiply(dout, raw), expect_raw)


@given(seeds, shapes, st.sampled_from([1.0, 0.5, 1.3, 2.0, 1e-45, 3.4e38]), st.booleans())
def test_ste_clip_backward_bits(seed, shape, clip, inclusive):
    rng = np.random.default_rng(seed)
    x, dout = random_values(rng, shape), random_values(rng, shape)
    q = SteSign(clip_value=clip, clip_inclusive=inclusive)
    with np.errstate(invalid="ignore"):   # Inf * 0
        expect = q.backward(dout, q.derivative(x))
    for t in THREADS:
        assert same_bits(F.ste_clip_backward(dout, x, clip, inclusive, threads=t), expect)
        assert same_bits(F.clip_mask(x, clip, inclusive, threads=t), clip_mask(x, clip, inclusive))
    ident = SteSign(clip_value=None)
    assert F.ste_clip_backward(dout, x, None) is ident.backward(dout, ident.derivative(x)) is dout


@given(seeds, st.booleans())
def test_clip_threshold_numpy_scalars(seed, inclusive):
    """NumPy float64 scalars make NumPy compare in float64; Python floats in float32 (NEP 50)."""
    rng = np.random.default_rng(seed)
    base = np.float32(rng.choice([0.5, 1.0, 3.0]))
    x = (base + np.arange(-8, 9, dtype=np.float32) * np.spacing(base)).astype(np.float32)
    x = np.concatenate([x, -x])
    for c in (float(base), float(base) + 1e-12, float(base) - 1e-12, np.float64(base) + 1e-12,
              np.float64(base) - 1e-12, np.float32(base), np.float64(base)):
        assert same_bits(F.clip_mask(x, c, inclusive), clip_mask(x, c, inclusive)), c
        dout = np.ones_like(x)
        assert same_bits(F.ste_clip_backward(dout, x, c, inclusive), dout * clip_mask(x, c, inclusive)), c


def test_elementwise_zero_dimensional():
    x, d = np.array(1.5, np.float32), np.array(-2.0, np.float32)
    y, m = F.hardtanh_forward(x)
    assert y.shape == () and y == 1.0 and not m
    assert F.mask_multiply(d, np.array(True)) == -2.0
    assert F.ste_clip_backward(d, x, 2.0) == -2.0
    assert same_bits(F.ste_clip_backward(d, x, 1.0), np.array(-0.0, np.float32))
    assert F.clip_mask(x, 1.0) == 0.0
    assert F.first_nonfinite_index(np.array(np.nan, np.float32)) == 0 and F.first_nonfinite_index(x) == -1


def test_elementwise_bad_input():
    x = np.ones((3, 4), np.float32)
    cases = [
        (TypeError, "float32", lambda: F.hardtanh_forward(x.astype(np.float64))),
        (ValueError, "min_val < max_val", lambda: F.hardtanh_forward(x, 1.0, 1.0)),
        (ValueError, "min_val", lambda: F.hardtanh_forward(x, float("nan"), 1.0)),
        (ValueError, "C-contiguous", lambda: F.hardtanh_forward(x.T)),
        (TypeError, "bool", lambda: F.mask_multiply(x, x)),
        (ValueError, "mask: expected dout's shape", lambda: F.mask_multiply(x, np.ones((4, 3), np.bool_))),
        (ValueError, "C-contiguous", lambda: F.mask_multiply(x, np.ones((4, 3), np.bool_).T)),
        (TypeError, "numpy.ndarray", lambda: F.mask_multiply(x, [[True] * 4] * 3)),
        (ValueError, "x: expected dout's shape", lambda: F.ste_clip_backward(x, x[:1])),
        (ValueError, "clip", lambda: F.ste_clip_backward(x, x, 0.0)),
        (ValueError, "clip", lambda: F.ste_clip_backward(x, x, float("inf"))),
        (ValueError, "clip", lambda: F.ste_clip_backward(x, x, True)),
        (ValueError, "inclusive", lambda: F.ste_clip_backward(x, x, 1.0, "yes")),
        (TypeError, "float32", lambda: F.ste_clip_backward(x, x.astype(np.float64))),
        (ValueError, "clip", lambda: F.clip_mask(x, float("nan"))),
        (TypeError, "threads", lambda: F.clip_mask(x, 1.0, threads=1.5)),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()


# ---- first non-finite element -----------------------------------------------------------------------

@settings(max_examples=40)
@given(seeds, st.sampled_from([np.float32, np.float64]),
       st.sampled_from([(), (0,), (1,), (7, 0, 3), (13,), (5, 7, 9), (40000,), (3, 70001), (2, 3, 33000)]),
       st.integers(0, 4))
def test_first_nonfinite_index(seed, dtype, shape, nbad):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    if x.size and rng.random() < 0.3:   # finite values whose sum overflows: still finite
        x.reshape(-1)[:: max(1, x.size // 4)] = np.finfo(dtype).max
    for _ in range(nbad if x.size else 0):
        x.reshape(-1)[rng.integers(0, x.size)] = rng.choice([np.nan, np.inf, -np.inf])
    found = first_nonfinite(x)
    expect = -1 if found is None else int(np.ravel_multi_index(found[1], x.shape))
    for t in THREADS:
        assert F.first_nonfinite_index(x, threads=t) == expect


def test_first_nonfinite_index_every_position():
    """Each position of a few blocks and chunk borders, each kind, both dtypes."""
    for dtype in (np.float32, np.float64):
        x = np.ones(70000, dtype)
        for pos in list(range(0, 2100, 7)) + [32767, 32768, 32769, 65535, 65536, 69999]:
            for bad in (np.nan, np.inf, -np.inf):
                x[pos] = bad
                x[min(pos + 1 + pos % 3, x.size - 1)] = np.nan   # a later one must not win
                assert F.first_nonfinite_index(x, threads=2) == pos
                assert F.first_nonfinite_index(x, threads=1) == pos
                x[:] = 1
        x[-1] = -np.inf
        assert F.first_nonfinite_index(x.reshape(7, 100, 100)) == x.size - 1


def test_first_nonfinite_index_bad_input():
    with pytest.raises(TypeError, match="float32 or float64"):
        F.first_nonfinite_index(np.ones(3, np.float16))
    with pytest.raises(TypeError, match="float32 or float64"):
        F.first_nonfinite_index(np.ones(3, np.int32))
    with pytest.raises(TypeError, match="native"):
        F.first_nonfinite_index(np.ones(3, np.dtype(">f4")))
    with pytest.raises(ValueError, match="C-contiguous"):
        F.first_nonfinite_index(np.ones((3, 3), np.float32).T)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        F.first_nonfinite_index([1.0, float("nan")])
