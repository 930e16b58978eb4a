"""Every named convention, tested both ways, and the two presets."""
import math
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import REL_TOL, check_module, probe_quantizers
from refbnn import kernels, ops
from refbnn.conventions import OFFICIAL, PAPER, Convention, get_convention
from refbnn.layers import BinaryConv2d, BinaryLinear, Sequential
from refbnn.methods import LayerFactory, get_method
from refbnn.quantizers import QUANTIZERS


def test_presets():
    assert get_convention("paper") is PAPER and get_convention("official") is OFFICIAL
    assert (PAPER.sign_zero, OFFICIAL.sign_zero) == (1.0, 0.0)
    assert (PAPER.standardize_grad, OFFICIAL.standardize_grad) == ("identity", "through")
    assert (PAPER.bias_order, OFFICIAL.bias_order) == ("after_scale", "before_scale")
    assert (PAPER.schedule_clock, OFFICIAL.schedule_clock) == ("progress", "epoch")
    assert (PAPER.recu_alpha, OFFICIAL.recu_alpha) == ("analytic", "learned")
    assert (PAPER.recu_act_norm, OFFICIAL.recu_act_norm) == (False, True)
    assert (PAPER.recu_ws_center, OFFICIAL.recu_ws_center) == (False, True)
    assert (PAPER.bireal_scaled_grad, OFFICIAL.bireal_scaled_grad) == (True, False)
    assert PAPER.pad_value == OFFICIAL.pad_value == 0.0
    with pytest.raises(ValueError, match=r"unknown convention 'torch'; expected one of \['official', 'paper'\]"):
        get_convention("torch")
    for bad in ({"sign_zero": 0.5}, {"pad_value": 2.0}, {"std_ddof": 2}, {"schedule_clock": "step"},
                {"recu_alpha": "fixed"}, {"standardize_grad": True}, {"standardize_grad": "frozen"},
                {"bias_order": "before"}):
        with pytest.raises(ValueError, match=list(bad)[0]):
            Convention(**bad)


def _layer_out(conv, method="bnn", x=None):
    f = LayerFactory(get_method(method), rng=0, dtype=np.float64, convention=conv)
    layer = f.binary_conv(2, 3, 3, 1, 1)
    return layer, layer.forward(x)[0]


def test_sign_zero_both_ways():
    x = np.zeros((1, 2, 3, 3))
    x[0, 0, 1, 1] = 0.7
    x[0, 1, 0, 0] = -0.2
    for conv in (PAPER, OFFICIAL):
        layer = LayerFactory(get_method("bnn"), rng=0, dtype=np.float64, convention=conv).binary_conv(2, 3, 3, 1, 1)
        xq = layer.input_quantizer.forward(x)[0]
        assert xq[0, 0, 1, 1] == 1 and xq[0, 1, 0, 0] == -1
        assert np.all(xq[x == 0] == conv.sign_zero)
        assert layer.input_quantizer.binary == (conv is PAPER)


@pytest.mark.parametrize("pad", [0.0, 1.0, -1.0])
def test_pad_value_after_binarization(pad):
    """The binarized input is padded with pad_value: with all +1 inputs and weights, a corner output sums
    4 real taps and 5 padded ones."""
    conv = PAPER.with_(pad_value=pad)
    layer = LayerFactory(get_method("bnn"), rng=0, dtype=np.float64, convention=conv).binary_conv(1, 1, 3, 1, 1)
    assert layer.pad_value == pad
    layer.params["weight"][:] = 0.5
    y = layer.forward(np.full((1, 1, 4, 4), 0.3))[0]
    assert y[0, 0, 0, 0] == 4 + 5 * pad and y[0, 0, 1, 1] == 9


def test_clip_inclusive_both_ways():
    x = np.array([[-1.0, 1.0, 0.5, 2.0]])
    for inclusive, expected in ((True, [1, 1, 1, 0]), (False, [0, 0, 1, 0])):
        conv = PAPER.with_(clip_inclusive=inclusive)
        for name, params in (("ste_sign", {}), ("xnor_weight", {"gradient": "detached"}),
                             ("magnitude_aware_sign", {}), ("ste_heaviside", {}), ("xnor_act", {})):
            q = QUANTIZERS[name].from_convention(conv, **params)
            d = q.backward(np.ones_like(x), q.forward(x)[1])
            np.testing.assert_array_equal(d != 0, np.array([expected], dtype=bool), err_msg=name)


@pytest.mark.parametrize("ddof", [0, 1])
def test_std_ddof_both_ways(ddof):
    w = np.random.default_rng(0).standard_normal((3, 6))
    q = QUANTIZERS["libra_pb"].from_convention(PAPER.with_(std_ddof=ddof))
    np.testing.assert_allclose(q.standardized(w).std(axis=1, ddof=ddof), 1.0)


def test_eps_placement_both_ways():
    """ReCU's per-sample std: sqrt(var + eps) (inside) or sqrt(var) + eps (outside)."""
    x = np.random.default_rng(1).standard_normal((2, 5)) * 1e-3
    g = np.ones_like(x)
    var = x.var(axis=1, ddof=1, keepdims=True)
    for inside, s in ((True, np.sqrt(var + 1e-5)), (False, np.sqrt(var) + 1e-5)):
        q = QUANTIZERS["recu_act"].from_convention(OFFICIAL.with_(eps_inside_sqrt=inside), standardize_grad="identity")
        np.testing.assert_allclose(q.backward(g, q.forward(x)[1]), np.maximum(0, 2 - 2 * np.abs(x / s)))


def test_standardize_grad_three_ways():
    """The standardizing quantizers (IR-Net's Libra-PB, ReCU's weights) read the field: "through" sums to zero
    per channel (the centering is differentiated), "identity" passes the estimator's gradient unchanged
    (IR-Net Algorithm 1 line 9) and "detached" multiplies it by gain / s_o (gain = 1 for IR-Net, 2 sqrt(2) for
    ReCU's b* = 2)."""
    w = np.random.default_rng(2).standard_normal((3, 8))
    g = np.random.default_rng(3).standard_normal(w.shape)
    for name, gain in (("libra_pb", 1.0), ("recu_weight", 2 * math.sqrt(2))):
        d = {}
        for mode in ("through", "detached", "identity"):
            q = QUANTIZERS[name].from_convention(OFFICIAL.with_(standardize_grad=mode))
            assert q.standardize_grad == mode
            d[mode] = q.backward(g, q.forward(w)[1])
        s = np.sqrt(w.var(axis=1, ddof=1, keepdims=True) + (1e-5 if name == "recu_weight" else 0.0))
        np.testing.assert_allclose(d["through"].sum(axis=1), 0, atol=1e-9)
        assert np.abs(d["identity"].sum(axis=1)).max() > 1e-3
        np.testing.assert_allclose(d["detached"], d["identity"] * gain / s, rtol=1e-12)


def test_grad_through_stats_is_the_old_spelling_of_standardize_grad():
    """``with_(grad_through_stats=...)`` still works (True -> "through", False -> "identity"), and the property
    reads it back; a non-bool or both spellings at once are errors."""
    assert (PAPER.grad_through_stats, OFFICIAL.grad_through_stats) == (False, True)
    assert PAPER.with_(grad_through_stats=True).standardize_grad == "through"
    assert OFFICIAL.with_(grad_through_stats=False).standardize_grad == "identity"
    assert not OFFICIAL.with_(standardize_grad="detached").grad_through_stats
    with pytest.raises(ValueError, match="grad_through_stats: expected True or False"):
        PAPER.with_(grad_through_stats="yes")
    with pytest.raises(ValueError, match="not both"):
        PAPER.with_(grad_through_stats=True, standardize_grad="through")
    with pytest.raises(ValueError, match=r"standardize_grad: expected one of \['through', 'detached', 'identity'\]"):
        QUANTIZERS["recu_weight"](standardize_grad=True)


def test_schedule_clock_both_ways():
    """At the last of E epochs: the paper clock reaches tau_end, the official one stops short."""
    m = get_method("recu")
    for conv, tau in ((PAPER, 0.99), (OFFICIAL, 0.85 + (0.99 - 0.85) / (math.e - 1) * (math.exp(9 / 10) - 1))):
        f = LayerFactory(m, rng=0, convention=conv)
        model = Sequential(f.binary_linear(4, 4))
        values = m.on_epoch(model, 9, 10, conv)
        assert values["tau"] == pytest.approx(tau)
        assert model.children["0"].weight_quantizer.tau == pytest.approx(tau)


def test_recu_alpha_both_ways():
    """Official: the code's learned per-output-channel alpha (init U[0, 1)) in the layer; paper: the analytic
    alpha = b (2 tau - 1) inside the weight quantizer."""
    off = LayerFactory(get_method("recu"), rng=0, convention=OFFICIAL).binary_conv(4, 6, 3, 1, 1)
    assert off.scale == "learned" and off.params["alpha"].shape == (6,)
    assert np.all((off.params["alpha"] >= 0) & (off.params["alpha"] < 1)) and off.weight_quantizer.alpha == "none"
    pap = LayerFactory(get_method("recu"), rng=0, convention=PAPER).binary_conv(4, 6, 3, 1, 1)
    assert pap.scale is None and "alpha" not in pap.params and pap.weight_quantizer.alpha == "analytic"


def test_recu_act_norm_and_ws_center_both_ways():
    assert QUANTIZERS["recu_act"].from_convention(OFFICIAL).normalize
    assert not QUANTIZERS["recu_act"].from_convention(PAPER).normalize
    assert QUANTIZERS["recu_weight"].from_convention(OFFICIAL).center
    assert not QUANTIZERS["recu_weight"].from_convention(PAPER).center
    # centering matters for a shifted row
    w = np.random.default_rng(4).standard_normal((2, 10)) + 2.0
    a = QUANTIZERS["recu_weight"].from_convention(OFFICIAL.with_(recu_ws_center=True)).forward(w)[0]
    b = QUANTIZERS["recu_weight"].from_convention(OFFICIAL.with_(recu_ws_center=False)).forward(w)[0]
    assert (a > 0).mean() < 0.8 and np.all(b > 0)


def test_bireal_scaled_grad_both_ways():
    w = np.array([[0.5, -0.25, 2.0, 0.25]])
    g = np.ones_like(w)
    scaled = QUANTIZERS["magnitude_aware_sign"].from_convention(PAPER)
    plain = QUANTIZERS["magnitude_aware_sign"].from_convention(OFFICIAL)
    np.testing.assert_allclose(scaled.backward(g, scaled.forward(w)[1]), [[0.75, 0.75, 0, 0.75]])
    np.testing.assert_allclose(plain.backward(g, plain.forward(w)[1]), [[1, 1, 0, 1]])


def test_explicit_parameters_beat_the_convention():
    q = QUANTIZERS["recu_weight"].from_convention(OFFICIAL, sign_zero=1.0, alpha="analytic")
    assert q.sign_zero == 1.0 and q.alpha == "analytic" and q.center


def test_binary_conv_with_conventions_is_a_regular_layer():
    x = np.random.default_rng(5).standard_normal((2, 2, 5, 5))
    for conv in (PAPER, OFFICIAL):
        layer, y = _layer_out(conv, "recu", x)
        assert isinstance(layer, BinaryConv2d) and y.shape == (2, 3, 5, 5)


def _bias_layers(order, scale, rng, backend="numpy", wq="ste_sign", iq="ste_sign", dtype=np.float64):
    """A strided conv and a linear layer with a bias, the given scale and bias order, random bias and alpha."""
    conv = BinaryConv2d(3, 4, 3, stride=2, padding=1, weight_quantizer=wq, input_quantizer=iq, scale=scale,
                        bias=True, backend=backend, rng=rng, dtype=dtype, bias_order=order)
    lin = BinaryLinear(7, 5, wq, iq, scale=scale, bias=True, backend=backend, rng=rng, dtype=dtype, bias_order=order)
    for layer in (conv, lin):
        layer.params["bias"][:] = rng.standard_normal(layer.params["bias"].shape)
        if scale == "learned":
            layer.params["alpha"][:] = rng.uniform(0.2, 1.5, layer.params["alpha"].shape)
    return [(conv, rng.standard_normal((2, 3, 5, 5)).astype(dtype), (1, -1, 1, 1)),
            (lin, rng.standard_normal((4, 7)).astype(dtype), (1, -1))]


def _unscaled_product(layer, x):
    """op(Q_in(x), Q_w(W)) of the layer, without scale and bias: the oracle's y."""
    xq = layer.input_quantizer.forward(x, training=layer.training)[0]
    wq = layer.weight_quantizer.forward(layer.params["weight"], training=layer.training)[0]
    if isinstance(layer, BinaryLinear):
        return xq @ wq.T
    return ops.conv2d_forward(xq, wq, None, *layer._conv_args())[0]


@pytest.mark.parametrize("order", ["after_scale", "before_scale"])
@pytest.mark.parametrize("scale", [None, "mean_abs", "learned"])
def test_bias_order_forward_against_the_formula(order, scale):
    """after_scale: out = alpha y + b; before_scale: out = alpha (y + b) (ReCU's code); without a scale both
    are y + b."""
    rng = np.random.default_rng(zlib.crc32(f"{order}/{scale}".encode()))
    for layer, x, bshape in _bias_layers(order, scale, rng):
        y = _unscaled_product(layer, x)
        b = layer.params["bias"].reshape(bshape)
        w = layer.params["weight"]
        if scale is None:
            alpha = np.ones_like(b)
        elif scale == "learned":
            alpha = layer.params["alpha"].reshape(bshape)
        else:
            alpha = np.abs(w).mean(axis=tuple(range(1, w.ndim))).reshape(bshape)
        expected = alpha * (y + b) if order == "before_scale" else alpha * y + b
        np.testing.assert_allclose(layer.forward(x)[0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", ["after_scale", "before_scale"])
@pytest.mark.parametrize("scale", [None, "mean_abs", "learned"])
@given(seed=st.integers(0, 2**32 - 1))
def test_bias_order_gradients_against_finite_differences(order, scale, seed):
    """dL/db (sum dout or sum alpha dout), dL/dalpha (sum dout y or sum dout (y + b)), dL/dx and dL/dW of both
    binary layers against central differences, the quantizers' estimators through their surrogates."""
    rng = np.random.default_rng(seed)
    for layer, x, _ in _bias_layers(order, scale, rng):
        layer = probe_quantizers(layer)
        if scale == "mean_abs":  # a constant for backprop: held fixed for the finite differences too
            w = layer.params["weight"]
            frozen = np.abs(w).mean(axis=tuple(range(1, w.ndim)))
            layer._alpha = lambda bshape, frozen=frozen: frozen.reshape(bshape)
        errs = check_module(layer, x, rng)
        assert max(errs.values()) < REL_TOL, (type(layer).__name__, errs)


def test_bias_order_gradients_differ_with_a_scale():
    """The two orders give the same dL/dx and dL/dW but different dL/db and dL/dalpha when alpha != 1."""
    grads = {}
    for order in ("after_scale", "before_scale"):
        layer, x, _ = _bias_layers(order, "learned", np.random.default_rng(6))[0]
        out, cache = layer.forward(x)
        layer.backward(np.ones_like(out), cache)
        grads[order] = dict(layer.grads)
    a, b = grads["after_scale"], grads["before_scale"]
    np.testing.assert_allclose(a["weight"], b["weight"])
    assert not np.allclose(a["bias"], b["bias"]) and not np.allclose(a["alpha"], b["alpha"])


def test_bias_order_from_the_convention():
    """LayerFactory hands the convention's bias order to both binary layers; a bad value is an error."""
    for conv, order in ((PAPER, "after_scale"), (OFFICIAL, "before_scale"),
                        (PAPER.with_(bias_order="before_scale"), "before_scale")):
        f = LayerFactory(get_method("recu"), rng=0, convention=conv)
        assert f.binary_conv(2, 3, 3, 1, 1).bias_order == order and f.binary_linear(4, 3).bias_order == order
    with pytest.raises(ValueError, match=r"bias_order: expected one of \['after_scale', 'before_scale'\], got 'x'"):
        BinaryLinear(3, 2, bias_order="x")


@pytest.mark.parametrize("training", [True, False])
def test_bias_order_on_the_packed_kernel_path(training):
    """With +-1 quantizers and backend "cython" the product runs in the packed kernels; the scale and the bias
    come after it in the bias order: bit-identical to the NumPy path and equal to alpha (y + b). In float64,
    so that the gradients too come from the reference on both paths (float32 gradients run the compiled
    float ops on the "cython" backend, compared within tolerance in tests/test_kernels_backend.py)."""
    try:
        kernels.compiled()
    except ImportError as exc:
        pytest.skip(f"the packed-kernel path needs the built extension: {exc}")
    for order in ("after_scale", "before_scale"):
        fast = _bias_layers(order, "learned", np.random.default_rng(8), "cython", dtype=np.float64)
        ref = _bias_layers(order, "learned", np.random.default_rng(8), "numpy", dtype=np.float64)
        for (lf, x, bshape), (lr, _, _) in zip(fast, ref):
            lf.train(training), lr.train(training)
            assert lf._use_kernel(x) and (training is False or not lr._use_kernel(x))
            (o1, c1), (o2, c2) = lf.forward(x), lr.forward(x)
            assert np.array_equal(o1, o2)
            y, alpha, b = _unscaled_product(lr, x), lr.params["alpha"].reshape(bshape), lr.params["bias"].reshape(bshape)
            np.testing.assert_allclose(o1, alpha * (y + b) if order == "before_scale" else alpha * y + b, rtol=1e-6)
            g = np.random.default_rng(9).standard_normal(o1.shape)
            assert np.array_equal(lf.backward(g, c1), lr.backward(g, c2))
            for key in lr.grads:
                assert np.array_equal(lf.grads[key], lr.grads[key]), (order, key)


@pytest.mark.parametrize("zero", [1.0, -1.0, 0.0, 0.5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sign_matches_its_definition_everywhere(zero, dtype):
    """conventions.sign computes sign(x) with sign(0) = zero by mask arithmetic; the values must be those of
    the plain select where(x > 0, 1, where(x < 0, -1, zero)), at -0.0, +-Inf, NaN and subnormals too."""
    from refbnn.conventions import sign

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(500), [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45]]).astype(dtype)
    for a in (x, x.reshape(-1, 1)[::3], x[:7].reshape(7, 1, 1)):
        want = np.where(a > 0, dtype(1), np.where(a < 0, dtype(-1), dtype(zero)))
        got = sign(a, zero)
        assert got.dtype == dtype and got.shape == a.shape
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
