"""Layouts: PyTorch's NCHW / OIHW (refbnn's own) and TensorFlow's NHWC / HWIO, and TensorFlow's padding."""
from __future__ import annotations

import numpy as np

from .bundle import BundleError, _int, _pair

def _to_nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _to_nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _kernel_to_refbnn(k):
    """HWIO (conv) or (in, out) (dense) -> refbnn's OIHW / (out, in)."""
    return np.ascontiguousarray(k.transpose(3, 2, 0, 1) if k.ndim == 4 else k.T)


def _kernel_from_refbnn(w):
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T)


def _padding4(padding, k, stride, dilation, in_hw):
    """(top, bottom, left, right) from an int, a pair, a 4-tuple, "valid" or "same" (TensorFlow's rule:
    output ceil(in / stride), the odd pixel at the bottom/right; PyTorch's "same" for stride 1)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise BundleError(f"padding: expected an int, a pair, 'same' or 'valid', got {padding!r}")
        out = []
        for i in range(2):
            o = -(-in_hw[i] // stride[i])
            total = max((o - 1) * stride[i] + (k[i] - 1) * dilation[i] + 1 - in_hw[i], 0)
            out += [total // 2, total - total // 2]
        return tuple(out)
    if isinstance(padding, tuple) and len(padding) == 4:
        vals = tuple(_int("padding", p) for p in padding)
        if min(vals) < 0:
            raise BundleError(f"padding: expected values >= 0, got {padding!r}")
        return vals
    ph, pw = _pair("padding", padding, 0)
    return (ph, ph, pw, pw)


def _conv_out(size, k, s, p0, p1, d):
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


_LAYER_SHAPES = {  # how each array is laid out, for messages
    ("conv2d", "nchw"): {"x": "(N, C, H, W)", "w": "(O, C/groups, kh, kw)", "out": "(N, O, Ho, Wo)"},
    ("conv2d", "nhwc"): {"x": "(N, H, W, C)", "w": "(kh, kw, C/groups, O)", "out": "(N, Ho, Wo, O)"},
    ("linear", "nchw"): {"x": "(N, in)", "w": "(out, in)", "out": "(N, out)"},
    ("linear", "nhwc"): {"x": "(N, in)", "w": "(in, out)", "out": "(N, out)"},
}



def _to_refbnn(a, layout, role):
    if layout != "nhwc" or role is None or a.ndim < 2:
        return a
    if role == "weight":
        return _kernel_to_refbnn(a) if a.ndim in (2, 4) else a
    return _to_nchw(a) if a.ndim == 4 else a


def _from_refbnn(a, layout, role):
    if layout != "nhwc" or role is None or a.ndim < 2:
        return a
    if role == "weight":
        return _kernel_from_refbnn(a) if a.ndim in (2, 4) else a
    return _to_nhwc(a) if a.ndim == 4 else a



