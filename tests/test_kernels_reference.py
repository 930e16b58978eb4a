"""The NumPy reference kernels: exact integer results of +-1 products, and agreement with the ops."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from refbnn import kernels, ops
from refbnn.layers import BinaryConv2d, BinaryLinear

seeds = st.integers(0, 2**32 - 1)


def signs(rng, shape, dtype=np.float32):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(dtype)


@given(seeds, st.integers(1, 9), st.integers(1, 9), st.integers(1, 200))
def test_binary_matmul_counts_agreements(seed, m, n, k):
    rng = np.random.default_rng(seed)
    a, b = signs(rng, (m, k)), signs(rng, (n, k))
    out = kernels.binary_matmul(a, b, backend="numpy")
    agree = (a[:, None, :] == b[None, :, :]).sum(-1)
    np.testing.assert_array_equal(out, 2 * agree - k)  # dot = agreements - disagreements
    assert out.dtype == np.float32


@given(seeds, st.integers(0, 2), st.integers(1, 2), st.integers(0, 2), st.integers(1, 2),
       st.sampled_from([0.0, 1.0, -1.0]), st.sampled_from([1, 2]))
def test_binary_conv2d_matches_explicit_padding(seed, n, stride, padding, dilation, pad_value, groups):
    """Padding with v equals a valid convolution of the input explicitly padded with v."""
    rng = np.random.default_rng(seed)
    x, w = signs(rng, (n, 2 * groups, 6, 5)), signs(rng, (2 * groups, 2, 3, 3))
    out = kernels.binary_conv2d(x, w, stride, padding, dilation, groups, pad_value, backend="numpy")
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=pad_value)
    ref, _ = ops.conv2d_forward(xpad, w, None, stride, 0, dilation, groups)
    np.testing.assert_array_equal(out, ref)
    assert np.array_equal(out, np.round(out))


def test_eval_kernel_path_is_bit_identical_to_training_float_path():
    rng = np.random.default_rng(3)
    for layer, x in [(BinaryConv2d(4, 6, 3, padding=1, rng=rng), rng.standard_normal((2, 4, 7, 7))),
                     (BinaryConv2d(4, 6, 3, padding=1, pad_value=1.0, rng=rng), rng.standard_normal((2, 4, 7, 7))),
                     (BinaryLinear(70, 5, rng=rng), rng.standard_normal((3, 70)))]:
        x = x.astype(np.float32)
        layer.backend = "numpy"
        train_out, _ = layer.train().forward(x)
        eval_out, cache = layer.eval().forward(x)
        np.testing.assert_array_equal(train_out, eval_out)
        # and the eval-mode cache still supports backward (gradients equal the training path's)
        g = rng.standard_normal(eval_out.shape).astype(np.float32)
        layer.zero_grad()
        dx_eval = layer.backward(g, cache)
        gw_eval = layer.grads["weight"].copy()
        layer.zero_grad()
        dx_train = layer.train().backward(g, layer.forward(x)[1])
        np.testing.assert_array_equal(dx_eval, dx_train)
        np.testing.assert_array_equal(gw_eval, layer.grads["weight"])


@given(seeds, st.integers(1, 9), st.sampled_from([1, 2]), st.sampled_from([0.0, 1.0]))
def test_conv2d_backward_from_input_is_bit_identical(seed, n, groups, pad_value):
    """Building the columns a few samples at a time (tiny chunks force one sample per slice) gives
    exactly conv2d_backward's dx and dW: the dW sum runs over the samples in the same order."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2 * groups, 6, 5)).astype(np.float32)
    w = rng.standard_normal((3 * groups, 2, 3, 3)).astype(np.float32)
    args = ((2, 1), (1, 1), (1, 1), groups, pad_value)
    y, cache = ops.conv2d_forward(x, w, None, *args)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = ops.conv2d_backward(g, cache)
    for chunk_bytes in (1, 3 * x[0].nbytes * 9, 1 << 22):
        dx2, grads2 = ops.conv2d_backward_from_input(g, x, w, *args, chunk_bytes=chunk_bytes)
        assert dx2.tobytes() == dx.tobytes() and grads2["weight"].tobytes() == grads["weight"].tobytes()
