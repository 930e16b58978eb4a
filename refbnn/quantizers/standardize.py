"""Row-wise standardization with its backward, shared by IR-Net, ReCU and ReCU's activations.

"Row" = everything but axis 0: the output channel of a weight (OIHW or (out, in)) or the sample of
an activation batch. With n entries per row, u = x - mean(x), var = sum(u^2) / (n - ddof) and
s = sqrt(var + eps) (``eps_inside_sqrt``) or s = sqrt(var) + eps:

    forward:  y = gain * z / s,   z = u (``center``) or z = x (ReCU's activations: no centering)

The backward is one of three readings (``mode``, the convention field ``standardize_grad``):

- "through": mean and std are differentiated (autograd of the official IR-Net and ReCU code, where
  nothing is detached):
      dL/dx_j = gain * [ (g_j - c mean(g)) / s  -  (g^T z) / s^2 * ds/dx_j ],
      ds/dx_j = u_j / ((n - ddof) * sd),  sd = s (eps inside the sqrt) or sqrt(var) (eps outside),
      c = 1 if centering else 0
  (the derivative of y: d mean / dx_j = 1/n, d var / dx_j = 2 u_j / (n - ddof));
- "detached": mean and std are constants: dL/dx = gain * g / s;
- "identity": the standardization is the identity in the backward, dL/dx = g (IR-Net, arXiv
  1909.10788, Algorithm 1 line 9).

``row_standardize_surrogate`` is the differentiable function whose derivative each reading is (the
tests check the backward against its finite differences).
"""
from __future__ import annotations

import numpy as np

from ..checks import array_module, check_finite_statistic, check_value
from ..conventions import STANDARDIZE_GRADS


def standardize_grad_mode(mode):
    """One of ``STANDARDIZE_GRADS``; the old boolean spelling maps True -> "through", False -> "identity"."""
    if isinstance(mode, bool):
        return "through" if mode else "identity"
    if mode not in STANDARDIZE_GRADS:
        raise ValueError(f"standardize_grad: expected one of {list(STANDARDIZE_GRADS)}, got {mode!r}")
    return mode


def row_standardize_forward(x, center=True, ddof=1, eps=0.0, eps_inside_sqrt=True, gain=1.0, what="row"):
    xp = array_module(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"standardization: expected an array with at least one {what}, got shape {x.shape}")
    n = x[0].size
    if n - ddof <= 0:
        raise ValueError(f"standardization: each {what} (axis 0) needs more than {ddof} entries for a "
                         f"std with ddof={ddof}; got shape {tuple(x.shape)}")
    axes = tuple(range(1, x.ndim))
    with np.errstate(over="ignore", invalid="ignore"):
        u = x - x.mean(axis=axes, keepdims=True)
        var = (u * u).sum(axis=axes, keepdims=True) / (n - ddof)
    check_finite_statistic(var, f"the variance per {what}", x.dtype)
    if eps_inside_sqrt:
        s = xp.sqrt(var + eps)
    else:
        s = xp.sqrt(var) + eps
    def fail():
        raise ValueError(f"standardization: {'an' if what[0] in 'aeiou' else 'a'} {what} (axis 0) has zero standard "
                         f"deviation and eps = {eps}; expected non-constant rows or eps > 0")

    check_value(~(s == 0).any(), fail)
    z = u if center else x
    y = (gain * z / s).astype(x.dtype, copy=False)
    return y, (z, u, var, s, n, ddof, center, gain, eps_inside_sqrt)


def row_standardize_backward(g, cache, mode="through"):
    """dL/dx from g = dL/dy under the reading ``mode`` ("through", "detached" or "identity")."""
    mode = standardize_grad_mode(mode)
    if mode == "identity":
        return g
    z, u, var, s, n, ddof, center, gain, eps_inside_sqrt = cache
    if mode == "detached":
        return (gain * g / s).astype(g.dtype, copy=False)
    xp = array_module(g)
    axes = tuple(range(1, g.ndim))
    sd = s if eps_inside_sqrt else xp.sqrt(var)
    ds_dx = u / ((n - ddof) * xp.where(sd > 0, sd, 1.0))
    gz = (g * z).sum(axis=axes, keepdims=True)
    gc = g - g.mean(axis=axes, keepdims=True) if center else g
    return (gain * (gc / s - gz / (s * s) * ds_dx)).astype(g.dtype, copy=False)


def row_standardize(x, center=True, ddof=1, eps=0.0, eps_inside_sqrt=True, gain=1.0):
    """The forward value only (surrogates use it as a differentiable function)."""
    return row_standardize_forward(x, center, ddof, eps, eps_inside_sqrt, gain)[0]


def row_standardize_surrogate(x, ref, mode="through", **kwargs):
    """The standardization as a differentiable function of x around ``ref`` under the reading ``mode``:
    "through", the function itself; "detached", its value at ``ref`` plus gain (x - ref) / s(ref) (the
    statistics of ``ref`` held constant); "identity", its value at ``ref`` plus (x - ref)."""
    mode = standardize_grad_mode(mode)
    if mode == "through":
        return row_standardize(x, **kwargs)
    y_ref, cache = row_standardize_forward(ref, **kwargs)
    if mode == "identity":
        return y_ref + (x - ref)
    s, gain = cache[3], cache[7]
    return (y_ref + gain * (x - ref) / s).astype(x.dtype, copy=False)
