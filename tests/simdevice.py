"""A simulated GPU array module: NumPy underneath, CuPy's rules on top.

refbnn's engine runs on CuPy arrays by asking each array for its module (``refbnn.checks.
array_module``). Where no GPU exists, this module stands in for CuPy so that the suite runs the
engine's device code path in CI and checks the two things a GPU run depends on:

- **Nothing falls back to the host.** Its arrays (:class:`DeviceArray`) are not NumPy arrays and,
  like CuPy's, refuse to be turned into one implicitly (``np.asarray(a)`` raises TypeError) and
  refuse to be mixed with NumPy arrays in one operation. A NumPy array created by the engine where
  a device array belongs (``np.zeros`` instead of ``xp.zeros``) therefore fails loudly here, as it
  would on a GPU.
- **No hidden device-to-host round trips.** Every conversion to a host value (``float(a)``,
  ``int(a)``, ``bool(a)``, ``a.item()``, ``a.tolist()``, ``a.get()``) is a synchronisation on a
  GPU. They are counted in :data:`syncs` (with the caller's file and line), and inside
  ``with forbid_syncs():`` they raise :class:`HostSync` naming the line (``allow_syncs()`` lifts
  that for a block within). Host-to-device copies
  (``asarray`` of a NumPy array) are counted in :data:`uploads`.

Reductions return 0-d device arrays, as in CuPy (not NumPy scalars), so ``x.sum()`` stays on the
device until someone asks for its value. Numbers are NumPy's: an engine run on this module gives
the same bits as the same run on NumPy arrays with the reference backend.

It is a test tool, not a CuPy emulation: it implements ``__array_namespace__`` (the array API's
way for an array to name its module), the functions and methods refbnn uses, and nothing of CUDA.
"""
from __future__ import annotations

import contextlib
import sys
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

syncs: list[str] = []    # "kind at file:line" for each device -> host value
# what the engine called on device arrays: (kind, name) -> keyword names used, kind "function" (the
# module's functions and NumPy functions dispatched through __array_function__), "ufunc" or
# "method" (array methods); a test checks that CuPy has each one (tests/test_device.py)
used: dict[tuple[str, str], set] = {}
uploads: list[str] = []  # "shape at file:line" for each host -> device copy
_forbid = [0]


class HostSync(RuntimeError):
    """A device -> host synchronisation inside ``forbid_syncs()``."""


def _caller() -> str:
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename == __file__:
        f = f.f_back
    return f"{f.f_code.co_filename}:{f.f_lineno}" if f is not None else "?"


def _sync(kind: str):
    where = f"{kind} at {_caller()}"
    syncs.append(where)
    if _forbid[0]:
        raise HostSync(f"device -> host synchronisation: {where}")


@contextlib.contextmanager
def forbid_syncs():
    """Make every device -> host synchronisation raise :class:`HostSync` within the block."""
    _forbid[0] += 1
    try:
        yield
    finally:
        _forbid[0] -= 1


@contextlib.contextmanager
def allow_syncs():
    """Lift :func:`forbid_syncs` within the block (for the one synchronisation a test permits, e.g.
    the flush of ``refbnn.checks.deferred_checks``); the syncs are still counted."""
    depth, _forbid[0] = _forbid[0], 0
    try:
        yield
    finally:
        _forbid[0] = depth


def reset():
    syncs.clear()
    uploads.clear()


def _unwrap(v):
    if isinstance(v, DeviceArray):
        return v._a
    if isinstance(v, np.ndarray):
        raise TypeError(f"a NumPy array {v.shape} {v.dtype} mixed with device arrays; CuPy refuses this "
                        "(move it with xp.asarray)")
    if isinstance(v, (list, tuple)):
        return type(v)(_unwrap(e) for e in v)
    if isinstance(v, dict):
        return {k: _unwrap(e) for k, e in v.items()}
    return v


def _wrap(v):
    if isinstance(v, np.ndarray):
        return DeviceArray(v)
    if isinstance(v, np.generic):  # CuPy reductions give 0-d arrays, not host scalars
        return DeviceArray(np.asarray(v))
    if isinstance(v, tuple):
        return tuple(_wrap(e) for e in v)
    if isinstance(v, list):
        return [_wrap(e) for e in v]
    return v


def _call(fn, args, kwargs):
    return _wrap(fn(*_unwrap(args), **_unwrap(kwargs)))


def _record(kind, name, kwargs):
    used.setdefault((kind, name), set()).update(kwargs)


class DeviceArray(NDArrayOperatorsMixin):
    """An array "on the device": a NumPy array that refuses implicit host conversion."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, a: np.ndarray):
        object.__setattr__(self, "_a", a)

    # -- the module and the host boundary ---------------------------------------------------------
    def __array_namespace__(self, api_version=None):
        return module

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed (a simulated device array, "
                        "as CuPy's); use .get()")

    def get(self):
        _sync("get()")
        return self._a.copy()

    def item(self):
        _sync("item()")
        return self._a.item()

    def tolist(self):
        _sync("tolist()")
        return self._a.tolist()

    def __float__(self):
        _sync("float()")
        return float(self._a)

    def __int__(self):
        _sync("int()")
        return int(self._a)

    def __index__(self):
        _sync("index")
        return self._a.__index__()

    def __bool__(self):
        _sync("bool()")
        return bool(self._a)

    def __complex__(self):
        _sync("complex()")
        return complex(self._a)

    # -- NumPy protocols: np.f(device array) runs "on the device", as with CuPy ----------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _record("ufunc", ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}", kwargs)
        result = _call(getattr(ufunc, method), inputs, kwargs)
        out = kwargs.get("out")
        if isinstance(out, tuple) and len(out) == 1 and isinstance(out[0], DeviceArray):
            return out[0]  # in place (a += b, out=a): the same array object, as CuPy returns it
        return result

    def __array_function__(self, func, types_, args, kwargs):
        _record("function", func.__name__, kwargs)
        return _call(func, args, kwargs)

    # -- array attributes and methods ---------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: DeviceArray(self._a.T))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(e) for e in self._a)

    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        self._a[_index(key)] = _unwrap(value)

    def __getattr__(self, name):
        if name.startswith("__"):  # NumPy's host protocols (__array_interface__, __array_struct__, the
            # buffer, __dlpack__) would hand NumPy the data without a copy or a count: a device array has none
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (a simulated device array)")
        attr = getattr(self._a, name)
        if callable(attr):
            def method(*args, **kwargs):
                _record("method", name, kwargs)
                return _call(attr, args, kwargs)
            return method
        return _wrap(attr)

    def __repr__(self):
        return f"DeviceArray({self._a!r})"

    def __copy__(self):
        return DeviceArray(self._a.copy())

    def __deepcopy__(self, memo):
        return DeviceArray(self._a.copy())


def _index(key):
    """Indices may be device arrays; NumPy index arrays are uploaded (as CuPy does)."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, DeviceArray):
        return key._a
    if isinstance(key, np.ndarray):
        uploads.append(f"index {key.shape} at {_caller()}")
        return key
    return key


def asarray(a, dtype=None, order=None):
    if isinstance(a, DeviceArray):
        return DeviceArray(a._a if dtype is None else a._a.astype(dtype, copy=False))
    if isinstance(a, (np.ndarray, list, tuple, int, float, np.generic)):
        host = np.asarray(a, dtype=dtype)
        if isinstance(a, np.ndarray):
            uploads.append(f"{host.shape} at {_caller()}")
        return DeviceArray(host.copy() if host is a else host)
    raise TypeError(f"asarray: cannot move {type(a).__name__} to the simulated device")


def array(a, dtype=None, copy=True):
    out = asarray(a, dtype)
    return DeviceArray(out._a.copy()) if copy else out


def asnumpy(a):
    """The host copy (cupy.asnumpy)."""
    return a.get() if isinstance(a, DeviceArray) else np.asarray(a)


def get_array_module(*arrays):
    return module if any(isinstance(a, DeviceArray) for a in arrays) else np


ndarray = DeviceArray


class _Module(types.ModuleType):
    """The namespace: NumPy's functions, with device arrays in and out."""

    def __getattr__(self, name):
        attr = getattr(np, name)
        if isinstance(attr, type) or not callable(attr):
            return attr  # dtypes (float32, ...), constants (pi, inf, newaxis), errstate
        if name == "errstate":
            return attr

        def function(*args, **kwargs):
            _record("function", name, kwargs)
            return _call(attr, args, kwargs)
        return function


module = sys.modules[__name__]
module.__class__ = _Module
