"""Fully connected layer: y = x W^T + b.

Shapes: x (N, in), W (out, in) (PyTorch's layout), b (out,).
Backward of L(y): dL/dx = dy W, dL/dW = dy^T x, dL/db = sum_n dy.

One cache contract, :class:`LinearCache`, for the float forward here and a product computed
elsewhere (a packed binary kernel: :func:`linear_cache`).
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ..checks import check_float_array, check_same_dtype, check_shape


class LinearCache(NamedTuple):
    """What :func:`linear_backward` needs, whichever path computed the forward."""
    x: Any          # the input (N, in) (a binary layer's quantized input)
    w: Any          # the weight (out, in) (a binary layer's quantized weight)
    has_bias: bool


def check_linear_operands(x, w):
    x = check_float_array(x, "x", ndim=2)
    w = check_float_array(w, "weight", ndim=2)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"linear: input has {x.shape[1]} features, weight (out, in) = {w.shape} expects {w.shape[1]}")
    return x, w


def linear_forward(x, w, b=None):
    x, w = check_linear_operands(x, w)
    if b is not None:
        b = check_float_array(b, "bias", ndim=1)
        check_shape(b, "bias", (w.shape[0],))
    check_same_dtype(("x", x), ("weight", w), ("bias", b))
    out = x @ w.T
    if b is not None:
        out += b
    return out, LinearCache(x, w, b is not None)


def linear_cache(x, w, has_bias=False):
    """The :class:`LinearCache` of a product ``x w^T`` computed elsewhere (a packed binary kernel)."""
    return LinearCache(x, w, has_bias)


def linear_backward(dout, cache):
    x, w, has_bias = cache
    check_shape(dout, "dout", (x.shape[0], w.shape[0]))
    dx = dout @ w
    grads = {"weight": dout.T @ x}
    if has_bias:
        grads["bias"] = dout.sum(axis=0)
    return dx, grads
