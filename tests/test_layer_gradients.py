"""Gradient checks of layers and whole models, binary ones against the surrogates their estimators
declare (through StraightThroughProbe), in float64."""
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import REL_TOL, StraightThroughProbe, check_module, check_quantizer, probe_quantizers
from refbnn.layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, BinaryConv2d, BinaryLinear, Conv2d, Flatten,
                           GlobalAvgPool, Hardtanh, LearnableBias, Linear, MaxPool2d, PReLU, ReLU, RPReLU, Sequential,
                           ShortcutA)
from refbnn.methods import METHODS, LayerFactory
from refbnn.models import MODELS, build_model
from refbnn.quantizers import QUANTIZERS, get_quantizer

seeds = st.integers(0, 2**32 - 1)


def f64(m):
    return m.astype(np.float64)


@given(seeds)
def test_full_precision_layers(seed):
    rng = np.random.default_rng(seed)
    x4 = rng.standard_normal((3, 4, 5, 5))
    for layer in [Conv2d(4, 6, 3, stride=2, padding=1, rng=rng), Conv2d(4, 4, 3, groups=2, dilation=2, padding=2, rng=rng),
                  BatchNorm2d(4), PReLU(4), RPReLU(4), LearnableBias(4), MaxPool2d(2), AvgPool2d(3, 2, 1),
                  ShortcutA(4, 8, 2), ShortcutA(4, 6, 2, "avgpool")]:
        errs = check_module(f64(layer), x4.copy(), rng)
        assert max(errs.values()) < REL_TOL, (layer, errs)
    x2 = rng.standard_normal((4, 6))
    for layer in [Linear(6, 3, rng=rng), BatchNorm1d(6)]:
        errs = check_module(f64(layer), x2.copy(), rng)
        assert max(errs.values()) < REL_TOL, (layer, errs)


@pytest.mark.parametrize("scale", [None, "mean_abs", "learned"])
@pytest.mark.parametrize("wq,iq", [("ste_sign", "ste_sign"), ("identity_ste_sign", "ste_sign"), ("ste_sign", None)])
@given(seed=seeds, bias=st.booleans())
def test_binary_layers_against_surrogate(scale, wq, iq, seed, bias):
    rng = np.random.default_rng(seed)
    layers = [
        (BinaryLinear(5, 4, wq, iq, scale=scale, bias=bias, rng=rng), rng.standard_normal((3, 5))),
        (BinaryConv2d(4, 6, 3, stride=1, padding=1, weight_quantizer=wq, input_quantizer=iq, scale=scale, bias=bias,
                      pad_value=0.0, rng=rng), rng.standard_normal((2, 4, 4, 4))),
        (BinaryConv2d(4, 2, 2, stride=2, padding=1, groups=2, weight_quantizer=wq, input_quantizer=iq, scale=scale,
                      pad_value=1.0, rng=rng), rng.standard_normal((2, 4, 5, 5))),
    ]
    for layer, x in layers:
        layer = probe_quantizers(f64(layer))
        if scale == "mean_abs":  # the scale is a constant for backprop (detached): hold it fixed for FD too
            w = layer.params["weight"]
            frozen = np.abs(w).mean(axis=tuple(range(1, w.ndim)))
            layer._alpha = lambda bshape, frozen=frozen: frozen.reshape(bshape)
        errs = check_module(layer, x, rng)
        assert max(errs.values()) < REL_TOL, (layer, errs)


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
@pytest.mark.parametrize("training", [True, False])
@given(seed=seeds)
def test_quantizer_backward_is_surrogate_derivative(name, training, seed):
    """q.backward(G) equals the gradient of sum(G * surrogate) (central differences, away from kinks),
    for quantizers with per-channel or per-sample statistics too (axis 0 is the channel / the sample)."""
    rng = np.random.default_rng(seed)
    q = get_quantizer(name)
    x = rng.standard_normal((4, 3, 2, 2)) * 1.5
    x[np.abs(np.abs(x) - 1) < 1e-3] += 0.01
    assert check_quantizer(q, x, rng, training) < REL_TOL


# SignSwish's slope of 5 at 0 in both quantizers of every binary layer, compounded over a ResNet-18's
# 16 binary convs and batch-3 batch norms, leaves finite differences no significant digits (the
# analytic gradients reach 1e4); beta = 1 runs the same code on a well-conditioned network.
CONDITIONING = {"bnnplus": {"beta": 1.0}}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("model", sorted(MODELS))
def test_models_end_to_end(method, model):
    """Whole networks in training mode: every parameter's gradient, binary estimators via probes."""
    rng = np.random.default_rng(zlib.crc32(f"{method}/{model}".encode()))
    factory = LayerFactory(METHODS[method], rng=rng, dtype=np.float64, params=CONDITIONING.get(method))
    width = {"mlp": 0.02, "vgg_small": 0.03, "resnet20": 0.2, "resnet18": 0.05}[model]
    net = probe_quantizers(build_model(model, factory, (2, 8, 8), 3, width), jitter=0.05)
    # Generic batch-norm affine parameters, so normalised values do not sit on hardtanh's kinks at +-1
    for _, m in net.modules():
        if "gamma" in m.params:
            m.params["gamma"][:] = rng.uniform(0.5, 1.5, m.params["gamma"].shape)
            m.params["beta"][:] = rng.normal(0.0, 0.3, m.params["beta"].shape)
    x = rng.standard_normal((3, 2, 8, 8))
    errs = check_module(net, x, rng, k=6)
    assert max(errs.values()) < REL_TOL, {k: v for k, v in errs.items() if v >= REL_TOL}


def test_probe_detects_a_wrong_estimator():
    """The check can fail: a quantizer whose backward disagrees with its surrogate is caught."""
    class WrongSte(type(get_quantizer("ste_sign"))):
        def backward(self, dy, cache):
            return 2.0 * dy * cache  # twice the declared surrogate's derivative

    rng = np.random.default_rng(0)
    layer = f64(BinaryLinear(5, 4, WrongSte(), None, rng=rng))
    layer.weight_quantizer = StraightThroughProbe(layer.weight_quantizer)
    errs = check_module(layer, rng.standard_normal((3, 5)), rng)
    assert errs["weight"] > 0.1


def test_sequential_backward_chains():
    rng = np.random.default_rng(1)
    net = f64(Sequential(Conv2d(1, 2, 3, padding=1, rng=rng), ReLU(), Hardtanh(), GlobalAvgPool(), Flatten(),
                         Linear(2, 3, rng=rng)))
    errs = check_module(net, rng.standard_normal((2, 1, 4, 4)), rng)
    assert max(errs.values()) < REL_TOL
