"""Shape and wiring ops: flatten, residual add, and the CIFAR ResNets' "option A" shortcut.

flatten:       (N, ...) -> (N, prod(...)); backward reshapes back.
residual add:  y = a + b; backward (dy, dy).
shortcut A:    (He et al. 2016, CIFAR ResNets) subsample (stride s: x[:, :, ::s, ::s], as in IR-Net's
               code; or average pool s x s, as in ReCU's code), then pad the channel axis with zeros,
               ``pad_before`` channels in front and ``pad_after`` behind.
               Backward: drop the padded channels, then the adjoint of the subsampling.
"""
from __future__ import annotations

import math

from ..checks import array_module, check_choice_arg, check_float_array, check_int, check_same_dtype, check_shape
from .pooling import avgpool2d_backward, avgpool2d_forward


def flatten_forward(x):
    x = check_float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"flatten: expected a batch (N, ...) with at least 2 axes, got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(dout, cache):
    check_shape(dout, "dout", (cache[0], math.prod(cache[1:])))
    return dout.reshape(cache), {}


def add_forward(a, b):
    a = check_float_array(a, "a")
    b = check_float_array(b, "b")
    check_same_dtype(("a", a), ("b", b))
    if a.shape != b.shape:
        raise ValueError(f"residual add: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    return a + b, a.shape


def add_backward(dout, cache):
    check_shape(dout, "dout", cache)
    return dout, dout


def shortcut_a_forward(x, stride=2, pad_before=0, pad_after=0, mode="subsample"):
    x = check_float_array(x, "x", ndim=4)
    check_choice_arg("mode", mode, ("subsample", "avgpool"))
    stride = check_int("stride", stride, 1)
    pad_before, pad_after = check_int("pad_before", pad_before), check_int("pad_after", pad_after)
    xp = array_module(x)
    if stride == 1:
        sub, sub_cache = x, None
    elif mode == "subsample":
        sub, sub_cache = x[:, :, ::stride, ::stride], None
    else:
        sub, sub_cache = avgpool2d_forward(x, stride, stride)
    n, c, h, w = sub.shape
    out = xp.zeros((n, c + pad_before + pad_after, h, w), dtype=x.dtype)
    out[:, pad_before:pad_before + c] = sub
    return out, (x.shape, stride, pad_before, c, mode, sub_cache, out.shape)


def shortcut_a_backward(dout, cache):
    x_shape, stride, pad_before, c, mode, sub_cache, out_shape = cache
    check_shape(dout, "dout", out_shape)
    xp = array_module(dout)
    dsub = dout[:, pad_before:pad_before + c]
    if stride == 1:
        return dsub.copy(), {}
    if mode == "avgpool":
        return avgpool2d_backward(dsub, sub_cache)
    dx = xp.zeros(x_shape, dtype=dout.dtype)
    dx[:, :, ::stride, ::stride] = dsub
    return dx, {}
