"""Quantizer schedules: start values, monotonicity, closed forms, the two clocks, and validation."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refbnn.schedules import (EDE_SCHEDULE, RECU_SCHEDULE, beta_state, ede_state, mu_state, recu_state,
                              schedule_progress)

progress = st.floats(0, 1)
epochs = st.integers(1, 700)


@given(epochs)
def test_clocks(E):
    ps_epoch = [schedule_progress(e, E, "epoch") for e in range(E)]
    ps_prog = [schedule_progress(e, E, "progress") for e in range(E)]
    assert ps_epoch[0] == 0.0 and ps_prog[0] == 0.0
    assert ps_epoch[-1] == (E - 1) / E < 1.0          # official: the end is never reached
    assert ps_prog[-1] == (1.0 if E > 1 else 0.0)     # paper: the end value at the last epoch
    assert all(np.diff(ps_epoch) > 0) and all(np.diff(ps_prog) > 0)


def test_clock_validation():
    with pytest.raises(ValueError, match="epoch: expected a 0-based index"):
        schedule_progress(5, 5)
    with pytest.raises(ValueError, match="schedule clock: expected one of"):
        schedule_progress(0, 5, "iteration")


@given(st.floats(1e-4, 1.0), st.floats(1.0, 100.0))
def test_ede_start_end_monotone_and_closed_form(t_min, t_max):
    assert ede_state(0.0, t_min, t_max)["t"] == pytest.approx(t_min)
    assert ede_state(1.0, t_min, t_max)["t"] == pytest.approx(t_max)
    ps = np.linspace(0, 1, 101)
    ts = [ede_state(p, t_min, t_max)["t"] for p in ps]
    ks = [ede_state(p, t_min, t_max)["k"] for p in ps]
    assert np.all(np.diff(ts) >= 0) and np.all(np.diff(ks) <= 0)
    for p, t, k in zip(ps, ts, ks):
        assert t == pytest.approx(t_min * 10 ** (p * math.log10(t_max / t_min)))
        assert k == pytest.approx(max(1 / t, 1.0))
        assert k * t >= 1 - 1e-12  # the slope at 0: 1 in stage 1, t in stage 2


def test_ede_stage_switch_and_code_values():
    """t = 1 at p = 0.5 for T_min = 0.1 (paper) and at p = 0.75 for T_min = 1e-3 (ResNet-20 1W/1A code)."""
    assert ede_state(0.5)["t"] == pytest.approx(1.0)
    assert ede_state(0.75, T_min=1e-3)["t"] == pytest.approx(1.0)
    assert ede_state(0.0) == {"t": pytest.approx(0.1), "k": pytest.approx(10.0)}  # the layer defaults k = 10, t = 0.1
    last = EDE_SCHEDULE.at(399, 400, "epoch")["t"]  # the code's 400 epochs: t(E - 1) < T_max
    assert last < 10.0 and last == pytest.approx(10 ** (-1 + 2 * 399 / 400))


@given(st.floats(0.501, 1.0), st.floats(0.501, 1.0))
def test_recu_tau_start_end_monotone_convex(ts, te):
    assert recu_state(0.0, ts, te)["tau"] == pytest.approx(ts)
    assert recu_state(1.0, ts, te)["tau"] == pytest.approx(te)
    ps = np.linspace(0, 1, 201)
    tau = np.array([recu_state(p, ts, te)["tau"] for p in ps])
    a = (te - ts) / (math.e - 1)
    np.testing.assert_allclose(tau, np.minimum(a * np.exp(ps) + ts - a, 1.0), atol=1e-12)
    d = np.diff(tau)
    assert np.all(d >= -1e-15) if te >= ts else np.all(d <= 1e-15)
    if te > ts:
        assert np.all(np.diff(d) >= -1e-12)  # convex


def test_recu_code_values_for_600_epochs():
    """ReCU code, E = 600: tau(0) = 0.85, tau(299) = 0.90263, tau(599) = 0.98963 (docs/methods/recu.md)."""
    taus = [RECU_SCHEDULE.at(e, 600, "epoch")["tau"] for e in (0, 299, 599)]
    np.testing.assert_allclose(taus, [0.85, 0.90263, 0.98963], atol=5e-6)
    assert RECU_SCHEDULE.at(599, 600, "progress")["tau"] == pytest.approx(0.99)


@given(progress)
def test_beta_and_mu_closed_forms(p):
    assert beta_state(p, 5.0, 100.0)["beta"] == pytest.approx(5.0 * 20.0 ** p)
    assert mu_state(p, 0.0, 1.0)["mu"] == pytest.approx(p)
    assert beta_state(0.0, 2.0, 8.0)["beta"] == 2.0 and mu_state(0.0, 0.25, 1.0)["mu"] == 0.25


@pytest.mark.parametrize("call,match", [
    (lambda: ede_state(0.5, T_min=0.0), "T_min: expected > 0"),
    (lambda: ede_state(0.5, T_min=-1.0), "T_min: expected > 0"),
    (lambda: ede_state(0.5, T_min=10.0, T_max=1.0), "T_max: expected >= T_min"),
    (lambda: recu_state(0.5, tau_start=0.5), r"tau_start: expected a value in \(0.5, 1\]"),
    (lambda: recu_state(0.5, tau_end=1.5), r"tau_end: expected a value in \(0.5, 1\]"),
    (lambda: recu_state(1.5), r"progress: expected a value in \[0, 1\]"),
    (lambda: beta_state(0.5, 0.0, 1.0), "beta_start, beta_end: expected positive"),
    (lambda: mu_state(0.5, -1.0, 1.0), "mu_start, mu_end: expected values >= 0"),
    (lambda: EDE_SCHEDULE.with_params(T_min=0.0), "T_min: expected > 0"),
    (lambda: EDE_SCHEDULE.with_params(tau=0.9), "unknown parameter"),
])
def test_schedule_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()
