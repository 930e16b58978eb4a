"""The GPU kernels: CUDA C sources (the ``.cu`` files beside this module) and the code that checks
arguments and launches them, written once for any launcher.

:class:`Kernels` holds everything between a Python call and a kernel launch: argument checks
(bad input is refused here, before any launch), output allocation, grid and block sizes, and the
kernel arguments with their exact C types. It takes an array module and a ``launch(kernel, grid,
block, args)`` callable: :mod:`refbnn.kernels.cupy_backend` passes CuPy and a launcher of
``cupy.RawModule`` functions; the tests pass NumPy and a launcher that runs the same ``.cu``
sources on the CPU (tests/cuda_emulation/). So the code a GPU run goes through is the code the
tests check bit for bit against the NumPy reference, with no GPU.

Bit layout and results are those of the CPU kernels (src_cython/_bitpack.pyx; docs/kernels.md):
LCE polarity (bit 1 = -1), element i in bit i % 64 of word i // 64, tail bits 0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# shared with the CPU kernels (src_cython/_bitpack.pyx): the geometry and the argument checks
from ..geometry import INT32_MAX, INT32_MIN, MAX_K, bconv2d_shapes, conv_output_size
from ..geometry import check_clamp as _clamp, check_int as _int, check_pair as _pair
from ..reference import POLARITIES
from ...checks import check_value

HERE = Path(__file__).resolve().parent
# source file -> the kernels (extern "C" __global__ functions) it defines
SOURCES = {
    "pack_bits.cu": ("pack_f32", "pack_f64"),
    "bgemm.cu": ("bgemm",),
    "bgemm_tc.cu": ("bgemm_tc", "mma_b1_probe"),
    "bconv2d.cu": ("bconv2d_int32", "bconv2d_float", "bconv2d_bits"),
    "bmaxpool2d.cu": ("bmaxpool2d",),
}
KERNEL_SOURCE = {k: f for f, ks in SOURCES.items() for k in ks}
# what NVRTC compiles them with, on the GPU and in the compile test alike
NVRTC_OPTIONS = ("--std=c++17",)
ARCHS = ("sm_80", "sm_90")

BLOCK = 128                   # threads per block of the grid-stride kernels
MAX_BLOCKS = 1 << 16          # grid-stride kernels loop past this many blocks
BGEMM_TILE = 16               # bgemm.cu: BGEMM_TILE x BGEMM_TILE threads per block
TC_BM, TC_BN, TC_THREADS = 64, 32, 128   # bgemm_tc.cu: a 64 x 32 output tile per block of 4 warps
TC_MIN_CC = (8, 0)            # mma.sync m16n8k256 .b1 (bgemm_tc.cu) needs compute capability 8.0
MAX_GRID_Y = 65535

_i32, _i64, _u64 = np.int32, np.int64, np.uint64


def source_path(name: str) -> Path:
    if name not in SOURCES:
        raise ValueError(f"unknown CUDA source {name!r}; expected one of {sorted(SOURCES)}")
    return HERE / name


def read_source(name: str) -> str:
    return source_path(name).read_text(encoding="utf-8")


def tailmask(bits: int) -> int:
    """The valid bits of the last word of a ``bits``-long packed axis."""
    r = bits % 64
    return (1 << r) - 1 if r else 0xFFFFFFFFFFFFFFFF


def _flag(v, name: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {v!r}")
    return bool(v)


def _grid(total: int) -> tuple:
    return (max(1, min(-(-total // BLOCK), MAX_BLOCKS)), 1, 1)


class Kernels:
    """The GPU kernels on arrays of module ``xp``, launched by ``launch(kernel, grid, block, args)``.

    ``args`` are arrays of ``xp`` (passed as device pointers to their first element) and NumPy
    scalars of the kernel parameters' exact types (np.int32, np.int64, np.uint64).
    """

    def __init__(self, xp, launch):
        self.xp = xp
        self._launch = launch

    # ---- checks -----------------------------------------------------------------------------
    def _words(self, a, name, ndim):
        if not isinstance(a, self.xp.ndarray):
            raise TypeError(f"{name}: expected a {self.xp.__name__} array of packed uint64 words, "
                            f"got {type(a).__name__}")
        if a.dtype != np.uint64:
            raise TypeError(f"{name}: expected dtype uint64 (packed words, see pack_bits), got {a.dtype}")
        if a.ndim != ndim:
            raise ValueError(f"{name}: expected a {ndim}-D array of words, got shape {a.shape}")
        # kernels read each row's (pixel's) words contiguously, at word strides
        if a.size and (a.strides[-1] != 8 or any(s % 8 for s in a.strides)):
            a = self.xp.ascontiguousarray(a)
        return a

    def _per_channel(self, v, name, n, kind):
        v = self.xp.asarray(v)
        if kind == "f" and v.dtype.kind not in "fiu" or kind == "i" and v.dtype.kind not in "iu" \
                or kind == "b" and v.dtype.kind != "b":
            raise TypeError(f"{name}: expected {dict(f='real numbers', i='integers', b='booleans')[kind]}, "
                            f"got dtype {v.dtype}")
        if v.shape != (n,):
            raise ValueError(f"{name}: expected shape ({n},) (one value per output channel), got {v.shape}")
        if v.dtype.kind == "f":
            def fail():
                raise ValueError(f"{name}: contains NaN or Inf")

            check_value(self.xp.isfinite(v).all(), fail)
        return v

    # ---- pack ---------------------------------------------------------------------------------
    def pack_bits(self, x, axis=-1, polarity="lce", binary=False):
        """Signs of ``x`` along ``axis`` -> uint64 words, the packed axis last (pack_bits.cu).

        ``binary``: raise ValueError unless every value is exactly -1 or +1 (found while packing).
        NaN or Inf raise ValueError (their sign is undefined).
        """
        xp = self.xp
        if not isinstance(x, xp.ndarray):
            raise TypeError(f"x: expected a {xp.__name__} array, got {type(x).__name__}")
        if polarity not in POLARITIES:
            raise ValueError(f"polarity: expected one of {list(POLARITIES)}, got {polarity!r}")
        if x.dtype.kind in "iu":
            x = x.astype(np.float64)
        elif x.dtype not in (np.float32, np.float64):
            raise TypeError(f"x: expected a float32/float64 (or integer) array, got dtype {x.dtype}")
        if x.ndim == 0:
            raise ValueError("x: expected at least a 1-D array, got a scalar")
        axis = _int(axis, "axis", -x.ndim)
        if axis >= x.ndim:
            raise ValueError(f"axis: {axis} is out of range for a {x.ndim}-D array")
        axis %= x.ndim
        shape = x.shape
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        length = shape[axis]
        inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
        words = -(-length // 64)
        out = xp.empty(shape[:axis] + shape[axis + 1:] + (words,), np.uint64)
        if out.size == 0:
            return out
        if any(s % x.itemsize for s in x.strides):
            x = xp.ascontiguousarray(x)
        item = x.itemsize
        # element strides of the (outer, len, inner) view; merged axes of a non-mergeable layout copy
        x3 = x.reshape(outer, length, inner)
        s_outer, s_len, s_inner = (s // item for s in x3.strides)
        bad = xp.zeros(1, np.int32)
        self._launch("pack_f32" if x.dtype == np.float32 else "pack_f64", _grid(out.size), (BLOCK, 1, 1),
                     (x3, _i64(outer), _i64(length), _i64(inner), _i64(s_outer), _i64(s_len), _i64(s_inner),
                      _i32(POLARITIES.index(polarity)), _i32(bool(binary)), out, bad))

        def fail():
            flags = int(bad[0])
            if flags & 2:
                raise ValueError("x: contains NaN or Inf (their sign is undefined)")
            if flags & 1:
                raise ValueError("x: expected exactly +-1 values (binary products), found other values")

        # reading the flag waits for the device: in a deferred_checks block (a training step) it is
        # answered with the step's other checks
        check_value(bad[0] == 0, fail)
        return out

    # ---- GEMM ---------------------------------------------------------------------------------
    def bgemm(self, a_words, b_words, k, tensor_cores=False):
        """int32 (M, N): the +-1 dot products of the rows of A and B, ``k - 2 * popcount(a XOR b)``;
        bits past k ignored.

        ``tensor_cores=False`` runs bgemm.cu (XOR and ``__popcll`` on shared-memory tiles),
        ``True`` bgemm_tc.cu (the 1-bit MMA ``mma.sync...m16n8k256...b1.xor.popc``, compute
        capability 8.0 or later; the caller checks the device). Same results bit for bit.
        """
        tensor_cores = _flag(tensor_cores, "tensor_cores")
        a = self._words(a_words, "a_words", 2)
        b = self._words(b_words, "b_words", 2)
        k = _int(k, "k", 1)
        if k > MAX_K:
            raise ValueError(f"k: at most {MAX_K} bits, got {k}")
        kw = -(-k // 64)
        if a.shape[1] != kw or b.shape[1] != kw:
            raise ValueError(f"bgemm: k = {k} bits needs {kw} words per row; got a_words {a.shape}, "
                             f"b_words {b.shape}")
        m, n = a.shape[0], b.shape[0]
        tile_n = TC_BN if tensor_cores else BGEMM_TILE
        if m > INT32_MAX or -(-n // tile_n) > MAX_GRID_Y:
            raise ValueError(f"bgemm: unsupported shape: at most {INT32_MAX} rows of A and "
                             f"{MAX_GRID_Y * tile_n} rows of B, got {m} and {n}")
        out = self.xp.empty((m, n), np.int32)
        if m == 0 or n == 0:
            return out
        args = (a, _i64(a.strides[0] // 8), b, _i64(b.strides[0] // 8), _i32(m), _i32(n), _i32(kw), _i32(k),
                _u64(tailmask(k)), out, _i64(n))
        if tensor_cores:
            self._launch("bgemm_tc", (-(-m // TC_BM), -(-n // TC_BN), 1), (TC_THREADS, 1, 1), args)
        else:
            self._launch("bgemm", (-(-m // BGEMM_TILE), -(-n // BGEMM_TILE), 1), (BGEMM_TILE, BGEMM_TILE, 1), args)
        return out

    def check_tensor_cores(self, device="the device"):
        """Run bgemm_tc and bgemm on one fixed problem (70 x 40 rows of 691 bits, random words with
        dirty tails: partial tiles, two shared-memory steps) and raise RuntimeError if they differ.

        The CuPy backend calls it before the first tensor-core bgemm on each device: bgemm_tc
        relies on the fragment layout of the 1-bit MMA as the PTX ISA documents it, which only a
        GPU can confirm, so a device that disagrees stops with an error instead of giving wrong
        products. The answer is read at once (one synchronisation), also inside a
        ``deferred_checks`` block: the backend runs it once per device and must know the answer."""
        rng = np.random.default_rng(20261203)
        k = 11 * 64 - 13
        a = self.xp.asarray(rng.integers(0, 2 ** 64, (70, 11), dtype=np.uint64))
        b = self.xp.asarray(rng.integers(0, 2 ** 64, (40, 11), dtype=np.uint64))
        tc, plain = self.bgemm(a, b, k, tensor_cores=True), self.bgemm(a, b, k, tensor_cores=False)
        if not bool((tc == plain).all()):
            raise RuntimeError(f"bgemm_tc (the tensor-core bgemm) disagrees with bgemm on {device}: the "
                               "1-bit MMA's fragment layout that bgemm_tc.cu follows is not this device's. Use "
                               "tensor_cores=False (results are then the plain kernel's) and report it")

    def mma_b1_probe(self, a_frag, b_frag, c_frag):
        """One ``mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.xor.popc`` on given fragments
        (bgemm_tc.cu, mma_b1_probe): lane l holds ``a_frag[l]`` (4 uint32), ``b_frag[l]`` (2 uint32),
        ``c_frag[l]`` (4 int32); returns D, int32 (32, 4), lane by lane. A check of the fragment
        layout that bgemm_tc relies on (documented in bgemm_tc.cu), not a kernel for results."""
        xp = self.xp
        frags = []
        for name, v, dtype, width in (("a_frag", a_frag, np.uint32, 4), ("b_frag", b_frag, np.uint32, 2),
                                      ("c_frag", c_frag, np.int32, 4)):
            if not isinstance(v, xp.ndarray):
                raise TypeError(f"{name}: expected a {xp.__name__} array, got {type(v).__name__}")
            if v.dtype != dtype or v.shape != (32, width):
                raise ValueError(f"{name}: expected {np.dtype(dtype).name} of shape (32, {width}) (one row per "
                                 f"lane), got {v.dtype} {v.shape}")
            frags.append(xp.ascontiguousarray(v))
        d = xp.empty((32, 4), np.int32)
        self._launch("mma_b1_probe", (1, 1, 1), (32, 1, 1), (*frags, d))
        return d

    # ---- convolution ----------------------------------------------------------------------------
    def bconv2d(self, x_words, w_words, channels, stride=1, padding=0, dilation=1, groups=1, pad_value=0.0, *,
                output="int32", multiplier=None, bias=None, clamp=None, thresholds=None, flip=None,
                layout="nhwc"):
        """Binary convolution of packed NHWC activations with packed OHWI weights (bconv2d.cu).

        Arguments and results as the CPU kernel ``refbnn.kernels.bconv2d``: ``output`` "int32"
        (dot), "float" (float32(clip(dot, *clamp)) * multiplier[o] + bias[o]) or "bits" (packed
        NHWC words, bit o = (dot < thresholds[o]) XOR flip[o]); ``layout`` "nhwc" or "nchw".
        Unlike the CPU kernel, grouped bits output needs no multiple of 64 channels per group.
        """
        xp = self.xp
        x = self._words(x_words, "x_words", 4)
        w = self._words(w_words, "w_words", 4)
        if w.size:
            w = xp.ascontiguousarray(w)
        c = _int(channels, "channels", 1)
        g = _int(groups, "groups", 1)
        sh, sw = _pair(stride, "stride", 1)
        ph, pw = _pair(padding, "padding", 0)
        dh, dw = _pair(dilation, "dilation", 1)
        if pad_value not in (0.0, 1.0, -1.0):
            raise ValueError(f"pad_value: expected 0.0, 1.0 or -1.0, got {pad_value!r}")
        nimg, h, wd, xw = x.shape
        o, kh, kw, cwg = w.shape
        cg, ho, wo = bconv2d_shapes(x.shape, w.shape, c, g, (sh, sw), (ph, pw), (dh, dw))
        if max(h, wd, o, sh, sw, ph, pw, dh, dw, nimg) > INT32_MAX:
            raise ValueError("bconv2d: unsupported shape: sizes, strides and paddings must fit in int32")
        if output not in ("int32", "float", "bits"):
            raise ValueError(f"output: expected 'int32', 'float' or 'bits', got {output!r}")
        if layout not in ("nhwc", "nchw"):
            raise ValueError(f"layout: expected 'nhwc' or 'nchw', got {layout!r}")
        if output != "float" and (multiplier is not None or bias is not None or clamp is not None):
            raise ValueError("multiplier, bias and clamp apply to output='float' only")
        if output != "bits" and (thresholds is not None or flip is not None):
            raise ValueError("thresholds and flip apply to output='bits' only")
        if output == "bits" and layout != "nhwc":
            raise ValueError("output='bits' writes packed NHWC words; layout must be 'nhwc'")
        if output == "bits" and thresholds is None:
            raise ValueError("output='bits' needs thresholds (one int per output channel)")
        if output == "float":
            mul = None if multiplier is None else self._per_channel(multiplier, "multiplier", o, "f")
            bia = None if bias is None else self._per_channel(bias, "bias", o, "f")
            lo, hi = (INT32_MIN, INT32_MAX) if clamp is None else _clamp(clamp)
        if output == "bits":
            thr = self._per_channel(thresholds, "thresholds", o, "i")
            flp = xp.zeros(o, bool) if flip is None else self._per_channel(flip, "flip", o, "b")
        if output == "bits":
            out = xp.empty((nimg, ho, wo, -(-o // 64)), np.uint64)
        else:
            shape = (nimg, ho, wo, o) if layout == "nhwc" else (nimg, o, ho, wo)
            out = xp.empty(shape, np.int32 if output == "int32" else np.float32)
        if out.size == 0:
            return out
        geometry = (x, _i64(x.strides[0] // 8), _i64(cwg), _i64(x.strides[1] // 8), _i64(x.strides[2] // 8), w,
                    _i32(nimg), _i32(h), _i32(wd), _i32(cg), _i32(cwg), _i32(o), _i32(o // g), _i32(kh), _i32(kw),
                    _i32(sh), _i32(sw), _i32(ph), _i32(pw), _i32(dh), _i32(dw), _i32(ho), _i32(wo),
                    _i32(int(pad_value)), _u64(tailmask(cg)))
        if output == "bits":
            thr32 = xp.clip(thr, INT32_MIN, INT32_MAX).astype(np.int32)
            self._launch("bconv2d_bits", _grid(out.size), (BLOCK, 1, 1),
                         geometry + (out, thr32, flp.astype(np.int32)))
            return out
        strides = (o * ho * wo, o, 1) if layout == "nhwc" else (o * ho * wo, 1, ho * wo)
        tail = tuple(_i64(s) for s in strides)
        if output == "int32":
            self._launch("bconv2d_int32", _grid(out.size), (BLOCK, 1, 1), geometry + (out,) + tail)
            return out
        ones = xp.ones(1, np.float32)
        mul32 = ones if mul is None else mul.astype(np.float32)
        bias32 = ones if bia is None else bia.astype(np.float32)
        self._launch("bconv2d_float", _grid(out.size), (BLOCK, 1, 1),
                     geometry + (out,) + tail + (mul32, _i32(mul is not None), bias32, _i32(bia is not None),
                                                 _i32(lo), _i32(hi)))
        return out

    # ---- max pool --------------------------------------------------------------------------------
    def bmaxpool2d(self, x_words, kernel_size, stride=None, padding=0):
        """Binary max pool of packed NHWC words (LCE polarity): the AND of each window (bmaxpool2d.cu)."""
        x = self._words(x_words, "x_words", 4)
        kh, kw = _pair(kernel_size, "kernel_size", 1)
        sh, sw = (kh, kw) if stride is None else _pair(stride, "stride", 1)
        ph, pw = _pair(padding, "padding", 0)
        if ph > kh // 2 or pw > kw // 2:
            raise ValueError(f"bmaxpool2d: padding {(ph, pw)} must be at most half the kernel size {(kh, kw)}")
        nimg, h, wd, cw = x.shape
        if max(nimg, h, wd, cw, kh, kw, sh, sw) > INT32_MAX:
            raise ValueError("bmaxpool2d: unsupported shape: sizes and strides must fit in int32")
        ho, wo = conv_output_size(h, kh, sh, ph, 1), conv_output_size(wd, kw, sw, pw, 1)
        if ho < 1 or wo < 1:
            raise ValueError(f"bmaxpool2d: input {h}x{wd} is smaller than the window {(kh, kw)}")
        out = self.xp.empty((nimg, ho, wo, cw), np.uint64)
        if out.size == 0:
            return out
        self._launch("bmaxpool2d", _grid(out.size), (BLOCK, 1, 1),
                     (x, _i64(x.strides[0] // 8), _i64(x.strides[1] // 8), _i64(x.strides[2] // 8), _i32(nimg),
                      _i32(h), _i32(wd), _i32(cw), _i32(kh), _i32(kw), _i32(sh), _i32(sw), _i32(ph), _i32(pw),
                      _i32(ho), _i32(wo), out))
        return out

    # ---- the reference's binary products ----------------------------------------------------------
    def binary_matmul(self, a, b, tensor_cores=False):
        """``a @ b.T`` for +-1 matrices a (M, K), b (N, K), in a's dtype (refbnn.kernels.reference);
        ``tensor_cores`` as in :meth:`bgemm`."""
        tensor_cores = _flag(tensor_cores, "tensor_cores")
        m, k = a.shape
        if k == 0:
            return self.xp.zeros((m, b.shape[0]), a.dtype)
        aw = self.pack_bits(a, 1, binary=True)
        bw = self.pack_bits(b, 1, binary=True)
        return self.bgemm(aw, bw, k, tensor_cores).astype(a.dtype, copy=False)

    def binary_conv2d(self, x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, pad_value=0.0):
        """Convolution of +-1 activations (N, C, H, W) with +-1 weights (O, C/groups, kh, kw) -> (N, O, Ho, Wo)."""
        n, c, h, wd = x.shape
        cg = c // groups
        # each group's channels in their own words: (N, g, C/g, H, W) packed along C/g ->
        # (N, g, H, W, CWg) -> (N, H, W, g * CWg), as the CPU backend lays them out
        xw = self.pack_bits(x.reshape(n, groups, cg, h, wd), 2, binary=True)
        xw = self.xp.ascontiguousarray(xw.transpose(0, 2, 3, 1, 4)).reshape(n, h, wd, groups * xw.shape[-1])
        ww = self.pack_bits(w, 1, binary=True)                                     # (O, kh, kw, CWg)
        out = self.bconv2d(xw, ww, c, stride, padding, dilation, groups, pad_value, layout="nchw",
                           output="float" if x.dtype == np.float32 else "int32")
        return out.astype(x.dtype, copy=False)
