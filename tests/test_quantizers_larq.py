"""Larq's ste_heaviside, ste_tern, noop and dorefa_quantizer under Larq's semantics, and refbnn's
dorefa_sign, xnor_weight and xnor_act."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from helpers import numeric_grad, rel_error
from refbnn.quantizers import get_quantizer

finite = st.floats(-3, 3, allow_nan=False, width=64)
vectors = arrays(np.float64, st.integers(1, 40), elements=finite)
matrices = arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 8)), elements=finite)


@given(vectors)
def test_ste_heaviside(x):
    x = x.copy()
    x[::3] = 0.0
    q = get_quantizer("ste_heaviside")
    y, cache = q.forward(x)
    np.testing.assert_array_equal(y, (x > 0).astype(float))  # h(0) = 0
    np.testing.assert_array_equal(q.backward(np.ones_like(x), cache), (np.abs(x) <= 1).astype(float))
    assert not q.binary and q.precision == 1


def test_ste_tern_exact_values_and_twn_threshold():
    q = get_quantizer("ste_tern")  # threshold 0.05
    x = np.array([-1.0, -0.05, -0.04, 0.0, 0.04, 0.05, 0.3])
    np.testing.assert_array_equal(q.forward(x)[0], [-1, -1, 0, 0, 0, 1, 1])  # the boundary goes to +-1
    twn = get_quantizer("ste_tern", ternary_weight_networks=True)
    w = np.array([-2.0, -0.5, 0.1, 0.6, 1.8])
    delta = 0.7 * np.abs(w).mean()  # 0.70
    assert twn.threshold(w) == pytest.approx(delta)
    np.testing.assert_array_equal(twn.forward(w)[0], [-1, 0, 0, 0, 1])
    y, cache = twn.forward(w)
    np.testing.assert_array_equal(twn.backward(np.ones(5), cache), [0, 1, 1, 1, 0])
    assert q.precision == 2


@given(vectors, st.floats(0, 1))
def test_ste_tern_larq_formula(x, d):
    q = get_quantizer("ste_tern", threshold_value=d)
    np.testing.assert_array_equal(q.forward(x)[0], np.sign(np.sign(x + d) + np.sign(x - d)))
    assert set(np.unique(q.forward(x)[0])) <= {-1.0, 0.0, 1.0}


def test_noop_records_a_precision():
    q = get_quantizer("noop", precision=1)
    x = np.array([-0.3, 0.0, 2.0])
    y, cache = q.forward(x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(q.backward(x, cache), x)
    assert q.precision == 1 and not q.binary and get_quantizer("noop").precision == 32


def test_dorefa_activations_larq_rounding():
    """round half to even (tf.round): 0.5 -> 0 for one bit; k = 2 levels 0, 1/3, 2/3, 1."""
    q1 = get_quantizer("dorefa_quantizer", k_bit=1)
    x = np.array([-1.0, 0.0, 0.25, 0.5, 0.5001, 1.0, 2.0])
    np.testing.assert_array_equal(q1.forward(x)[0], [0, 0, 0, 0, 1, 1, 1])
    q2 = get_quantizer("dorefa_quantizer", k_bit=2)
    x2 = np.array([1 / 6, 0.5, 5 / 6, 0.3])  # n x = 0.5, 1.5, 2.5, 0.9
    np.testing.assert_allclose(q2.forward(x2)[0], [0, 2 / 3, 2 / 3, 1 / 3])
    dy = np.ones_like(x)
    np.testing.assert_array_equal(q1.backward(dy, q1.forward(x)[1]), [0, 1, 1, 1, 1, 1, 0])  # 1[0 <= x <= 1]
    assert q2.precision == 2


@given(vectors, st.integers(1, 4))
def test_dorefa_activation_levels(x, k):
    q = get_quantizer("dorefa_quantizer", k_bit=k)
    y = q.forward(x)[0]
    n = 2 ** k - 1
    assert np.all((y >= 0) & (y <= 1))
    np.testing.assert_allclose(y * n, np.round(y * n), atol=1e-12)
    np.testing.assert_array_equal(y, np.round(np.clip(x, 0, 1) * n) / n)


@given(matrices, st.integers(1, 3))
def test_dorefa_weights_mode(w, k):
    q = get_quantizer("dorefa_quantizer", k_bit=k, mode="weights")
    y, cache = q.forward(w)
    n = 2 ** k - 1
    t = np.tanh(w)
    d = np.abs(t).max()
    expected = 2 * np.round(n * (t / (2 * d) + 0.5)) / n - 1 if d > 0 else np.full_like(w, 2 * np.round(n * 0.5) / n - 1)
    np.testing.assert_allclose(y, expected, atol=1e-12)
    assert np.all(np.abs(y) <= 1 + 1e-12)
    if k == 1:
        assert set(np.unique(y)) <= {-1.0, 1.0} and q.binary
    if d > 0:
        np.testing.assert_allclose(q.backward(np.ones_like(w), cache), (1 - t * t) / d)


def test_dorefa_weights_all_zero_is_divide_no_nan():
    q = get_quantizer("dorefa_quantizer", k_bit=2, mode="weights")
    y, cache = q.forward(np.zeros((2, 3)))
    np.testing.assert_allclose(y, 2 * np.round(3 * 0.5) / 3 - 1)  # round(1.5) = 2 -> 1/3
    np.testing.assert_array_equal(q.backward(np.ones((2, 3)), cache), 0.0)


@given(matrices)
def test_dorefa_sign(w):
    q = get_quantizer("dorefa_sign")
    y, cache = q.forward(w)
    np.testing.assert_allclose(y, np.abs(w).mean() * np.where(w >= 0, 1.0, -1.0))
    np.testing.assert_array_equal(q.backward(w, cache), w)  # identity STE


@given(matrices)
def test_xnor_weight_forward_and_the_three_gradients(w):
    w = w.copy()
    w[np.abs(np.abs(w) - 1) < 1e-3] += 0.01
    n = w.shape[1]
    a = np.abs(w).mean(axis=1, keepdims=True)
    b = np.where(w >= 0, 1.0, -1.0)
    m = (np.abs(w) <= 1).astype(float)
    g = np.random.default_rng(0).standard_normal(w.shape)
    for variant, expected in [
        ("paper", g * (1 / n + a * m)),
        ("exact", np.sign(w) * (g * b).sum(axis=1, keepdims=True) / n + a * g * m),
        ("detached", g * m),
    ]:
        q = get_quantizer("xnor_weight", gradient=variant)
        y, cache = q.forward(w)
        np.testing.assert_allclose(y, a * b)
        np.testing.assert_allclose(q.backward(g, cache), expected, atol=1e-12)


def test_xnor_exact_gradient_is_autograd_of_the_scaled_sign():
    """The "exact" variant is the true derivative of a(W) (sign(W0) - clip(W0) + clip(W)) at W0."""
    rng = np.random.default_rng(4)
    w = rng.uniform(-1.5, 1.5, (3, 7))
    q = get_quantizer("xnor_weight", gradient="exact")
    g = rng.standard_normal(w.shape)
    analytic = q.backward(g, q.forward(w)[1])
    ref = w.copy()
    z = w.copy()
    numeric = numeric_grad(lambda: float(np.sum(g * q.surrogate(z, ref=ref))), z)
    assert rel_error(analytic, numeric) < 1e-6


@given(arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)), elements=finite))
def test_xnor_act_per_sample_scale(x):
    q = get_quantizer("xnor_act")
    k = np.abs(x).mean(axis=(1, 2), keepdims=True)
    y, cache = q.forward(x)
    np.testing.assert_allclose(y, k * np.where(x >= 0, 1.0, -1.0))
    np.testing.assert_allclose(q.backward(np.ones_like(x), cache), k * (np.abs(x) <= 1))
    plain = get_quantizer("xnor_act", scale="none")
    np.testing.assert_array_equal(plain.forward(x)[0], np.where(x >= 0, 1.0, -1.0))
    assert plain.binary and not q.binary
