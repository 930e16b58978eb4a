"""Row-wise standardization with its backward, shared by IR-Net, ReCU and ReCU's activations.

"Row" = everything but axis 0: the output channel of a weight (OIHW or (out, in)) or the sample of
an activation batch. With n entries per row, u = x - mean(x), var = sum(u^2) / (n - ddof) and
s = sqrt(var + eps) (``eps_inside_sqrt``) or s = sqrt(var) + eps:

    forward:  y = gain * z / s,   z = u (``center``) or z = x (ReCU's activations: no centering)

    backward, through the statistics (autograd of the official code; mean and std not detached):
        dL/dx_j = gain * [ (g_j - c mean(g)) / s  -  (g^T z) / s^2 * ds/dx_j ],
        ds/dx_j = u_j / ((n - ddof) * sd),  sd = s (eps inside the sqrt) or sqrt(var) (eps outside),
        c = 1 if centering else 0    (algorithms.md 3.4, 4.4, 4.5)
    backward, statistics not differentiated (IR-Net Algorithm 1 line 9): the standardization is the
    identity, dL/dx = g.
"""
from __future__ import annotations

import numpy as np

from ..checks import array_module, check_finite_statistic


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
    if bool((s == 0).any()):
        raise ValueError(f"standardization: {'an' if what[0] in 'aeiou' else 'a'} {what} (axis 0) has zero standard deviation and eps = {eps}; "
                         "expected non-constant rows or eps > 0")
    z = u if center else x
    y = (gain * z / s).astype(x.dtype, copy=False)
    return y, (z, u, var, s, n, ddof, center, gain, eps_inside_sqrt)


def row_standardize_backward(g, cache, through_stats=True):
    if not through_stats:
        return g
    z, u, var, s, n, ddof, center, gain, eps_inside_sqrt = cache
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


def row_standardize_surrogate(x, ref, through_stats=True, **kwargs):
    """The standardization as a differentiable function of x around ``ref``: the function itself
    when gradients flow through the statistics, else its value at ``ref`` plus the identity."""
    if through_stats:
        return row_standardize(x, **kwargs)
    return row_standardize(ref, **kwargs) + (x - ref)
