"""Registry-wide contracts of the quantizer catalogue: construction, config round trip, dtypes,
modes, state, conventions, the ``binary`` flag, and errors for bad input."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import REL_TOL, check_quantizer
from refbnn.conventions import OFFICIAL, PAPER
from refbnn.quantizers import QUANTIZERS, Quantizer, get_quantizer

NAMES = sorted(QUANTIZERS)
LARQ_NAMES = ["ste_sign", "approx_sign", "swish_sign", "magnitude_aware_sign", "ste_heaviside", "ste_tern",
              "dorefa_quantizer", "noop"]
SEED_NAMES = ["libra_pb", "ede", "recu_weight", "recu_act"]


def test_catalogue_names():
    """Every name the issue lists is registered, and each class knows its registry name."""
    expected = set(LARQ_NAMES + SEED_NAMES + ["identity_ste_sign", "stochastic_sign", "xnor_weight", "xnor_act",
                                              "dorefa_sign", "pc_pair", "sign_swish", "prox_sign"])
    assert expected <= set(QUANTIZERS)
    for name, cls in QUANTIZERS.items():
        assert cls.name == name
        assert get_quantizer(name).name == name


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    q = get_quantizer(name)
    cfg = q.config()
    assert set(cfg) == set(type(q).parameter_names())
    r = type(q)(**cfg)
    assert r.config() == cfg
    x = np.random.default_rng(3).standard_normal((4, 3, 2, 2))
    if not q.needs_rng:
        np.testing.assert_array_equal(q.forward(x)[0], r.forward(x)[0])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_dtype_and_shape_preserved(name, dtype, training):
    q = get_quantizer(name)
    x = np.random.default_rng(1).standard_normal((5, 4, 3, 3)).astype(dtype)
    y, cache = q.forward(x, training=training)
    assert y.dtype == dtype and y.shape == x.shape
    dx = q.backward(np.ones_like(y), cache)
    assert dx.dtype == dtype and dx.shape == x.shape
    assert q.surrogate(x, training=training).dtype == dtype


@pytest.mark.parametrize("name", NAMES)
@given(seed=st.integers(0, 2**32 - 1), zeros=st.booleans())
def test_binary_flag_is_truthful(name, seed, zeros):
    """``binary`` quantizers output exactly -1 or +1 (in both modes, exact zeros included)."""
    for conv in (PAPER, OFFICIAL):
        q = QUANTIZERS[name].from_convention(conv)
        if not q.binary:
            continue
        x = np.random.default_rng(seed).standard_normal((4, 3, 2, 2)).astype(np.float32)
        if zeros:
            x.reshape(-1)[::3] = 0.0
        for training in (True, False):
            y = q.forward(x, training=training)[0]
            assert set(np.unique(y)) <= {-1.0, 1.0}, (name, conv.name, training)


def test_sign_zero_zero_is_never_binary():
    for name, cls in QUANTIZERS.items():
        if "sign_zero" in cls.parameter_names():
            assert not cls(sign_zero=0.0).binary, name


@pytest.mark.parametrize("name", NAMES)
def test_backward_matches_surrogate_under_both_conventions(name):
    rng = np.random.default_rng(11)
    for conv in (PAPER, OFFICIAL):
        q = QUANTIZERS[name].from_convention(conv)
        x = rng.standard_normal((4, 3, 2, 2)) * 1.5
        x[np.abs(np.abs(x) - 1) < 1e-3] += 0.01
        for training in (True, False):
            assert check_quantizer(q, x, rng, training) < REL_TOL, (name, conv.name, training)


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_and_validation(name):
    q = get_quantizer(name)
    st_ = q.state()
    q.set_state(**st_)
    assert q.state() == st_
    with pytest.raises(ValueError, match="unknown state"):
        q.set_state(not_a_state=1.0)


def test_state_values_are_validated():
    with pytest.raises(ValueError, match=r"tau: expected a value in \(0.5, 1\]"):
        get_quantizer("recu_weight").set_state(tau=0.4)
    with pytest.raises(ValueError, match=r"tau: expected a value in \(0.5, 1\]"):
        get_quantizer("recu_weight").set_state(tau=1.01)
    for name in ("ede", "libra_pb"):
        with pytest.raises(ValueError, match="t: expected a positive"):
            get_quantizer(name).set_state(t=0.0)
        with pytest.raises(ValueError, match="k: expected a positive"):
            get_quantizer(name).set_state(k=-1.0)
    with pytest.raises(ValueError, match="beta: expected a positive"):
        get_quantizer("sign_swish").set_state(beta=0.0)
    with pytest.raises(ValueError, match="mu: expected a finite number >= 0"):
        get_quantizer("prox_sign").set_state(mu=-0.1)
    q = get_quantizer("recu_weight")
    q.set_state(tau=np.float32(0.9))  # numpy scalars (e.g. from checkpoints) are accepted
    assert q.tau == pytest.approx(0.9) and type(q.tau) is float


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="known quantizers: .*approx_sign.*ste_sign"):
        get_quantizer("ste_sing")
    with pytest.raises(ValueError, match="accepted: clip_value, sign_zero, clip_inclusive"):
        get_quantizer("ste_sign", clip=1.0)
    with pytest.raises(ValueError, match="unknown parameter"):
        QUANTIZERS["recu_weight"].from_convention(PAPER, taus=0.9)


@pytest.mark.parametrize("name,params,match", [
    ("ste_sign", {"clip_value": -1.0}, "clip_value: expected a positive"),
    ("ste_sign", {"clip_value": 0.0}, "clip_value: expected a positive"),
    ("ste_sign", {"sign_zero": 0.5}, "sign_zero: expected 1.0, 0.0 or -1.0"),
    ("magnitude_aware_sign", {"clip_value": -2.0}, "clip_value"),
    ("swish_sign", {"beta": 0.0}, "beta: expected a positive"),
    ("ste_tern", {"threshold_value": -0.1}, "threshold_value: expected a finite number >= 0"),
    ("dorefa_quantizer", {"k_bit": 0}, "k_bit: expected a positive int"),
    ("dorefa_quantizer", {"mode": "bias"}, "mode: expected one of"),
    ("noop", {"precision": 0}, "precision: expected a positive int"),
    ("stochastic_sign", {"eval_forward": "mean"}, "eval_forward: expected one of"),
    ("xnor_weight", {"gradient": "autograd"}, "gradient: expected one of"),
    ("xnor_act", {"scale": "spatial"}, "scale: expected one of"),
    ("libra_pb", {"t": 0.0}, "t: expected a positive"),
    ("libra_pb", {"std_ddof": 2}, "std_ddof: expected 0 or 1"),
    ("libra_pb", {"eps": -1e-5}, "eps: expected a finite number >= 0"),
    ("ede", {"k": -1.0}, "k: expected a positive"),
    ("recu_weight", {"tau": 0.5}, r"tau: expected a value in \(0.5, 1\]"),
    ("recu_weight", {"tau": 1.2}, r"tau: expected a value in \(0.5, 1\]"),
    ("recu_weight", {"b_star": 0.0}, "b_star: expected a positive"),
    ("recu_weight", {"alpha": "learned"}, "alpha: expected one of"),
    ("recu_act", {"normalize": "yes"}, "normalize: expected True or False"),
    ("pc_pair", {"forward_map": "tanh"}, "forward_map: expected one of"),
    ("pc_pair", {"backward_map": "prox"}, "backward_map: expected one of"),
    ("sign_swish", {"beta": -5.0}, "beta: expected a positive"),
    ("prox_sign", {"mu": -1.0}, "mu: expected a finite number >= 0"),
])
def test_invalid_parameters_raise(name, params, match):
    with pytest.raises(ValueError, match=match):
        get_quantizer(name, **params)


def test_get_quantizer_passes_instances_and_none_through():
    q = get_quantizer("ste_sign")
    assert get_quantizer(q) is q and get_quantizer(None) is None
    assert isinstance(q, Quantizer)


@pytest.mark.parametrize("name", NAMES)
def test_convention_kwargs_are_constructor_parameters(name):
    cls = QUANTIZERS[name]
    for conv in (PAPER, OFFICIAL):
        assert set(cls.convention_kwargs(conv)) <= set(cls.parameter_names())
        q = cls.from_convention(conv)
        if "sign_zero" in cls.parameter_names():
            assert q.sign_zero == conv.sign_zero
