# fo_conv: included by _floatops.pyx (which defines _f32, imports _threads, np and cnp).
#
# The float convolution of the training step, compiled (src_cython/fo_conv.c): implementations of
# refbnn.ops.im2col.im2col / col2im (bit-identical) and of refbnn.ops.conv2d_forward /
# conv2d_backward (float sums in another order, within the bound stated in each docstring).

from refbnn.checks import MAX_INT as _MAX_INT
from refbnn.checks import check_int as _check_int
from refbnn.checks import check_real as _check_real
from refbnn.checks import padding4 as _padding4
from refbnn.checks import pair as _pair
from refbnn.kernels.geometry import conv_output_size as _conv_output_size

cdef extern from "fo_conv.h" nogil:
    enum:
        FO_PATH_AUTO
        FO_PATH_SCALAR
        FO_PATH_AVX2
        FO_PATH_AVX512
        FO_OK
        FO_ENOMEM
        FO_DW_PARTS

    ctypedef struct fo_geom:
        int64_t n, c, h, w
        int64_t o, kh, kw
        int64_t ho, wo
        int64_t sh, sw
        int64_t pt, pb, pl, pr
        int64_t dh, dw
        int64_t groups
        float pad_value

    int fo_conv_path_supported(int path)
    int fo_conv_set_path(int path)
    int fo_conv_path()
    int fo_im2col(const fo_geom *g, const float *x, float *cols, int threads)
    int fo_col2im(const fo_geom *g, const float *cols, float *x, int threads)
    int fo_conv_forward(const fo_geom *g, const float *x, const float *w, float *y, int threads)
    int fo_conv_backward(const fo_geom *g, const float *dout, const float *x, const float *w, float *dx, float *dw,
                         int threads)

_CONV_PATHS = {"scalar": FO_PATH_SCALAR, "avx2": FO_PATH_AVX2, "avx512": FO_PATH_AVX512}
_CONV_PATH_NAMES = {v: k for k, v in _CONV_PATHS.items()}

# The dW sum is split into at most this many fixed parts of consecutive samples (N // 4 of them, at
# least 2 from N = 2 on): a function of N only, never of the thread count.
CONV_DW_PARTS = FO_DW_PARTS


def conv_paths():
    """The SIMD paths of the conv kernels this CPU runs, best last (``"scalar"`` always)."""
    return tuple(name for name, p in _CONV_PATHS.items() if fo_conv_path_supported(p))


def conv_path():
    """The path the conv kernels use now (the best supported one unless :func:`_conv_force_path`)."""
    return _CONV_PATH_NAMES[fo_conv_path()]


def _conv_force_path(name):
    """Force the conv kernels' SIMD path (``None``: the best supported); returns the previous forced
    name or None. For tests: the paths sum in other orders (FMA or not), each is bit-identical for
    any thread count."""
    if name is None:
        old = fo_conv_set_path(FO_PATH_AUTO)
    else:
        if name not in _CONV_PATHS:
            raise ValueError(f"path: expected one of {tuple(_CONV_PATHS)} or None, got {name!r}")
        if not fo_conv_path_supported(_CONV_PATHS[name]):
            raise ValueError(f"path: this CPU does not support {name!r} (supported: {conv_paths()})")
        old = fo_conv_set_path(_CONV_PATHS[name])
    return None if old == FO_PATH_AUTO else _CONV_PATH_NAMES[old]


cdef int _fill_geom(fo_geom *g, x_shape, kh, kw, stride, padding, dilation, groups, pad_value, o) except -1:
    """Check the geometry (as refbnn.kernels.geometry.conv2d_geometry) and fill ``g``."""
    kh = _check_int("kh", kh, 1)
    kw = _check_int("kw", kw, 1)
    sh, sw = _pair(stride, "stride", 1)
    top, bottom, left, right = _padding4(padding)
    dh, dw = _pair(dilation, "dilation", 1)
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise TypeError(f"groups: expected a positive int, got {type(groups).__name__} {groups!r}")
    groups = int(groups)
    pad_value = _check_real("pad_value", pad_value)
    n, c, h, w = x_shape
    if c % groups:
        raise ValueError(f"conv2d: input has {c} channels, not divisible by groups={groups}")
    if o % groups:
        raise ValueError(f"conv2d: {o} output channels are not divisible by groups={groups}")
    ho = _conv_output_size(h, kh, sh, (top, bottom), dh)
    wo = _conv_output_size(w, kw, sw, (left, right), dw)
    if ho < 1 or wo < 1:
        raise ValueError(f"conv2d: input {h}x{w} is smaller than the (dilated) kernel {kh}x{kw} with padding "
                         f"{(top, bottom, left, right)}; expected an output of at least 1x1")
    if max(h + top + bottom, w + left + right, (c // groups) * kh * kw, ho * wo) > _MAX_INT:
        raise ValueError(f"conv2d: sizes above {_MAX_INT} are not supported (input {h}x{w}, padding "
                         f"{(top, bottom, left, right)}, kernel {kh}x{kw})")
    # every scratch buffer of the kernels (columns, shifted copies, partial sums) holds fewer elements
    # than this bound, so no size computed in C (int64) can overflow
    scratch = (c + o + 16) * kh * kw * (2 * (h + top + bottom) * (w + left + right) + 2 * ho * wo + 64)
    if scratch > 2 ** 40:
        raise ValueError(f"conv2d: the per-thread scratch for input {h}x{w} with {c} channels, {o} outputs, kernel "
                         f"{kh}x{kw} and padding {(top, bottom, left, right)} would exceed 2**40 floats")
    g.n, g.c, g.h, g.w = n, c, h, w
    g.o, g.kh, g.kw = o, kh, kw
    g.ho, g.wo = ho, wo
    g.sh, g.sw = sh, sw
    g.pt, g.pb, g.pl, g.pr = top, bottom, left, right
    g.dh, g.dw = dh, dw
    g.groups = groups
    g.pad_value = <float>pad_value
    return 0


cdef inline float *_fptr(cnp.ndarray a):
    """The data pointer of a float32 C-contiguous array (checked by _f32 or allocated here); the
    kernels only read through it for inputs."""
    return <float *>cnp.PyArray_DATA(a)


cdef _raise_status(int status, what):
    if status == FO_ENOMEM:
        raise MemoryError(f"{what}: could not allocate the per-thread scratch buffers")
    if status != FO_OK:
        raise RuntimeError(f"{what}: unexpected status {status}")


def _weight_geom(x, w, stride, padding, dilation, groups, pad_value):
    _f32(x, "x", 4)
    _f32(w, "weight", 4)
    o, cg, kh, kw = w.shape
    if o < 1 or cg < 1:
        raise ValueError(f"weight: expected a non-empty shape (O, C/groups, kh, kw), got {w.shape}")
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise TypeError(f"groups: expected a positive int, got {type(groups).__name__} {groups!r}")
    if x.shape[1] != cg * groups:
        raise ValueError(f"conv2d: input has {x.shape[1]} channels, weight {w.shape} with groups={groups} "
                         f"expects {cg * groups}")
    return kh, kw, o


def im2col(x, kh, kw, stride, padding, dilation, pad_value=0.0, threads=None):
    """x (N, C, H, W) -> cols (N, C, kh, kw, Ho, Wo): bit-identical to
    :func:`refbnn.ops.im2col.im2col` (a copy; border taps are ``pad_value``).

    cols[n, c, i, j, p, q] = xpad[n, c, p sh + i dh, q sw + j dw]. ``stride``/``dilation``: pairs
    (or ints), ``padding``: an int, (ph, pw) or (top, bottom, left, right). float32 C-contiguous x.
    """
    cdef fo_geom g
    _f32(x, "x", 4)
    _fill_geom(&g, x.shape, kh, kw, stride, padding, dilation, 1, pad_value, 1)
    cdef int nt = _threads(threads)
    out = np.empty((g.n, g.c, g.kh, g.kw, g.ho, g.wo), dtype=np.float32)
    cdef const float *xp = _fptr(x)
    cdef float *op = _fptr(out)
    cdef int status = FO_OK
    if out.size:
        with nogil:
            status = fo_im2col(&g, xp, op, nt)
    _raise_status(status, "im2col")
    return out


def col2im(cols, x_shape, stride, padding, dilation, threads=None):
    """Adjoint of :func:`im2col`: cols (N, C, kh, kw, Ho, Wo) -> (N, C, H, W), the taps of each pixel
    added in the order (i, j) to zero (padding taps dropped): bit-identical to
    :func:`refbnn.ops.im2col.col2im` (returned C-contiguous)."""
    cdef fo_geom g
    _f32(cols, "cols", 6)
    try:
        x_shape = tuple(int(_check_int("x_shape", s)) for s in x_shape)
    except TypeError:
        raise TypeError(f"x_shape: expected 4 ints (N, C, H, W), got {x_shape!r}") from None
    if len(x_shape) != 4:
        raise ValueError(f"x_shape: expected 4 ints (N, C, H, W), got {x_shape!r}")
    n, c, kh, kw, ho, wo = cols.shape
    _fill_geom(&g, x_shape, kh, kw, stride, padding, dilation, 1, 0.0, 1)
    if (g.n, g.c, g.kh, g.kw, g.ho, g.wo) != cols.shape:
        raise ValueError(f"cols: expected shape {(g.n, g.c, g.kh, g.kw, g.ho, g.wo)} for x_shape {x_shape} and this "
                         f"geometry, got {cols.shape}")
    cdef int nt = _threads(threads)
    out = np.empty(x_shape, dtype=np.float32)
    cdef const float *cp = _fptr(cols)
    cdef float *op = _fptr(out)
    cdef int status = FO_OK
    if out.size:
        with nogil:
            status = fo_col2im(&g, cp, op, nt)
    _raise_status(status, "col2im")
    return out


def conv2d_forward(x, w, stride, padding, dilation, groups, pad_value=0.0, threads=None):
    """The float convolution of :func:`refbnn.ops.conv2d_forward` without bias: y (N, O, Ho, Wo),

        y[n, o, p, q] = sum_{c, i, j} W[o, c, i, j] xpad[n, g(o) C/g + c, p sh + i dh, q sw + j dw]

    (``xpad``: x padded with ``pad_value``). Per sample, in per-thread buffers: for strides 1 with
    Wo == W ("same" convolutions) the kernel reads the columns as windows of shifted, bordered
    copies of x[n] (no im2col), otherwise from im2col columns; a register-tiled FMA kernel
    (src_cython/fo_conv.c, AVX-512, AVX2 or plain C by the CPU).
    Tolerance: each output is a float32 sum of Kg = C/g kh kw products in another order than
    NumPy's, |y - exact| <= Kg eps32 sum |W x| (eps32 = 2**-23: the bound gamma_Kg <= Kg eps32 of an
    inner product, Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.1); tested
    in tests/test_floatops_conv.py. Bit-identical for any ``threads``.
    """
    cdef fo_geom g
    kh, kw, o = _weight_geom(x, w, stride, padding, dilation, groups, pad_value)
    _fill_geom(&g, x.shape, kh, kw, stride, padding, dilation, groups, pad_value, o)
    cdef int nt = _threads(threads)
    y = np.empty((g.n, g.o, g.ho, g.wo), dtype=np.float32)
    if g.n == 0:
        return y
    cdef const float *xp = _fptr(x)
    cdef const float *wp = _fptr(w)
    cdef float *yp = _fptr(y)
    cdef int status
    with nogil:
        status = fo_conv_forward(&g, xp, wp, yp, nt)
    _raise_status(status, "conv2d_forward")
    return y


def conv2d_backward(dout, x, w, stride, padding, dilation, groups, pad_value=0.0, need_dx=True, threads=None):
    """The gradients of :func:`refbnn.ops.conv2d_backward` for y = conv(x, w) (x: the layer's
    input as the forward saw it, w: its weight): returns (dx or None, dW),

        dW[o, c, i, j] = sum_{n, p, q} dout[n, o, p, q] xpad[n, g(o) C/g + c, p sh + i dh, q sw + j dw]
        dx = col2im(dcols),  dcols[n, (c, i, j), (p, q)] = sum_{o in group} W[o, c, i, j] dout[n, o, p, q]

    (padding taps dropped). ``need_dx=False`` skips dx (a convolution of the data). Per sample, in
    per-thread buffers: dW^T += cols dout^T with a register-tiled FMA kernel (src_cython/fo_conv.c),
    the columns read as windows of shifted copies of x[n] for strides 1 with Wo == W on AVX-512,
    else built by im2col; dx for strides 1 with Wo == W is one GEMM over (o, i, j) on windows of
    shifted, zero-bordered copies of dout[n] (a transposed convolution, no col2im), else
    dcols = W^T dout a few channels at a time and col2im into dx[n]. dW is summed in fixed parts of
    consecutive samples (refbnn.kernels._floatops.CONV_DW_PARTS at most, the split depends on N
    only), then the parts in order: bit-identical for any ``threads``.
    Tolerance (eps32 = 2**-23; a float32 sum of n products in any order is within gamma_n <= n eps32
    of the exact sum of their absolute values, Higham, Accuracy and Stability of Numerical
    Algorithms, 2nd ed., section 3.1: the bound does not depend on the order):
    |dW - exact| <= N Ho Wo eps32 sum |dout xpad|,  |dx - exact| <= (O/g) kh kw eps32 sum |W dout|.
    """
    cdef fo_geom g
    kh, kw, o = _weight_geom(x, w, stride, padding, dilation, groups, pad_value)
    _f32(dout, "dout", 4)
    _fill_geom(&g, x.shape, kh, kw, stride, padding, dilation, groups, pad_value, o)
    if dout.shape != (g.n, g.o, g.ho, g.wo):
        raise ValueError(f"dout: expected shape {(g.n, g.o, g.ho, g.wo)} for input {x.shape}, weight {w.shape} "
                         f"and this geometry, got {dout.shape}")
    if not isinstance(need_dx, (bool, np.bool_)):
        raise TypeError(f"need_dx: expected a bool, got {type(need_dx).__name__} {need_dx!r}")
    cdef int nt = _threads(threads)
    dw = np.empty(w.shape, dtype=np.float32)
    dx = np.empty(x.shape, dtype=np.float32) if need_dx else None
    if g.n == 0:
        dw[...] = 0.0
        return dx, dw
    cdef const float *dop = _fptr(dout)
    cdef const float *xp = _fptr(x)
    cdef const float *wp = _fptr(w)
    cdef float *dwp = _fptr(dw)
    cdef float *dxp = _fptr(dx) if need_dx else NULL
    cdef int status
    with nogil:
        status = fo_conv_backward(&g, dop, xp, wp, dxp, dwp, nt)
    _raise_status(status, "conv2d_backward")
    return dx, dw
