# cython: language_level=3, cdivision=True
"""Bit-packed binary kernels (compiled from src_cython/; imported as ``refbnn.kernels._bitpack``).

Bit layout (Larq Compute Engine's): signs packed along one axis into uint64 words, element i in
bit i % 64 of word i // 64, least significant bit first; bit 1 = -1, bit 0 = +1 (0.0 packs as +1);
the tail bits of the last word are 0 and every kernel ignores them. ``polarity="dabnn"`` (bit 1 =
x > 0) and ``"bitorch"`` (bit 1 = x >= 0) produce and read the other engines' layouts.

- ``pack_bits(x, axis=-1, polarity="lce")`` -> words, the packed axis last (the inverse,
  ``unpack_bits``, is NumPy: refbnn.kernels.reference.unpack_bits);
- ``bgemm(a_words, b_words, k)`` -> int32 (M, N): +-1 dot products of the rows of A and B;
- ``bconv2d(x_words, w_words, channels, ...)``: binary convolution of packed NHWC activations
  with packed OHWI weights: int32, float (clamp, per-channel multiplier and bias) or bit-packed
  output (per-channel thresholds, with flips for negative batch-norm gammas);
- ``bmaxpool2d(x_words, kernel_size, ...)``: max pool on packed bits (an AND).

Every kernel equals the NumPy float reference on the unpacked signs exactly (see
refbnn.kernels.reference). Bad input raises TypeError/ValueError before any C code runs.

SIMD path: AVX-512 VPOPCNTDQ, AVX2, NEON (AArch64) or portable scalar: the one named by ``path=``
or the environment variable ``REFBNN_KERNEL_PATH`` (``avx512``, ``avx2``, ``neon``, ``scalar``),
else (``auto``) the one refbnn.kernels.dispatch measured fastest on this machine (once, cached per
machine and kernel version). ``threads=None`` uses OpenMP's default (``OMP_NUM_THREADS`` or all cores).
"""
import os
import threading
import time

import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport getenv

cdef extern from "bitkernels.h" nogil:
    enum:
        BK_PATH_NEON
        BK_PATH_SCALAR
        BK_PATH_AVX2
        BK_PATH_AVX512
        BK_OUT_INT32
        BK_OUT_FLOAT
        BK_OUT_BITS
        BK_NC
        BK_MR

    ctypedef struct bk_job:
        int path
        int64_t m, n
        int ntaps, cw
        int32_t kbits
        uint64_t tailmask
        const uint64_t *a
        int64_t lda
        int conv
        const uint64_t *x
        int64_t in_h, in_w, out_h, out_w
        int64_t x_img, x_row, x_pix
        int kh, kw, sh, sw, ph, pw, dh, dw
        const uint64_t *padbuf
        const int32_t *corr
        const uint64_t *bpanels
        int64_t npanels
        int out_mode
        void *out
        int64_t rows_per_img, out_img, out_row, out_col
        const float *mul
        const float *bias
        int32_t lo, hi
        const int32_t *thr
        const uint32_t *flip

    int bk_path_compiled(int path)
    int bk_path_supported(int path)
    int bk_scalar_hw_popcount()
    void bk_run(const bk_job *job, int64_t r0, int64_t r1, int64_t p0, int64_t p1)
    void bk_gemm_columns(const bk_job *job, const uint64_t *b, int64_t s_row, int64_t p0, int64_t p1)
    void bk_pack_panels(const uint64_t *b, int64_t n, int ntaps, int cw, int64_t s_row, int64_t s_tap,
                        uint64_t tailmask, uint64_t *panels)
    void bk_tap_sums(const uint64_t *panels, int64_t npanels, int ntaps, int cw, int32_t bits_per_tap,
                     int32_t *corr)
    int64_t bk_pack_f32(const float *x, int64_t outer, int64_t len, int64_t inner, int64_t s_outer,
                        int64_t s_len, int64_t s_inner, int polarity, int path, uint64_t *out)
    int64_t bk_pack_f64(const double *x, int64_t outer, int64_t len, int64_t inner, int64_t s_outer,
                        int64_t s_len, int64_t s_inner, int polarity, int path, uint64_t *out)
    void bk_maxpool(const uint64_t *x, int64_t in_h, int64_t in_w, int64_t cw, int64_t x_img, int64_t x_row,
                    int64_t x_pix, int kh, int kw, int sh, int sw, int ph, int pw, int64_t out_h, int64_t out_w,
                    uint64_t *out, int64_t q0, int64_t q1)
    double bk_peak(int path, int64_t iters)
    double bk_peak_mix(int path, int nv, int ns, int64_t iters)
    int bk_peak_mix_list(int *nv, int *ns, int max)

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int bk_openmp(void) { return 1; }
    static int bk_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int bk_openmp(void) { return 0; }
    static int bk_max_threads(void) { return 1; }
    #endif
    """
    int bk_openmp() nogil
    int bk_max_threads() nogil

cnp.import_array()

PATHS = ("avx512", "avx2", "scalar")          # fastest first
_PATH_ID = {"scalar": BK_PATH_SCALAR, "avx2": BK_PATH_AVX2, "avx512": BK_PATH_AVX512}
_PATH_NEEDS = {"avx512": "AVX-512F and AVX-512 VPOPCNTDQ", "avx2": "AVX2", "scalar": "nothing"}
POLARITIES = {"lce": 0, "dabnn": 1, "bitorch": 2}
# the AArch64 path (compiled there only), before the portable one
PATHS = PATHS[:-1] + ("neon",) + PATHS[-1:]
_PATH_ID["neon"] = BK_PATH_NEON
_PATH_NEEDS["neon"] = "AArch64 (Advanced SIMD)"
_PATH_TARGET = {"neon": "AArch64"}            # where a path is compiled (the others: x86-64)
ENV_PATH = "REFBNN_KERNEL_PATH"
PANEL_COLUMNS = BK_NC
TILE_ROWS = BK_MR
# shared with the CUDA kernels (refbnn/kernels/cuda): the geometry and the argument checks
from refbnn.kernels.geometry import MAX_K, MAX_TAPS, bconv2d_shapes, conv_output_size
from refbnn.kernels.geometry import check_clamp as _clamp, check_int as _int, check_pair as _pair
_U64, _I32 = np.dtype(np.uint64), np.dtype(np.int32)
_INT32_MIN, _INT32_MAX = -2 ** 31, 2 ** 31 - 1


# ---- paths, threads -------------------------------------------------------------------------

def compiled_paths():
    """The SIMD paths this build contains (AVX-512 and AVX2 on x86-64 only, NEON on AArch64 only)."""
    return [p for p in PATHS if bk_path_compiled(_PATH_ID[p])]


def supported_paths():
    """The compiled paths this CPU (and OS) can run, fastest first."""
    return list(_SUPPORTED)


_SUPPORTED = tuple(p for p in PATHS if bk_path_supported(_PATH_ID[p]))


class KernelPathError(RuntimeError, ValueError):
    """A kernel path (``path=`` or $REFBNN_KERNEL_PATH) that this build or CPU cannot run. A
    ValueError (it is a bad setting) and, as before, a RuntimeError."""


def requested_path(path=None):
    """The path asked for: ``path`` if given, else $REFBNN_KERNEL_PATH, else ``"auto"`` (also for
    an empty variable); validated, never measured. Raises :class:`KernelPathError` naming the
    setting (``path`` or ``REFBNN_KERNEL_PATH``), its value and the paths this CPU supports when the
    path is unknown, not compiled or not supported."""
    cdef const char *env
    if path is not None:
        if not isinstance(path, str):
            raise TypeError(f"path: expected a str (one of 'auto', {', '.join(repr(p) for p in PATHS)}) or None, "
                            f"got {type(path).__name__}")
        name, src = path, "path"
    else:
        env = getenv(b"REFBNN_KERNEL_PATH")          # C getenv: os.environ writes reach it via putenv
        name = "auto" if env == NULL else env.decode("utf-8", "replace")
        src = ENV_PATH
    supported = supported_paths()
    if name == "auto" or (name == "" and path is None):      # an empty variable is an unset one
        return "auto"
    if name in supported:
        return name
    if name not in _PATH_ID:
        raise KernelPathError(f"{src}={name!r}: unknown kernel path; expected 'auto' or one of {list(PATHS)} "
                              f"(this CPU supports {supported})")
    if not bk_path_compiled(_PATH_ID[name]):
        raise KernelPathError(f"{src}={name!r}: kernel path {name!r} is not compiled into this build "
                              f"({_PATH_TARGET.get(name, 'x86-64')} only); this CPU supports {supported}")
    raise KernelPathError(f"{src}={name!r}: kernel path {name!r} needs {_PATH_NEEDS[name]}, which this CPU does "
                          f"not support; this CPU supports {supported} (unset {ENV_PATH} or use 'auto')")


_dispatch = None      # refbnn.kernels.dispatch, imported on the first "auto"


def resolve_path(path=None):
    """The path a kernel call uses: ``path`` if given, else $REFBNN_KERNEL_PATH, else ("auto") the
    one :mod:`refbnn.kernels.dispatch` chooses for this machine: the fastest in a short timing run
    on first use, kept in a cache file per machine and kernel version (``REFBNN_KERNEL_DISPATCH=static``:
    the widest path the CPU supports, no timing). Every path computes the same bits.

    Raises :class:`KernelPathError` as :func:`requested_path`. Only kernel calls (and ``info()``,
    which reports it) resolve the path: ``import refbnn`` never measures, nor fails because of the
    variables.
    """
    global _dispatch
    name = requested_path(path)
    if name != "auto":
        return name
    if _dispatch is None:
        from refbnn.kernels import dispatch as _d   # noqa: PLC0415 - imports this module
        _dispatch = _d
    return _dispatch.auto_path()


def static_path(path=None):
    """As :func:`resolve_path`, but ``auto`` is the widest path this CPU supports, never measured:
    packing and max pool, whose loops are not what the measurement compares (packing uses AVX-512
    compares where the CPU has them, whichever path runs the products)."""
    name = requested_path(path)
    return supported_paths()[0] if name == "auto" else name


def openmp_enabled():
    return bool(bk_openmp())


def usable_cpus():
    """The CPUs this process may run on: ``len(os.sched_getaffinity(0))`` where the OS has it,
    else ``os.cpu_count()`` (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads():
    """The threads a kernel call with ``threads=None`` runs: OpenMP's default (OMP_NUM_THREADS,
    else the cores) capped at :func:`usable_cpus`; 1 without OpenMP."""
    return max(1, min(bk_max_threads(), usable_cpus()))


def info():
    """What ``refbnn info`` prints about the kernels: the paths, the one that runs and how it was
    chosen (``chosen_by``; ``measured_ms``: the dispatcher's timings per path, when it measured)."""
    chosen_by, measured = None, None
    try:
        active = resolve_path()
        if requested_path() == "auto":
            report = _dispatch.report()
            chosen_by, measured = report["chosen_by"], report["measured_ms"]
        else:
            chosen_by = f"{ENV_PATH}={os.environ.get(ENV_PATH)}"
    except (ValueError, RuntimeError) as exc:
        active = f"error: {exc}"
    return {"compiled": compiled_paths(), "supported": supported_paths(), "active": active,
            "chosen_by": chosen_by, "measured_ms": measured,
            "env": os.environ.get(ENV_PATH), "openmp": openmp_enabled(), "threads": default_threads(),
            "scalar_popcount": "hardware popcnt" if bk_scalar_hw_popcount() else "portable"}


def _threads(threads):
    """``threads`` -> the OpenMP team size: an int >= 1 (bool and float refused) or None; clamped
    to :func:`usable_cpus`, so no value asks the OS for threads it may refuse (libgomp exits the
    process when thread creation fails). The results never depend on the thread count."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads: expected a positive int or None, got {type(threads).__name__} {threads!r}")
    if threads < 1:
        raise ValueError(f"threads: expected a positive int (1 or more; larger values are capped at the "
                         f"{usable_cpus()} usable CPUs) or None, got {threads!r}")
    return min(int(threads), usable_cpus()) if bk_openmp() else 1


# ---- validation (everything is checked here, before any C code runs) -----------------------

def _plain_array(a, name, what):
    """``a`` as a plain ndarray (subclasses viewed as ndarray); masked arrays are refused, the
    kernels would read the values under the mask."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array of {what}, got {type(a).__name__}")
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name}: expected a plain NumPy array of {what}, got a masked array")
    return a if type(a) is np.ndarray else a.view(np.ndarray)


def _dtype_name(dt):
    """A dtype as the error messages print it: with its byte order when that is not native."""
    return f"{dt} ({dt.str!r}, non-native byte order)" if not dt.isnative else f"{dt} ({dt.str!r})"


def _words(a, name, int ndim):
    """Packed words: any uint64 dtype spelling ('u8', 'Q', np.ulonglong) and byte order; a
    non-native byte order, misaligned or odd strides are copied to a native array (never read as
    native)."""
    a = _plain_array(a, name, "packed uint64 words")
    dt = a.dtype
    if dt.kind != "u" or dt.itemsize != 8:
        raise TypeError(f"{name}: expected dtype uint64 (packed words, see pack_bits), got {_dtype_name(dt)}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array of words, got shape {a.shape}")
    if not dt.isnative:
        return a.astype(_U64)                          # byte-swapped, C-contiguous copy
    if dt is not _U64:
        a = a.view(_U64)                               # 'Q' / ulonglong: same bits, one type number
    cdef cnp.ndarray arr = <cnp.ndarray>a
    # the C code walks rows with word strides and reads each row's words contiguously
    cdef cnp.npy_intp *st = cnp.PyArray_STRIDES(arr)
    cdef int i
    cdef bint ok = cnp.PyArray_ISALIGNED(arr) and st[ndim - 1] == 8
    for i in range(ndim):
        ok = ok and st[i] % 8 == 0
    if not ok and cnp.PyArray_SIZE(arr):
        a = np.ascontiguousarray(a)
    return a


INT_MAX = _INT32_MAX            # the largest stride, padding, dilation, groups, kernel size, channels


def _choice(v, name, options):
    if not isinstance(v, str):
        raise TypeError(f"{name}: expected one of {list(options)}, got {type(v).__name__} {v!r}")
    if v not in options:
        raise ValueError(f"{name}: expected one of {list(options)}, got {v!r}")
    return v


def _pad_value(v):
    """0.0, +1.0 or -1.0 as a float (a real scalar; bool refused)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"pad_value: expected 0.0, 1.0 or -1.0, got {type(v).__name__} {v!r}")
    if v not in (0.0, 1.0, -1.0):
        raise ValueError(f"pad_value: expected 0.0, 1.0 or -1.0, got {v!r}")
    return float(v)


def _check_out(out, name, tuple shape, dtype):
    """``out=``: written in place, so nothing is converted: exactly ``dtype`` (any spelling of it) in
    native byte order, ``shape``, C-contiguous, aligned, writeable."""
    out = _plain_array(out, name, f"{dtype}")
    dt = out.dtype
    if dt != dtype:
        if dt.newbyteorder("=") == dtype:
            raise TypeError(f"{name}: expected {dtype} in native byte order ({dtype.str!r}), got {_dtype_name(dt)}; "
                            f"out= is written in place, so it is not converted")
        raise TypeError(f"{name}: expected dtype {dtype}, got {_dtype_name(dt)}")
    cdef cnp.ndarray arr = <cnp.ndarray>out
    cdef int i, nd = len(shape)
    cdef bint same = cnp.PyArray_NDIM(arr) == nd
    for i in range(nd):
        same = same and cnp.PyArray_DIM(arr, i) == shape[i]
    if not same:
        raise ValueError(f"{name}: expected shape {shape}, got {out.shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name}: expected a C-contiguous array")
    if not cnp.PyArray_ISALIGNED(arr):
        raise ValueError(f"{name}: expected an aligned array (its address is not a multiple of {out.itemsize})")
    if not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name}: the array is read-only")
    return out


def _check_no_overlap(out, ws, **inputs):
    """``out`` must not share memory with an input or a workspace buffer: the kernels write out
    while they still read those (a bgemm whose B spans several panels would read results as
    words). Refused rather than computed through a temporary: it is almost always a mistake.
    ``np.may_share_memory`` compares the memory bounds, so interleaved views are refused too."""
    if out is None:
        return
    for name, a in inputs.items():
        if isinstance(a, np.ndarray) and np.may_share_memory(out, a):
            raise ValueError(f"out: shares memory with {name}; the kernel reads {name} while it writes out, "
                             f"so pass a separate array (or out=None)")
    if ws is not None:
        for a in ws._bufs.values():
            if np.may_share_memory(out, a):
                raise ValueError("out: shares memory with a workspace buffer; pass a separate array")


def _per_channel(v, name, n, dtype):
    """A per-output-channel vector (O,) as a contiguous native array of ``dtype``.

    float32: any real dtype whose values are exactly float32 values (a float64 1/3 would be
    rounded, a 1e300 become Inf; refused); int32 thresholds: any integers (compared with
    dot products in [-K, K], so they are clipped to int32 later); bool flips: booleans only."""
    if isinstance(v, np.ma.MaskedArray):
        raise TypeError(f"{name}: expected a plain array, got a masked array")
    v = np.asarray(v)
    kind = np.dtype(dtype).kind
    if kind == "f" and v.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected real numbers, got dtype {v.dtype}")
    if kind == "i" and v.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integers, got dtype {v.dtype}")
    if kind == "b" and v.dtype.kind != "b":
        raise TypeError(f"{name}: expected booleans, got dtype {v.dtype}")
    if v.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) (one value per output channel), got {v.shape}")
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    if kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            v32 = v.astype(np.float32)
            if v.dtype.kind == "f":
                exact = bool(np.isfinite(v32).all() and (v32.astype(v.dtype) == v).all())
            else:
                exact = all(int(f) == i for f, i in zip(v32.tolist(), v.tolist()))
        if not exact:
            raise ValueError(f"{name}: values not exactly representable in float32 (the transform is float32 "
                             f"arithmetic); pass float32 values")
        return v32
    if kind == "i":
        v = np.clip(v.astype(np.float64) if v.dtype.kind == "u" and v.dtype.itemsize == 8 else
                    v.astype(np.int64), _INT32_MIN, _INT32_MAX).astype(np.int32)
        return v
    return v.astype(np.bool_)


cdef size_t _addr(a):
    """The address of an array's first element."""
    return <size_t>cnp.PyArray_DATA(<cnp.ndarray>a)


# ---- workspace --------------------------------------------------------------------------------

class Workspace:
    """Reusable, 64-byte aligned scratch buffers (B panels, padding words, correction tables).

    They only grow: a kernel call allocates nothing else but its output. One per Python thread
    by default (``default_workspace()``); pass ``workspace=`` to manage your own.
    """

    def __init__(self):
        self._bufs = {}     # name -> 64-byte aligned view of its whole buffer

    def get(self, name, n, dtype):
        """An aligned array of ``n`` elements (at least 1) named ``name``; grows, never shrinks."""
        n = max(int(n), 1)
        if not isinstance(dtype, np.dtype):
            dtype = np.dtype(dtype)                  # the builtin dtypes are singletons
        buf = self._bufs.get(name)
        if buf is None or buf.dtype is not dtype or buf.size < n:
            raw = np.empty(n * dtype.itemsize + 64, np.uint8)
            off = -_addr(raw) % 64
            buf = self._bufs[name] = raw[off:off + n * dtype.itemsize].view(dtype)
        return buf if buf.size == n else buf[:n]

    @property
    def nbytes(self):
        return sum(b.nbytes for b in self._bufs.values())


_local = threading.local()


def default_workspace():
    """This thread's workspace, used by the kernels unless they are given one."""
    ws = getattr(_local, "ws", None)
    if ws is None:
        ws = _local.ws = Workspace()
    return ws


def _tailmask(bits):
    r = bits % 64
    return (1 << r) - 1 if r else 0xFFFFFFFFFFFFFFFF


# ---- pack / unpack ------------------------------------------------------------------------------

def pack_bits(x, axis=-1, polarity="lce", threads=None):
    """Signs of ``x`` along ``axis`` -> uint64 words; the packed axis becomes the last one.

    ``x`` (..., L, ...) float (integers are converted to float64) -> (..., ..., ceil(L/64)). Element
    i of the axis goes to bit i % 64 of word i // 64. ``polarity``: ``"lce"`` bit 1 = x < 0 (Larq
    Compute Engine; 0.0 packs as +1), ``"dabnn"`` bit 1 = x > 0, ``"bitorch"`` bit 1 = x >= 0.
    Tail bits past L are 0.

    Any byte order; float16 is widened to float32 (exact). Bool, complex and other dtypes, NaN and
    Inf are refused. ``threads``: see :func:`bgemm`.
    """
    x = _plain_array(x, "x", "floats")
    polarity = _choice(polarity, "polarity", POLARITIES)
    if x.dtype.kind in "iu":
        x = x.astype(np.float64)                     # the sign survives the rounding of huge ints
    elif x.dtype.kind == "f" and x.dtype.itemsize in (2, 4, 8):
        if x.dtype.itemsize == 2 or not x.dtype.isnative:
            x = x.astype(np.float32 if x.dtype.itemsize <= 4 else np.float64)   # exact: same values
    else:
        raise TypeError(f"x: expected a float16/float32/float64 (or integer) array, got dtype {_dtype_name(x.dtype)}")
    if x.ndim == 0:
        raise ValueError("x: expected at least a 1-D array, got a scalar")
    axis = _int(axis, "axis", -x.ndim, x.ndim - 1)
    axis %= x.ndim
    if x.size and not np.isfinite(x).all():
        raise ValueError("x: contains NaN or Inf (their sign is undefined)")
    return _pack(x, axis, POLARITIES[polarity], _threads(threads))


def _pack(x, int axis, int polarity, int threads, bint binary=False):
    """pack_bits without the checks (x float32/float64, finite). ``binary``: raise ValueError if
    a value is not exactly +-1 (the binary products' contract), found while packing."""
    shape = x.shape
    cdef int64_t outer = int(np.prod(shape[:axis], dtype=np.int64))
    cdef int64_t length = shape[axis]
    cdef int64_t inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    cdef int64_t words = (length + 63) // 64
    out = np.empty(shape[:axis] + shape[axis + 1:] + (words,), np.uint64)
    if out.size == 0:
        return out
    x3 = x.reshape(outer, length, inner)            # a view unless the leading axes cannot merge
    if any(s % x3.itemsize for s in x3.strides) or not x3.flags.aligned:
        x3 = np.ascontiguousarray(x3)
    cdef int64_t so = x3.strides[0] // x3.itemsize, sl = x3.strides[1] // x3.itemsize
    cdef int64_t si = x3.strides[2] // x3.itemsize
    cdef size_t px = _addr(x3), po = _addr(out)
    cdef bint f32 = x3.dtype == np.float32
    cdef int pth = _PATH_ID[static_path()]
    cdef int64_t o, chunk = outer if threads == 1 or outer * length * inner < (1 << 16) else 1
    cdef int64_t nchunks = (outer + chunk - 1) // chunk
    cdef int64_t c, itemsize = x3.itemsize, other = 0
    for c in prange(nchunks, nogil=True, num_threads=threads, schedule="static"):
        o = c * chunk
        if f32:
            other += bk_pack_f32(<const float *>(px + o * so * itemsize), min(chunk, outer - o), length, inner,
                                 so, sl, si, polarity, pth, <uint64_t *>po + o * inner * words)
        else:
            other += bk_pack_f64(<const double *>(px + o * so * itemsize), min(chunk, outer - o), length, inner,
                                 so, sl, si, polarity, pth, <uint64_t *>po + o * inner * words)
    if binary and other:
        raise ValueError(f"expected exactly +-1 values (binary products), found {other} other value(s)")
    return out


# ---- GEMM ---------------------------------------------------------------------------------------

def bgemm(a_words, b_words, k, threads=None, out=None, path=None, workspace=None):
    """int32 (M, N): the +-1 dot products of the rows of A (M x k signs) and B (N x k signs).

    ``a_words`` (M, ceil(k/64)) and ``b_words`` (N, ceil(k/64)) uint64, packed by
    :func:`pack_bits` (both with the same polarity). Bits past k are ignored. Words of any uint64
    spelling and byte order are accepted (a non-native or oddly strided operand is copied first).

    ``out``: an optional int32 (M, N) array to write into: native byte order, C-contiguous,
    aligned, writeable, and sharing no memory with the operands (or the workspace): refused
    otherwise, never converted or computed through a temporary.

    ``threads``: an int >= 1 or None (OpenMP's default); either is capped at the CPUs this process
    may use (``usable_cpus()``), so no value makes the OpenMP runtime fail to create threads (which
    would exit the process). The result does not depend on it.
    """
    a = _words(a_words, "a_words", 2)
    b = _words(b_words, "b_words", 2)
    k = _int(k, "k", 1, MAX_K)
    kw = (k + 63) // 64
    if a.shape[1] != kw or b.shape[1] != kw:
        raise ValueError(f"bgemm: k = {k} bits needs {kw} words per row; got a_words {a.shape}, b_words {b.shape}")
    m, n = a.shape[0], b.shape[0]
    if out is None:
        out = np.empty((m, n), np.int32)
    else:
        _check_out(out, "out", (m, n), _I32)
    ws = _workspace(workspace)
    _check_no_overlap(out, ws, a_words=a_words, b_words=b_words)
    pth = _PATH_ID[resolve_path(path)]
    cdef int nt = _threads(threads)
    if m == 0 or n == 0:
        return out
    cdef int64_t npanels = (n + BK_NC - 1) // BK_NC
    panels = ws.get("panels", npanels * kw * BK_NC, _U64)
    cdef bk_job job
    _job_defaults(&job, pth, m, n, 1, kw, k, _tailmask(k), panels, npanels)
    job.a = <const uint64_t *><size_t>_addr(a)
    job.lda = a.strides[0] // 8
    job.out_mode = BK_OUT_INT32
    job.out = <void *><size_t>_addr(out)
    job.rows_per_img, job.out_img, job.out_row, job.out_col = m, 0, n, 1
    cdef const uint64_t *bp = <const uint64_t *><size_t>_addr(b)
    cdef int64_t s_row = b.strides[0] // 8, c
    if nt > 1 and npanels >= nt and m <= 4 * n:
        # by columns: each thread packs and computes its own panels for every row (only A is shared)
        for c in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
            bk_gemm_columns(&job, bp, s_row, c * npanels // nt, (c + 1) * npanels // nt)
    else:   # tall A: pack every panel, then split the rows
        bk_pack_panels(bp, n, 1, kw, s_row, 0, job.tailmask, <uint64_t *><size_t>_addr(panels))
        _run(&job, nt)
    return out


def _workspace(workspace):
    if workspace is None:
        return default_workspace()
    if not isinstance(workspace, Workspace):
        raise TypeError(f"workspace: expected a refbnn Workspace or None, got {type(workspace).__name__}")
    return workspace


cdef void _job_defaults(bk_job *job, int path, int64_t m, int64_t n, int ntaps, int cw, int32_t kbits,
                        uint64_t tail, panels, int64_t npanels):
    job.path, job.m, job.n, job.ntaps, job.cw, job.kbits, job.tailmask = path, m, n, ntaps, cw, kbits, tail
    job.a, job.lda, job.conv, job.x = NULL, 0, 0, NULL
    job.padbuf, job.corr = NULL, NULL
    job.bpanels = <const uint64_t *><size_t>_addr(panels)
    job.npanels = npanels
    job.mul, job.bias, job.thr, job.flip = NULL, NULL, NULL, NULL
    job.lo, job.hi = _INT32_MIN, _INT32_MAX


cdef _run(bk_job *job, int threads):
    """Split the rows of a job into one contiguous range (of whole tiles) per thread; each thread
    computes every panel of its rows (as bit-packed output needs)."""
    cdef int64_t nblocks = (job.m + BK_MR - 1) // BK_MR
    cdef int64_t nchunks = min(threads, nblocks), c
    if nchunks <= 1:
        with nogil:
            bk_run(job, 0, job.m, 0, job.npanels)
        return
    for c in prange(nchunks, nogil=True, num_threads=nchunks, schedule="static", chunksize=1):
        bk_run(job, min(c * nblocks // nchunks * BK_MR, job.m), min((c + 1) * nblocks // nchunks * BK_MR, job.m),
               0, job.npanels)


# ---- convolution --------------------------------------------------------------------------------

def bconv2d(x_words, w_words, channels, stride=1, padding=0, dilation=1, groups=1, pad_value=0.0, *,
            output="int32", multiplier=None, bias=None, clamp=None, thresholds=None, flip=None, layout="nhwc",
            out=None, threads=None, path=None, workspace=None):
    """Binary convolution (cross-correlation) of packed activations with packed weights.

    ``x_words`` (N, H, W, groups * ceil(C/groups/64)) uint64: NHWC activations packed along the
    channels, each group's C/groups channels in its own words. ``w_words`` (O, kh, kw,
    ceil(C/groups/64)) uint64: OHWI weights packed the same way. ``channels`` = C (the bits per
    tap and group are C/groups). LCE polarity (bit 1 = -1).

    ``pad_value``: 0.0 true zero padding (exact: the taps outside the image are corrected for),
    +1.0 or -1.0 sign padding (free). The dot products are integers in [-K, K],
    K = kh * kw * C / groups, and ``output`` says what is written, per output channel o:

    - ``"int32"``: dot;
    - ``"float"``: float32(clip(dot, *clamp)) * multiplier[o] + bias[o] (each optional; two
      roundings, as NumPy's float32 arithmetic);
    - ``"bits"``: packed NHWC words (N, Ho, Wo, ceil(O/64)), bit o = (dot < thresholds[o]) XOR
      flip[o]; see :func:`refbnn.kernels.threshold_fold` for batch norm + sign.

    ``layout``: ``"nhwc"`` (N, Ho, Wo, O) or ``"nchw"`` (N, O, Ho, Wo) for int32/float output.

    ``channels``, ``stride``, ``padding``, ``dilation``, ``groups``: ints (bool and float refused)
    in [1 (0 for padding), 2**31 - 1]. ``multiplier``/``bias``: finite values exactly
    representable in float32. ``out``, ``threads``, word dtypes and byte orders: as :func:`bgemm`.
    """
    x = _words(x_words, "x_words", 4)
    w = np.ascontiguousarray(_words(w_words, "w_words", 4))    # small; taps at a fixed stride
    c = _int(channels, "channels", 1)
    g = _int(groups, "groups", 1)
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    dh, dw = _pair(dilation, "dilation", 1)
    pad_value = _pad_value(pad_value)
    nimg, h, wd, xw = x.shape
    o, kh, kw, cwg = w.shape
    cg, ho, wo = bconv2d_shapes(x.shape, w.shape, c, g, (sh, sw), (ph, pw), (dh, dw))
    output = _choice(output, "output", ("int32", "float", "bits"))
    layout = _choice(layout, "layout", ("nhwc", "nchw"))
    og = o // g
    if output != "float" and (multiplier is not None or bias is not None or clamp is not None):
        raise ValueError("multiplier, bias and clamp apply to output='float' only")
    if output != "bits" and (thresholds is not None or flip is not None):
        raise ValueError("thresholds and flip apply to output='bits' only")
    if output == "float":
        mul = None if multiplier is None else _per_channel(multiplier, "multiplier", o, np.float32)
        bia = None if bias is None else _per_channel(bias, "bias", o, np.float32)
        lo, hi = (_INT32_MIN, _INT32_MAX) if clamp is None else _clamp(clamp)
    if output == "bits":
        if layout != "nhwc":
            raise ValueError("output='bits' writes packed NHWC words; layout must be 'nhwc'")
        if thresholds is None:
            raise ValueError("output='bits' needs thresholds (one int per output channel)")
        thr = _per_channel(thresholds, "thresholds", o, np.int32)
        flp = np.zeros(o, bool) if flip is None else _per_channel(flip, "flip", o, np.bool_)
        if g > 1 and og % 64:
            raise ValueError(f"output='bits' with groups={g} needs a multiple of 64 output channels per group, "
                             f"got {og}")
    m = nimg * ho * wo
    ow_words = (o + 63) // 64
    if output == "bits":
        shape, dtype = (nimg, ho, wo, ow_words), np.uint64
    else:
        shape = (nimg, ho, wo, o) if layout == "nhwc" else (nimg, o, ho, wo)
        dtype = np.int32 if output == "int32" else np.float32
    ws = _workspace(workspace)
    if out is None:
        out = _allocate(shape, dtype, "bconv2d")
    else:
        out = _check_out(out, "out", shape, np.dtype(dtype))
        _check_no_overlap(out, ws, x_words=x_words, w_words=w_words, multiplier=multiplier, bias=bias,
                          thresholds=thresholds, flip=flip)
    pth = _PATH_ID[resolve_path(path)]
    nt = _threads(threads)
    if m == 0:
        return out

    # workspace: weight panels of every group, padding words, the zero-padding correction table,
    # the per-channel transform padded to whole panels
    ntaps = kh * kw
    npg = (og + BK_NC - 1) // BK_NC                      # panels per group
    pwords = npg * ntaps * cwg * BK_NC
    panels = ws.get("panels", g * pwords, np.uint64)
    tail = _tailmask(cg)
    for gi in range(g):
        wg = w[gi * og:(gi + 1) * og]
        bk_pack_panels(<const uint64_t *><size_t>_addr(wg), og, ntaps, cwg, ntaps * cwg, cwg,
                       tail, <uint64_t *><size_t>(_addr(panels) + gi * pwords * 8))
    padbuf = ws.get("padbuf", cwg, np.uint64)
    padbuf[:] = 0
    if pad_value == -1.0:
        padbuf[:] = 0xFFFFFFFFFFFFFFFF
        padbuf[cwg - 1] = tail
    corr = None
    if pad_value == 0.0 and (ph or pw):
        corr = ws.get("corr", g * npg * ntaps * BK_NC, np.int32)
        bk_tap_sums(<const uint64_t *><size_t>_addr(panels), g * npg, ntaps, cwg, cg, <int32_t *><size_t>_addr(corr))
    if output == "float":
        mulp = None if mul is None else _pad_panels(ws, "mul", mul, g, og, npg, np.float32, 1.0)
        biap = None if bia is None else _pad_panels(ws, "bias", bia, g, og, npg, np.float32, 0.0)
    if output == "bits":
        thrp = _pad_panels(ws, "thr", np.clip(thr, _INT32_MIN, _INT32_MAX).astype(np.int32), g, og, npg,
                           np.int32, _INT32_MIN)
        flpp = _pad_panels(ws, "flip", flp.astype(np.uint8), g, og, npg, np.uint8, 0)
        flipw = ws.get("flipw", g * npg, np.uint32)
        flipw[:] = (flpp[:g * npg * BK_NC].reshape(-1, BK_NC).astype(np.uint32) << np.arange(BK_NC, dtype=np.uint32)
                    ).sum(axis=1, dtype=np.uint32)

    cdef bk_job job
    cdef size_t item = np.dtype(dtype).itemsize
    for gi in range(g):
        _job_defaults(&job, pth, m, og, ntaps, cwg, ntaps * cg, tail, panels[gi * pwords:], npg)
        job.conv = 1
        job.x = <const uint64_t *><size_t>(_addr(x) + gi * cwg * 8)
        job.in_h, job.in_w, job.out_h, job.out_w = h, wd, ho, wo
        job.x_img, job.x_row, job.x_pix = x.strides[0] // 8, x.strides[1] // 8, x.strides[2] // 8
        job.kh, job.kw, job.sh, job.sw, job.ph, job.pw, job.dh, job.dw = kh, kw, sh, sw, ph, pw, dh, dw
        job.padbuf = <const uint64_t *><size_t>_addr(padbuf)
        if corr is not None:
            job.corr = <const int32_t *><size_t>(_addr(corr) + gi * npg * ntaps * BK_NC * 4)
        if output == "bits":
            job.out_mode = BK_OUT_BITS
            job.out = <void *><size_t>(_addr(out) + gi * (og // 64) * 8)
            job.rows_per_img, job.out_img, job.out_row, job.out_col = m, 0, ow_words, 1
            job.thr = <const int32_t *><size_t>(_addr(thrp) + gi * npg * BK_NC * 4)
            job.flip = <const uint32_t *><size_t>(_addr(flipw) + gi * npg * 4)
        else:
            job.out_mode = BK_OUT_INT32 if output == "int32" else BK_OUT_FLOAT
            if layout == "nhwc":
                job.out = <void *><size_t>(_addr(out) + gi * og * item)
                job.rows_per_img, job.out_img, job.out_row, job.out_col = m, 0, o, 1
            else:
                job.out = <void *><size_t>(_addr(out) + gi * og * ho * wo * item)
                job.rows_per_img, job.out_img, job.out_row, job.out_col = ho * wo, o * ho * wo, 1, ho * wo
            if output == "float":
                job.lo, job.hi = lo, hi
                if mulp is not None:
                    job.mul = <const float *><size_t>(_addr(mulp) + gi * npg * BK_NC * 4)
                if biap is not None:
                    job.bias = <const float *><size_t>(_addr(biap) + gi * npg * BK_NC * 4)
        _run(&job, nt)
    return out


def _allocate(shape, dtype, what):
    """np.empty, with an error naming the geometry when the output cannot exist."""
    try:
        return np.empty(shape, dtype)
    except ValueError as exc:          # more elements than an array may hold
        raise ValueError(f"{what}: the output {shape} is too large ({exc}); check stride, padding and "
                         f"dilation") from None
    except MemoryError:
        raise MemoryError(f"{what}: cannot allocate the output {shape} of {np.dtype(dtype)}; check stride, "
                          f"padding and dilation") from None


def _pad_panels(ws, name, v, g, og, npg, dtype, fill):
    """(O,) per-channel values -> (g, npg * BK_NC) in the workspace, padded with ``fill``."""
    buf = ws.get(name, g * npg * BK_NC, dtype)
    grid = buf[:g * npg * BK_NC].reshape(g, npg * BK_NC)
    grid[:] = fill
    grid[:, :og] = v.reshape(g, og)
    return buf


# ---- max pool -----------------------------------------------------------------------------------

def bmaxpool2d(x_words, kernel_size, stride=None, padding=0, threads=None, out=None):
    """Binary max pool of packed NHWC activations (LCE polarity): the AND of each window's words.

    Equals the float max pool of the unpacked +-1 values; taps outside the image are skipped
    (padding at most half the kernel, as PyTorch). Returns (N, Ho, Wo, words) uint64.
    ``kernel_size``, ``stride``: ints in [1, 2**31 - 1], ``padding`` in [0, kernel // 2]; the
    image needs H, W >= 1 (a window of padding only has no maximum). ``out``, ``threads``, word
    dtypes and byte orders: as :func:`bgemm`.
    """
    x = _words(x_words, "x_words", 4)
    kh, kw = _pair(kernel_size, "kernel_size", 1)
    sh, sw = (kh, kw) if stride is None else _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"bmaxpool2d: padding {(ph, pw)} must be at most half the kernel size {(kh, kw)}")
    nimg, h, wd, cw = x.shape
    if h < 1 or wd < 1:
        raise ValueError(f"x_words: expected an image of at least 1x1 pixels, got shape {x.shape}")
    ho, wo = conv_output_size(h, kh, sh, ph, 1), conv_output_size(wd, kw, sw, pw, 1)
    if ho < 1 or wo < 1:
        raise ValueError(f"bmaxpool2d: input {h}x{wd} is smaller than the window {(kh, kw)}")
    shape = (nimg, ho, wo, cw)
    if out is None:
        out = np.empty(shape, np.uint64)
    else:
        out = _check_out(out, "out", shape, _U64)
        _check_no_overlap(out, None, x_words=x_words)
    requested_path()             # one portable loop, but a bad $REFBNN_KERNEL_PATH is reported by every kernel
    cdef int nt = _threads(threads)
    cdef int64_t rows = nimg * ho
    if out.size == 0:
        return out
    cdef size_t px = _addr(x), po = _addr(out)
    cdef int64_t si = x.strides[0] // 8, sr = x.strides[1] // 8, sp = x.strides[2] // 8
    cdef int64_t nchunks = max(1, min(nt, rows)), c
    cdef int64_t H = h, W = wd, CW = cw, HO = ho, WO = wo
    cdef int KH = kh, KW = kw, SH = sh, SW = sw, PH = ph, PW = pw
    for c in prange(nchunks, nogil=True, num_threads=nchunks, schedule="static", chunksize=1):
        bk_maxpool(<const uint64_t *>px, H, W, CW, si, sr, sp, KH, KW, SH, SW, PH, PW, HO, WO,
                   <uint64_t *>po, c * rows // nchunks, (c + 1) * rows // nchunks)
    return out


# ---- the peak the benchmarks compare with --------------------------------------------------------

def _seconds(seconds):
    if isinstance(seconds, (bool, np.bool_)) or not isinstance(seconds, (int, float, np.integer, np.floating)) \
            or not 0 < seconds <= 3600:
        raise ValueError(f"seconds: expected a number in (0, 3600], got {seconds!r}")
    return float(seconds)


cdef double _time_peak(int pth, int nv, int ns, int nt, double seconds):
    """ops/s of bk_peak (nv < 0) or bk_peak_mix on ``nt`` threads, a run of at least ``seconds``."""
    cdef int64_t iters = 1 << 14, c
    cdef double ops
    while True:
        ops = 0
        t0 = time.perf_counter()
        if nv < 0:
            for c in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
                ops += bk_peak(pth, iters)
        else:
            for c in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
                ops += bk_peak_mix(pth, nv, ns, iters)
        t = time.perf_counter() - t0
        if t >= seconds:
            return ops / t
        iters = int(iters * min(8.0, max(1.5, 1.1 * seconds / max(t, 1e-6))))


def measure_peak(path=None, threads=1, seconds=0.2):
    """Binary ops/s (2 per bit) of independent xor + popcount + add on the path's widest registers,
    ``threads`` threads each running the loop: the peak of the path's own instructions. (The
    machine's peak, over instruction mixes that also combine paths, is :func:`measure_machine_peak`.)"""
    seconds = _seconds(seconds)
    return _time_peak(_PATH_ID[resolve_path(path)], -1, 0, _threads(threads), seconds)


def peak_mixes():
    """The instruction mixes of the machine-peak microbenchmark this CPU runs, name -> (path,
    vectors, scalars): each supported path's own loop (``"avx512"``, ``"avx2"``, ``"scalar"``: 12
    accumulators of its widest registers, as :func:`measure_peak`), and, where the CPU has the
    popcnt instruction, vector and scalar accumulators in one loop, e.g. ``"avx2 x4 + popcnt x8"``:
    4 AVX2 nibble-lookup popcounts (vector ports) and 8 scalar popcnts (integer ports) per round."""
    cdef int nv[64]
    cdef int ns[64]
    cdef int i, n = bk_peak_mix_list(nv, ns, 64)
    mixes = {p: (p, 12 if p != "scalar" else 0, 12 if p == "scalar" else 0) for p in supported_paths()}
    if bk_scalar_hw_popcount():
        for p in supported_paths():
            if p != "scalar":
                for i in range(n):
                    mixes[f"{p} x{nv[i]} + popcnt x{ns[i]}"] = (p, nv[i], ns[i])
    return mixes


def measure_peak_mix(mix, threads=1, seconds=0.2):
    """Binary ops/s (2 per bit) of one mix of :func:`peak_mixes` on ``threads`` threads."""
    mixes = peak_mixes()
    if not isinstance(mix, str) or mix not in mixes:
        raise ValueError(f"mix: expected one of {list(mixes)} (the mixes this CPU runs), got {mix!r}")
    seconds = _seconds(seconds)
    p, nv, ns = mixes[mix]
    if p == "scalar" or ns == 0:
        return _time_peak(_PATH_ID[p], -1, 0, _threads(threads), seconds)
    return _time_peak(_PATH_ID[p], nv, ns, _threads(threads), seconds)


def measure_machine_peak(threads=1, seconds=0.003, rounds=5):
    """The machine's peak: every mix of :func:`peak_mixes` in ``rounds`` interleaved rounds of
    ``seconds`` each, the best of each mix (a shared machine's clock and load drift). Returns
    {"peak": best ops/s, "mix": its name, "mixes": {name: ops/s}}."""
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"rounds: expected a positive int, got {rounds!r}")
    mixes = list(peak_mixes())
    best = dict.fromkeys(mixes, 0.0)
    for _ in range(int(rounds)):
        for m in mixes:
            best[m] = max(best[m], measure_peak_mix(m, threads, seconds))
    top = max(best, key=best.get)
    return {"peak": best[top], "mix": top, "mixes": best}
