"""The one backend boundary.

Layers call the functions below; each has a NumPy reference (:mod:`refbnn.kernels.reference`, the
specification) and may have faster implementations that must agree with it bit for bit:

- ``"numpy"``: the reference, always available, works for NumPy and CuPy arrays;
- ``"cython"``: the bit-packed CPU kernels compiled from ``src_cython/`` (when built);
- ``"cupy"``: GPU kernels for CuPy arrays (when CuPy is installed).

``backend="auto"`` picks the fastest implementation that exists for the arrays given; the arrays
choose between CPU and GPU, never a global switch.

The bit-packed kernels themselves (``pack_bits``, ``bgemm``, ``bconv2d``, ``bmaxpool2d``,
``measure_peak``, ``measure_machine_peak``, ``Workspace``; see ``refbnn.kernels._bitpack``) are
importable from here once built; ``unpack_bits`` and ``threshold_fold`` are NumPy and always
available. Which SIMD path they run when none is named is measured on first use and cached:
``refbnn.kernels.dispatch`` (imported on that first use, never by ``import refbnn``).
"""
from __future__ import annotations

import importlib
import os

# The compiled kernels run OpenMP threads. Left at libgomp's default (spin-waiting after each
# parallel region), those threads take the cores from NumPy's BLAS threads that run the float
# ops between two binary products, and a training step gets slower. Passive waiting costs the
# kernels nothing measurable; it is set before the extension loads, unless the user chose a policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from ..checks import array_module, check_float_array, padding4, pair
from . import reference
from .fold import threshold_fold
from .geometry import conv2d_geometry
from .reference import unpack_bits

BACKENDS = ("numpy", "cython", "cupy")
__all__ = ["BACKENDS", "available_backends", "backend_errors", "binary_conv2d", "binary_matmul", "compiled",
           "float_ops", "kernel_paths", "reference", "resolve_backend", "threshold_fold", "unpack_bits"]

# name -> module path of an optional compiled backend; each exposes binary_matmul / binary_conv2d
# with the reference's signatures.
_OPTIONAL = {"cython": "refbnn.kernels.cython_backend", "cupy": "refbnn.kernels.cupy_backend"}
_loaded: dict[str, object] = {}
_load_errors: dict[str, str] = {}


BUILD_HINT = ("build them with `pip install .` (needs a C compiler; Cython and NumPy come with the build), "
              "or `python setup.py build_ext --inplace` in a source checkout")
# names served by the compiled module refbnn.kernels._bitpack, imported on first use
_COMPILED = ("pack_bits", "bgemm", "bconv2d", "bmaxpool2d", "measure_peak", "measure_machine_peak", "Workspace")


def compiled():
    """The compiled kernel module; ImportError saying how to build it when it is missing."""
    try:
        from . import _bitpack  # noqa: PLC0415 - optional extension
    except ImportError as exc:
        raise ImportError(f"the bit-packed kernels (refbnn.kernels._bitpack) are not built ({exc}); "
                          f"{BUILD_HINT}") from exc
    return _bitpack


def __getattr__(name):
    if name in _COMPILED:
        return getattr(compiled(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def kernel_paths() -> dict:
    """The compiled kernels' SIMD paths (compiled, supported, active; how the active one was chosen
    and the measured times, see refbnn.kernels.dispatch), OpenMP and its threads; ``{"error": why}``
    when the extension is not built. Makes the path choice if no kernel call has made it yet."""
    try:
        return compiled().info()
    except ImportError as exc:
        return {"error": str(exc)}


def _load(name: str):
    if name == "numpy":
        return reference
    if name not in _loaded and name not in _load_errors:
        try:
            _loaded[name] = importlib.import_module(_OPTIONAL[name])
        except ImportError as exc:  # not built / not installed: the reason is reported by info()
            _load_errors[name] = str(exc)
    return _loaded.get(name)


def available_backends() -> list[str]:
    return [b for b in BACKENDS if _load(b) is not None]


def backend_errors() -> dict[str, str]:
    """Why each unavailable backend could not be loaded (for ``refbnn info``)."""
    for b in BACKENDS:
        _load(b)
    return dict(_load_errors)


def resolve_backend(backend: str, x):
    """The kernel module to use for array ``x``."""
    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS + ('auto',)}")
    xp = array_module(x)
    on_gpu = xp.__name__ == "cupy"
    if backend == "auto":
        if xp is not np and not on_gpu:  # another array-API module: only the reference runs there
            return reference
        mod = _load("cupy" if on_gpu else "cython")
        return reference if mod is None else mod
    if backend == "cython" and xp is not np:
        use = "'cupy' or 'auto'" if on_gpu else "'numpy' or 'auto'"
        raise ValueError(f"backend 'cython' runs on NumPy arrays; got a {xp.__name__} array (use {use})")
    if backend == "cupy" and not on_gpu:
        raise ValueError("backend 'cupy' runs on CuPy arrays; got a NumPy array (use 'cython', 'numpy' or 'auto')")
    mod = _load(backend)
    if mod is None:
        hint = BUILD_HINT if backend == "cython" else "install CuPy for your CUDA version"
        raise ImportError(f"kernel backend {backend!r} is not available ({_load_errors.get(backend)}); {hint}")
    return mod


# what refbnn.ops calls on the compiled float ops module
FLOAT_OPS = ("conv2d_forward", "conv2d_backward", "batchnorm_train_forward", "batchnorm_train_backward",
             "hardtanh_forward", "mask_multiply")


def float_ops(backend: str, *arrays):
    """The compiled float ops of the training step (``refbnn.kernels._floatops``: convolution
    forward and gradients, batch norm, element-wise ops) for these arrays, or ``None``: run the
    NumPy reference (refbnn.ops). ``None`` for ``backend="numpy"``, CuPy arrays and anything but
    float32 NumPy arrays (the compiled ops are float32 only); ``"auto"`` also gives ``None`` when
    the extension is not built (or was built from older sources, without :data:`FLOAT_OPS`),
    ``"cython"`` raises ImportError saying how to build it. The
    compiled ops agree with the reference within the float tolerance their docstrings state
    (float sums may add in another order) and give the same bits for any thread count."""
    if resolve_backend(backend, arrays[0]) is reference or array_module(arrays[0]).__name__ == "cupy":
        return None
    if not all(type(a) is np.ndarray and a.dtype == np.float32 for a in arrays):
        return None
    try:
        from . import _floatops  # noqa: PLC0415 - optional extension
    except ImportError as exc:
        if backend == "cython":
            raise ImportError(f"the compiled float ops (refbnn.kernels._floatops) are not built ({exc}); "
                              f"{BUILD_HINT}") from exc
        return None
    missing = [f for f in FLOAT_OPS if not hasattr(_floatops, f)]
    if missing:  # built from older sources than these
        if backend == "cython":
            raise ImportError(f"the compiled float ops (refbnn.kernels._floatops) lack {', '.join(missing)}: they were "
                              f"built from older sources; rebuild them: {BUILD_HINT}")
        return None
    return _floatops


_INT32_MAX = 2 ** 31 - 1


def _geometry_pair(v, name: str, minimum: int) -> tuple[int, int]:
    """stride/padding/dilation: an int or a pair of ints in [minimum, 2**31 - 1]; bool, float and
    NumPy arrays of other than two ints refused (the compiled kernels hold them as C ints)."""
    items = (v, v) if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) else v
    if isinstance(items, (str, bytes, dict)) or not hasattr(items, "__len__") or len(items) != 2:
        raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}")
    for e in items:
        if isinstance(e, (bool, np.bool_)) or not isinstance(e, (int, np.integer)):
            raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}")
        if not minimum <= e <= _INT32_MAX:
            raise ValueError(f"{name}: expected ints >= {minimum} and <= {_INT32_MAX}, got {v!r}")
    return pair(tuple(int(e) for e in items), name, minimum)


def binary_matmul(a, b, backend: str = "auto"):
    """``a @ b.T`` for +-1 matrices a (M, K) and b (N, K); exact integers in a's float dtype.

    ``a``, ``b``: float32 or float64 (native byte order), no NaN/Inf; the result has NumPy's
    promoted dtype of the two. The compiled kernels also refuse values other than exactly +-1. Empty operands are computed
    by the reference on every backend.
    """
    check_float_array(a, "a", ndim=2)
    check_float_array(b, "b", ndim=2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"binary_matmul: a is (M, K) = {a.shape} but b is (N, K) = {b.shape}; K must match")
    mod = resolve_backend(backend, a)
    if a.size == 0 or b.size == 0:
        mod = reference
    return mod.binary_matmul(a, b)


def binary_conv2d(x, w, stride=1, padding=0, dilation=1, groups=1, pad_value=0.0, backend: str = "auto"):
    """Convolution of +-1 activations with +-1 weights, padding with 0 (true zero) or +-1.

    ``x`` (N, C, H, W), ``w`` (O, C/groups, kh, kw): float32/float64, the result in their promoted
    dtype; ``stride``, ``dilation``: ints or pairs of ints in [1, 2**31 - 1]; ``padding``: an int, a
    pair (ph, pw) or (top, bottom, left, right), each in [0, 2**31 - 1]; ``groups`` a positive int
    (bool and float refused). Empty operands are computed by the reference. The packed kernels pad
    symmetrically; asymmetric padding with +-1 is applied to the input first (exact: the padded
    input is still +-1), and asymmetric zero padding runs the NumPy reference (a 0 is not a bit)."""
    check_float_array(x, "x", ndim=4)
    check_float_array(w, "w", ndim=4)
    if isinstance(pad_value, (bool, np.bool_)) or not isinstance(pad_value, (int, float, np.integer, np.floating)):
        raise TypeError(f"pad_value: expected 0.0, 1.0 or -1.0, got {type(pad_value).__name__} {pad_value!r}")
    if pad_value not in (0.0, 1.0, -1.0):
        raise ValueError(f"pad_value: expected 0.0, 1.0 or -1.0, got {pad_value!r}")
    stride = _geometry_pair(stride, "stride", 1)
    dilation = _geometry_pair(dilation, "dilation", 1)
    top, bottom, left, right = padding4(padding)
    if max(top, bottom, left, right) > _INT32_MAX:
        raise ValueError(f"padding: expected ints >= 0 and <= {_INT32_MAX}, got {padding!r}")
    conv2d_geometry(x.shape, w.shape, stride, (top, bottom, left, right), dilation, groups)
    mod = resolve_backend(backend, x)
    if x.size == 0 or w.size == 0:
        mod = reference
    if (top, left) == (bottom, right):
        return mod.binary_conv2d(x, w, stride, (top, left), dilation, int(groups), float(pad_value))
    if mod is reference or pad_value == 0.0:
        return reference.binary_conv2d(x, w, stride, (top, bottom, left, right), dilation, int(groups),
                                       float(pad_value))
    xp = array_module(x).pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=float(pad_value))
    return mod.binary_conv2d(xp, w, stride, (0, 0), dilation, int(groups), float(pad_value))
