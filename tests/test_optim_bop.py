"""Bop (Larq's definition) and the CaseOptimizer routing."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refbnn.layers import BatchNorm1d, BinaryLinear, Linear, Sequential
from refbnn.optim import Adam, Bop, CaseOptimizer, build_bop_optimizer, is_binary_weight, param_groups


def _larq_bop(w, m, g, gamma, threshold):
    """A transcription of larq/optimizers.py Bop._resource_apply_dense."""
    m = m + gamma * (g - m)
    lsign = lambda v: np.sign(np.sign(v) + 0.1)  # noqa: E731 - larq.math.sign
    return lsign(-np.sign(w * m - threshold) * w), m


def _one_param_model(w):
    layer = BinaryLinear(w.shape[1], w.shape[0], "ste_sign", None, rng=0, dtype=np.float64)
    layer.params["weight"][:] = w
    return layer


@given(st.integers(0, 2**32 - 1), st.floats(1e-5, 1.0), st.sampled_from([0.0, 1e-8, 1e-3]))
def test_bop_matches_larq(seed, gamma, threshold):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 5))
    w.reshape(-1)[:2] = 0.0
    layer = _one_param_model(w)
    opt = Bop([{"params": list(layer.named_parameters())}], threshold=threshold, gamma=gamma)
    m = np.zeros_like(w)
    for _ in range(4):
        g = rng.standard_normal(w.shape)
        layer.grads["weight"] = g
        opt.step()
        w, m = _larq_bop(w, m, g, gamma, threshold)
        np.testing.assert_array_equal(layer.params["weight"], w)
        np.testing.assert_allclose(opt.state["weight.m"], m)
    assert set(np.unique(layer.params["weight"])) <= {-1.0, 1.0}


def test_bop_flip_rule_exact_values():
    w = np.array([[1.0, 1.0, -1.0, -1.0, 1.0, 0.0]])
    g = np.array([[0.5, -0.5, -0.5, 0.5, 0.0, 0.3]])
    layer = _one_param_model(w)
    opt = Bop([{"params": list(layer.named_parameters())}], threshold=0.1, gamma=0.5)
    layer.grads["weight"] = g
    opt.step()  # m = 0.5 g: w m = [0.125, -0.125, 0.125, -0.125, 0, 0]
    # flip where w m > 0.1; keep otherwise; w = 0 -> +1 (larq.math.sign)
    np.testing.assert_array_equal(layer.params["weight"], [[-1, 1, 1, -1, 1, 1]])
    layer.grads["weight"] = np.zeros_like(w)
    opt.step()  # no new signal: m halves to [.125, -.125, -.125, .125, 0, .075]; w m = [-.125, -.125, -.125, -.125, 0, .075]
    np.testing.assert_array_equal(layer.params["weight"], [[-1, 1, 1, -1, 1, 1]])


def test_bop_validation():
    layer = _one_param_model(np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"gamma: expected a value in \(0, 1\]"):
        Bop(layer, gamma=0.0)
    with pytest.raises(ValueError, match="threshold: expected >= 0"):
        Bop(layer, threshold=-1.0)


def _model():
    return Sequential(Linear(3, 4, rng=0), BatchNorm1d(4), BinaryLinear(4, 2, "ste_sign", "ste_sign", rng=1),
                      BinaryLinear(2, 2, "noop", None, rng=2))


def test_case_optimizer_routes_binary_weights_to_bop():
    model = _model()
    opt = build_bop_optimizer(param_groups(model, 0.0), lr=1e-2)
    bop, adam = opt.optimizers
    assert isinstance(bop, Bop) and isinstance(adam, Adam)
    routed = [n for g in bop.groups for n, _, _ in g["params"]]
    assert routed == ["2.weight"]  # ste_sign has precision 1; noop has precision 32
    assert is_binary_weight("3.weight", model.children["3"], "weight") is False
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    out, cache = model.forward(x)
    model.backward(np.ones_like(out), cache)
    before = model.children["0"].params["weight"].copy()
    opt.step()
    assert set(np.unique(model.children["2"].params["weight"])) <= {-1.0, 1.0}
    assert not np.array_equal(before, model.children["0"].params["weight"])
    opt.lr = 0.5
    assert adam.lr == 0.5 and opt.lr == 0.5 and bop.lr == 0.0
    state = opt.state_dict()
    assert "0/2.weight.m" in state and "1/0.weight.m" in state
    opt2 = build_bop_optimizer(param_groups(model, 0.0), lr=1e-2)
    opt2.load_state_dict(state)
    assert opt2.steps == 1 and np.array_equal(opt2.optimizers[0].state["2.weight.m"], bop.state["2.weight.m"])


def test_case_optimizer_errors_like_larq():
    model = _model()
    always = lambda n, m, k: True  # noqa: E731
    never = lambda n, m, k: False  # noqa: E731
    with pytest.raises(ValueError, match="claimed by more than one optimizer"):
        CaseOptimizer(model, (always, lambda g: Adam(g)), (always, lambda g: Adam(g)))
    with pytest.raises(ValueError, match="claimed no parameters"):
        CaseOptimizer(model, (never, lambda g: Adam(g)), default=lambda g: Adam(g))
    with pytest.warns(UserWarning, match="no default optimizer"):
        CaseOptimizer(model, (is_binary_weight, lambda g: Bop(g)))
