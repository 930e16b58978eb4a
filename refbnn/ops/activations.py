"""Element-wise activations and learnable per-channel shifts (channel axis 1).

hardtanh:  y = clip(x, lo, hi);           dy/dx = 1[lo < x < hi]   (PyTorch: 0 at the bounds)
relu:      y = max(x, 0);                 dy/dx = 1[x > 0]
prelu:     y = x if x > 0 else a_c x;     dy/dx = 1 or a_c;   dL/da_c = sum dy * x * 1[x <= 0]
rprelu:    y = prelu(x - gamma_c; a_c) + zeta_c          (ReActNet's RPReLU, Liu et al. 2020 Eq. 4)
bias:      y = x + b_c                                    (ReActNet's LearnableBias / RSign shift)
"""
from __future__ import annotations

from ..checks import check_float_array, check_real, check_same_dtype, check_shape
from ..kernels import float_ops


def _channel(p, x, name):
    check_float_array(p, name, ndim=1)
    if x.ndim < 2:
        raise ValueError(f"{name}: input must have a channel axis 1, got shape {tuple(x.shape)}")
    check_shape(p, name, (x.shape[1],))
    check_same_dtype(("x", x), (name, p))
    return p.reshape((1, -1) + (1,) * (x.ndim - 2))


def _reduce_to_channel(g):
    return g.sum(axis=tuple(i for i in range(g.ndim) if i != 1))


def hardtanh_forward(x, min_val=-1.0, max_val=1.0, backend="numpy"):
    """y = clip(x, min_val, max_val); the cache is the pass-through mask min_val < x < max_val.
    ``backend``: as refbnn.kernels.float_ops takes it (the compiled op gives the same bits)."""
    x = check_float_array(x, "x")
    min_val, max_val = check_real("min_val", min_val), check_real("max_val", max_val)
    if not min_val < max_val:
        raise ValueError(f"hardtanh: expected min_val < max_val, got {min_val}, {max_val}")
    fast = float_ops(backend, x)
    if fast is not None:
        return fast.hardtanh_forward(x, min_val, max_val)
    mask = (x > min_val) & (x < max_val)
    return x.clip(min_val, max_val), mask


def hardtanh_backward(dout, cache, backend="numpy"):
    """dx = dout * mask (the gradient passes where the forward was not clipped)."""
    mask = cache
    check_shape(dout, "dout", mask.shape)
    fast = float_ops(backend, dout)
    if fast is not None and dout.flags.c_contiguous:
        return fast.mask_multiply(dout, mask), {}
    return dout * mask, {}


def relu_forward(x):
    x = check_float_array(x, "x")
    mask = x > 0
    return x * mask, mask


relu_backward = hardtanh_backward  # both multiply by the saved pass-through mask


def prelu_forward(x, a):
    x = check_float_array(x, "x")
    ab = _channel(a, x, "prelu weight")
    neg = x <= 0
    slope = neg * ab + (~neg)
    return x * slope, (x, neg, slope)


def prelu_backward(dout, cache):
    x, neg, slope = cache
    check_shape(dout, "dout", x.shape)
    return dout * slope, {"weight": _reduce_to_channel(dout * x * neg)}


def bias_forward(x, b):
    x = check_float_array(x, "x")
    return x + _channel(b, x, "bias"), x.shape


def bias_backward(dout, cache):
    check_shape(dout, "dout", cache)
    return dout, {"bias": _reduce_to_channel(dout)}


def rprelu_forward(x, gamma, a, zeta):
    shifted, c1 = bias_forward(x, -gamma)
    y, c2 = prelu_forward(shifted, a)
    out, c3 = bias_forward(y, zeta)
    return out, (c1, c2, c3)


def rprelu_backward(dout, cache):
    c1, c2, c3 = cache
    d, g3 = bias_backward(dout, c3)
    d, g2 = prelu_backward(d, c2)
    dx, g1 = bias_backward(d, c1)
    return dx, {"gamma": -g1["bias"], "weight": g2["weight"], "zeta": g3["bias"]}
