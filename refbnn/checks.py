"""Input validation shared by every op and layer.

Bad input gets a clear ``TypeError``/``ValueError`` naming what was expected, before any arithmetic
runs: refbnn never returns a silently wrong result for a wrong shape, dtype or a NaN.
"""
from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def array_module(x):
    """NumPy or CuPy, chosen by the type of ``x`` (never by a global switch)."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy  # noqa: PLC0415 - only imported when a CuPy array is actually passed

        return cupy
    return np


def check_float_array(x, name: str, ndim: int | tuple[int, ...] | None = None, finite: bool = True):
    """Return ``x`` unchanged after checking it is a float32/float64 array of the given ndim.

    ``finite=True`` rejects NaN and Inf (one reduction over the array; cheap next to any op).
    """
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(d) for d in allowed)
            raise ValueError(f"{name}: expected a {want}-D array, got shape {tuple(x.shape)}")
    if finite and x.size and not bool(array_module(x).isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or Inf")
    return x


def check_same_dtype(*named):
    """All arrays given as (name, array) pairs must share one float dtype."""
    dtypes = {a.dtype for _, a in named if a is not None}
    if len(dtypes) > 1:
        desc = ", ".join(f"{n}={a.dtype}" for n, a in named if a is not None)
        raise TypeError(f"dtype mismatch: expected one float dtype for all of ({desc})")


def check_shape(x, name: str, expected: tuple):
    """``expected`` may hold ``None`` for a free axis."""
    if len(x.shape) != len(expected) or any(e is not None and e != s for s, e in zip(x.shape, expected)):
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")


def pair(v, name: str, minimum: int = 0) -> tuple[int, int]:
    """Normalise an int or a 2-sequence of ints (stride, padding, kernel size...) to a pair."""
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(e, (int, np.integer)) for e in v):
        raise ValueError(f"{name}: expected an int or a pair of ints, got {v!r}")
    if any(e < minimum for e in v):
        raise ValueError(f"{name}: expected values >= {minimum}, got {v!r}")
    return int(v[0]), int(v[1])


def padding4(v, name: str = "padding") -> tuple[int, int, int, int]:
    """A convolution's padding as (top, bottom, left, right): an int pads all four sides, a pair
    ``(ph, pw)`` pads top and bottom by ph and left and right by pw, a 4-tuple is taken as it is
    (TensorFlow's ``same`` with an even kernel or a stride: the odd pixel at the bottom/right)."""
    given = v
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (int(v),) * 4
    v = tuple(v) if isinstance(v, (tuple, list)) else None
    if v is None or len(v) not in (2, 4) or not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool)
                                                    for e in v):
        raise ValueError(f"{name}: expected an int, a pair (ph, pw) or a 4-tuple (top, bottom, left, right) of "
                         f"ints, got {given!r}")
    if any(e < 0 for e in v):
        raise ValueError(f"{name}: expected values >= 0, got {v!r}")
    v = tuple(int(e) for e in v)
    return (v[0], v[0], v[1], v[1]) if len(v) == 2 else v


def conv_padding(v, name: str = "padding"):
    """:func:`padding4`'s value in the short form layers keep: a pair (ph, pw) when top = bottom and
    left = right, else the 4-tuple (top, bottom, left, right)."""
    t, b, left, r = padding4(v, name)
    return (t, left) if (t, left) == (b, r) else (t, b, left, r)
