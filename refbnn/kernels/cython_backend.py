"""The ``"cython"`` backend: the reference's binary products computed by the bit-packed kernels.

Same signatures and results as :mod:`refbnn.kernels.reference` (float +-1 in, integer-valued
float out in NumPy's promoted dtype of the operands, bit for bit): the operands are packed along K (LCE polarity), multiplied with
``bgemm``/``bconv2d`` and the integers returned in the input's dtype. The packing also checks the
contract: a value that is not exactly +-1 raises ValueError instead of being read as its sign.
"""
from __future__ import annotations

import numpy as np

from . import _bitpack  # ImportError when not built: refbnn.kernels then reports it

LCE = 0  # polarity id of _bitpack._pack


def binary_matmul(a, b):
    """``a @ b.T`` for +-1 matrices a (M, K), b (N, K)."""
    threads = _bitpack.default_threads()
    m, k = a.shape
    if k == 0:
        return np.zeros((m, b.shape[0]), np.result_type(a, b))
    aw = _bitpack._pack(a, 1, LCE, threads, binary=True)
    bw = _bitpack._pack(b, 1, LCE, threads, binary=True)
    return _bitpack.bgemm(aw, bw, k).astype(np.result_type(a, b), copy=False)


def binary_conv2d(x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, pad_value=0.0):
    """Convolution of +-1 activations (N, C, H, W) with +-1 weights (O, C/groups, kh, kw) -> (N, O, Ho, Wo)."""
    threads = _bitpack.default_threads()
    n, c, h, wd = x.shape
    cg = c // groups
    if groups == 1:
        xw = _bitpack._pack(x, 1, LCE, threads, binary=True)                       # (N, H, W, CW)
    else:  # each group's channels in their own words: (N, g, H, W, CWg) -> (N, H, W, g * CWg)
        xw = _bitpack._pack(x.reshape(n, groups, cg, h, wd), 2, LCE, threads, binary=True)
        xw = np.ascontiguousarray(xw.transpose(0, 2, 3, 1, 4)).reshape(n, h, wd, groups * xw.shape[-1])
    ww = _bitpack._pack(w, 1, LCE, threads, binary=True)                           # (O, kh, kw, CWg)
    out = _bitpack.bconv2d(xw, ww, c, stride, padding, dilation, groups, pad_value, layout="nchw",
                           output="float" if x.dtype == np.float32 else "int32", threads=threads)
    return out.astype(np.result_type(x, w), copy=False)
