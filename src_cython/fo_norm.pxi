# fo_norm: included by _floatops.pyx (which defines _f32 and imports _threads, np, cnp, int64_t).
# Batch norm in training mode and the element-wise ops of the training step; the C code is
# src_cython/fo_norm.c. Every argument is checked here, before any C code runs.

import math as _math
import numbers as _numbers

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from refbnn.checks import check_real as _check_real

cdef extern from "fo_norm.h" nogil:
    int fon_bn_train_forward(const float *x, int64_t n, int64_t c, int64_t hw, const float *gamma,
                              const float *beta, double eps, float *y, float *xhat, float *mean, float *var,
                              float *inv_std, int threads)
    int fon_bn_train_backward(const float *dout, const float *xhat, int64_t n, int64_t c, int64_t hw,
                               const float *gamma, const float *inv_std, float *dx, float *dgamma, float *dbeta,
                               int threads)
    void fon_hardtanh_forward(const float *x, int64_t size, float lo, float hi, float *y, uint8_t *mask,
                              int threads)
    void fon_mask_multiply(const float *d, const uint8_t *mask, int64_t size, float *out, int threads)
    void fon_ste_clip_backward(const float *d, const float *x, int64_t size, float clip, int inclusive,
                               float *out, int threads)
    void fon_clip_mask(const float *x, int64_t size, float clip, int inclusive, float *out, int threads)
    int64_t fon_first_nonfinite_f32(const uint32_t *x, int64_t size, int threads)
    int64_t fon_first_nonfinite_f64(const uint64_t *x, int64_t size, int threads)

_F64 = np.dtype(np.float64)
_BOOL = np.dtype(np.bool_)


cdef inline float *_fp(a):
    return <float *>cnp.PyArray_DATA(<cnp.ndarray>a)


def _bn_geometry(x, name):
    """(n, c, hw) of a (N, C) or (N, C, H, W) float32 array; refused with < 1 channel."""
    _f32(x, name, (2, 4))
    n, c = x.shape[0], x.shape[1]
    hw = 1 if x.ndim == 2 else x.shape[2] * x.shape[3]
    if c < 1:
        raise ValueError(f"{name}: expected at least one channel (axis 1), got shape {x.shape}")
    if n * hw < 2:
        raise ValueError(f"batchnorm in training mode needs more than 1 value per channel, got {name} shape "
                         f"{x.shape}")
    return n, c, hw


def _per_channel(a, name, c):
    _f32(a, name, 1)
    if a.shape != (c,):
        raise ValueError(f"{name}: expected shape ({c},) (one value per channel), got {a.shape}")
    return a


def batchnorm_train_forward(x, gamma, beta, eps, threads=None):
    """Batch norm in training mode: refbnn.ops.batchnorm_forward(training=True) without the running
    statistics (the caller updates them from ``mean`` and ``var``).

    Per channel c, over the m = N H W values of axis 1's slice:
        mean = sum(x) / m,   var = sum((x - mean)^2) / m   (biased),   inv_std = 1 / sqrt(var + eps)
        xhat = (x - mean) inv_std,   y = gamma xhat + beta
    Returns (y, xhat, mean, var, inv_std), float32; y and xhat have x's shape, the others (C,).

    The statistics are computed in double and rounded to float32 once. For (N, C, H, W) input,
    per H*W strip k of a channel (one sample): its sum S_k, mean m_k = S_k / HW and squared
    deviations Q_k = sum (x - m_k)^2 (the strip still in L1), then
        mean = (sum_k S_k) / m,   var = (sum_k [Q_k + HW (m_k - mean)^2]) / m
    (the within- plus between-strip decomposition of Chan, Golub and LeVeque 1979, "Updating
    formulae and a pairwise algorithm for computing sample variances": every term >= 0, so no
    cancellation, and a constant channel gets var = 0 exactly); for (N, C) input, two passes
    (the mean, then the squared deviations from it). Sums run in 32 or 16 double lanes in a fixed order
    (fo_norm.c). Against the exact float64 statistics of the same float32 input (m <= 2^24,
    e = m 2^-51 mean|x|):
        |mean - mean64| <= 2^-24 |mean64| + m 2^-52 mean|x|
        |var - var64|   <= 2^-24 var64 + dvar,  dvar = (m + 3) 2^-52 var64 + 2 e sqrt(var64) + 3 e^2
        |inv_std - inv_std64| <= inv_std64 (2^-23 + dvar / (var64 + eps))
    (inv_std = 1 / sqrt(var + eps) from the double var, rounded once). NumPy's float32 pairwise
    sums in the reference err by up to about 2^-24 per level of its summation tree. xhat and y
    are then the reference's float32 operations, in its order, on these mean and inv_std:
    bit-identical to (x - mean) * inv_std and xhat * gamma + beta in NumPy. Two passes over x,
    each in memory order (the statistics, then xhat and y).

    x: (N, C) or (N, C, H, W); gamma, beta: (C,); all float32, C-contiguous. eps: a finite
    number > 0. Needs m >= 2. Values are not checked for NaN/Inf (the reference refuses them:
    check x with first_nonfinite_index first); they give NaN/Inf results, never a crash. The
    result does not depend on ``threads``.
    """
    n, c, hw = _bn_geometry(x, "x")
    _per_channel(gamma, "gamma", c)
    _per_channel(beta, "beta", c)
    cdef double e = _check_real("eps", eps, 0.0, open_min=True)
    cdef int nt = _work_threads(threads, x.size)
    y = np.empty_like(x)
    xhat = np.empty_like(x)
    mean = np.empty(c, np.float32)
    var = np.empty(c, np.float32)
    inv_std = np.empty(c, np.float32)
    cdef const float *px = _fp(x)
    cdef const float *pg = _fp(gamma)
    cdef const float *pb = _fp(beta)
    cdef float *py = _fp(y)
    cdef float *pxh = _fp(xhat)
    cdef float *pm = _fp(mean)
    cdef float *pv = _fp(var)
    cdef float *pi = _fp(inv_std)
    cdef int64_t cn = n, cc = c, chw = hw
    cdef int rc
    with nogil:
        rc = fon_bn_train_forward(px, cn, cc, chw, pg, pb, e, py, pxh, pm, pv, pi, nt)
    if rc:
        raise MemoryError("batchnorm_train_forward: could not allocate its scratch memory")
    return y, xhat, mean, var, inv_std


def batchnorm_train_backward(dout, xhat, gamma, inv_std, threads=None):
    """The backward pass of :func:`batchnorm_train_forward`: refbnn.ops.batchnorm_backward for a
    training-mode cache. With m values per channel and dxhat = dout gamma:
        dbeta = sum(dout),   dgamma = sum(dout xhat),
        dx = (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) inv_std
    computed as dx = (((dout gamma) - a) - xhat b) inv_std in float32 (the reference's operations
    and order), with a = gamma sum(dout) / m and b = gamma sum(dout xhat) / m from double sums
    (16 lanes per channel, a fixed order; products of two float32 values are exact in double),
    rounded to float32 once. Returns (dx, dgamma, dbeta). Against the exact float64 formula on the
    same float32 inputs (u = 2^-24, m <= 2^24):
        |dbeta - dbeta64| <= u |dbeta64| + m 2^-53 sum|dout|   (dgamma likewise with dout xhat)
        |dx - dx64| <= inv_std (5 u (|dout gamma| + |a64| + |xhat b64|)
                                + |gamma| m 2^-53 (mean|dout| + |xhat| mean|dout xhat|))
    (a64, b64: a and b in exact arithmetic). Two passes over dout and xhat, each in memory order
    (the sums, then dx).

    dout, xhat: the same (N, C) or (N, C, H, W) shape; gamma, inv_std: (C,); all float32,
    C-contiguous. Needs m >= 2. Values are not checked for NaN/Inf. The result does not depend
    on ``threads``.
    """
    n, c, hw = _bn_geometry(xhat, "xhat")
    _f32(dout, "dout")
    if dout.shape != xhat.shape:
        raise ValueError(f"dout: expected xhat's shape {xhat.shape}, got {dout.shape}")
    _per_channel(gamma, "gamma", c)
    _per_channel(inv_std, "inv_std", c)
    cdef int nt = _work_threads(threads, dout.size)
    dx = np.empty_like(dout)
    dgamma = np.empty(c, np.float32)
    dbeta = np.empty(c, np.float32)
    cdef const float *pd = _fp(dout)
    cdef const float *pxh = _fp(xhat)
    cdef const float *pg = _fp(gamma)
    cdef const float *pi = _fp(inv_std)
    cdef float *pdx = _fp(dx)
    cdef float *pdg = _fp(dgamma)
    cdef float *pdb = _fp(dbeta)
    cdef int64_t cn = n, cc = c, chw = hw
    cdef int rc
    with nogil:
        rc = fon_bn_train_backward(pd, pxh, cn, cc, chw, pg, pi, pdx, pdg, pdb, nt)
    if rc:
        raise MemoryError("batchnorm_train_backward: could not allocate its scratch memory")
    return dx, dgamma, dbeta


def _bound32(name, v):
    """A finite real number as NumPy compares it with float32 values when it is a Python
    int/float (NEP 50: a "weak" scalar, cast to float32, round to nearest; beyond the float32
    range that cast gives +-Inf with NumPy's overflow warning, as the reference's does)."""
    v = _check_real(name, v)
    return np.float32(v)


def _threshold32(name, v, inclusive):
    """``clip`` as a float32 t with |x| <= t (inclusive) / |x| < t iff NumPy's abs(x) <= v / < v.
    Python numbers and NumPy float32 are compared in float32 (NumPy 2's promotion); a NumPy
    float64 (or longer) scalar makes NumPy compare in float64, which for float32 |x| equals the
    float32 comparison with v rounded down (<=) or up (<) to a float32."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, _numbers.Real) or not _math.isfinite(float(v)):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    if np.result_type(_F32, v) == _F32:
        return np.float32(v)
    d = float(v)
    with np.errstate(over="ignore"):
        t = np.float32(d)
    if inclusive and float(t) > d:
        t = np.nextafter(t, np.float32(-np.inf))
    elif not inclusive and float(t) < d:
        t = np.nextafter(t, np.float32(np.inf))
    return t


def hardtanh_forward(x, lo=-1.0, hi=1.0, threads=None):
    """refbnn.ops.hardtanh_forward: y = clip(x, lo, hi) and mask = (lo < x) & (x < hi) (bool),
    bit-identical to NumPy's x.clip(lo, hi) and comparisons (lo, hi: Python numbers, cast to
    float32 as NumPy does; NaN stays NaN with mask False; x equal to a bound is kept as it is,
    so clip(-0.0, 0.0, 1.0) = -0.0). Returns (y, mask). x: float32, C-contiguous, any shape;
    lo < hi finite. One pass, element-wise."""
    _f32(x, "x")
    lo = _check_real("min_val", lo)
    hi = _check_real("max_val", hi)
    if not lo < hi:
        raise ValueError(f"hardtanh: expected min_val < max_val, got {lo}, {hi}")
    cdef float l32 = _bound32("min_val", lo), h32 = _bound32("max_val", hi)
    cdef int nt = _work_threads(threads, x.size)
    y = np.empty_like(x)
    mask = np.empty(x.shape, np.bool_)
    cdef const float *px = _fp(x)
    cdef float *py = _fp(y)
    cdef uint8_t *pm = <uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>mask)
    cdef int64_t size = x.size
    with nogil:
        fon_hardtanh_forward(px, size, l32, h32, py, pm, nt)
    return y, mask


def mask_multiply(dout, mask, threads=None):
    """dout * mask with a bool mask (refbnn.ops.hardtanh_backward / relu_backward), bit-identical
    to NumPy's product (the mask promoted to float32 0/1: a masked element is dout * 0, so -0.0
    for negative dout and NaN for non-finite dout). dout: float32, mask: bool, the same shape,
    both C-contiguous. One pass, element-wise."""
    _f32(dout, "dout")
    if type(mask) is not np.ndarray:
        raise TypeError(f"mask: expected a numpy.ndarray of bool, got {type(mask).__name__}")
    if mask.dtype != _BOOL:
        raise TypeError(f"mask: expected dtype bool, got {mask.dtype}")
    if mask.shape != dout.shape:
        raise ValueError(f"mask: expected dout's shape {dout.shape}, got {mask.shape}")
    if not mask.flags.c_contiguous:
        raise ValueError("mask: expected a C-contiguous array")
    cdef int nt = _work_threads(threads, dout.size)
    out = np.empty_like(dout)
    cdef const float *pd = _fp(dout)
    cdef const uint8_t *pm = <const uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>mask)
    cdef float *po = _fp(out)
    cdef int64_t size = dout.size
    with nogil:
        fon_mask_multiply(pd, pm, size, po, nt)
    return out


def _check_inclusive(inclusive):
    if not isinstance(inclusive, (bool, np.bool_)):
        raise ValueError(f"inclusive: expected True or False, got {inclusive!r}")
    return bool(inclusive)


def ste_clip_backward(dout, x, clip=1.0, inclusive=True, threads=None):
    """The clipped straight-through estimator's backward pass (refbnn.quantizers.SteSign, the
    BNN paper's g_r = g_q 1[|r| <= 1], Hubara et al. 2016 Eq. 4): dx = dout * clip_mask(x, clip,
    inclusive), i.e. dout * float32(|x| <= clip) (inclusive, Larq's less_equal) or
    dout * float32(|x| < clip), bit-identical to the reference's product (NaN x: mask 0).
    ``clip=None`` is the identity estimator: dout itself is returned (as SteSign.backward does,
    not a copy). dout, x: float32, the same shape, C-contiguous; clip: a positive finite number
    or None. One pass, element-wise."""
    _f32(dout, "dout")
    _f32(x, "x")
    if x.shape != dout.shape:
        raise ValueError(f"x: expected dout's shape {dout.shape}, got {x.shape}")
    cdef int inc = _check_inclusive(inclusive)
    if clip is None:
        _threads(threads)
        return dout
    if isinstance(clip, (bool, np.bool_)) or not isinstance(clip, _numbers.Real) or not _math.isfinite(float(clip)) \
            or not clip > 0:
        raise ValueError(f"clip: expected a positive finite number or None, got {clip!r}")
    cdef float t = _threshold32("clip", clip, inc)
    cdef int nt = _work_threads(threads, dout.size)
    out = np.empty_like(dout)
    cdef const float *pd = _fp(dout)
    cdef const float *px = _fp(x)
    cdef float *po = _fp(out)
    cdef int64_t size = dout.size
    with nogil:
        fon_ste_clip_backward(pd, px, size, t, inc, po, nt)
    return out


def clip_mask(x, clip, inclusive=True, threads=None):
    """refbnn.conventions.clip_mask: float32(|x| <= clip) (inclusive) or float32(|x| < clip),
    bit-identical (NaN: 0). x: float32, C-contiguous; clip: a finite number (a Python number is
    cast to float32 as NumPy does; a NumPy float64 scalar is compared as NumPy would, in float64).
    One pass, element-wise."""
    _f32(x, "x")
    cdef int inc = _check_inclusive(inclusive)
    cdef float t = _threshold32("clip", clip, inc)
    cdef int nt = _work_threads(threads, x.size)
    out = np.empty_like(x)
    cdef const float *px = _fp(x)
    cdef float *po = _fp(out)
    cdef int64_t size = x.size
    with nogil:
        fon_clip_mask(px, size, t, inc, po, nt)
    return out


def first_nonfinite_index(x, threads=None):
    """The flat C-order index of the first NaN, +Inf or -Inf in ``x``, or -1 when every element
    is finite (refbnn.checks.first_nonfinite gives the same element as an index tuple). One pass
    over the bits (a float is non-finite iff its exponent bits are all ones), no allocation; with
    several threads, chunks past an index already found are skipped. x: a float32 or float64
    C-contiguous ndarray of any shape (size 0: -1). The result does not depend on ``threads``."""
    if type(x) is not np.ndarray:
        raise TypeError(f"x: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in (_F32, _F64) or not x.dtype.isnative:
        raise TypeError(f"x: expected float32 or float64 (native byte order), got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError("x: expected a C-contiguous array")
    cdef int nt = _threads(threads)
    cdef int64_t size = x.size
    cdef int64_t r
    cdef const void *p = cnp.PyArray_DATA(<cnp.ndarray>x)
    if x.dtype == _F32:
        with nogil:
            r = fon_first_nonfinite_f32(<const uint32_t *>p, size, nt)
    else:
        with nogil:
            r = fon_first_nonfinite_f64(<const uint64_t *>p, size, nt)
    return int(r)
