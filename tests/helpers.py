"""Finite-difference gradient checking (CS231n's eval_numerical_gradient_array, in float64)."""
from __future__ import annotations

import numpy as np

from refbnn.quantizers import Quantizer

REL_TOL = 1e-6


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

    forward(x) = q(x0) + s(x) - s(x0), where x0 is the input at the base point (recorded on the
    first call) and s is q's surrogate. Its value at x0 is q's forward; its derivative at x0 is
    the surrogate's. The backward is q's own backward at x0, so a finite-difference check of a
    network built with probes checks every estimator against the surrogate it declares.

    ``jitter`` adds a fixed random offset (no gradient) so that the integer-valued outputs of
    binary layers do not tie exactly in max pools or sit exactly on a kink further on.
    """

    def __init__(self, q, jitter=0.0, seed=0):
        self.q = q
        self.name = f"probe({q.name})"
        self.x0 = None
        self.binary = False
        self.jitter, self.seed = jitter, seed

    def forward(self, x):
        if self.x0 is None:
            self.x0 = x.copy()
            self.offset = self.jitter * np.random.default_rng(self.seed).standard_normal(x.shape)
        y0, cache = self.q.forward(self.x0)
        return y0 + self.q.surrogate(x) - self.q.surrogate(self.x0) + self.offset, cache

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
    for name, arr, analytic in targets:
        idx = sample_indices(arr.size, rng, k)
        a = analytic.reshape(-1)[idx]
        num = numeric_grad(loss, arr, idx, h).reshape(-1)[idx]
        # A ReLU/hardtanh/max-pool input within h of its kink somewhere downstream spoils a central
        # difference; retry the coordinates that disagree with smaller steps and keep the closest.
        for smaller in (h / 10, h / 100):
            bad = np.abs(a - num) > 1e-7 * max(np.abs(a).max(initial=0.0), 1e-3)
            if not bad.any():
                break
            retry = numeric_grad(loss, arr, idx[bad], smaller).reshape(-1)[idx[bad]]
            better = np.abs(a[bad] - retry) < np.abs(a[bad] - num[bad])
            num[np.flatnonzero(bad)[better]] = retry[better]
        errors[name] = rel_error(a, num)
    return errors
