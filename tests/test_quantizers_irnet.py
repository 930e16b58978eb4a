"""IR-Net: Libra-PB (balance, standardize, power-of-two shift) and the EDE estimator."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refbnn.conventions import OFFICIAL, PAPER
from refbnn.quantizers import QUANTIZERS, get_quantizer
from refbnn.quantizers.irnet import bit_shift_scale, ede_grad, ede_surrogate

seeds = st.integers(0, 2**32 - 1)


def _rows(seed, shape=(6, 4, 3, 3)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) * rng.uniform(0.1, 3, (shape[0], 1, 1, 1)) + rng.normal(0, 1, (shape[0], 1, 1, 1))


@given(seeds)
def test_libra_pb_standardized_rows_are_zero_mean_unit_std(seed):
    w = _rows(seed)
    w_std = get_quantizer("libra_pb").standardized(w)
    rows = w_std.reshape(w.shape[0], -1)
    np.testing.assert_allclose(rows.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(rows.std(axis=1, ddof=1), 1, atol=1e-12)


@given(seeds, st.floats(0.01, 100), st.floats(-5, 5))
def test_libra_pb_forward_is_invariant_to_channel_scale_and_shift(seed, scale, shift):
    w = _rows(seed)
    q = get_quantizer("libra_pb")
    np.testing.assert_allclose(q.forward(w)[0], q.forward(w * scale + shift)[0])


@given(seeds)
def test_libra_pb_forward_values(seed):
    """y = sign(w_std) 2^round(log2 mean|w_std|): the scale is a power of two <= 1."""
    w = _rows(seed)
    q = get_quantizer("libra_pb")
    y = q.forward(w)[0]
    w_std = q.standardized(w)
    s = 2.0 ** np.round(np.log2(np.abs(w_std).reshape(w.shape[0], -1).mean(axis=1)))
    np.testing.assert_allclose(y, np.sign(w_std) * s[:, None, None, None])
    assert np.all(s <= 1) and np.all(np.log2(s) == np.round(np.log2(s)))
    np.testing.assert_array_equal(bit_shift_scale(w_std).reshape(-1), s)


def test_libra_pb_balanced_signs_for_symmetric_rows():
    """Gaussian, Laplace and uniform rows: P(+1) = 0.5 within 5 standard errors of the sample size."""
    rng = np.random.default_rng(0)
    n = 4000
    for draw in (rng.standard_normal, lambda s: rng.laplace(size=s), lambda s: rng.uniform(-1, 1, s)):
        w = draw((8, n)) + 3.0  # a shifted row: balancing removes the offset
        p = (get_quantizer("libra_pb", sign_zero=1.0).forward(w)[0] > 0).mean()
        assert abs(p - 0.5) <= 5 * np.sqrt(0.25 / w.size)


def test_libra_pb_scale_is_one_for_gaussian_rows():
    w = np.random.default_rng(1).standard_normal((4, 5000))
    q = get_quantizer("libra_pb")
    y = q.forward(w)[0]
    np.testing.assert_array_equal(np.abs(y), 1.0)  # mean|w_std| = 0.798 -> round(log2) = 0


@given(seeds)
def test_libra_pb_code_gradient_sums_to_zero_per_channel(seed):
    """Official convention (gradients through mean and unbiased std, eps = 0): per output channel the
    latent-weight gradient sums to zero and is orthogonal to the centered row (docs/methods/irnet.md)."""
    w = _rows(seed)
    q = QUANTIZERS["libra_pb"].from_convention(OFFICIAL)
    y, cache = q.forward(w)
    g = np.random.default_rng(seed + 1).standard_normal(w.shape)
    dw = q.backward(g, cache).reshape(w.shape[0], -1)
    u = (w - w.mean(axis=(1, 2, 3), keepdims=True)).reshape(w.shape[0], -1)
    scale = np.abs(dw).max()
    np.testing.assert_allclose(dw.sum(axis=1), 0, atol=1e-10 * max(scale, 1) * dw.shape[1])
    np.testing.assert_allclose((dw * u).sum(axis=1), 0, atol=1e-10 * max(scale, 1) * np.abs(u).sum())


@given(seeds)
def test_libra_pb_paper_gradient_is_algorithm_1(seed):
    """Paper convention (Algorithm 1, line 9): dL/dw = G g'(w_std) 2^s, no standardization Jacobian."""
    w = _rows(seed)
    q = QUANTIZERS["libra_pb"].from_convention(PAPER, t=0.7, k=1.3)
    y, cache = q.forward(w)
    g = np.random.default_rng(seed + 2).standard_normal(w.shape)
    w_std = q.standardized(w)
    s = np.abs(y)  # 2^s per channel
    np.testing.assert_allclose(q.backward(g, cache), g * s * 1.3 * 0.7 * (1 - np.tanh(0.7 * w_std) ** 2))
    official = QUANTIZERS["libra_pb"].from_convention(OFFICIAL, t=0.7, k=1.3)
    assert not np.allclose(official.backward(g, official.forward(w)[1]), q.backward(g, cache))


def test_libra_pb_sign_of_zero_and_bad_rows():
    w = np.array([[-1.0, 0.0, 1.0], [2.0, 0.0, -2.0]])
    assert get_quantizer("libra_pb").forward(w)[0][0, 1] == 0.0  # torch.sign (the code's default)
    assert get_quantizer("libra_pb", sign_zero=1.0).forward(w)[0][0, 1] > 0
    with pytest.raises(ValueError, match="zero standard deviation"):
        get_quantizer("libra_pb").forward(np.ones((2, 4)))
    with pytest.raises(ValueError, match="needs more than 1 entries"):
        get_quantizer("libra_pb").forward(np.ones((3, 1)))
    get_quantizer("libra_pb", eps=1e-5).forward(np.ones((2, 4)))  # eps > 0 makes a constant row legal


@given(st.floats(0.01, 50), st.floats(0.1, 20))
def test_ede_exact_values(t, k):
    q = get_quantizer("ede", t=t, k=k)
    x = np.array([-1.0, 0.0, 0.5])
    y, cache = q.forward(x)
    np.testing.assert_array_equal(y, [-1, 0, 1])
    d = q.backward(np.ones(3), cache)
    assert d[1] == pytest.approx(k * t)  # g'(0) = k t
    np.testing.assert_allclose(d, k * t * (1 - np.tanh(t * x) ** 2))
    np.testing.assert_allclose(ede_surrogate(x, t, k), k * np.tanh(t * x))


@pytest.mark.parametrize("t,k", [(0.1, 10.0), (1.0, 1.0), (10.0, 1.0)])
def test_ede_area_is_2k(t, k):
    """The integral of g' over R is 2k: 2/t in stage 1 (k = 1/t) and exactly 2 (the jump of sign) in stage 2."""
    x = np.linspace(-60 / t, 60 / t, 400001)
    area = np.trapezoid(ede_grad(x, t, k), x)
    assert area == pytest.approx(2 * k, rel=1e-6)
