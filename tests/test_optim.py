"""Optimizers against their closed forms, parameter groups, the latent weight clip, LR schedules."""
import math

import numpy as np
import pytest

from refbnn.layers import BinaryLinear, Linear, Sequential
from refbnn.optim import SGD, Adam, AdamW, WeightClip, no_decay_bn_and_bias, param_groups
from refbnn.schedules import cosine_lr, linear_lr, step_lr, warmup_factor


def _one_param(value, grad):
    layer = Linear(2, 1, bias=False, dtype=np.float64)
    layer.params["weight"][:] = value
    layer.grads["weight"] = np.array(grad, dtype=np.float64).reshape(1, 2)
    return layer


def test_sgd_momentum_nesterov_weight_decay():
    for nesterov in (False, True):
        layer = _one_param([[1.0, -2.0]], [0.5, 0.25])
        opt = SGD(layer, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
        p, v = np.array([1.0, -2.0]), None
        for _ in range(3):
            opt.step()
            g = np.array([0.5, 0.25]) + 0.01 * p
            v = g if v is None else 0.9 * v + g
            p = p - 0.1 * (g + 0.9 * v if nesterov else v)
            np.testing.assert_allclose(layer.params["weight"][0], p, rtol=1e-14)


def test_adam_and_adamw_match_closed_form():
    for cls, decoupled in ((Adam, False), (AdamW, True)):
        layer = _one_param([[1.0, -2.0]], [0.5, -0.25])
        opt = cls(layer, lr=0.01, weight_decay=0.1)
        p, m, v = np.array([1.0, -2.0]), 0.0, 0.0
        for t in range(1, 4):
            opt.step()
            g = np.array([0.5, -0.25])
            if decoupled:
                p = p * (1 - 0.01 * 0.1)
            else:
                g = g + 0.1 * p
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            p = p - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
            np.testing.assert_allclose(layer.params["weight"][0], p, rtol=1e-12)


def test_param_groups_and_state_roundtrip():
    net = Sequential(Linear(3, 4), Linear(4, 2))
    groups = param_groups(net, weight_decay=0.5, no_decay=no_decay_bn_and_bias)
    assert [n for n, _, _ in groups[0]["params"]] == ["0.weight", "1.weight"]
    assert [n for n, _, _ in groups[1]["params"]] == ["0.bias", "1.bias"] and groups[1]["weight_decay"] == 0.0
    for _, m, k in net.named_parameters():
        m.grads[k] = np.ones_like(m.params[k])
    bias_before = net.children["0"].params["bias"].copy()
    opt = SGD(groups, lr=0.0, momentum=0.9)
    opt.step()
    np.testing.assert_array_equal(net.children["0"].params["bias"], bias_before)  # lr 0: nothing moves
    state = opt.state_dict()
    opt2 = SGD(param_groups(net, 0.5, no_decay_bn_and_bias), lr=0.0, momentum=0.9)
    opt2.load_state_dict(state)
    assert opt2.steps == 1 and set(opt2.state) == set(opt.state)
    with pytest.raises(ValueError, match="more than one group"):
        SGD([{"params": groups[0]["params"]}, {"params": groups[0]["params"]}])
    with pytest.raises(ValueError, match="does not match"):
        opt2.load_state_dict({"__steps__": np.asarray(1), "nope.momentum": np.zeros(2)})


def test_weight_clip_only_touches_binary_latent_weights():
    net = Sequential(Linear(3, 3), BinaryLinear(3, 3))
    for _, m, k in net.named_parameters():
        m.params[k][:] = 5.0
    WeightClip(1.0).apply(net)
    assert net.children["1"].params["weight"].max() == 1.0
    assert net.children["0"].params["weight"].max() == 5.0


def test_schedules():
    assert cosine_lr(0, 10, 0.1) == 0.1
    assert math.isclose(cosine_lr(5, 10, 0.1), 0.05)
    assert cosine_lr(9, 10, 0.1) > 0  # 0-based epochs: the end value is never reached
    vals = [cosine_lr(e, 10, 0.1, warmup_epochs=3) for e in range(10)]
    assert vals[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1]) and vals[3] == 0.1
    assert all(a >= b for a, b in zip(vals[2:], vals[3:]))
    assert linear_lr(5, 10, 1.0) == 0.5 and step_lr(6, 10, 1.0, milestones=(3, 6)) == pytest.approx(0.01)
    assert warmup_factor(4, 5) == 1.0 and warmup_factor(0, 5) == 0.2
    with pytest.raises(ValueError, match="0-based index"):
        cosine_lr(10, 10, 0.1)
