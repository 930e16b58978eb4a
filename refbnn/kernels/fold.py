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


MAX_K = 2 ** 30       # the kernels' largest dot product length


def _int(v, name: str, minimum: int, maximum: int) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__} {v!r}")
    if not minimum <= v <= maximum:
        raise ValueError(f"{name}: expected an int >= {minimum} and <= {maximum}, got {v}")
    return int(v)


def threshold_fold(k, f, channels, sign_zero=1.0, dtype=np.float32, params=None):
    """Thresholds and flips for ``bconv2d(..., output="bits")`` from a per-channel map ``f``.

    ``f(d)`` takes d (2k+1, channels) holding every integer -k..k in ``dtype`` and returns the
    pre-sign values (same shape), computed exactly as the float network does. The output bit of a
    channel is 1 (the sign is -1) where f(d) < 0, or f(d) <= 0 when ``sign_zero`` is -1.
    Returns (thresholds int32 (channels,), flip bool (channels,)) such that
    bit = (d < threshold) XOR flip for every integer d in [-k, k]. Raises ValueError if some
    channel's bit is not monotone in d (then no threshold exists).

    Bad input is refused, never folded into a constant: ``k`` an int in [0, 2**30] that ``dtype``
    (a float dtype) holds exactly (float32: k <= 2**24); ``f`` returning NaN anywhere (a NaN
    compares as neither sign, so every bit would read +1) raises ValueError naming the channel.
    ``params``: optional ``{name: array}`` of the values ``f`` reads (batch norm's gamma, beta,
    mean, var, ...); each must be finite, and the error names the first that is not. +-Inf in
    f's output is allowed (its sign is what the float network computes).
    """
    k = _int(k, "k", 0, MAX_K)
    if not callable(f):
        raise TypeError(f"f: expected a callable f(d) -> pre-sign values, got {type(f).__name__}")
    channels = _int(channels, "channels", 1, INT32_MAX)
    if isinstance(sign_zero, (bool, np.bool_)) or not isinstance(sign_zero, (int, float, np.integer, np.floating)) \
            or sign_zero not in (1.0, -1.0):
        raise ValueError(f"sign_zero: expected 1.0 or -1.0 (a binary sign), got {sign_zero!r}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected a float dtype, got {dtype!r}") from None
    if dt.kind != "f":
        raise TypeError(f"dtype: expected a float dtype (the network's), got {dt}")
    exact = 2 ** (np.finfo(dt).nmant + 1)
    if k > exact:
        raise ValueError(f"k: {k} exceeds {exact}, the largest integer range {dt} holds exactly")
    if params is not None:
        if not isinstance(params, dict):
            raise TypeError(f"params: expected a dict {{name: array}}, got {type(params).__name__}")
        for name, v in params.items():
            arr = np.asarray(v)
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"params[{name!r}]: expected real numbers, got dtype {arr.dtype}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                bad = "NaN" if np.isnan(arr).any() else "Inf"
                raise ValueError(f"{name}: contains {bad}; the folded thresholds would be meaningless")
    d = np.broadcast_to(np.arange(-k, k + 1, dtype=dt)[:, None], (2 * k + 1, channels))
    z = np.asarray(f(d))
    if z.shape != d.shape:
        raise ValueError(f"f: expected an output of shape {d.shape}, got {z.shape}")
    if z.dtype.kind not in "iuf":
        raise TypeError(f"f: expected real numbers, got dtype {z.dtype}")
    if z.dtype.kind == "f":
        nan = np.isnan(z)
        if nan.any():
            row, c = np.argwhere(nan)[0]
            raise ValueError(f"f: returned NaN for channel {c} at dot product {int(row) - k} (a NaN or Inf in a "
                             f"parameter of f, such as batch norm's gamma, beta, mean or var?); no threshold exists")
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
