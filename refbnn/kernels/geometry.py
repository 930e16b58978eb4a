"""Convolution geometry and the packed kernels' argument checks, word geometry and limits, one copy for
every user: :func:`conv_output_size` and :func:`conv2d_geometry` for the float ops (refbnn.ops), the NumPy
reference and every backend; the Cython kernels (src_cython/_bitpack.pyx) and the CUDA kernels
(refbnn/kernels/cuda) both call :func:`check_int`, :func:`check_pair`, :func:`check_clamp` on their
arguments and :func:`bconv2d_shapes` on the validated ints. Ints and shapes only, no arrays."""
from __future__ import annotations

import numpy as np

from ..checks import padding4

INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1

MAX_TAPS = 1024        # kernel taps (kh * kw) one output may read
MAX_K = 2 ** 30        # bits per dot product: dot products and popcounts stay in int32


def conv_output_size(size, k, stride, padding, dilation):
    """Output length along one axis: floor((size + before + after - dilation (k - 1) - 1) / stride) + 1;
    ``padding`` an int (both sides) or a (before, after) pair."""
    before, after = (padding, padding) if isinstance(padding, (int, np.integer)) else padding
    return (size + before + after - dilation * (k - 1) - 1) // stride + 1


def conv2d_geometry(x_shape, w_shape, stride, padding, dilation, groups):
    """Check a convolution's shapes (x (N, C, H, W), w (O, C/groups, kh, kw); stride, dilation pairs;
    padding a pair or (top, bottom, left, right)); return the output size (Ho, Wo). Errors name what was expected."""
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"groups: expected a positive int, got {type(groups).__name__} {groups!r}")
    if groups < 1:
        raise ValueError(f"groups: expected a positive int, got {groups!r}")
    n, c, h, wd = x_shape
    o, cg, kh, kw = w_shape
    if c != cg * groups:
        raise ValueError(f"conv2d: input has {c} channels, weight {tuple(w_shape)} with groups={groups} "
                         f"expects {cg * groups}")
    if o % groups:
        raise ValueError(f"conv2d: {o} output channels are not divisible by groups={groups}")
    t, b, left, r = padding4(padding)
    ho = conv_output_size(h, kh, stride[0], (t, b), dilation[0])
    wo = conv_output_size(wd, kw, stride[1], (left, r), dilation[1])
    if ho < 1 or wo < 1:
        raise ValueError(f"conv2d: input {h}x{wd} is smaller than the (dilated) kernel {kh}x{kw} "
                         f"with padding {padding}; expected an output of at least 1x1")
    return ho, wo


def bconv2d_shapes(x_shape, w_shape, channels, groups, stride, padding, dilation):
    """(C/groups, Ho, Wo) of a binary convolution of packed NHWC words ``x_shape`` (N, H, W, words per
    pixel) with packed OHWI words ``w_shape`` (O, kh, kw, words per tap); ValueError naming what does not
    fit: channels or output channels not divisible by groups, word counts that do not match C/groups, an
    empty kernel, more than MAX_TAPS taps or MAX_K bits per output, an output smaller than 1x1."""
    c, g = channels, groups
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if c % g:
        raise ValueError(f"bconv2d: {c} channels are not divisible by groups={g}")
    _, h, wd, xw = x_shape
    o, kh, kw, cwg = w_shape
    cg = c // g
    if cwg != -(-cg // 64):
        raise ValueError(f"bconv2d: {cg} channels per group need {-(-cg // 64)} words per tap; w_words has {cwg}")
    if xw != g * cwg:
        raise ValueError(f"bconv2d: x_words has {xw} words per pixel; {g} group(s) of {cwg} words need {g * cwg}")
    if o == 0 or kh == 0 or kw == 0:
        raise ValueError(f"bconv2d: w_words {tuple(w_shape)} needs at least one output channel and a 1x1 kernel")
    if o % g:
        raise ValueError(f"bconv2d: {o} output channels are not divisible by groups={g}")
    if kh * kw > MAX_TAPS:
        raise ValueError(f"bconv2d: kernels of at most {MAX_TAPS} taps are supported, got {kh}x{kw}")
    if kh * kw * cg > MAX_K:
        raise ValueError(f"bconv2d: at most {MAX_K} bits per output, got {kh * kw * cg}")
    ho, wo = conv_output_size(h, kh, sh, ph, dh), conv_output_size(wd, kw, sw, pw, dw)
    if ho < 1 or wo < 1:
        raise ValueError(f"bconv2d: input {h}x{wd} is smaller than the (dilated) kernel {kh}x{kw} with padding "
                         f"{(ph, pw)}; expected an output of at least 1x1")
    return cg, ho, wo


def check_int(v, name, minimum, maximum=INT32_MAX):
    """An int in [minimum, maximum] (Python or NumPy integer; bool, float and others refused)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__} {v!r}")
    if not minimum <= v <= maximum:
        raise ValueError(f"{name}: expected an int >= {minimum} and <= {maximum}, got {v}")
    return int(v)


def check_pair(v, name, minimum, maximum=INT32_MAX):
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (v, v)
    if isinstance(v, (str, bytes, dict)) or (isinstance(v, np.ndarray) and v.ndim != 1):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}")
    try:
        v = tuple(v)
    except TypeError:
        raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}") from None
    if len(v) != 2:
        raise ValueError(f"{name}: expected an int or a pair of ints, got {v!r}")
    return check_int(v[0], name, minimum, maximum), check_int(v[1], name, minimum, maximum)


def check_clamp(clamp):
    if isinstance(clamp, (str, bytes)):
        raise ValueError(f"clamp: expected a pair of ints (lo, hi), got {clamp!r}")
    try:
        lo, hi = clamp
    except (TypeError, ValueError):
        raise ValueError(f"clamp: expected a pair of ints (lo, hi), got {clamp!r}") from None
    lo, hi = check_int(lo, "clamp", INT32_MIN), check_int(hi, "clamp", INT32_MIN)
    if lo > hi or hi > INT32_MAX:
        raise ValueError(f"clamp: expected int32 values lo <= hi, got {clamp!r}")
    return lo, hi
