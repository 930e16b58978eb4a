"""Input validation shared by every op, layer and quantizer.

Bad input gets a clear ``TypeError``/``ValueError`` naming what was expected, before any arithmetic
runs: refbnn never returns a silently wrong result for a wrong shape, dtype or a NaN.

Finiteness is checked in two steps: the sum of the array is finite exactly when no element is NaN
or +-Inf, unless finite elements overflow the sum (IEEE 754: NaN + a = NaN, Inf + finite = Inf,
Inf - Inf = NaN). So one pass of ``x.sum()``, with no temporary array, clears the common case, and
only a non-finite sum pays for the element-wise ``isfinite`` pass that finds (or rules out) the
offending element.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import threading

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Upper bound for sizes, channel counts, strides, paddings...: int32, what BLAS, the kernels' index
# arithmetic and every framework refbnn is compared with can hold.
MAX_INT = 2 ** 31 - 1


def array_module(x):
    """The array module of ``x``, chosen by its type (never by a global switch): NumPy for NumPy
    arrays, scalars and Python numbers, CuPy for CuPy arrays, and for any other array the module
    its ``__array_namespace__`` names (the array API standard's protocol; the test suite's
    simulated device, ``tests/simdevice.py``, is one)."""
    t = type(x)
    if t.__module__.split(".")[0] == "cupy":
        import cupy  # noqa: PLC0415 - only imported when a CuPy array is actually passed

        return cupy
    if isinstance(x, (np.ndarray, np.generic)) or not hasattr(t, "__array_namespace__"):
        return np
    return x.__array_namespace__()


def on_host(x) -> bool:
    """Whether ``x`` is a NumPy array or scalar (not on a device)."""
    return array_module(x) is np


def host_float(v):
    """A 0-d result as a Python float on the host; on a device it stays a 0-d device array (reading
    its value would wait for the device), to be read when the caller needs the number."""
    return float(v) if on_host(v) else v


def to_host(x):
    """A NumPy copy of a device array (CuPy's ``.get()``); NumPy arrays and scalars unchanged."""
    return x if on_host(x) else x.get()


def read_scalars(values) -> list:
    """Python numbers from numbers and 0-d arrays; those on a device are read together, in one copy
    (one synchronisation) instead of one each. Mixed kinds come back in their common type (a count
    beside a float sum as a float, exact below 2**53)."""
    values = list(values)
    xp = next((array_module(v) for v in values if not on_host(v)), None)
    if xp is None:
        return [np.asarray(v).item() for v in values]
    return to_host(xp.stack([xp.asarray(v).reshape(()) for v in values])).tolist()


# -- checks on device arrays, deferred to one synchronisation ------------------------------------
_deferred = threading.local()


@contextlib.contextmanager
def deferred_checks():
    """Run the block with the value checks on device (non-NumPy) arrays queued instead of answered.

    Each check that needs an array's values (no NaN/Inf, a finite statistic, a non-zero std, labels
    in range) asks the device a yes/no question; answering it is a device -> host synchronisation,
    which on a GPU stalls the host until every queued kernel has run. Inside this block the answers
    stay on the device and are fetched together, in one copy, when the block ends; the first failed
    check, in program order, then raises the very error it would have raised at once (also when the
    block ends with another exception: an earlier failed check comes first, as it would have). NumPy
    arrays are always checked at once (there is nothing to wait for).

    The training step runs its forward and backward passes in such a block, which ends before the
    optimizer touches the weights, so a bad value still stops the step before it does harm, for the
    price of one synchronisation per step instead of one per check. Blocks nest: an inner block's
    checks join the outer block's queue."""
    stack = getattr(_deferred, "stack", None)
    if stack is None:
        stack = _deferred.stack = []
    stack.append([])
    try:
        yield
    finally:
        queue = stack.pop()
        if stack:
            stack[-1].extend(queue)
        else:
            _answer(queue)


def _queue():
    stack = getattr(_deferred, "stack", None)
    return stack[-1] if stack else None


def defer_check(ok, fail) -> bool:
    """Queue the check ``ok`` (a boolean 0-d array; True = passed) if a :func:`deferred_checks` block
    is open and ``ok`` is on a device; ``fail()`` raises its error (it may return instead, when a
    closer look clears the input). Returns False when nothing was queued: check at once."""
    queue = _queue()
    if queue is None or on_host(ok):
        return False
    queue.append((ok, fail))
    return True


def _answer(queue):
    """Fetch the queued checks' answers in one device -> host copy; run ``fail()`` of each failed one
    in order (the first that raises ends it)."""
    if not queue:
        return
    for (_, fail), passed in zip(queue, read_scalars(ok for ok, _ in queue)):
        if not passed:
            fail()


def _all_finite(x):
    """A 0-d boolean: True when ``x.sum()`` is finite (see the module docstring)."""
    xp = array_module(x)
    with np.errstate(over="ignore", invalid="ignore"):
        return xp.isfinite(x.sum())


def check_all_finite(x, fail):
    """Run ``fail`` (which looks for the first non-finite element and raises) at once, or queue it
    behind a device-side ``isfinite(x.sum())`` in a :func:`deferred_checks` block."""
    if not x.size:
        return
    if on_host(x) or _queue() is None:
        fail()
    else:
        defer_check(_all_finite(x), fail)


def check_value(ok, fail):
    """``fail()`` unless ``ok``: at once, or deferred in a :func:`deferred_checks` block when ``ok``
    is a device array."""
    if not defer_check(ok, fail) and not bool(ok):
        fail()


@contextlib.contextmanager
def _prefixing(name):
    try:
        yield
    except (ValueError, TypeError) as exc:
        if str(exc).startswith(f"{name}:"):
            raise
        raise type(exc)(f"{name}: {exc}") from exc


def _named(fail, name):
    def named_fail():
        with _prefixing(name):
            return fail()

    return named_fail


@contextlib.contextmanager
def named_errors(name: str):
    """Within the block, a ValueError or TypeError gets ``"<name>: "`` in front of its message (unless
    it starts so already; the original is the new one's ``__cause__``). That holds for the checks
    queued in the block too, whose errors are raised later, when the enclosing :func:`deferred_checks`
    block ends: an error names the same thing (a quantizer) on a device as on the host."""
    queue = _queue()
    start = len(queue) if queue is not None else 0
    try:
        with _prefixing(name):
            yield
    finally:
        if queue is not None:
            queue[start:] = [(ok, _named(fail, name)) for ok, fail in queue[start:]]


def first_nonfinite(x):
    """``None`` if every element of ``x`` is finite, else ("NaN" | "Inf" | "-Inf", index tuple) of the
    first non-finite element in C order. Cost: one ``x.sum()`` when all elements are finite."""
    if not x.size:
        return None
    xp = array_module(x)
    with np.errstate(over="ignore", invalid="ignore"):
        total = x.sum()
    if bool(xp.isfinite(total)):
        return None
    bad = ~xp.isfinite(x)
    if not bool(bad.any()):  # the sum of finite values overflowed
        return None
    flat = int(xp.argmax(bad.reshape(-1)))
    idx = tuple(int(i) for i in np.unravel_index(flat, x.shape))
    v = float(x[idx])
    return ("NaN" if math.isnan(v) else "Inf" if v > 0 else "-Inf"), idx


def check_finite_statistic(v, name: str, dtype):
    """A statistic (a mean, a std; scalar or small array) computed from finite input must be finite:
    otherwise the input's values overflowed ``dtype`` in the reduction. Cheap: ``v`` is small."""
    def fail():
        raise ValueError(f"{name} overflows {np.dtype(dtype)} (the input's magnitudes are too large for this "
                         f"reduction); expected values whose {name} is finite")

    check_value(array_module(v).isfinite(v).all(), fail)
    return v


def check_finite(x, name: str):
    """Raise ``ValueError`` "<name> contains NaN at index (...)" for the first non-finite element."""
    def fail():
        found = first_nonfinite(x)
        if found is not None:
            raise ValueError(f"{name} contains {found[0]} at index {found[1]}; expected finite values")

    check_all_finite(x, fail)
    return x


def check_float_array(x, name: str, ndim: int | tuple[int, ...] | None = None, finite: bool = True):
    """Return ``x`` after checking it is a float32/float64 array (native byte order) of the given
    ndim; a C-contiguous copy if it was not C-contiguous, so that reductions over it add in the same
    order as for a contiguous array (bit-identical results). ``finite=True`` rejects NaN and Inf (see
    the module docstring for the cost)."""
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64 (native byte order), got {x.dtype.str} "
                        f"({x.dtype})")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(d) for d in allowed)
            raise ValueError(f"{name}: expected a {want}-D array, got shape {tuple(x.shape)}")
    if finite:
        def fail():
            found = first_nonfinite(x)
            if found is not None:
                raise ValueError(f"{name}: contains NaN or Inf ({found[0]} at index {found[1]}); expected finite "
                                 "values")

        check_all_finite(x, fail)
    if not x.flags.c_contiguous:
        x = array_module(x).ascontiguousarray(x)
    return x


def check_same_device(*named):
    """All arrays given as (name, array) pairs must live in one array module (NumPy, CuPy) and, for
    CuPy, on one CUDA device: TypeError / ValueError naming where each one is."""
    arrays = [(n, a) for n, a in named if a is not None]
    modules = {array_module(a).__name__ for _, a in arrays}
    if len(modules) > 1:
        desc = ", ".join(f"{n} is a {array_module(a).__name__} array" for n, a in arrays)
        raise TypeError(f"arrays on different devices: {desc}; expected them in one place (move them with "
                        "model.to(...) or numpy/cupy asarray)")
    ids = {getattr(getattr(a, "device", None), "id", None) for _, a in arrays}
    if len(ids) > 1:
        desc = ", ".join(f"{n} on device {getattr(a.device, 'id', a.device)}" for n, a in arrays)
        raise ValueError(f"arrays on different CUDA devices: {desc}; expected one device")


def check_same_dtype(*named):
    """All arrays given as (name, array) pairs must share one float dtype (and one device:
    :func:`check_same_device`)."""
    check_same_device(*named)
    dtypes = {a.dtype for _, a in named if a is not None}
    if len(dtypes) > 1:
        desc = ", ".join(f"{n}={a.dtype}" for n, a in named if a is not None)
        raise TypeError(f"dtype mismatch: expected one float dtype for all of ({desc})")


def check_shape(x, name: str, expected: tuple):
    """``expected`` may hold ``None`` for a free axis."""
    if not hasattr(x, "shape"):
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}")
    if len(x.shape) != len(expected) or any(e is not None and e != s for s, e in zip(x.shape, expected)):
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_int(name: str, v, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """An int (Python or NumPy, not a bool, not a float) in [minimum, maximum]."""
    if not _is_int(v) or not minimum <= int(v) <= maximum:
        raise ValueError(f"{name}: expected an int in [{minimum}, {maximum}], got {v!r}")
    return int(v)


def check_real(name: str, v, minimum: float | None = None, maximum: float | None = None,
               open_min: bool = False) -> float:
    """A finite real number (not a bool) in [minimum, maximum] (``open_min``: > minimum)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    v = float(v)
    low_ok = minimum is None or (v > minimum if open_min else v >= minimum)
    if not low_ok or (maximum is not None and v > maximum):
        lo = "" if minimum is None else (f"> {minimum}" if open_min else f">= {minimum}")
        hi = "" if maximum is None else f"<= {maximum}"
        raise ValueError(f"{name}: expected a finite number {' and '.join(s for s in (lo, hi) if s)}, got {v!r}")
    return v


def check_bool_arg(name: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name}: expected True or False, got {v!r}")
    return bool(v)


def check_choice_arg(name: str, v, choices):
    """``v`` is one of ``choices`` (None, strings or floats); a bool never matches a number, and a
    float choice accepts any real number equal to it."""
    def matches(c):
        if c is None or isinstance(c, str):
            return v is c or (isinstance(v, str) and v == c)
        return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and v == c
    if not any(matches(c) for c in choices):
        raise ValueError(f"{name}: expected one of {list(choices)}, got {v!r}")
    return v


def check_float_dtype(name: str, dtype) -> np.dtype:
    try:
        d = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name}: expected float32 or float64, got {dtype!r}") from exc
    if d not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {d}")
    return d


def pair(v, name: str, minimum: int = 0, maximum: int = MAX_INT) -> tuple[int, int]:
    """Normalise an int or a 2-sequence of ints (stride, padding, kernel size...) to a pair of ints in
    [minimum, maximum]; bools and floats are refused."""
    if _is_int(v):
        v = (v, v)
    try:
        v = tuple(v)
    except TypeError:
        raise ValueError(f"{name}: expected an int or a pair of ints, got {v!r}") from None
    if len(v) != 2 or not all(_is_int(e) for e in v):
        raise ValueError(f"{name}: expected an int or a pair of ints, got {v!r}")
    if any(not minimum <= int(e) <= maximum for e in v):
        raise ValueError(f"{name}: expected values in [{minimum}, {maximum}], got {v!r}")
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
    if any(not 0 <= e <= MAX_INT for e in v):
        raise ValueError(f"{name}: expected values in [0, {MAX_INT}], got {v!r}")
    v = tuple(int(e) for e in v)
    return (v[0], v[0], v[1], v[1]) if len(v) == 2 else v


def conv_padding(v, name: str = "padding"):
    """:func:`padding4`'s value in the short form layers keep: a pair (ph, pw) when top = bottom and
    left = right, else the 4-tuple (top, bottom, left, right)."""
    t, b, left, r = padding4(v, name)
    return (t, left) if (t, left) == (b, r) else (t, b, left, r)
