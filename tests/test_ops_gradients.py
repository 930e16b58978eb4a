"""Finite-difference gradient checks of every op pair (float64, hypothesis-drawn shapes)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import REL_TOL, check_op
from refbnn import ops

seeds = st.integers(0, 2**32 - 1)


def away_from(x, points, margin=1e-3):
    """Move entries within ``margin`` of a kink (e.g. 0 or +-1) away from it."""
    for p in points:
        close = np.abs(x - p) < margin
        x[close] = p + np.where(x[close] >= p, margin, -margin) * 2
    return x


@given(seeds, st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), st.booleans())
def test_linear(seed, n, fin, fout, bias):
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((n, fin)), "w": rng.standard_normal((fout, fin))}
    names = {"x": "dx", "w": "weight"}
    if bias:
        inputs["b"] = rng.standard_normal(fout)
        names["b"] = "bias"
    errs = check_op(ops.linear_forward, ops.linear_backward, inputs, names, rng)
    assert max(errs.values()) < REL_TOL, errs


@given(seeds, st.integers(1, 2), st.sampled_from([1, 2, 3]), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 2), st.integers(0, 2), st.integers(1, 2), st.integers(3, 7), st.integers(3, 7),
       st.booleans(), st.sampled_from([0.0, 1.0, -1.0]))
def test_conv2d(seed, n, groups, cin_g, cout_g, stride, padding, dilation, h, w, bias, pad_value):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 4))
    if (h + 2 * padding - dilation * (k - 1) - 1) < 0 or (w + 2 * padding - dilation * (k - 1) - 1) < 0:
        k = 1
    cin, cout = cin_g * groups, cout_g * groups
    inputs = {"x": rng.standard_normal((n, cin, h, w)), "w": rng.standard_normal((cout, cin_g, k, k))}
    names = {"x": "dx", "w": "weight"}
    if bias:
        inputs["b"] = rng.standard_normal(cout)
        names["b"] = "bias"

    def fwd(x, w, b=None):
        return ops.conv2d_forward(x, w, b, stride, padding, dilation, groups, pad_value)

    errs = check_op(fwd, ops.conv2d_backward, inputs, names, rng)
    assert max(errs.values()) < REL_TOL, errs


# n >= 3: with two samples per channel, training-mode BN maps x to about +-1 and its x-gradient is only
# eps-sized, below what central differences resolve.
@given(seeds, st.integers(3, 5), st.integers(1, 4), st.sampled_from([2, 4]), st.booleans())
def test_batchnorm(seed, n, c, ndim, training):
    rng = np.random.default_rng(seed)
    shape = (n, c) if ndim == 2 else (n, c, 2, 3)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)

    def fwd(x, gamma, beta):
        return ops.batchnorm_forward(x, gamma, beta, rm.copy(), rv.copy(), training=training)

    inputs = {"x": rng.standard_normal(shape) * 2 + 1, "gamma": rng.standard_normal(c), "beta": rng.standard_normal(c)}
    errs = check_op(fwd, ops.batchnorm_backward, inputs, {"x": "dx", "gamma": "gamma", "beta": "beta"}, rng)
    assert max(errs.values()) < REL_TOL, errs


@pytest.mark.parametrize("op", ["hardtanh", "relu", "prelu", "rprelu", "bias"])
@given(seed=seeds, shape=st.sampled_from([(3, 4), (2, 3, 2, 2)]))
def test_activations(op, seed, shape):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.standard_normal(shape) * 1.5
    if op == "hardtanh":
        res = check_op(ops.hardtanh_forward, ops.hardtanh_backward, {"x": away_from(x, [-1, 1])}, {"x": "dx"}, rng)
    elif op == "relu":
        res = check_op(ops.relu_forward, ops.relu_backward, {"x": away_from(x, [0])}, {"x": "dx"}, rng)
    elif op == "prelu":
        res = check_op(ops.prelu_forward, ops.prelu_backward, {"x": away_from(x, [0]), "a": rng.standard_normal(c)},
                       {"x": "dx", "a": "weight"}, rng)
    elif op == "bias":
        res = check_op(ops.bias_forward, ops.bias_backward, {"x": x, "b": rng.standard_normal(c)},
                       {"x": "dx", "b": "bias"}, rng)
    else:
        gamma = rng.standard_normal(c)
        x = x + gamma.reshape((1, c) + (1,) * (len(shape) - 2))
        x = away_from(x - gamma.reshape((1, c) + (1,) * (len(shape) - 2)), [0]) + \
            gamma.reshape((1, c) + (1,) * (len(shape) - 2))
        res = check_op(ops.rprelu_forward, ops.rprelu_backward,
                       {"x": x, "gamma": gamma, "a": rng.standard_normal(c), "zeta": rng.standard_normal(c)},
                       {"x": "dx", "gamma": "gamma", "a": "weight", "zeta": "zeta"}, rng)
    assert max(res.values()) < REL_TOL, res


@given(seeds, st.integers(1, 2), st.integers(1, 3), st.integers(2, 3), st.sampled_from([None, 1, 2]),
       st.integers(0, 1), st.sampled_from(["max", "avg"]))
def test_pooling(seed, n, c, k, stride, padding, kind):
    rng = np.random.default_rng(seed)
    x = rng.permutation(np.linspace(-3, 3, n * c * 36)).reshape(n, c, 6, 6)  # distinct values: no ties
    fwd = ops.maxpool2d_forward if kind == "max" else ops.avgpool2d_forward
    bwd = ops.maxpool2d_backward if kind == "max" else ops.avgpool2d_backward
    padding = min(padding, k // 2)
    res = check_op(lambda x: fwd(x, k, stride, padding), bwd, {"x": x}, {"x": "dx"}, rng, h=1e-7)
    assert res["x"] < REL_TOL, res


@given(seeds)
def test_global_avgpool_and_flatten(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 4, 5))
    assert check_op(ops.global_avgpool_forward, ops.global_avgpool_backward, {"x": x}, {"x": "dx"}, rng)["x"] < REL_TOL
    assert check_op(ops.flatten_forward, ops.flatten_backward, {"x": x}, {"x": "dx"}, rng)["x"] < REL_TOL


@given(seeds)
def test_residual_add(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((2, 3, 2, 2)), rng.standard_normal((2, 3, 2, 2))

    def bwd(dout, cache):
        da, db = ops.add_backward(dout, cache)
        return da, {"b": db}

    res = check_op(ops.add_forward, bwd, {"a": a, "b": b}, {"a": "dx", "b": "b"}, rng)
    assert max(res.values()) < REL_TOL


@given(seeds, st.sampled_from([1, 2]), st.integers(0, 3), st.integers(0, 3), st.sampled_from(["subsample", "avgpool"]))
def test_shortcut_a(seed, stride, before, after, mode):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 4, 6))
    res = check_op(lambda x: ops.shortcut_a_forward(x, stride, before, after, mode), ops.shortcut_a_backward,
                   {"x": x}, {"x": "dx"}, rng)
    assert res["x"] < REL_TOL
    out, _ = ops.shortcut_a_forward(x, stride, before, after, mode)
    assert out.shape == (2, 3 + before + after, 4 // stride, 6 // stride)
    assert not out[:, :before].any() and not out[:, 3 + before:].any()


@given(seeds, st.integers(1, 5), st.integers(2, 6))
def test_softmax_cross_entropy(seed, n, k):
    rng = np.random.default_rng(seed)
    z, y = rng.standard_normal((n, k)) * 3, rng.integers(0, k, n)

    def fwd(z):
        loss, cache = ops.softmax_cross_entropy_forward(z, y)
        return np.asarray(loss), cache

    res = check_op(fwd, lambda g, c: (g * ops.softmax_cross_entropy_backward(c), {}), {"z": z}, {"z": "dx"}, rng)
    assert res["z"] < REL_TOL
    # the value: -log softmax at the label
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert np.isclose(fwd(z)[0], -np.log(p[np.arange(n), y]).mean())


@given(seeds, st.integers(1, 4), st.integers(2, 5), st.sampled_from([1.0, 2.0, 4.0]))
def test_distillation(seed, n, k, temperature):
    rng = np.random.default_rng(seed)
    z, t = rng.standard_normal((n, k)), rng.standard_normal((n, k))

    def fwd(z):
        loss, cache = ops.distillation_forward(z, t, temperature)
        return np.asarray(loss), cache

    res = check_op(fwd, lambda g, c: (g * ops.distillation_backward(c), {}), {"z": z}, {"z": "dx"}, rng)
    assert res["z"] < REL_TOL
    # equals cross-entropy when the teacher is a (near) one-hot
    onehot_teacher = np.eye(k)[np.zeros(n, int)] * 60.0
    ce, _ = ops.softmax_cross_entropy_forward(z, np.zeros(n, np.int64))
    assert np.isclose(ops.distillation_forward(z, onehot_teacher, 1.0)[0], ce)


@given(seeds, st.integers(0, 6), st.sampled_from([0.0, 1.0, -1.0]))
def test_conv2d_backward_from_input_in_slices(seed, n, pad_value):
    """The backward that builds the columns a few samples at a time equals the whole-batch one."""
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((n, 4, 6, 6)), rng.standard_normal((6, 2, 3, 3))
    args = ((2, 1), (1, 1), (1, 2), 2, pad_value)
    out, cache = ops.conv2d_forward(x, w, None, *args)
    dout = rng.standard_normal(out.shape)
    dx, grads = ops.conv2d_backward(dout, cache)
    # chunk_bytes=1: one sample per slice
    dx1, grads1 = ops.conv2d_backward_from_input(dout, x, w, *args, chunk_bytes=1)
    assert np.array_equal(dx1, dx)
    np.testing.assert_allclose(grads1["weight"], grads["weight"], rtol=1e-12, atol=1e-12)
