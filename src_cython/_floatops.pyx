# cython: language_level=3, cdivision=True, boundscheck=False, wraparound=False
"""Compiled float ops of the training step (imported as ``refbnn.kernels._floatops``).

These are implementations of refbnn.ops (the NumPy reference, the specification), not new
behaviour: each function here names the reference function it implements and the tolerance it
is tested to (float sums may add in another order than NumPy's; copies and per-element ops are
bit-identical). Every result is bit-identical for any thread count: reductions are split into
a fixed number of parts that do not depend on the threads, then added in a fixed order.

float32, C-contiguous inputs only: the Python boundary (refbnn.kernels) falls back to the
reference for anything else. Bad input raises TypeError/ValueError before any C code runs.
``threads=None`` runs OpenMP's default (``OMP_NUM_THREADS`` or all usable cores), as the
bit-packed kernels do.
"""
import numpy as np

cimport numpy as cnp
from libc.stdint cimport int64_t

from refbnn.kernels._bitpack import _threads

cnp.import_array()

_F32 = np.dtype(np.float32)


def _f32(a, name, ndim=None):
    """``a`` checked as a C-contiguous native float32 ndarray (of ``ndim`` dimensions)."""
    if type(a) is not np.ndarray:
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != _F32 or not a.dtype.isnative:
        raise TypeError(f"{name}: expected float32 (native byte order), got {a.dtype}")
    if ndim is not None and a.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array")
    return a


# Below this many values per thread, waking another OpenMP thread costs more than it saves (measured:
# batch norm forward + backward on (64, 512) floats, 31 us on one thread, 158 us on two). The thread
# count never changes a result, so capping it is safe.
MIN_VALUES_PER_THREAD = 1 << 16


def _work_threads(threads, size):
    """The team size for an element-wise or per-channel pass over ``size`` values: ``threads``
    (validated by ``_threads``) capped so that each thread gets at least MIN_VALUES_PER_THREAD."""
    return max(1, min(_threads(threads), size // MIN_VALUES_PER_THREAD))


include "fo_conv.pxi"
include "fo_norm.pxi"
