"""Hostile input for the engine: quantizers, ops and layers.

The property: for any array (any dtype, byte order, layout, shape, NaN/Inf) an op, layer or quantizer
either raises a clear ``ValueError``/``TypeError`` naming what was expected, or returns exactly (bit for
bit) what it returns for a clean native C-contiguous copy of the same values, with no NaN in the
result -- never a wrong number, never a crash. Plus the argument validation of every constructor.

REFBNN_HOSTILE_EXAMPLES=N sets the number of hypothesis examples per property (default 150).
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refbnn import ops
from refbnn.checks import FLOAT_DTYPES
from refbnn.layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, BinaryConv2d, BinaryLinear, Conv2d, Hardtanh,
                           LearnableBias, Linear, MaxPool2d, PReLU, RPReLU, Sequential, ShortcutA)
from refbnn.quantizers import QUANTIZERS

EXAMPLES = int(os.environ.get("REFBNN_HOSTILE_EXAMPLES", "150"))
HOSTILE = settings(max_examples=EXAMPLES, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.filter_too_much])

rng = np.random.default_rng(0)


# -- deterministic regressions ----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_every_quantizer_refuses_nan_naming_itself_and_the_index(name):
    x = rng.standard_normal((3, 4, 2)).astype(np.float32)
    x[1, 2, 0] = np.nan
    for training in (True, False):
        with pytest.raises(ValueError, match=rf"^{name}: x contains NaN at index \(1, 2, 0\)"):
            QUANTIZERS[name]().forward(x, training=training)


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_inf_refused_or_mapped_like_a_huge_value(name):
    """Quantizers whose formulas are defined at +-Inf (``accepts_inf``) give what a huge finite value
    gives; every other one refuses Inf."""
    q = QUANTIZERS[name]()
    x = rng.standard_normal((3, 4)).astype(np.float64)
    for v in (np.inf, -np.inf):
        xi = x.copy()
        xi[2, 1] = v
        if not q.accepts_inf:
            with pytest.raises(ValueError, match=rf"^{name}: x contains -?Inf at index \(2, 1\)"):
                q.forward(xi)
            continue
        xh = x.copy()
        xh[2, 1] = np.sign(v) * 1e300
        (yi, ci), (yh, ch) = q.forward(xi), q.forward(xh)
        assert np.array_equal(yi, yh) and np.isfinite(yi).all()
        gi, gh = q.backward(np.ones_like(x), ci), q.backward(np.ones_like(x), ch)
        assert np.array_equal(gi, gh) and np.isfinite(gi).all()


@pytest.mark.parametrize("bad,err", [
    (np.ones((2, 3), np.int64), TypeError), (np.ones((2, 3), np.float16), TypeError),
    (np.ones((2, 3), ">f4"), TypeError), (np.ones((2, 3), bool), TypeError), ([[1.0, 2.0]], TypeError),
])
def test_quantizers_refuse_bad_dtypes(bad, err):
    for name, cls in QUANTIZERS.items():
        with pytest.raises(err, match=rf"^{name}: x: expected"):
            cls().forward(bad)


@pytest.mark.parametrize("make,shape", [
    (lambda **k: BinaryConv2d(2, 3, 3, **k), (2, 2, 5, 5)),
    (lambda **k: BinaryLinear(4, 3, **k), (2, 4)),
])
def test_binary_layer_forward_with_nan_input_refuses_it(make, shape):
    """NaN used to be binarized to +1: the layer's forward (the path Sequential takes, without
    ``Module.__call__``'s input check) must refuse it, in training and eval mode."""
    x = rng.standard_normal(shape).astype(np.float32)
    x[(1,) + (0,) * (len(shape) - 1)] = np.nan
    for iq in ("ste_sign", "approx_sign", "swish_sign", "identity_ste_sign", "ede"):
        for train in (True, False):
            layer = make(input_quantizer=iq).train(train)
            with pytest.raises(ValueError, match=rf"^{iq}: x contains NaN at index"):
                layer.forward(x)
    layer = make(input_quantizer="ste_sign")
    layer.params["weight"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^ste_sign: x contains NaN at index \(0, 0"):
        layer.forward(np.ones(shape, np.float32))


@pytest.mark.parametrize("make,match", [
    (lambda: BinaryConv2d(4, 4, 3, groups=0), r"groups: expected an int in \[1, "),
    (lambda: Conv2d(4, 4, 3, groups=0), r"groups: expected an int in \[1, "),
    (lambda: Conv2d(4, 4, 3, groups=3), "groups: channels 4->4 are not divisible by groups=3"),
    (lambda: BinaryConv2d(4, 4, 3, groups=True), "groups: expected an int"),
    (lambda: BinaryConv2d(4, 4, 3, groups=2.0), "groups: expected an int"),
    (lambda: BinaryConv2d(0, 4, 3), "in_channels: expected an int"),
    (lambda: BinaryConv2d(4, 2 ** 31, 1), "out_channels: expected an int in"),
    (lambda: Conv2d(4.0, 4, 3), "in_channels: expected an int"),
    (lambda: Conv2d(4, 4, 2 ** 31), "kernel_size: expected values in"),
    (lambda: Conv2d(4, 4, (3, True)), "kernel_size: expected an int or a pair of ints"),
    (lambda: Conv2d(4, 4, 3, stride=0), "stride: expected values in"),
    (lambda: Conv2d(4, 4, 3, stride=1.0), "stride: expected an int"),
    (lambda: Conv2d(4, 4, 3, padding=-1), "padding: expected values in"),
    (lambda: Conv2d(4, 4, 3, padding=2 ** 31), "padding: expected values in"),
    (lambda: Conv2d(4, 4, 3, dilation=0), "dilation: expected values in"),
    (lambda: Conv2d(4, 4, 3, bias=None), "bias: expected True or False"),
    (lambda: Conv2d(4, 4, 3, dtype=np.int32), "dtype: expected float32 or float64"),
    (lambda: Conv2d(4, 4, 3, init="xavier"), "init: expected one of"),
    (lambda: Conv2d(2 ** 16, 2 ** 16, 3), "weight: a parameter of shape"),
    (lambda: BinaryConv2d(4, 4, 3, pad_value=True), "pad_value: expected one of"),
    (lambda: BinaryConv2d(4, 4, 3, pad_value=float("nan")), "pad_value: expected one of"),
    (lambda: BinaryConv2d(4, 4, 3, scale_init="zeros"), "scale_init: expected one of"),
    (lambda: BinaryConv2d(4, 4, 3, backend=None), "backend: expected one of"),
    (lambda: BinaryLinear(2 ** 31, 3), "in_features: expected an int in"),
    (lambda: BinaryLinear(3, True), "out_features: expected an int"),
    (lambda: Linear(3, 0), "out_features: expected an int"),
    (lambda: Linear(3, 2, rng=-1), "rng: expected"),
    (lambda: Linear(3, 2, rng=1.5), "rng: expected"),
    (lambda: BatchNorm1d(0), "num_features: expected an int"),
    (lambda: BatchNorm2d(3, eps=0.0), "eps: expected a finite number > 0"),
    (lambda: BatchNorm2d(3, eps=float("nan")), "eps: expected a finite number"),
    (lambda: BatchNorm2d(3, momentum=1.5), "momentum: expected a finite number >= 0.0 and <= 1.0"),
    (lambda: BatchNorm2d(3, momentum=float("nan")), "momentum: expected a finite number"),
    (lambda: BatchNorm2d(3, momentum=True), "momentum: expected a finite number"),
    (lambda: BatchNorm2d(3, gamma_init=float("inf")), "gamma_init: expected a finite number"),
    (lambda: Hardtanh(float("nan"), 1.0), "min_val: expected a finite number"),
    (lambda: Hardtanh(1.0, -1.0), "expected min_val < max_val"),
    (lambda: PReLU(0), "num_channels: expected an int"),
    (lambda: PReLU(3, init=float("nan")), "init: expected a finite number"),
    (lambda: RPReLU(2 ** 31), "num_channels: expected an int"),
    (lambda: LearnableBias(True), "num_channels: expected an int"),
    (lambda: MaxPool2d(0), "kernel_size: expected values in"),
    (lambda: MaxPool2d(2, stride=0), "stride: expected values in"),
    (lambda: AvgPool2d(2, padding=2), "padding: expected at most half the kernel size"),
    (lambda: ShortcutA(16, 32, stride=0), "stride: expected an int in"),
    (lambda: ShortcutA(16, 32, mode="max"), "mode: expected one of"),
    (lambda: ShortcutA(32, 16), "out_channels: shortcut A cannot reduce channels"),
    (lambda: Sequential(Linear(2, 2), "relu"), "expected a refbnn Module"),
    (lambda: Linear(2, 2).train("yes"), "mode: expected True or False"),
])
def test_layer_constructors_validate_their_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


X4 = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
W4 = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
C4 = np.ones(4, np.float32)


@pytest.mark.parametrize("call,match", [
    (lambda: ops.conv2d_forward(X4, W4, groups=True), "groups: expected an int"),
    (lambda: ops.conv2d_forward(X4, W4, groups=2.0), "groups: expected an int"),
    (lambda: ops.conv2d_forward(X4, W4, groups=2, pad_value=float("nan")), "pad_value: expected a finite number"),
    (lambda: ops.conv2d_forward(X4, W4, groups=2, stride=2 ** 31), "stride: expected values in"),
    (lambda: ops.batchnorm_forward(X4, C4, C4, C4.copy(), C4.copy(), eps=float("nan")), "eps: expected a finite"),
    (lambda: ops.batchnorm_forward(X4, C4, C4, C4.copy(), C4.copy(), eps=float("inf")), "eps: expected a finite"),
    (lambda: ops.batchnorm_forward(X4, C4, C4, C4.copy(), C4.copy(), momentum=float("nan")), "momentum: expected"),
    (lambda: ops.batchnorm_forward(X4, C4, C4, C4.copy(), C4.copy(), training="no"), "training: expected True"),
    (lambda: ops.batchnorm_forward(X4, C4.astype(np.float64), C4, C4.copy(), C4.copy()), "dtype mismatch"),
    (lambda: ops.batchnorm_forward(X4, C4, C4, C4.copy(), -C4, training=False), "running_var: expected values"),
    (lambda: ops.hardtanh_forward(X4, float("nan"), 1.0), "min_val: expected a finite number"),
    (lambda: ops.prelu_forward(X4, C4.astype(np.float64)), "dtype mismatch"),
    (lambda: ops.bias_forward(X4, C4.astype(np.float64)), "dtype mismatch"),
    (lambda: ops.add_forward(X4, X4.astype(np.float64)), "dtype mismatch"),
    (lambda: ops.add_forward(X4, X4.astype(np.int32)), "b: expected dtype float32 or float64"),
    (lambda: ops.add_forward(X4, np.where(X4 > 0, np.nan, X4)), "b: contains NaN or Inf"),
    (lambda: ops.distillation_forward(X4[:, :, 0, 0], X4[:, :, 0, 0], temperature=float("nan")), "temperature"),
    (lambda: ops.distillation_forward(X4[:, :, 0, 0], X4[:, :, 0, 0], temperature=float("inf")), "temperature"),
    (lambda: ops.softmax_cross_entropy_forward(X4[:, :, 0, 0], [0, 1]), "labels: expected an integer array"),
    (lambda: ops.shortcut_a_forward(X4, stride=0), "stride: expected an int in"),
    (lambda: ops.shortcut_a_forward(X4, stride=2, pad_before=1.5), "pad_before: expected an int"),
    (lambda: ops.shortcut_a_forward(X4, stride=2, pad_after=-1), "pad_after: expected an int"),
    (lambda: ops.maxpool2d_forward(X4, (2, False)), "kernel_size: expected an int or a pair"),
])
def test_ops_validate_their_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_nonfinite_report_names_the_first_bad_element():
    from refbnn.checks import first_nonfinite
    x = np.zeros((2, 3, 4), np.float32)
    assert first_nonfinite(x) is None
    x[1, 2, 3], x[1, 0, 1] = np.inf, -np.inf
    assert first_nonfinite(x) == ("-Inf", (1, 0, 1))
    x[0, 2, 0] = np.nan
    assert first_nonfinite(x) == ("NaN", (0, 2, 0))
    big = np.full(10, 3e38, np.float32)  # the sum overflows, the values are finite
    assert first_nonfinite(big) is None
    with pytest.raises(ValueError, match=r"x: contains NaN or Inf \(NaN at index \(0, 2, 0\)\)"):
        ops.relu_forward(x)


# -- hypothesis: hostile arrays ----------------------------------------------------------------------
FINITE = st.floats(-4.0, 4.0, width=32)
SPECIAL = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1e-45, 3e38, -3e38])
BAD_DTYPES = ["<i4", "<i8", "<f2", ">f4", ">f8", "|b1", "<c8", "<u1", "O"]


@st.composite
def hostile(draw, shape):
    """An array of (roughly) ``shape``: mostly clean floats, sometimes with NaN/Inf/extremes, a wrong
    dtype or byte order, a non-contiguous or Fortran layout, a zero-size or wrong-rank shape."""
    shape = list(shape)
    kind = draw(st.sampled_from(["same", "same", "same", "zero", "drop", "extra", "resize"]))
    if kind == "zero" and shape:
        shape[draw(st.integers(0, len(shape) - 1))] = 0
    elif kind == "drop" and shape:
        shape.pop(draw(st.integers(0, len(shape) - 1)))
    elif kind == "extra":
        shape.insert(draw(st.integers(0, len(shape))), draw(st.integers(1, 2)))
    elif kind == "resize" and shape:
        i = draw(st.integers(0, len(shape) - 1))
        shape[i] = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(["<f4", "<f4", "<f8", "<f8"] + BAD_DTYPES))
    base = draw(hnp.arrays(np.float64, tuple(shape), elements=FINITE))
    if draw(st.booleans()) and base.size:
        flat = base.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, base.size - 1))] = draw(SPECIAL)
    layout = draw(st.sampled_from(["c", "c", "strided", "fortran", "reversed"]))
    with np.errstate(all="ignore"):
        if dtype == "O":
            x = base.astype(object)
        else:
            x = base.astype(np.dtype(dtype))
    if layout == "strided" and x.ndim:
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
        big[..., ::2] = x
        x = big[..., ::2]
    elif layout == "fortran":
        x = np.asfortranarray(x)
    elif layout == "reversed" and x.ndim:
        x = x[..., ::-1].copy()[..., ::-1]
    return x


def _clean(x):
    """The same values as a native, C-contiguous array (what the answer must equal)."""
    return np.ascontiguousarray(x.astype(x.dtype.newbyteorder("="), copy=True))


def _same(a, b):
    """Bit-identical results: arrays (values, dtype and shape), nested tuples/lists/dicts, scalars."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b, equal_nan=True))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    return a == b


def _has_nan(out):
    if isinstance(out, np.ndarray):
        return out.dtype.kind == "f" and bool(np.isnan(out).any())
    if isinstance(out, (tuple, list)):
        return any(_has_nan(o) for o in out)
    if isinstance(out, dict):
        return any(_has_nan(o) for o in out.values())
    return isinstance(out, float) and out != out


def _has_nonfinite(out):
    if isinstance(out, np.ndarray):
        return out.dtype.kind == "f" and not np.isfinite(out).all()
    if isinstance(out, (tuple, list)):
        return any(_has_nonfinite(o) for o in out)
    if isinstance(out, dict):
        return any(_has_nonfinite(o) for o in out.values())
    return isinstance(out, float) and not np.isfinite(out)


def check_hostile(fn, x, name=None, finite_only=True, accepts_inf=False, finite_result=False):
    """``fn(x)`` raises a clear ValueError/TypeError (naming ``name`` when given) or equals ``fn`` of the
    clean copy, with no NaN (``finite_result``: no NaN or Inf); never another exception."""
    native = isinstance(x, np.ndarray) and x.dtype in FLOAT_DTYPES
    nonfinite = native and x.size and not np.isfinite(x).all()
    has_nan = native and x.size and np.isnan(x).any()
    try:
        out = fn(x)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        assert msg, "an error without a message"
        if name is not None:
            assert msg.startswith(name), msg
        return "refused"
    assert native, f"accepted an array of dtype {getattr(x, 'dtype', type(x))}"
    assert not has_nan, "accepted NaN"
    if finite_only:
        assert not (nonfinite and not accepts_inf), "accepted Inf"
    ref = fn(_clean(x))
    assert _same(out, ref), "a different result than for the clean C-contiguous copy"
    assert not _has_nan(out), "NaN in the result"
    if finite_result:
        assert not _has_nonfinite(out), "Inf in the result"
    return "accepted"


QNAMES = sorted(QUANTIZERS)


@HOSTILE
@given(name=st.sampled_from(QNAMES), x=hostile((3, 4, 2)), training=st.booleans())
def test_quantizers_on_hostile_arrays(name, x, training):
    def run(v):
        q = QUANTIZERS[name]()
        if q.needs_rng:
            q.set_rng(np.random.default_rng(0))
        y, cache = q.forward(v, training=training)
        return y, cache, q.backward(np.ones(y.shape, y.dtype), cache)

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty row: an empty result
        # a quantizer's values, caches and gradients are finite for every input it accepts
        check_hostile(run, x, name=name, accepts_inf=QUANTIZERS[name].accepts_inf, finite_result=True)


def _op_cases():
    w2 = rng.standard_normal((3, 4)).astype(np.float32)
    w4 = rng.standard_normal((4, 2, 2, 2)).astype(np.float32)
    c2 = np.ones(2, np.float32)

    def f32(fn):  # the parameters in the input's dtype, so that float64 inputs are exercised too
        return lambda x: fn(x, lambda a: a.astype(x.dtype) if getattr(x, "dtype", None) in FLOAT_DTYPES else a)

    def layer(make):
        def run(x):
            m = make()
            if getattr(x, "dtype", None) == np.float64:
                m.astype(np.float64)
            y, cache = m.forward(x)
            return y, m.backward(np.ones_like(y), cache)
        return run

    return {
        "linear": ((2, 4), f32(lambda x, c: ops.linear_forward(x, c(w2))[0])),
        "conv2d": ((2, 2, 4, 4), f32(lambda x, c: ops.conv2d_forward(x, c(w4), None, 1, 1)[0])),
        "relu": ((2, 3), lambda x: ops.relu_forward(x)[0]),
        "hardtanh": ((2, 3), lambda x: ops.hardtanh_forward(x)[0]),
        "prelu": ((2, 2, 3), f32(lambda x, c: ops.prelu_forward(x, c(c2))[0])),
        "batchnorm": ((3, 2, 2, 2), f32(lambda x, c: ops.batchnorm_forward(x, c(c2), c(c2), c(c2), c(c2))[0])),
        "maxpool": ((1, 2, 4, 4), lambda x: ops.maxpool2d_forward(x, 2)[0]),
        "avgpool": ((1, 2, 4, 4), lambda x: ops.avgpool2d_forward(x, 2)[0]),
        "global_avgpool": ((1, 2, 3, 3), lambda x: ops.global_avgpool_forward(x)[0]),
        "flatten": ((2, 2, 3), lambda x: ops.flatten_forward(x)[0]),
        "shortcut_a": ((1, 2, 4, 4), lambda x: ops.shortcut_a_forward(x, 2, 1, 1)[0]),
        "softmax_ce": ((2, 3), lambda x: ops.softmax_cross_entropy_forward(x, np.array([0, 2]))[0]),
        "BinaryConv2d": ((2, 2, 4, 4), layer(lambda: BinaryConv2d(2, 4, 3, padding=1, rng=0))),
        "BinaryConv2d_eval": ((2, 2, 4, 4), layer(lambda: BinaryConv2d(2, 4, 3, padding=1, rng=0).eval())),
        "BinaryLinear": ((2, 4), layer(lambda: BinaryLinear(4, 3, rng=0))),
        "BinaryLinear_xnor": ((2, 4), layer(lambda: BinaryLinear(4, 3, "xnor_weight", "xnor_act", rng=0))),
        "Conv2d": ((2, 2, 4, 4), layer(lambda: Conv2d(2, 3, 3, rng=0))),
        "BatchNorm2d": ((2, 2, 2, 2), layer(lambda: BatchNorm2d(2))),
    }


OPS = _op_cases()


@HOSTILE
@given(data=st.data(), name=st.sampled_from(sorted(OPS)))
def test_ops_and_layers_on_hostile_arrays(data, name):
    shape, fn = OPS[name]
    x = data.draw(hostile(shape))
    # the binary layers' default input quantizer, ste_sign, is defined at +-Inf (sign, zero gradient)
    accepts_inf = name.startswith("Binary") and "xnor" not in name
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        check_hostile(fn, x, accepts_inf=accepts_inf)


def test_backward_refuses_a_dout_of_the_wrong_shape():
    # a dout with the right number of values but another shape used to be reshaped or sliced silently
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    _, cache = ops.flatten_forward(x)
    with pytest.raises(ValueError, match=r"dout: expected shape \(2, 48\)"):
        ops.flatten_backward(np.ones((4, 24), np.float32), cache)
    out, cache = ops.shortcut_a_forward(x, 2, 1, 1)
    with pytest.raises(ValueError, match=r"dout: expected shape \(2, 5, 2, 2\)"):
        ops.shortcut_a_backward(np.ones((2, 6, 2, 2), np.float32), cache)
    w = np.sign(np.random.default_rng(1).standard_normal((5, 3, 3, 3))).astype(np.float32)
    with pytest.raises(ValueError, match=r"dout: expected shape \(2, 5, \*, \*\)"):
        ops.conv2d_backward_from_input(np.ones((3, 5, 4, 4), np.float32), x, w, (1, 1), (1, 1), (1, 1), 1)
