"""Batch normalization over the channel axis 1 of (N, C) or (N, C, H, W) inputs.

Training mode (statistics of the batch, biased variance, as in the BN paper and PyTorch):
    mu = mean(x), var = mean((x - mu)^2) over every axis but 1,
    xhat = (x - mu) / sqrt(var + eps),   y = gamma xhat + beta,
    running_mean <- (1 - momentum) running_mean + momentum mu,
    running_var  <- (1 - momentum) running_var  + momentum var * m / (m - 1)   (unbiased, m = N H W).
Eval mode: the running statistics replace mu and var (a per-channel affine map).

Backward (training), with m elements per channel and dxhat = dy gamma:
    dx = (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) / sqrt(var + eps)
    dgamma = sum(dy xhat), dbeta = sum(dy).
Backward (eval): dx = dy gamma / sqrt(running_var + eps).

One cache contract, :class:`BatchNormCache`, for this NumPy reference and the compiled float ops
(``backend`` resolving to refbnn.kernels' compiled CPU backend, float32, training mode:
``refbnn.kernels.float_ops``, whose statistics and gradients agree with this reference within the
tolerance their docstrings state). ``backend="numpy"`` (the default) always runs the reference.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ..checks import array_module, check_bool_arg, check_float_array, check_real, check_same_dtype, check_shape, check_value
from ..kernels import float_ops


class BatchNormCache(NamedTuple):
    """What :func:`batchnorm_backward` needs, whichever path computed the forward."""
    xhat: Any          # the normalized input (x - mu) inv_std
    gamma: Any
    inv_std: Any       # 1 / sqrt(var + eps) per channel (batch statistics in training, running in eval)
    training: bool
    fast: Any = None   # the compiled float ops module that runs the backward, None: this reference


def _axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _bshape(x):
    return (1, x.shape[1]) if x.ndim == 2 else (1, x.shape[1], 1, 1)


def batchnorm_forward(x, gamma, beta, running_mean, running_var, training=True, momentum=0.1, eps=1e-5,
                      backend="numpy"):
    """Returns (y, cache). In training mode updates ``running_mean``/``running_var`` in place
    (they are buffers passed in explicitly; pass copies to leave them untouched)."""
    x = check_float_array(x, "x", ndim=(2, 4))
    c = x.shape[1]
    for name, a in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
        check_float_array(a, name, ndim=1)
        check_shape(a, name, (c,))
    check_same_dtype(("x", x), ("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                     ("running_var", running_var))
    training = check_bool_arg("training", training)
    momentum = check_real("momentum", momentum, 0.0, 1.0)
    eps = check_real("eps", eps, 0.0, open_min=True)
    if not training:
        def fail():
            raise ValueError("running_var: expected values >= 0 (a variance)")

        check_value(~(running_var < 0).any(), fail)
    xp = array_module(x)
    axes, bs = _axes(x), _bshape(x)
    if training:
        m = x.size // c
        if m < 2:
            raise ValueError(f"batchnorm in training mode needs more than 1 value per channel, got input shape {tuple(x.shape)}")
        fast = float_ops(backend, x, gamma, beta)
        if fast is not None:
            y, xhat, mu, var, inv_std = fast.batchnorm_train_forward(x, gamma, beta, eps)
            _update_running(running_mean, running_var, mu, var, momentum, m)
            return y, BatchNormCache(xhat, gamma, inv_std, True, fast)
        mu = x.mean(axis=axes)
        xc = x - mu.reshape(bs)
        var = (xc * xc).mean(axis=axes)
        inv_std = 1.0 / xp.sqrt(var + eps)
        _update_running(running_mean, running_var, mu, var, momentum, m)
    else:
        xc = x - running_mean.reshape(bs)
        inv_std = 1.0 / xp.sqrt(running_var + eps)
    inv_std = inv_std.astype(x.dtype, copy=False)
    xhat = xc
    xhat *= inv_std.reshape(bs)             # in place: xc is not needed any more
    y = xhat * gamma.reshape(bs)
    y += beta.reshape(bs)
    return y, BatchNormCache(xhat, gamma, inv_std, training)


def _update_running(running_mean, running_var, mu, var, momentum, m):
    """In place: running <- (1 - momentum) running + momentum batch statistic (the variance unbiased)."""
    running_mean *= 1.0 - momentum
    running_mean += momentum * mu
    running_var *= 1.0 - momentum
    running_var += momentum * var * (m / (m - 1))


def batchnorm_backward(dout, cache):
    xhat, gamma, inv_std, training, fast = cache
    check_shape(dout, "dout", xhat.shape)
    if fast is not None:
        dout = check_float_array(dout, "dout", finite=False)
        if dout.dtype == xhat.dtype:
            dx, dgamma, dbeta = fast.batchnorm_train_backward(dout, xhat, gamma, inv_std)
            return dx, {"gamma": dgamma, "beta": dbeta}
    xp = array_module(dout)
    axes, bs = _axes(xhat), _bshape(xhat)
    tmp = dout * xhat
    grads = {"gamma": tmp.sum(axis=axes), "beta": dout.sum(axis=axes)}
    dx = dout * gamma.reshape(bs)           # dxhat, turned into dx in place below
    if training:
        # dx = (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) inv_std, one temporary reused
        mean_dxhat = dx.mean(axis=axes).reshape(bs)
        mean_dxhat_xhat = xp.multiply(dx, xhat, out=tmp).mean(axis=axes).reshape(bs)
        dx -= mean_dxhat
        dx -= xp.multiply(xhat, mean_dxhat_xhat, out=tmp)
    dx *= inv_std.reshape(bs)
    return dx, grads
