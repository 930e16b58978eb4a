"""What a new user of `refbnn crosscheck` runs into: asymmetric ("same") padding as a plain constructor
argument of the conv op and layers."""
import numpy as np
import pytest
from helpers import REL_TOL, check_module, check_op, probe_quantizers
from hypothesis import given
from hypothesis import strategies as st

from refbnn import kernels, ops
from refbnn.layers import BinaryConv2d, Conv2d

seeds = st.integers(0, 2**32 - 1)


# --- 1. four-sided padding ---------------------------------------------------------------------------

@given(seeds, st.integers(1, 2), st.sampled_from([1, 2]), st.tuples(*[st.integers(0, 2)] * 4), st.integers(1, 2),
       st.integers(1, 3), st.sampled_from([0.0, 1.0, -1.0]), st.booleans())
def test_conv2d_four_sided_padding_gradients(seed, n, groups, pads, stride, k, pad_value, bias):
    """conv2d with (top, bottom, left, right): the forward is the convolution of the explicitly padded input,
    the backward its gradient (central differences)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2 * groups, 4, 5))
    w = rng.standard_normal((2 * groups, 2, k, k))
    b = rng.standard_normal(2 * groups) if bias else None
    top, bottom, left, right = pads
    out, _ = ops.conv2d_forward(x, w, b, stride, pads, 1, groups, pad_value)
    xpad = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=pad_value)
    ref, _ = ops.conv2d_forward(xpad, w, b, stride, 0, 1, groups)
    assert np.array_equal(out, ref)
    inputs, names = {"x": x, "w": w}, {"x": "dx", "w": "weight"}
    if bias:
        inputs["b"], names["b"] = b, "bias"

    def fwd(x, w, b=None):
        return ops.conv2d_forward(x, w, b, stride, pads, 1, groups, pad_value)

    errs = check_op(fwd, ops.conv2d_backward, inputs, names, rng)
    assert max(errs.values()) < REL_TOL, errs


def test_padding_forms_and_bad_padding():
    assert BinaryConv2d(2, 2, 3, padding=1).padding == (1, 1)
    assert BinaryConv2d(2, 2, 3, padding=(1, 2)).padding == (1, 2)
    assert BinaryConv2d(2, 2, 3, padding=(1, 1, 2, 2)).padding == (1, 2)  # symmetric: the short form
    assert BinaryConv2d(2, 2, 3, padding=(0, 1, 0, 1)).padding == (0, 1, 0, 1)
    assert Conv2d(2, 2, 2, padding=(0, 1, 1, 0)).padding == (0, 1, 1, 0)
    for bad in ((1, 2, 3), (1, -1, 0, 0), "same", (1.0, 1.0), True):
        with pytest.raises(ValueError, match="padding: expected"):
            BinaryConv2d(2, 2, 3, padding=bad)


@given(seeds, st.tuples(*[st.integers(0, 2)] * 4), st.sampled_from([1, 2]), st.sampled_from([0.0, 1.0, -1.0]))
def test_binary_conv_asymmetric_padding_against_surrogate(seed, pads, stride, pad_value):
    rng = np.random.default_rng(seed)
    layer = BinaryConv2d(4, 3, 2, stride=stride, padding=pads, weight_quantizer="ste_sign",
                         input_quantizer="ste_sign", scale="learned", bias=True, pad_value=pad_value, rng=rng,
                         dtype=np.float64, backend="numpy")
    errs = check_module(probe_quantizers(layer), rng.standard_normal((2, 4, 5, 5)), rng)
    assert max(errs.values()) < REL_TOL, errs


@pytest.mark.parametrize("pad_value", [0.0, 1.0, -1.0])
@pytest.mark.parametrize("pads,stride,groups", [((0, 1, 0, 1), 2, 1), ((1, 2, 0, 1), 1, 2), ((2, 0, 1, 0), 2, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_kernel_and_numpy_agree_for_asymmetric_padding(pad_value, pads, stride, groups, dtype):
    """The packed kernels pad symmetrically: asymmetric padding must give the reference's values bit for bit
    (the kernel interface and a binary layer, forward in both modes and the training backward)."""
    pytest.importorskip("refbnn.kernels._bitpack", reason="the bit-packed kernels are not built "
                        "(python setup.py build_ext --inplace)")
    rng = np.random.default_rng(3)
    x = np.where(rng.random((2, 4, 7, 6)) < 0.5, -1.0, 1.0).astype(dtype)
    w = np.where(rng.random((6, 4 // groups, 3, 2)) < 0.5, -1.0, 1.0).astype(dtype)
    ref = kernels.binary_conv2d(x, w, stride, pads, 1, groups, pad_value, backend="numpy")
    assert np.array_equal(kernels.binary_conv2d(x, w, stride, pads, 1, groups, pad_value, backend="cython"), ref)
    xpad = np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:]), constant_values=pad_value)
    assert np.array_equal(ops.conv2d_forward(xpad, w, None, stride, 0, 1, groups)[0], ref)
    xr = rng.standard_normal((2, 4, 7, 6)).astype(dtype)
    results = {}
    for backend in ("numpy", "cython"):
        layer = BinaryConv2d(4, 6, (3, 2), stride, pads, 1, groups, scale="mean_abs", bias=True,
                             pad_value=pad_value, backend=backend, rng=np.random.default_rng(0), dtype=dtype)
        layer.eval()
        out_eval, _ = layer.forward(xr)
        layer.train()
        out, cache = layer.forward(xr)
        dx = layer.backward(np.ones_like(out), cache)
        results[backend] = (out_eval, out, dx, layer.grads["weight"], layer.grads["bias"])
    for a, b in zip(results["numpy"], results["cython"]):
        assert np.array_equal(a, b)
