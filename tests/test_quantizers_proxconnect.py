"""ProxConnect++ pairs (F, B), BNN++'s sign-Swish and ProxConnect's proximal quantizer."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refbnn.quantizers import get_quantizer
from refbnn.quantizers.proxconnect import PC_INSTANCES, prox_w
from refbnn.quantizers.sign import sign_swish, sign_swish_grad

betas = st.floats(0.5, 50)
vectors = arrays(np.float64, st.integers(1, 30), elements=st.floats(-4, 4, allow_nan=False, width=64))


@given(vectors, betas)
def test_sign_swish_is_odd(x, beta):
    np.testing.assert_allclose(sign_swish(-x, beta), -sign_swish(x, beta), atol=1e-15)
    np.testing.assert_allclose(sign_swish_grad(-x, beta), sign_swish_grad(x, beta), atol=1e-12)


@pytest.mark.parametrize("beta", [1.0, 5.0, 25.0])
def test_sign_swish_overshoot_area_and_slope(beta):
    """max SS = 1.19968 at beta x = 2.3994 (not monotone, so not a proximal map); SS'(0) = beta; the integral
    of SS' over R is 2, the jump of sign (docs/methods/baselines.md)."""
    x = np.linspace(0, 10 / beta, 200001)
    ss = sign_swish(x, beta)
    i = int(np.argmax(ss))
    assert ss[i] == pytest.approx(1.19968, abs=1e-5)
    assert beta * x[i] == pytest.approx(2.3994, abs=1e-3)
    assert np.any(np.diff(ss) < 0)  # decreasing after the peak
    assert sign_swish_grad(np.zeros(1), beta)[0] == pytest.approx(beta)
    big = np.linspace(-60 / beta, 60 / beta, 400001)
    assert np.trapezoid(sign_swish_grad(big, beta), big) == pytest.approx(2.0, rel=1e-6)


def test_sign_swish_tends_to_sign():
    x = np.array([-0.5, -0.1, 0.1, 0.5])
    for beta, tol in ((100.0, 1e-3), (1000.0, 1e-12)):
        np.testing.assert_allclose(sign_swish(x, beta), np.sign(x), atol=tol)


@given(st.floats(0, 3))
def test_prox_is_monotone_and_is_the_proximal_map(mu):
    """P_mu is non-decreasing (a proximal map) and is the argmin over w of (w - x)^2 / 2 + mu dist(w, {-1, 1})."""
    x = np.linspace(-4, 4, 801)
    p = prox_w(x, mu)
    assert np.all(np.diff(p) >= -1e-12)
    grid = np.linspace(-5, 5, 20001)
    obj = 0.5 * (grid[None, :] - x[::40, None]) ** 2 + mu * np.minimum(np.abs(grid - 1), np.abs(grid + 1))[None, :]
    brute = grid[np.argmin(obj, axis=1)]
    nonzero = x[::40] != 0  # the map is set-valued at 0
    np.testing.assert_allclose(p[::40][nonzero], brute[nonzero], atol=1e-3)


def test_prox_exact_values():
    x = np.array([-3.0, -1.5, -0.2, 0.0, 0.2, 1.5, 3.0])
    np.testing.assert_array_equal(prox_w(x, 0.0), x)  # the identity at mu = 0
    np.testing.assert_allclose(prox_w(x, 0.5), [-2.5, -1.0, -0.7, 0.5, 0.7, 1.0, 2.5])
    np.testing.assert_array_equal(prox_w(x, 1.0)[1:-1], [-1, -1, 1, 1, 1])  # sign on |x| <= 1 + mu once mu >= 1
    assert prox_w(np.zeros(1), 0.3, sign_zero=0.0)[0] == 0.0


@pytest.mark.parametrize("instance", sorted(PC_INSTANCES))
def test_pc_instances_satisfy_the_decomposition(instance):
    """F = P o B for every PC++ instance (sign o B = sign for the sign-preserving B; BNN++: P = identity)."""
    fwd, bwd, prox = PC_INSTANCES[instance]
    q = get_quantizer("pc_pair", forward_map=fwd, backward_map=bwd, beta=3.0, mu=0.4)
    x = np.linspace(-3, 3, 601)
    x = x[x != 0]
    b = q.backward_value(x)
    p = {"sign": np.sign, "identity": lambda v: v, "prox": lambda v: prox_w(v, 0.4)}[prox]
    np.testing.assert_allclose(q.forward_value(x), p(b), atol=1e-12)


@given(vectors)
def test_pc_pairs_reproduce_the_named_quantizers(x):
    x = x[np.abs(np.abs(x) - 1) > 1e-6]
    g = np.linspace(-1, 1, x.size)
    same = [
        (get_quantizer("pc_pair", forward_map="sign", backward_map="identity"), get_quantizer("identity_ste_sign")),
        (get_quantizer("pc_pair", forward_map="sign", backward_map="clip"), get_quantizer("ste_sign")),
        (get_quantizer("pc_pair", forward_map="sign", backward_map="swish"), get_quantizer("swish_sign")),
        (get_quantizer("pc_pair", forward_map="swish", backward_map="swish", beta=7.0), get_quantizer("sign_swish", beta=7.0)),
        (get_quantizer("pc_pair", forward_map="prox", backward_map="identity", mu=0.3), get_quantizer("prox_sign", mu=0.3)),
    ]
    for a, b in same:
        ya, ca = a.forward(x)
        yb, cb = b.forward(x)
        np.testing.assert_allclose(ya, yb, atol=1e-14)
        np.testing.assert_allclose(a.backward(g, ca), b.backward(g, cb), atol=1e-14)


def test_bnnpp_and_pc_eval_forward_and_state():
    x = np.array([-0.3, 0.01, 2.0])
    q = get_quantizer("sign_swish", beta=5.0)
    np.testing.assert_allclose(q.forward(x, training=True)[0], sign_swish(x, 5.0))
    np.testing.assert_array_equal(q.forward(x, training=False)[0], [-1, 1, 1])
    np.testing.assert_allclose(get_quantizer("sign_swish", eval_forward="train").forward(x, training=False)[0],
                               sign_swish(x, 5.0))
    assert q.state() == {"beta": 5.0} and get_quantizer("prox_sign").state() == {"mu": 0.0}
    assert get_quantizer("pc_pair").state() == {}
    assert not q.binary and get_quantizer("pc_pair").binary
    p = get_quantizer("prox_sign", mu=0.5)
    np.testing.assert_allclose(p.forward(x)[0], prox_w(x, 0.5))
    np.testing.assert_array_equal(p.backward(x, p.forward(x)[1]), x)  # identity backward
