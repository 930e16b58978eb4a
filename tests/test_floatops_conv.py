"""The compiled float convolution (refbnn.kernels._floatops: im2col, col2im, conv2d_forward,
conv2d_backward) against the NumPy reference.

im2col and col2im must be bit-identical to refbnn.ops.im2col. The forward and the two
gradients sum in another order than NumPy: they are compared with the same computation in float64
(exact products, sums with a negligible error) within the bound the docstrings state,
|got - exact| <= K_eff eps32 sum |a_i b_i| (eps32 = 2**-23, K_eff the number of products in the sum),
which holds for a float32 sum in any order (Higham, Accuracy and Stability of Numerical Algorithms,
2nd ed., section 3.1: gamma_n = n u / (1 - n u) <= n eps32 with u = eps32 / 2). With +-1 inputs every sum
is an integer below 2**24, so those results must be exact. Every result must be bit-identical for
threads=1, 2 and 3, on every SIMD path this CPU has.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

F = pytest.importorskip("refbnn.kernels._floatops", reason="the compiled float ops (refbnn.kernels._floatops) "
                        "are not built: run `python setup.py build_ext --inplace`")
if not hasattr(F, "conv2d_backward"):
    pytest.skip("this build of refbnn.kernels._floatops has no conv kernels", allow_module_level=True)

from refbnn.kernels import geometry as R  # noqa: E402
from refbnn.ops import conv as C  # noqa: E402
from refbnn.ops.im2col import col2im, im2col  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
THREADS = (1, 2, 3)
# the cases are small (milliseconds each): more of them than the profile's default
MANY = settings(max_examples=max(200, settings.default.max_examples))


@pytest.fixture(autouse=True)
def _auto_path():
    yield
    F._conv_force_path(None)


def _exact(x, w, dout, stride, padding, dilation, groups, pad_value):
    """(y, dx, dW) in float64 from the float32 inputs, and the same with absolute values (the sums
    of |a_i b_i| of the bounds)."""
    def run(xx, ww, dd, pv):
        y, cache = C.conv2d_forward(xx, ww, None, stride, padding, dilation, groups, pv)
        dx, grads = C.conv2d_backward(dd, cache)
        return y, dx, grads["weight"]

    f64 = [np.asarray(a, dtype=np.float64) for a in (x, w, dout)]
    return run(*f64, float(pad_value)), run(*(np.abs(a) for a in f64), abs(float(pad_value)))


def _within(got, exact, abs_sum, keff):
    """Whether |got - exact| <= keff eps32 sum|a_i b_i| everywhere."""
    return bool(np.all(np.abs(got.astype(np.float64) - exact) <= keff * EPS32 * abs_sum))


def _keffs(x, w, dout, groups):
    n, o, ho, wo = dout.shape
    _, cg, kh, kw = w.shape
    return cg * kh * kw, (o // groups) * kh * kw, n * ho * wo  # forward, dx, dW


def _check_conv(x, w, stride, padding, dilation, groups, pad_value, dout, binary=False):
    (y64, dx64, dw64), (ya, dxa, dwa) = _exact(x, w, dout, stride, padding, dilation, groups, pad_value)
    kf, kx, kw_ = _keffs(x, w, dout, groups)
    for path in F.conv_paths():
        F._conv_force_path(path)
        ys = [F.conv2d_forward(x, w, stride, padding, dilation, groups, pad_value, threads=t) for t in THREADS]
        bs = [F.conv2d_backward(dout, x, w, stride, padding, dilation, groups, pad_value, threads=t) for t in THREADS]
        _, dw_only = F.conv2d_backward(dout, x, w, stride, padding, dilation, groups, pad_value, need_dx=False)
        y, (dx, dw) = ys[0], bs[0]
        assert y.dtype == dx.dtype == dw.dtype == np.float32
        assert y.shape == y64.shape and dx.shape == x.shape and dw.shape == w.shape
        for t, yt, (dxt, dwt) in zip(THREADS, ys, bs):
            assert np.array_equal(yt, y) and np.array_equal(dxt, dx) and np.array_equal(dwt, dw), (path, t)
        assert np.array_equal(dw_only, dw), path
        if binary:
            assert np.array_equal(y, y64) and np.array_equal(dx, dx64) and np.array_equal(dw, dw64), path
        assert _within(y, y64, ya, kf), (path, "forward", np.abs(y - y64).max())
        assert _within(dx, dx64, dxa, kx), (path, "dx", np.abs(dx - dx64).max())
        assert _within(dw, dw64, dwa, kw_), (path, "dW", np.abs(dw - dw64).max())


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from((1, 2)))
    cg = draw(st.sampled_from((1, 2, 3, 17)))
    og = draw(st.sampled_from((1, 3, 17)))
    kh, kw = draw(st.sampled_from(((1, 1), (3, 3), (2, 3))))
    stride = (draw(st.sampled_from((1, 2))), draw(st.sampled_from((1, 2))))
    dilation = (draw(st.sampled_from((1, 2))), draw(st.sampled_from((1, 2))))
    padding = draw(st.sampled_from(((0, 0), (1, 1), (2, 2), (0, 1, 2, 0), (2, 1, 0, 1), (1, 0, 1, 2), (1, 2, 0, 0),
                                    (2, 0, 1, 1))))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    n = draw(st.integers(0, 3))
    pad_value = draw(st.sampled_from((0.0, 1.0, -1.0)))
    binary = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    p4 = padding if len(padding) == 4 else (padding[0], padding[0], padding[1], padding[1])
    ho = R.conv_output_size(h, kh, stride[0], p4[:2], dilation[0])
    wo = R.conv_output_size(w, kw, stride[1], p4[2:], dilation[1])
    assume(ho >= 1 and wo >= 1)
    rng = np.random.default_rng(seed)
    gen = (lambda s: np.where(rng.random(s) < 0.5, -1.0, 1.0)) if binary else rng.standard_normal
    x = gen((n, cg * groups, h, w)).astype(np.float32)
    wt = gen((og * groups, cg, kh, kw)).astype(np.float32)
    dout = gen((n, og * groups, ho, wo)).astype(np.float32)
    return x, wt, stride, padding, dilation, groups, pad_value, dout, binary


@MANY
@given(conv_cases())
def test_im2col_col2im_bit_identical(case):
    x, wt, stride, padding, dilation, groups, pad_value, _, _ = case
    kh, kw = wt.shape[2:]
    cols = im2col(x, kh, kw, stride, padding, dilation, pad_value)
    back = col2im(cols, x.shape, stride, padding, dilation)
    rng = np.random.default_rng(0)
    gcols = rng.standard_normal(cols.shape).astype(np.float32)  # col2im of general floats: the add order matters
    gback = col2im(gcols, x.shape, stride, padding, dilation)
    for path, t in [(p, t) for p in F.conv_paths() for t in THREADS]:
        F._conv_force_path(path)
        got = F.im2col(x, kh, kw, stride, padding, dilation, pad_value, threads=t)
        assert got.shape == cols.shape and np.array_equal(got, cols)
        for c, b in ((cols, back), (gcols, gback)):
            got = F.col2im(c, x.shape, stride, padding, dilation, threads=t)
            assert got.shape == b.shape and got.flags.c_contiguous
            assert np.array_equal(got.view(np.uint32), np.ascontiguousarray(b).view(np.uint32))  # -0.0 too


@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (1, 2), (2, 1)])
@pytest.mark.parametrize("padding,dilation", [((1, 1), (1, 1)), ((0, 2, 1, 0), (1, 2)), ((3, 0, 0, 3), (2, 1))])
def test_im2col_col2im_wide_rows(stride, padding, dilation):
    """Rows of 8 to 37 outputs: the vector loops of the compiled im2col/col2im (16 and 8 outputs at a
    time, then the edges one by one) on every path, bit-identical to the reference."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 35, 74)).astype(np.float32)
    for kh, kw in ((3, 3), (2, 5)):
        cols = im2col(x, kh, kw, stride, padding, dilation, -1.0)
        gcols = rng.standard_normal(cols.shape).astype(np.float32)
        back = np.ascontiguousarray(col2im(gcols, x.shape, stride, padding, dilation))
        for path in F.conv_paths():
            F._conv_force_path(path)
            assert np.array_equal(F.im2col(x, kh, kw, stride, padding, dilation, -1.0), cols), path
            got = F.col2im(gcols, x.shape, stride, padding, dilation)
            assert np.array_equal(got.view(np.uint32), back.view(np.uint32)), path


@MANY
@given(conv_cases())
def test_conv_within_bound_and_thread_independent(case):
    x, wt, stride, padding, dilation, groups, pad_value, dout, binary = case
    _check_conv(x, wt, stride, padding, dilation, groups, pad_value, dout, binary)


@pytest.mark.parametrize("n,c,o,hw,stride,padding,groups,binary", [
    (20, 16, 16, 32, (1, 1), (1, 1), 1, True),      # more samples than dW parts, rows of 1024 (padded stride)
    (19, 16, 32, 16, (2, 2), (1, 1), 1, False),     # ResNet's strided layer, uneven parts
    (5, 32, 32, 15, (1, 1), (1, 1), 2, False),      # L = 225: tails of the 16-float blocks, groups
    (3, 3, 16, 32, (1, 1), (1, 1), 1, False),       # a stem: 3 input channels
    (3, 8, 16, 34, (2, 2), (1, 1), 1, False),       # stride 2 with rows of 17 outputs (16 + 1)
    (4, 64, 24, 7, (1, 1), (0, 2, 1, 0), 1, False),  # 24 outputs: a 16 + 8 tile of the weight gradient
])
def test_conv_resnet_like(n, c, o, hw, stride, padding, groups, binary):
    rng = np.random.default_rng(n * 1000 + c)
    gen = (lambda s: np.where(rng.random(s) < 0.5, -1.0, 1.0)) if binary else rng.standard_normal
    x = gen((n, c, hw, hw)).astype(np.float32)
    w = gen((o, c // groups, 3, 3)).astype(np.float32)
    pad4 = padding if len(padding) == 4 else padding * 2
    ho = R.conv_output_size(hw, 3, stride[0], pad4[:2], 1)
    wo = R.conv_output_size(hw, 3, stride[1], pad4[2:], 1)
    dout = gen((n, o, ho, wo)).astype(np.float32)
    _check_conv(x, w, stride, padding, (1, 1), groups, 1.0 if binary else 0.0, dout, binary)


def test_conv_matches_ops_on_binary_inputs():
    """+-1 activations and weights, +-1 padding, +-1 dout: every sum is an exact integer, so the
    compiled gradients equal refbnn.ops.conv2d_backward_from_input's bit for bit."""
    rng = np.random.default_rng(1)
    x = np.sign(rng.standard_normal((6, 8, 10, 10))).astype(np.float32)
    w = np.sign(rng.standard_normal((12, 8, 3, 3))).astype(np.float32)
    dout = np.sign(rng.standard_normal((6, 12, 10, 10))).astype(np.float32)
    dx_ref, grads = C.conv2d_backward_from_input(dout, x, w, (1, 1), (1, 1), (1, 1), 1, -1.0)
    dx, dw = F.conv2d_backward(dout, x, w, (1, 1), (1, 1), (1, 1), 1, -1.0)
    assert np.array_equal(dx, dx_ref) and np.array_equal(dw, grads["weight"])


def test_the_bound_catches_a_wrong_kernel():
    """The bound is tight enough to fail results that drop one product (a missed tap, sample or
    output channel), so the tests above cannot pass a wrong kernel."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    dout = rng.standard_normal((3, 5, 6, 6)).astype(np.float32)
    geo = ((1, 1), (1, 1), (1, 1), 1, 0.0)
    (y64, dx64, dw64), (ya, dxa, dwa) = _exact(x, w, dout, *geo)
    kf, kx, kw_ = _keffs(x, w, dout, 1)
    y, = [F.conv2d_forward(x, w, *geo)]
    dx, dw = F.conv2d_backward(dout, x, w, *geo)
    assert _within(y, y64, ya, kf) and _within(dx, dx64, dxa, kx) and _within(dw, dw64, dwa, kw_)
    w_tap = w.copy()
    w_tap[:, :, 2, 2] = 0.0  # a kernel that forgets the last tap
    assert not _within(F.conv2d_forward(x, w_tap, *geo), y64, ya, kf)
    assert not _within(F.conv2d_backward(dout, x, w_tap, *geo)[0], dx64, dxa, kx)
    x_last = x.copy()
    x_last[-1] = 0.0  # a weight gradient that forgets the last sample
    assert not _within(F.conv2d_backward(dout, x_last, w, *geo)[1], dw64, dwa, kw_)
    d_one = dout.copy()
    d_one[:, -1] = 0.0  # an input gradient that forgets the last output channel
    assert not _within(F.conv2d_backward(d_one, x, w, *geo)[0], dx64, dxa, kx)


def test_empty_batch():
    x = np.zeros((0, 4, 5, 5), np.float32)
    w = np.ones((6, 2, 3, 3), np.float32)
    dout = np.zeros((0, 6, 5, 5), np.float32)
    assert F.conv2d_forward(x, w, (1, 1), (1, 1), (1, 1), 2, 0.0).shape == (0, 6, 5, 5)
    dx, dw = F.conv2d_backward(dout, x, w, (1, 1), (1, 1), (1, 1), 2, 0.0)
    assert dx.shape == x.shape and dw.shape == w.shape and not dw.any()
    assert F.conv2d_backward(dout, x, w, (1, 1), (1, 1), (1, 1), 2, 0.0, need_dx=False)[0] is None
    assert F.im2col(x, 3, 3, (1, 1), (1, 1), (1, 1), 0.0).shape == (0, 4, 3, 3, 5, 5)
    assert F.col2im(np.zeros((0, 4, 3, 3, 5, 5), np.float32), x.shape, (1, 1), (1, 1), (1, 1)).shape == x.shape


def test_paths():
    assert "scalar" in F.conv_paths() and F.conv_path() in F.conv_paths()
    with pytest.raises(ValueError, match="path"):
        F._conv_force_path("sse9")


GOOD = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, pad_value=0.0)


def _args():
    x = np.ones((2, 4, 5, 5), np.float32)
    w = np.ones((6, 4, 3, 3), np.float32)
    dout = np.ones((2, 6, 5, 5), np.float32)
    return dout, x, w


@pytest.mark.parametrize("change,exc,match,fwd", [
    (lambda d, x, w, k: (d, x.astype(np.float64), w, k), TypeError, "float32", True),
    (lambda d, x, w, k: (d.astype(np.float16), x, w, k), TypeError, "float32", False),
    (lambda d, x, w, k: (d, x.tolist(), w, k), TypeError, "ndarray", True),
    (lambda d, x, w, k: (d, np.asfortranarray(x.transpose(0, 1, 3, 2)), w, k), ValueError, "C-contiguous", True),
    (lambda d, x, w, k: (d[:, :, :4].copy(), x, w, k), ValueError, "dout: expected shape", False),
    (lambda d, x, w, k: (d[:, :5].copy(), x, w, k), ValueError, "dout: expected shape", False),
    (lambda d, x, w, k: (d, x[:, :3].copy(), w, k), ValueError, "channels", True),
    (lambda d, x, w, k: (d, x, w[:, :3].copy(), {**k, "groups": 2}), ValueError, "channels", True),
    (lambda d, x, w, k: (d, x, w[:5, :2].copy(), {**k, "groups": 2}), ValueError, "not divisible", True),
    (lambda d, x, w, k: (d, x, w, {**k, "groups": 0}), TypeError, "groups", True),
    (lambda d, x, w, k: (d, x, w, {**k, "groups": 1.0}), TypeError, "groups", True),
    (lambda d, x, w, k: (d, x, w, {**k, "padding": (0, 0)}), ValueError, "dout: expected shape", False),
    (lambda d, x, w, k: (d, x[:, :, :1, :1].copy(), w, {**k, "padding": (0, 0)}), ValueError, "at least 1x1", True),
    (lambda d, x, w, k: (d, x, w, {**k, "stride": 0}), ValueError, "stride", True),
    (lambda d, x, w, k: (d, x, w, {**k, "dilation": (1, -1)}), ValueError, "dilation", True),
    (lambda d, x, w, k: (d, x, w, {**k, "padding": (1, 2, 3)}), ValueError, "padding", True),
    (lambda d, x, w, k: (d, x, w, {**k, "pad_value": float("nan")}), ValueError, "pad_value", True),
    (lambda d, x, w, k: (d, x, w, {**k, "threads": 0}), ValueError, "threads", True),
    (lambda d, x, w, k: (d, x, w, {**k, "need_dx": 1}), TypeError, "need_dx", False),
    (lambda d, x, w, k: (d, x, w[None], k), ValueError, "dimensions", True),
])
def test_bad_input(change, exc, match, fwd):
    """Each bad argument raises before any C runs, naming what was expected (the forward too, where
    the argument is one of its own)."""
    dout, x, w, kw = change(*_args(), dict(GOOD))
    with pytest.raises(exc, match=match):
        F.conv2d_backward(dout, x, w, **kw)
    if fwd:
        kw.pop("need_dx", None)
        with pytest.raises(exc, match=match):
            F.conv2d_forward(x, w, **kw)


def test_bad_input_im2col_col2im():
    x = np.ones((2, 3, 5, 5), np.float32)
    cols = F.im2col(x, 3, 3, (1, 1), (1, 1), (1, 1), 0.0)
    with pytest.raises(TypeError, match="float32"):
        F.im2col(x.astype(np.float64), 3, 3, (1, 1), (1, 1), (1, 1), 0.0)
    with pytest.raises(ValueError, match="kh"):
        F.im2col(x, 0, 3, (1, 1), (1, 1), (1, 1), 0.0)
    with pytest.raises(ValueError, match="at least 1x1"):
        F.im2col(x, 9, 3, (1, 1), (1, 1), (1, 1), 0.0)
    with pytest.raises(ValueError, match="cols: expected shape"):
        F.col2im(cols, (2, 3, 6, 5), (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="dimensions"):
        F.col2im(cols[0], x.shape, (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="x_shape"):
        F.col2im(cols, (2, 3, 5), (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="C-contiguous"):
        F.col2im(cols[:, :, ::-1], x.shape, (1, 1), (1, 1), (1, 1))


def test_huge_geometry_refused():
    """Paddings and dilations whose scratch sizes could overflow in C are refused first: a padded
    input of 2**30 x 2**30 with a dilation that brings the output back to 2x2."""
    x = np.ones((1, 1, 1, 1), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    pad, dil = (2 ** 29, 2 ** 29 - 1, 2 ** 29, 2 ** 29 - 1), (2 ** 29 - 1, 2 ** 29 - 1)
    assert R.conv_output_size(1, 3, 1, pad[:2], dil[0]) == 2
    geo = ((1, 1), pad, dil)
    with pytest.raises(ValueError, match=r"2\*\*40"):
        F.conv2d_forward(x, w, *geo, 1, 0.0)
    with pytest.raises(ValueError, match=r"2\*\*40"):
        F.conv2d_backward(np.ones((1, 1, 2, 2), np.float32), x, w, *geo, 1, 0.0)
    with pytest.raises(ValueError, match=r"2\*\*40"):
        F.im2col(x, 3, 3, *geo, 0.0)
    with pytest.raises(ValueError, match="sizes above"):
        F.conv2d_forward(x, w, (1, 1), (2 ** 30, 2 ** 30), (1, 1), 1, 0.0)
