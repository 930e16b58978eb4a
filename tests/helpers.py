"""Finite-difference gradient checking (CS231n's eval_numerical_gradient_array, in float64)."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from refbnn.quantizers import Quantizer

REL_TOL = 1e-6


@contextlib.contextmanager
def stopped_after(epochs: int):
    """Within the block, ``refbnn.train.train_epoch`` raises KeyboardInterrupt instead of running
    epoch ``epochs + 1``, and the block expects it: a training run stopped after ``epochs`` epochs,
    with the checkpoint of the last one written (for resume tests)."""
    import refbnn.train as T  # noqa: PLC0415

    real, done = T.train_epoch, [0]

    def run(*a, **k):
        if done[0] == epochs:
            raise KeyboardInterrupt
        done[0] += 1
        return real(*a, **k)

    T.train_epoch = run
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        T.train_epoch = real


def rel_error(analytic, numeric, floor=1e-3):
    """max |a - n| / max(max |a|, max |n|, floor): relative to the gradient's scale.

    The floor keeps gradients that are exactly zero in theory (a bias before batch norm) from
    turning finite-difference round-off (~1e-10) into a large "relative" error.
    """
    a, n = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(n).max(initial=0.0), floor)
    return float(np.abs(a - n).max(initial=0.0) / scale)


def numeric_grad(f, x, idx=None, h=1e-6):
    """Central differences of the scalar f() w.r.t. x (modified in place), at flat indices ``idx``."""
    flat = x.reshape(-1)
    idx = range(flat.size) if idx is None else idx
    out = np.zeros(flat.size)
    for i in idx:
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        out[i] = (fp - fm) / (2 * h)
    return out.reshape(x.shape)


def sample_indices(size, rng, k=40):
    return np.arange(size) if size <= k else rng.choice(size, k, replace=False)


def check_op(forward, backward, inputs: dict, grad_names: dict, rng, h=1e-6):
    """Gradient check of an op pair on L = sum(out * G).

    ``inputs``: name -> array (float64) passed to forward as keyword arguments; ``grad_names``:
    input name -> where its gradient comes from: "dx" (backward's first result) or a key of the
    grads dict. Returns {name: relative error}.
    """
    out, cache = forward(**inputs)
    G = rng.standard_normal(np.shape(out))
    dx, grads = backward(G, cache)
    errors = {}
    for name, source in grad_names.items():
        analytic = dx if source == "dx" else grads[source]
        x = inputs[name]
        idx = sample_indices(x.size, rng)

        def loss():
            return float(np.sum(forward(**inputs)[0] * G))

        num = numeric_grad(loss, x, idx, h)
        errors[name] = rel_error(analytic.reshape(-1)[idx], num.reshape(-1)[idx])
    return errors


class StraightThroughProbe(Quantizer):
    """Makes a quantizer's estimator checkable by finite differences.

    forward(x) = q(x0) + s(x; x0) - s(x0; x0), where x0 is the input at the base point (recorded on
    the first call, with q's forward and cache there) and s(x; x0) = q.surrogate(x, ref=x0) is q's
    surrogate with its stop-gradient quantities held at x0. Its value at x0 is q's forward; its
    derivative at x0 is the surrogate's. The backward is q's own backward at x0, so a
    finite-difference check of a network built with probes checks every estimator against the
    surrogate it declares. The training flag is passed through (both calls must use the same mode).

    ``jitter`` adds a fixed random offset (no gradient) so that the integer-valued outputs of
    binary layers do not tie exactly in max pools or sit exactly on a kink further on.
    """

    def __init__(self, q, jitter=0.0, seed=0):
        self.q = q
        self.name = f"probe({q.name})"
        self.x0 = None
        self.binary = False
        self.jitter, self.seed = jitter, seed

    def forward(self, x, training=True):
        if self.x0 is None:
            self.x0 = x.copy()
            self.offset = self.jitter * np.random.default_rng(self.seed).standard_normal(x.shape)
            self.training = training
            self.y0, self.cache0 = self.q.forward(self.x0, training=training)
            self.s0 = self.q.surrogate(self.x0, ref=self.x0, training=training)
        if training != self.training:
            raise RuntimeError("StraightThroughProbe: the mode changed between calls")
        return self.y0 + self.q.surrogate(x, ref=self.x0, training=training) - self.s0 + self.offset, self.cache0

    def backward(self, dy, cache):
        return self.q.backward(dy, cache)


def probe_quantizers(model, jitter=0.0):
    """Wrap every quantizer of a model's binary layers in a StraightThroughProbe."""
    for i, (_, m) in enumerate(model.modules()):
        for attr in ("weight_quantizer", "input_quantizer"):
            q = getattr(m, attr, None)
            if q is not None:
                setattr(m, attr, StraightThroughProbe(q, jitter, seed=i))
    return model


def check_module(model, x, rng, k=25, h=1e-6):
    """Gradient check of a module (float64) w.r.t. its input and every parameter on L = sum(out * G).

    Returns {name: relative error}; samples ``k`` coordinates per array.
    """
    out, cache = model.forward(x)
    G = rng.standard_normal(out.shape)
    model.zero_grad()
    dx = model.backward(G, cache)

    def loss():
        return float(np.sum(model.forward(x)[0] * G))

    errors = {}
    targets = [("input", x, dx)] + [(n, m.params[key], m.grads[key]) for n, m, key in model.named_parameters()]
    # An array whose gradient is ~0 in theory (a per-channel scale or bias right before batch norm) is
    # judged against a fraction of the model's gradient scale, not against its own round-off.
    floor = max(1e-3, 1e-4 * max(float(np.abs(g).max(initial=0.0)) for _, _, g in targets))
    for name, arr, analytic in targets:
        idx = sample_indices(arr.size, rng, k)
        a = analytic.reshape(-1)[idx]
        num = numeric_grad(loss, arr, idx, h).reshape(-1)[idx]
        # A ReLU/hardtanh/max-pool input within h of its kink somewhere downstream spoils a central
        # difference; retry the coordinates that disagree with smaller steps and keep the closest. A
        # gradient that is ~0 in theory drowns in round-off at step h: retry with a larger step too.
        for smaller in (h / 10, h / 100, h * 100):
            bad = np.abs(a - num) > 1e-7 * max(np.abs(a).max(initial=0.0), floor)
            if not bad.any():
                break
            retry = numeric_grad(loss, arr, idx[bad], smaller).reshape(-1)[idx[bad]]
            better = np.abs(a[bad] - retry) < np.abs(a[bad] - num[bad])
            num[np.flatnonzero(bad)[better]] = retry[better]
        errors[name] = rel_error(a, num, floor)
    return errors


def check_quantizer(q, x, rng, training=True, h=1e-6):
    """q.backward(G) against the gradient of sum(G * q.surrogate(z, ref=x)) at z = x (central differences
    on every coordinate, retried with smaller steps where a kink is within h). Returns the relative error."""
    _, cache = q.forward(x, training=training)
    G = rng.standard_normal(x.shape)
    analytic = q.backward(G, cache)
    z = x.copy()

    def loss():
        return float(np.sum(G * q.surrogate(z, ref=x, training=training)))

    num = numeric_grad(loss, z, None, h)
    a, n = analytic.reshape(-1), num.reshape(-1)
    for smaller in (h / 10, h / 100):
        bad = np.abs(a - n) > 1e-7 * max(np.abs(a).max(initial=0.0), 1e-3)
        if not bad.any():
            break
        retry = numeric_grad(loss, z, np.flatnonzero(bad), smaller).reshape(-1)
        better = np.abs(a[bad] - retry[bad]) < np.abs(a[bad] - n[bad])
        n[np.flatnonzero(bad)[better]] = retry[bad][better]
    return rel_error(a, n)
