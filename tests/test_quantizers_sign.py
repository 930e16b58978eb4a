"""Sign quantizers (BinaryConnect, BNN, Bi-Real, BNN+): exact values at 0 and at the clip boundary,
forward ranges, and the estimators against Larq's closed-form gradients (larq/quantizers.py)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refbnn.quantizers import get_quantizer
from refbnn.quantizers.sign import approx_sign_polynomial, sign_swish, sign_swish_grad

finite = st.floats(-4, 4, allow_nan=False, width=64)
vectors = arrays(np.float64, st.integers(1, 40), elements=finite)


def _with_zeros(x):
    x = x.copy()
    x[::4] = 0.0
    return x


@given(vectors)
def test_ste_sign_larq_semantics(x):
    x = _with_zeros(x)
    q = get_quantizer("ste_sign")
    y, cache = q.forward(x)
    np.testing.assert_array_equal(y, np.where(x >= 0, 1.0, -1.0))  # Larq's math.sign: sign(0) = +1
    dy = np.linspace(-1, 1, x.size)
    np.testing.assert_array_equal(q.backward(dy, cache), np.where(np.abs(x) <= 1.0, dy, 0.0))


def test_ste_sign_boundary_and_zero_conventions():
    x = np.array([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    dy = np.ones_like(x)
    inc = get_quantizer("ste_sign", clip_inclusive=True)
    exc = get_quantizer("ste_sign", clip_inclusive=False)
    np.testing.assert_array_equal(inc.backward(dy, inc.forward(x)[1]), [0, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(exc.backward(dy, exc.forward(x)[1]), [0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(get_quantizer("ste_sign", sign_zero=0.0).forward(x)[0], [-1, -1, -1, 0, 1, 1, 1])
    np.testing.assert_array_equal(get_quantizer("ste_sign", sign_zero=-1.0).forward(x)[0], [-1, -1, -1, -1, 1, 1, 1])
    wide = get_quantizer("ste_sign", clip_value=1.25)
    np.testing.assert_array_equal(wide.backward(dy, wide.forward(x)[1]), [0, 1, 1, 1, 1, 1, 0])
    no_clip = get_quantizer("ste_sign", clip_value=None)
    np.testing.assert_array_equal(no_clip.backward(dy, no_clip.forward(x)[1]), dy)


@given(vectors)
def test_identity_ste_sign(x):
    x = _with_zeros(x)
    q = get_quantizer("identity_ste_sign")
    y, cache = q.forward(x)
    assert set(np.unique(y)) <= {-1.0, 1.0}
    dy = np.arange(x.size, dtype=float)
    np.testing.assert_array_equal(q.backward(dy, cache), dy)


def test_stochastic_sign_probability_and_determinism():
    """P(+1) = hard_sigmoid(x): a Monte Carlo estimate within 5 standard errors; deterministic beyond +-1."""
    q = get_quantizer("stochastic_sign", seed=0)
    levels = np.array([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 2.0])
    n = 20000
    x = np.repeat(levels[:, None], n, axis=1)
    y, _ = q.forward(x)
    assert set(np.unique(y)) <= {-1.0, 1.0}
    p_hat = (y > 0).mean(axis=1)
    p = np.clip((levels + 1) / 2, 0, 1)
    se = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(p_hat - p) <= 5 * se + 1e-12), (p_hat, p)
    # the same generator state gives the same draws; set_rng hands over a per-epoch generator
    a, b = get_quantizer("stochastic_sign"), get_quantizer("stochastic_sign")
    a.set_rng(np.random.default_rng([7, 3, 1]))
    b.set_rng(np.random.default_rng([7, 3, 1]))
    w = np.random.default_rng(0).uniform(-1, 1, (50, 20))
    np.testing.assert_array_equal(a.forward(w)[0], b.forward(w)[0])
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        a.set_rng(123)


def test_stochastic_sign_eval_modes():
    x = np.array([-0.7, 0.0, 0.2])
    np.testing.assert_array_equal(get_quantizer("stochastic_sign").forward(x, training=False)[0], [-1, 1, 1])
    np.testing.assert_array_equal(get_quantizer("stochastic_sign", eval_forward="real").forward(x, training=False)[0], x)
    assert get_quantizer("stochastic_sign").binary and not get_quantizer("stochastic_sign", eval_forward="real").binary


@given(vectors)
def test_approx_sign_larq_gradient(x):
    x = _with_zeros(x)
    q = get_quantizer("approx_sign")
    y, cache = q.forward(x)
    np.testing.assert_array_equal(y, np.where(x >= 0, 1.0, -1.0))
    larq = np.where(np.abs(x) <= 1.0, (1 - np.abs(x)) * 2, 0.0)
    np.testing.assert_allclose(q.backward(np.ones_like(x), cache), larq, rtol=0, atol=1e-15)


def test_approx_sign_exact_values():
    q = get_quantizer("approx_sign")
    x = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    np.testing.assert_array_equal(q.backward(np.ones_like(x), q.forward(x)[1]), [0, 0, 1, 2, 1, 0, 0])
    # Bi-Real's polynomial: -1 | 2x + x^2 | 2x - x^2 | 1, continuous at -1, 0, 1
    np.testing.assert_array_equal(approx_sign_polynomial(x), [-1, -1, -0.75, 0, 0.75, 1, 1])


@given(vectors, st.floats(0.5, 20))
def test_swish_sign_larq_gradient(x, beta):
    x = _with_zeros(x)
    q = get_quantizer("swish_sign", beta=beta)
    y, cache = q.forward(x)
    np.testing.assert_array_equal(y, np.where(x >= 0, 1.0, -1.0))
    bx = beta * x
    with np.errstate(over="ignore"):
        larq = beta * (2 - bx * np.tanh(bx * 0.5)) / (1 + np.cosh(bx))
    np.testing.assert_allclose(q.backward(np.ones_like(x), cache), larq, rtol=1e-9, atol=1e-12)
    assert sign_swish_grad(np.zeros(1), beta)[0] == pytest.approx(beta)


def test_swish_surrogate_is_the_bnnplus_formula():
    x = np.linspace(-3, 3, 61)
    beta = 5.0
    s = 1 / (1 + np.exp(-beta * x))
    np.testing.assert_allclose(sign_swish(x, beta), 2 * s * (1 + beta * x * (1 - s)) - 1, atol=1e-14)


@given(arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 6)), elements=finite))
def test_magnitude_aware_sign(x):
    x = x.copy()
    x.reshape(-1)[::5] = 0.0
    scale = np.abs(x).mean(axis=1, keepdims=True)
    dy = np.ones_like(x)
    q = get_quantizer("magnitude_aware_sign")
    y, cache = q.forward(x)
    np.testing.assert_allclose(y, scale * np.where(x >= 0, 1.0, -1.0))
    np.testing.assert_allclose(q.backward(dy, cache), scale * (np.abs(x) <= 1))  # Larq: scale * clipped STE
    code = get_quantizer("magnitude_aware_sign", scale_gradient=False)     # ReActNet code: unscaled
    np.testing.assert_array_equal(code.backward(dy, code.forward(x)[1]), (np.abs(x) <= 1).astype(float))


def test_magnitude_aware_sign_scale_is_per_output_channel():
    w = np.zeros((2, 3, 2, 2))
    w[0] = 0.5
    w[1] = -2.0
    y = get_quantizer("magnitude_aware_sign").forward(w)[0]
    assert np.all(y[0] == 0.5) and np.all(y[1] == -2.0)
