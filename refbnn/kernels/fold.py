"""Folding the float ops that follow a binary product into integer thresholds on it.

A binary layer followed by per-channel float ops and a sign (scale, bias, batch norm in eval mode,
hardtanh, ...) writes the next layer's packed input directly when the chain is monotone in the
integer dot product d: then sign(f(d)) flips at most once on [-K, K]. Larq Compute Engine
precomputes such thresholds in its converter (gamma > 0: tau = floor(0.5 (beta / gamma + K)) on
the popcount; gamma < 0: flip the filter). Here the threshold is found by evaluating f itself on
every integer in [-K, K], so it reproduces the float arithmetic of the layers bit for bit, and a
decreasing f (a negative gamma) becomes a flip: bit = (d < threshold) XOR flip, bit 1 = -1.
"""
from __future__ import annotations

import numpy as np

INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1


def threshold_fold(k, f, channels, sign_zero=1.0, dtype=np.float32):
    """Thresholds and flips for ``bconv2d(..., output="bits")`` from a per-channel map ``f``.

    ``f(d)`` takes d (2k+1, channels) holding every integer -k..k in ``dtype`` and returns the
    pre-sign values (same shape), computed exactly as the float network does. The output bit of a
    channel is 1 (the sign is -1) where f(d) < 0, or f(d) <= 0 when ``sign_zero`` is -1.
    Returns (thresholds int32 (channels,), flip bool (channels,)) such that
    bit = (d < threshold) XOR flip for every integer d in [-k, k]. Raises ValueError if some
    channel's bit is not monotone in d (then no threshold exists).
    """
    if sign_zero not in (1.0, -1.0):
        raise ValueError(f"sign_zero: expected 1.0 or -1.0 (a binary sign), got {sign_zero!r}")
    d = np.broadcast_to(np.arange(-k, k + 1, dtype=dtype)[:, None], (2 * k + 1, channels))
    z = np.asarray(f(d))
    if z.shape != d.shape:
        raise ValueError(f"f: expected an output of shape {d.shape}, got {z.shape}")
    neg = (z < 0) if sign_zero == 1.0 else (z <= 0)
    thresholds = np.empty(channels, np.int64)
    flip = np.zeros(channels, bool)
    ints = np.arange(-k, k + 1)
    for c in range(channels):
        col = neg[:, c]
        if col.all():
            thresholds[c] = INT32_MAX            # d < INT32_MAX always
        elif not col.any():
            thresholds[c] = INT32_MIN            # d < INT32_MIN never
        elif col[0]:                             # 1 for small d: bit = d < first d with bit 0
            thresholds[c] = ints[np.argmin(col)]
        else:                                    # 0 for small d: bit = not (d < first d with bit 1)
            thresholds[c] = ints[np.argmax(col)]
            flip[c] = True
        if not np.array_equal((ints < thresholds[c]) ^ flip[c], col):
            raise ValueError(f"channel {c}: the sign of f is not monotone in the dot product; no threshold exists")
    return thresholds.astype(np.int32), flip
