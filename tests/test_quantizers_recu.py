"""ReCU: weight standardization, the rectified clamp with the Laplace-quantile threshold, the analytic
and learned alpha, ApproxSign activations with the code's per-sample normalization."""
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from helpers import REL_TOL, check_quantizer
from refbnn.conventions import OFFICIAL, PAPER, STANDARDIZE_GRADS
from refbnn.layers import BinaryConv2d
from refbnn.quantizers import QUANTIZERS, get_quantizer
from refbnn.quantizers.recu import analytic_alpha, clamped_fraction, laplace_quantile, recu_clamp

seeds = st.integers(0, 2**32 - 1)
taus = st.floats(0.51, 1.0)
N = 200_000  # Monte Carlo sample size of the Laplace tests


def _laplace_layer(seed, b=0.05, shape=(8, 25_000)):
    return np.random.default_rng(seed).laplace(0.0, b, shape)


def test_laplace_quantile_and_clamp():
    assert laplace_quantile(1.0, 2.0) == math.inf
    assert laplace_quantile(0.75, 1.0) == pytest.approx(math.log(2))
    assert laplace_quantile(0.85, 2.0) == pytest.approx(-2 * math.log(0.3))
    np.testing.assert_array_equal(recu_clamp(np.array([-3.0, -1.0, 0.5, 2.0]), 1.0), [-1, -1, 0.5, 1])
    with pytest.raises(ValueError, match=r"tau: expected a value in \(0.5, 1\]"):
        laplace_quantile(0.5, 1.0)


@pytest.mark.parametrize("tau", [0.6, 0.85, 0.99])
def test_clamped_fraction_and_mean_magnitude_under_laplace(tau):
    """Under La(0, b): P(|w| >= Q_tau) = 2 - 2 tau and E|ReCU(w)| = b (2 tau - 1) (Eq. 12-13); Monte Carlo,
    tolerances of 5 standard errors of the sample size."""
    b = 0.7
    w = np.random.default_rng(int(tau * 100)).laplace(0.0, b, N)
    q = laplace_quantile(tau, b)
    frac = np.mean(np.abs(w) >= q)
    p = clamped_fraction(tau)
    assert abs(frac - p) <= 5 * math.sqrt(p * (1 - p) / N)
    r = np.abs(recu_clamp(w, q))
    assert abs(r.mean() - analytic_alpha(tau, b)) <= 5 * r.std() / math.sqrt(N)


def test_standardization_gives_b_star_for_laplace_rows():
    """Code form: w1 = 2 sqrt(2) (w - mean) / sqrt(var + eps), so mean |w1| = b* = 2 for Laplace rows; the
    paper's sigma-standardization b* = 1/sqrt(2) gives mean |w1| = 1/sqrt(2) (ReCU Eq. 19-23: a Laplace row's
    mean |w| is sigma / sqrt(2))."""
    w = _laplace_layer(0)
    w1 = get_quantizer("recu_weight").standardized(w)
    assert abs(np.abs(w1).mean() - 2.0) < 0.02
    w1 = get_quantizer("recu_weight", b_star=1 / math.sqrt(2)).standardized(w)
    assert abs(np.abs(w1).mean() - 1 / math.sqrt(2)) < 0.01


@given(seeds, taus)
def test_recu_weight_forward_official(seed, tau):
    """Official: y = sign(clamp(w1, -Q, Q)) with Q = -mean|w1| ln(2 - 2 tau) over the whole layer; no alpha."""
    w = np.random.default_rng(seed).standard_normal((4, 3, 3, 3))
    q = QUANTIZERS["recu_weight"].from_convention(OFFICIAL, tau=tau)
    w1 = (w - w.mean(axis=(1, 2, 3), keepdims=True)) * 2 * math.sqrt(2) / np.sqrt(
        w.var(axis=(1, 2, 3), ddof=1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(q.standardized(w), w1, atol=1e-12)
    b = np.abs(w1).mean()
    y = q.forward(w)[0]
    np.testing.assert_array_equal(y, np.sign(np.clip(w1, -laplace_quantile(tau, b), laplace_quantile(tau, b))))


@given(seeds, taus)
def test_recu_weight_forward_paper_analytic_alpha(seed, tau):
    """Paper: no centering (Eq. 22) and y = alpha sign(ReCU(w1)) with alpha = b (2 tau - 1) (Eq. 13)."""
    w = np.random.default_rng(seed).standard_normal((4, 12)) + 0.3
    q = QUANTIZERS["recu_weight"].from_convention(PAPER, tau=tau)
    assert q.alpha == "analytic" and not q.center
    w1 = w * 2 * math.sqrt(2) / np.sqrt(w.var(axis=1, ddof=1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(q.standardized(w), w1, atol=1e-12)
    b = np.abs(w1).mean()
    y = q.forward(w)[0]
    np.testing.assert_allclose(np.abs(y), b * (2 * tau - 1), rtol=1e-12)
    assert not q.binary


@given(seeds, st.floats(0.6, 0.99))
def test_recu_weight_paper_gradient_is_clipped_ste(seed, tau):
    """Paper preset, standardize_grad="identity" (IR-Net Algorithm 1 line 9): dL/dw = G alpha 1[|w1| <= Q]."""
    w = np.random.default_rng(seed).standard_normal((4, 12))
    q = QUANTIZERS["recu_weight"].from_convention(PAPER, tau=tau)
    assert q.standardize_grad == "identity"
    y, cache = q.forward(w)
    w1 = q.standardized(w)
    b, Q = q.threshold(w1)
    g = np.random.default_rng(seed + 1).standard_normal(w.shape)
    np.testing.assert_allclose(q.backward(g, cache), g * b * (2 * tau - 1) * (np.abs(w1) <= Q))


@given(seeds, st.floats(0.6, 1.0))
def test_recu_weight_code_gradient(seed, tau):
    """Official, standardize_grad="through": dL/dw = (c/s)(g1 - mean g1) - c (u^T g1) u / ((n - 1) s^3),
    c = 2 sqrt(2) (the derivative of binarized_modules.py L20-21 of the ReCU code); it sums to zero per channel."""
    w = np.random.default_rng(seed).standard_normal((3, 2, 3, 3))
    q = QUANTIZERS["recu_weight"].from_convention(OFFICIAL, tau=tau)
    y, cache = q.forward(w)
    g = np.random.default_rng(seed + 1).standard_normal(w.shape)
    w1 = q.standardized(w)
    _, Q = q.threshold(w1)
    g1 = (g * (np.abs(w1) <= Q)).reshape(3, -1)
    u = (w - w.mean(axis=(1, 2, 3), keepdims=True)).reshape(3, -1)
    n = u.shape[1]
    s = np.sqrt((u * u).sum(axis=1, keepdims=True) / (n - 1) + 1e-5)
    c = 2 * math.sqrt(2)
    expected = c / s * (g1 - g1.mean(axis=1, keepdims=True)) - c * (u * g1).sum(axis=1, keepdims=True) * u / (
        (n - 1) * s ** 3)
    dw = q.backward(g, cache).reshape(3, -1)
    np.testing.assert_allclose(dw, expected, atol=1e-10)
    np.testing.assert_allclose(dw.sum(axis=1), 0, atol=1e-9)


def test_recu_weight_tau_one_does_not_clamp_and_boundary_convention():
    w = np.random.default_rng(2).standard_normal((3, 10))
    q = get_quantizer("recu_weight")
    assert q.tau == 1.0 and q.threshold(q.standardized(w))[1] == math.inf
    np.testing.assert_array_equal(q.forward(w)[0], np.sign(q.standardized(w)))
    # a weight exactly on the clamp boundary: the gradient passes when inclusive (torch.clamp), not when exclusive
    for inclusive, expected in ((True, 1.0), (False, 0.0)):
        q = get_quantizer("recu_weight", tau=0.9, standardize_grad="identity", clip_inclusive=inclusive)
        w1 = q.standardized(w)
        q.threshold = lambda w1_, v=float(abs(w1[0, 0])): (1.0, v)  # put Q exactly on |w1[0, 0]|
        _, cache = q.forward(w)
        assert q.backward(np.ones_like(w), cache)[0, 0] == expected


def test_recu_weight_sign_zero_convention():
    q0 = QUANTIZERS["recu_weight"].from_convention(OFFICIAL)
    q1 = QUANTIZERS["recu_weight"].from_convention(PAPER)
    assert q0.sign_zero == 0.0 and q1.sign_zero == 1.0


@given(seeds)
def test_recu_act_forward_is_sign_in_both_modes(seed):
    x = np.random.default_rng(seed).standard_normal((3, 4, 2, 2))
    x[0, 0, 0, 0] = 0.0
    q = get_quantizer("recu_act")
    for training in (True, False):
        np.testing.assert_array_equal(q.forward(x, training=training)[0], np.sign(x))


@given(seeds, st.floats(0.1, 5))
def test_recu_act_training_normalization_gradient(seed, spread):
    """Official training mode: ApproxSign on a0 = x / s_n, then through the per-sample normalization (the
    derivative of binarized_modules.py L27 of the ReCU code); eval mode: plain ApproxSign on x."""
    x = np.random.default_rng(seed).standard_normal((3, 5, 2, 2)) * spread
    q = QUANTIZERS["recu_act"].from_convention(OFFICIAL)
    g = np.random.default_rng(seed + 1).standard_normal(x.shape)
    xs = x.reshape(3, -1)
    m = xs.shape[1]
    s = np.sqrt(xs.var(axis=1, ddof=1, keepdims=True) + 1e-5)
    a0 = xs / s
    g0 = g.reshape(3, -1) * np.maximum(0, 2 - 2 * np.abs(a0))
    expected = g0 / s - (xs - xs.mean(axis=1, keepdims=True)) * (g0 * xs).sum(axis=1, keepdims=True) / (
        (m - 1) * s ** 3)
    np.testing.assert_allclose(q.backward(g, q.forward(x, training=True)[1]).reshape(3, -1), expected, atol=1e-10)
    np.testing.assert_allclose(q.backward(g, q.forward(x, training=False)[1]), g * np.maximum(0, 2 - 2 * np.abs(x)))
    paper = QUANTIZERS["recu_act"].from_convention(PAPER)
    assert not paper.normalize
    np.testing.assert_allclose(paper.backward(g, paper.forward(x, training=True)[1]),
                               g * np.maximum(0, 2 - 2 * np.abs(x)))


MODES = list(STANDARDIZE_GRADS)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("conv", [PAPER, OFFICIAL], ids=["paper", "official"])
@given(seed=seeds, tau=st.floats(0.6, 1.0))
def test_recu_weight_each_standardize_grad_is_its_surrogate_derivative(mode, conv, seed, tau):
    """Each reading of the weight gradient ("through", "detached", "identity") is the derivative of its own
    surrogate (central differences), with and without centering, with and without the clamp."""
    rng = np.random.default_rng(seed)
    q = QUANTIZERS["recu_weight"].from_convention(conv, tau=tau, standardize_grad=mode)
    w = rng.laplace(size=(4, 3, 3, 3))
    w1 = q.standardized(w)
    _, Q = q.threshold(w1)
    assume(not math.isfinite(Q) or np.abs(np.abs(w1) - Q).min() > 1e-4)  # finite differences off the clamp's kinks
    assert check_quantizer(q, w, rng) < REL_TOL


@pytest.mark.parametrize("mode", MODES)
@given(seed=seeds, spread=st.floats(0.2, 3.0))
def test_recu_act_each_standardize_grad_is_its_surrogate_derivative(mode, seed, spread):
    """The activations' per-sample normalization (official, training mode) under each reading."""
    rng = np.random.default_rng(seed)
    q = QUANTIZERS["recu_act"].from_convention(OFFICIAL, standardize_grad=mode)
    x = rng.standard_normal((3, 4, 2, 2)) * spread
    s = np.sqrt(x.reshape(3, -1).var(axis=1, ddof=1) + 1e-5).reshape(3, 1, 1, 1)
    assume(np.abs(np.abs(x / s) - 1).min() > 1e-3)  # finite differences off ApproxSign's kink at |a0| = 1
    assert check_quantizer(q, x, rng, training=True) < REL_TOL


def test_standardize_grad_surrogates_are_three_different_functions():
    """The check above can fail: each reading's backward disagrees with the other two surrogates."""
    rng = np.random.default_rng(5)
    w = rng.laplace(size=(4, 3, 3, 3))
    for mode in MODES:
        q = QUANTIZERS["recu_weight"].from_convention(OFFICIAL, standardize_grad=mode)
        for other in MODES:
            if other == mode:
                continue
            p = QUANTIZERS["recu_weight"].from_convention(OFFICIAL, standardize_grad=other)
            p.backward = q.backward  # p's surrogate, q's backward
            assert check_quantizer(p, w, np.random.default_rng(6)) > 1e-3, (mode, other)


def test_detached_weight_gradient_is_gain_over_sigma_times_identity():
    """"detached" (the statistics as constants) = "identity" (IR-Net Algorithm 1) times 2 sqrt(2) / s_o, s_o =
    sqrt(var_o + 1e-5): about 48 for a Kaiming-normal 3x3 conv with 64 channels (std sqrt(2 / 576)), the
    factor by which calling "identity" "detached" understated the gradient."""
    layer = BinaryConv2d(64, 64, 3, padding=1, init="kaiming_normal", rng=0, dtype=np.float64)
    w = layer.params["weight"]
    g = np.random.default_rng(1).standard_normal(w.shape)
    d = {}
    for mode in ("detached", "identity"):
        q = QUANTIZERS["recu_weight"].from_convention(PAPER, tau=0.9, standardize_grad=mode)
        d[mode] = q.backward(g, q.forward(w)[1])
    s = np.sqrt(w.reshape(64, -1).var(axis=1, ddof=1) + 1e-5).reshape(64, 1, 1, 1)
    np.testing.assert_allclose(d["detached"], d["identity"] * 2 * math.sqrt(2) / s, rtol=1e-12)
    factor = float(np.mean(2 * math.sqrt(2) / s))
    assert 45 < factor < 51
