"""The NumPy reference kernels: the specification every fast kernel is tested against.

Everything here is plain array code that works for NumPy and CuPy arrays alike (the array module
is taken from the input). A "binary" kernel takes float arrays whose entries are exactly -1 or +1
(and, for convolutions, a padding value of 0 or +-1) and returns their dot products as floats of
the same dtype. Sums of +-1 are integers, which float32 holds exactly up to 2**24, so the result
does not depend on summation order: fast kernels must match it bit for bit.
"""
from __future__ import annotations

import numpy as np

from ..checks import array_module, padding4
from .geometry import conv_output_size


def binary_matmul(a, b):
    """+-1 dot products of the rows of ``a`` (M, K) with the rows of ``b`` (N, K): ``a @ b.T``."""
    return a @ b.T


def binary_conv2d(x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, pad_value=0.0):
    """Convolution of +-1 activations (N, C, H, W) with +-1 weights (O, C/groups, kh, kw).

    ``pad_value`` 0.0 is true zero padding (border taps contribute nothing); +1.0 or -1.0 pads
    with that sign. Output (N, O, Ho, Wo) in the inputs' promoted dtype, integer-valued:

        y[n, o, p, q] = sum_{c, i, j} w[o, c, i, j] xpad[n, g(o) C/g + c, p sh + i dh, q sw + j dw]

    (xpad: x padded with ``pad_value``; ``padding`` a pair or (top, bottom, left, right)), added up
    tap by tap: for each (i, j), the window of xpad that tap reads times w[:, :, i, j].
    """
    xp = array_module(x)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    g = groups
    (sh, sw), (dh, dw) = stride, dilation
    top, bottom, left, right = padding4(padding)
    ho = conv_output_size(h, kh, sh, (top, bottom), dh)
    wo = conv_output_size(wd, kw, sw, (left, right), dw)
    xpad = xp.full((n, c, h + top + bottom, wd + left + right), pad_value, dtype=x.dtype)
    xpad[:, :, top:top + h, left:left + wd] = x
    xpad = xpad.reshape(n, g, cg, h + top + bottom, wd + left + right)
    wg = w.reshape(1, g, o // g, cg, kh, kw)
    y = xp.zeros((n, g, o // g, ho * wo), dtype=xp.result_type(x, w))
    for i in range(kh):
        for j in range(kw):
            window = xpad[:, :, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
            y += xp.matmul(wg[:, :, :, :, i, j], window.reshape(n, g, cg, ho * wo))
    return y.reshape(n, o, ho, wo)


# ---- the bit layout of the packed kernels -------------------------------------------------------

POLARITIES = ("lce", "dabnn", "bitorch")


def pack_bits(x, axis=-1, polarity="lce"):
    """Signs of ``x`` along ``axis`` -> uint64 words, the packed axis moved last.

    Element i of the axis is bit i % 64 of word i // 64 (least significant bit first): a word is
    sum_i bit_i 2**i. Bit values by ``polarity``: ``"lce"`` (Larq Compute Engine) bit = x < 0, so
    bit 1 = -1 and 0.0 packs as +1; ``"dabnn"`` bit = x > 0; ``"bitorch"`` bit = x >= 0. The tail
    bits past the axis length are 0. NaN (whose sign is undefined: every comparison is False) is
    refused.
    """
    xp = array_module(x)
    if not isinstance(polarity, str) or polarity not in POLARITIES:
        raise ValueError(f"polarity: expected one of {POLARITIES}, got {polarity!r}")
    if x.dtype.kind == "f" and x.size and bool(xp.isnan(x).any()):
        raise ValueError("x: contains NaN (its sign is undefined)")
    bits = {"lce": x < 0, "dabnn": x > 0, "bitorch": x >= 0}[polarity]
    bits = xp.moveaxis(bits, axis, -1)
    n = bits.shape[-1]
    words = -(-n // 64)
    padded = xp.zeros(bits.shape[:-1] + (words * 64,), dtype=xp.uint64)
    padded[..., :n] = bits
    powers = xp.uint64(1) << xp.arange(64, dtype=xp.uint64)
    return (padded.reshape(bits.shape[:-1] + (words, 64)) * powers).sum(axis=-1, dtype=xp.uint64)


def unpack_bits(words, n, axis=-1, polarity="lce", dtype=np.float32):
    """Inverse of :func:`pack_bits`: uint64 words (..., ceil(n/64)) -> +-1 values of ``dtype``
    with the n-long axis at ``axis``. ``"lce"``: bit 1 -> -1, bit 0 -> +1; ``"dabnn"`` and
    ``"bitorch"``: bit 1 -> +1, bit 0 -> -1. Bits past n are not read.

    ``words``: any uint64 dtype spelling and byte order (NumPy reads them by value). ``dtype``: a
    float or signed integer dtype (an unsigned one cannot hold -1). ``axis``: an int in
    [-(words.ndim), words.ndim - 1]."""
    xp = array_module(words)
    if not isinstance(polarity, str) or polarity not in POLARITIES:
        raise ValueError(f"polarity: expected one of {POLARITIES}, got {polarity!r}")
    wdt = getattr(words, "dtype", None)
    if wdt is None or not hasattr(words, "shape"):
        raise TypeError(f"words: expected a uint64 array (packed words), got {type(words).__name__}")
    if wdt.kind != "u" or wdt.itemsize != 8:
        raise TypeError(f"words: expected a uint64 array (packed words), got {wdt} ({wdt.str!r})")
    if isinstance(words, np.ma.MaskedArray):
        raise TypeError("words: expected a plain array, got a masked array")
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n: expected a non-negative int, got {type(n).__name__} {n!r}")
    if n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    try:
        out_dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected a float or signed integer dtype, got {dtype!r}") from None
    if out_dtype.kind not in "fi":
        raise TypeError(f"dtype: expected a float or signed integer dtype (values are -1 and +1), got {out_dtype}")
    if words.ndim < 1 or words.shape[-1] != -(-n // 64):
        raise ValueError(f"words: {n} values need {-(-n // 64)} words on the last axis, got shape {words.shape}")
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis: expected an int, got {type(axis).__name__} {axis!r}")
    if not -words.ndim <= axis < words.ndim:
        raise ValueError(f"axis: expected an int >= {-words.ndim} and <= {words.ndim - 1} for {words.ndim}-D words, "
                         f"got {axis}")
    dtype = out_dtype
    bits = (words[..., None] >> xp.arange(64, dtype=xp.uint64)) & xp.uint64(1)
    bits = bits.reshape(words.shape[:-1] + (-1,))[..., :n].astype(dtype)
    values = 1 - 2 * bits if polarity == "lce" else 2 * bits - 1
    return xp.moveaxis(values.astype(dtype, copy=False), -1, axis)     # a non-native dtype as asked


# ---- the bit-level reference: what the packed kernels compute, in NumPy -----------------------
#
# For +-1 vectors a, b of length K with the LCE bits (1 = -1), a . b = K - 2 * popcount(A XOR B):
# the products are +1 where the bits agree and -1 where they differ (docs/kernels.md). The two
# functions below compute that, word by word, with np.bitwise_count; the compiled kernels
# (refbnn.kernels.bgemm / bconv2d) must return exactly the same integers, and so must the float
# reference above (binary_matmul / binary_conv2d) on the unpacked values.

def bgemm_bits(a_words, b_words, k):
    """int64 (M, N): the +-1 dot products of the rows of A and B given as packed words.

    ``a_words`` (M, W), ``b_words`` (N, W) uint64 from :func:`pack_bits` (same polarity), W =
    ceil(k / 64); bits past k are 0 in both, so they never differ and need no mask.
    """
    xp = array_module(a_words)
    differ = xp.bitwise_count(a_words[:, None, :] ^ b_words[None, :, :])   # (M, N, W) disagreeing signs
    return k - 2 * differ.sum(axis=-1, dtype=xp.int64)


def bconv2d_bits(x_words, w_words, channels, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                 pad_value=0.0):
    """int64 (N, Ho, Wo, O): binary convolution on packed words, with LCE bits (1 = -1).

    ``x_words`` (N, H, W, groups * Wg): NHWC activations packed along the channels, each group's
    C/groups channels in its own Wg = ceil(C/groups / 64) words; ``w_words`` (O, kh, kw, Wg): OHWI
    weights packed the same way; ``channels`` = C. Each output is K - 2 * popcount summed over the
    taps, K = kh * kw * C/groups.

    Padding: a tap outside the image reads a word of its own. For ``pad_value`` +1 that word is all
    0 bits and for -1 all 1 bits (within the C/groups channels), so the tap is an ordinary +-1 tap.
    For 0 (true zero padding) no bit can hold the value: the tap is read as +1 (0 bits), which adds
    + sum(w over the tap's channels) to the dot product, and that sum is subtracted again -- the
    zero-padding correction.
    """
    xp = array_module(x_words)
    n, h, w, _ = x_words.shape
    o, kh, kw, wg = w_words.shape
    cg = channels // groups
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = conv_output_size(h, kh, sh, ph, dh)
    wo = conv_output_size(w, kw, sw, pw, dw)
    # the padding word: 0 bits (+1) or, for -1, the C/groups valid bits of each group set
    ones = xp.zeros(wg, dtype=xp.uint64)
    for b in range(cg):
        ones[b // 64] |= xp.uint64(1) << xp.uint64(b % 64)
    pad_word = xp.tile(ones, groups) if pad_value == -1.0 else xp.zeros(groups * wg, dtype=xp.uint64)
    xpad = xp.empty((n, h + 2 * ph, w + 2 * pw, groups * wg), dtype=xp.uint64)
    xpad[...] = pad_word
    xpad[:, ph:ph + h, pw:pw + w] = x_words
    inside = xp.zeros((h + 2 * ph, w + 2 * pw), dtype=bool)      # which positions of xpad are the image
    inside[ph:ph + h, pw:pw + w] = True
    # sum of each filter tap's +-1 values over its channels: cg - 2 * (number of -1 bits)
    w_tap_sum = cg - 2 * xp.bitwise_count(w_words).sum(axis=-1, dtype=xp.int64)   # (O, kh, kw)
    per_group = o // groups
    dot = xp.zeros((n, ho, wo, o), dtype=xp.int64)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            taps = xpad[:, rows, cols]                                   # (N, Ho, Wo, groups * Wg)
            for g in range(groups):
                xg = taps[..., g * wg:(g + 1) * wg]                      # (N, Ho, Wo, Wg)
                wgt = w_words[g * per_group:(g + 1) * per_group, i, j]   # (O/groups, Wg)
                differ = xp.bitwise_count(xg[..., None, :] ^ wgt).sum(axis=-1, dtype=xp.int64)
                dot[..., g * per_group:(g + 1) * per_group] += cg - 2 * differ
            if pad_value == 0.0:                                         # the zero-padding correction
                outside = ~inside[rows, cols]                            # (Ho, Wo)
                dot -= outside[None, :, :, None] * w_tap_sum[None, None, None, :, i, j]
    return dot
