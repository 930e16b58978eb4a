"""Pooling over (N, C, H, W).

max pool:  y = max over each window (padding with -inf);  backward routes dy to the first
           maximal tap of each window (row-major order inside the window, as in PyTorch).
avg pool:  y = mean over each window (zero padding counted in the divisor, PyTorch's default
           count_include_pad=True); backward spreads dy / (kh kw) over the window.
global average pool: (N, C, H, W) -> (N, C), y = mean over H, W.
"""
from __future__ import annotations

from ..checks import array_module, check_float_array, check_shape, pair
from ..kernels.geometry import conv_output_size
from .im2col import col2im, im2col


def _geometry(x, kernel_size, stride, padding):
    x = check_float_array(x, "x", ndim=4)
    k = pair(kernel_size, "kernel_size", 1)
    s = k if stride is None else pair(stride, "stride", 1)
    p = pair(padding, "padding")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"pool: padding {p} must be at most half the kernel size {k}")
    ho = conv_output_size(x.shape[2], k[0], s[0], p[0], 1)
    wo = conv_output_size(x.shape[3], k[1], s[1], p[1], 1)
    if ho < 1 or wo < 1:
        raise ValueError(f"pool: input {x.shape[2]}x{x.shape[3]} is smaller than the window {k}")
    return k, s, p


def maxpool2d_forward(x, kernel_size=2, stride=None, padding=0):
    xp = array_module(x)
    k, s, p = _geometry(x, kernel_size, stride, padding)
    cols = im2col(x, k[0], k[1], s, p, (1, 1), pad_value=-xp.inf)
    n, c, kh, kw, ho, wo = cols.shape
    flat = cols.reshape(n, c, kh * kw, ho, wo)
    idx = flat.argmax(axis=2)
    out = xp.take_along_axis(flat, idx[:, :, None], axis=2)[:, :, 0]
    return out, (idx, x.shape, cols.shape, s, p)


def maxpool2d_backward(dout, cache):
    idx, x_shape, cols_shape, s, p = cache
    xp = array_module(dout)
    n, c, kh, kw, ho, wo = cols_shape
    check_shape(dout, "dout", (n, c, ho, wo))
    dflat = xp.zeros((n, c, kh * kw, ho, wo), dtype=dout.dtype)
    xp.put_along_axis(dflat, idx[:, :, None], dout[:, :, None], axis=2)
    return col2im(dflat.reshape(cols_shape), x_shape, s, p, (1, 1)), {}


def avgpool2d_forward(x, kernel_size=2, stride=None, padding=0):
    k, s, p = _geometry(x, kernel_size, stride, padding)
    cols = im2col(x, k[0], k[1], s, p, (1, 1), pad_value=0.0)
    out = cols.mean(axis=(2, 3))
    return out, (x.shape, cols.shape, s, p)


def avgpool2d_backward(dout, cache):
    x_shape, cols_shape, s, p = cache
    xp = array_module(dout)
    n, c, kh, kw, ho, wo = cols_shape
    check_shape(dout, "dout", (n, c, ho, wo))
    dcols = xp.broadcast_to((dout / (kh * kw))[:, :, None, None], cols_shape)
    return col2im(dcols, x_shape, s, p, (1, 1)), {}


def global_avgpool_forward(x):
    x = check_float_array(x, "x", ndim=4)
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"global average pool: expected at least 1x1 spatial values, got shape {tuple(x.shape)}")
    return x.mean(axis=(2, 3)), x.shape


def global_avgpool_backward(dout, cache):
    xp = array_module(dout)
    n, c, h, w = cache
    check_shape(dout, "dout", (n, c))
    return xp.broadcast_to((dout / (h * w))[:, :, None, None], cache).copy(), {}
