"""2-D convolution (cross-correlation, as in PyTorch) by im2col + GEMM.

Shapes: x (N, C, H, W), W (O, C/groups, kh, kw), b (O,), y (N, O, Ho, Wo) with
Ho = floor((H + top + bottom - dh (kh - 1) - 1) / sh) + 1 (Wo likewise with left, right).
``padding``: an int (all four sides), a pair (ph, pw) (top = bottom = ph, left = right = pw) or a
4-tuple (top, bottom, left, right), e.g. TensorFlow's ``same`` for an even kernel or a stride,
which puts the odd pixel at the bottom/right.

Forward:  y[n, o, p, q] = b[o] + sum_{c, i, j} W[o, c, i, j] xpad[n, g(o) C/g + c, p sh + i dh, q sw + j dw],
          xpad[n, c, top + h, left + w] = x[n, c, h, w], and pad_value outside x
Backward: dW = sum over n, p, q of dy * cols;  dcols = W^T dy;  dx = col2im(dcols) (padding taps dropped);
          db = sum_{n, p, q} dy.
dW is a batch of per-sample products dy[n] cols[n]^T summed over n: the (huge) columns are read in
place, never transposed into a copy.
``pad_value`` is the value the border is padded with (0 for ordinary convolutions; binary
convolutions may pad with +-1 after binarization, see refbnn.conventions).

One cache contract, :class:`Conv2dCache`, for every path that computes the forward: this NumPy
reference (which keeps its im2col columns for the backward), a packed binary kernel (the layer
computes the product and keeps only the input: :func:`conv2d_cache`; the backward rebuilds the
columns a few samples at a time) and the compiled float ops (``backend`` resolving to
refbnn.kernels' compiled CPU backend, float32: ``refbnn.kernels.float_ops``, which keep no columns
and agree with this reference within the tolerance their docstrings state). ``backend="numpy"``
(the default of these functions) always runs the reference.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ..checks import (array_module, check_float_array, check_int, check_real, check_same_dtype, check_shape,
                      conv_padding, padding4, pair)
from ..kernels import float_ops
from ..kernels.geometry import conv2d_geometry
from .im2col import col2im, im2col


class Conv2dCache(NamedTuple):
    """What :func:`conv2d_backward` needs, whichever path computed the forward."""
    x: Any                 # the op's input (N, C, H, W) (a binary layer's quantized input)
    w: Any                 # the weight (O, C/groups, kh, kw) (a binary layer's quantized weight)
    stride: tuple
    padding: tuple         # a pair (ph, pw) or (top, bottom, left, right)
    dilation: tuple
    groups: int
    pad_value: float
    has_bias: bool
    cols: Any = None       # the reference forward's im2col columns (N, C, kh, kw, Ho, Wo), else None
    fast: Any = None       # the compiled float ops module that runs the backward, None: this reference


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, pad_value=0.0, backend="numpy"):
    x = check_float_array(x, "x", ndim=4)
    w = check_float_array(w, "weight", ndim=4)
    stride, padding, dilation = pair(stride, "stride", 1), conv_padding(padding), pair(dilation, "dilation", 1)
    groups, pad_value = check_int("groups", groups, 1), check_real("pad_value", pad_value)
    conv2d_geometry(x.shape, w.shape, stride, padding, dilation, groups)
    o = w.shape[0]
    if b is not None:
        b = check_float_array(b, "bias", ndim=1)
        check_shape(b, "bias", (o,))
    check_same_dtype(("x", x), ("weight", w), ("bias", b))
    fast = float_ops(backend, x, w)
    if fast is not None:
        out = fast.conv2d_forward(x, w, stride, padding4(padding), dilation, groups, pad_value)
        cache = Conv2dCache(x, w, stride, padding, dilation, groups, pad_value, b is not None, None, fast)
    else:
        cols = im2col(x, w.shape[2], w.shape[3], stride, padding, dilation, pad_value)
        out = conv2d_cols_matmul(cols, w, groups)
        cache = Conv2dCache(x, w, stride, padding, dilation, groups, pad_value, b is not None, cols)
    if b is not None:
        out += b.reshape(1, o, 1, 1)
    return out, cache


def conv2d_cols_matmul(cols, w, groups):
    """Grouped product of im2col columns (N, C, kh, kw, Ho, Wo) and weights (O, C/g, kh, kw).

    Returns (N, O, Ho, Wo). One batched GEMM per (sample, group).
    """
    xp = array_module(cols)
    n, c, kh, kw, ho, wo = cols.shape
    o = w.shape[0]
    g = groups
    colsg = cols.reshape(n, g, (c // g) * kh * kw, ho * wo)
    wg = w.reshape(1, g, o // g, (c // g) * kh * kw)
    out = xp.matmul(wg, colsg)  # (N, g, O/g, Ho*Wo)
    return out.reshape(n, o, ho, wo)


def conv2d_cache(x, w, stride, padding, dilation, groups, pad_value=0.0, has_bias=False, backend="numpy"):
    """The :class:`Conv2dCache` of a forward computed elsewhere (a packed binary kernel): the input,
    no columns (the reference backward rebuilds them a few samples at a time; the compiled float
    ops need none). Arguments as normalised by :func:`conv2d_forward` (pairs; padding a pair or a
    4-tuple)."""
    return Conv2dCache(x, w, stride, padding, dilation, groups, pad_value, has_bias, None, float_ops(backend, x, w))


def conv2d_backward(dout, cache, chunk_bytes=1 << 22):
    """Returns (dx, {"weight": dW[, "bias": db]}) for a :class:`Conv2dCache` from any path: the
    compiled float ops when the forward chose them, the reference from the kept columns, or the
    reference a few samples at a time (:func:`conv2d_backward_from_input`) when no columns were kept."""
    x, w = cache.x, cache.w
    _check_dout_lead(dout, x, w)
    args = (cache.stride, cache.padding, cache.dilation, cache.groups, cache.pad_value)
    if cache.fast is not None:
        ho, wo = conv2d_geometry(x.shape, w.shape, cache.stride, cache.padding, cache.dilation, cache.groups)
        check_shape(dout, "dout", (x.shape[0], w.shape[0], ho, wo))
        dout = check_float_array(dout, "dout", finite=False)
        check_same_dtype(("dout", dout), ("x", x))
        dx, dw = cache.fast.conv2d_backward(dout, x, w, cache.stride, padding4(cache.padding), cache.dilation,
                                            cache.groups, cache.pad_value)
        grads = {"weight": dw}
    elif cache.cols is not None:
        dx, per_sample_dw = _conv2d_backward_parts(dout, cache.cols, w, x.shape, *args[:4])
        # dW[g] = sum_n dout[n, g] @ cols[n, g]^T, summed over n in order (a reduction over the outer axis)
        grads = {"weight": per_sample_dw.sum(axis=0).reshape(w.shape)}
    else:
        dx, grads = conv2d_backward_from_input(dout, x, w, *args, chunk_bytes=chunk_bytes)
    if cache.has_bias:
        grads["bias"] = dout.sum(axis=(0, 2, 3))
    return dx, grads


def conv2d_backward_from_input(dout, x, w, stride, padding, dilation, groups, pad_value=0.0, chunk_bytes=1 << 22):
    """The reference :func:`conv2d_backward` for a forward pass that kept only its input (a packed
    binary kernel computed the output): the im2col columns are built for a few samples at a time,
    at most about ``chunk_bytes`` of them. The same values, bit for bit, as building the columns of
    the whole batch at once (dW is summed sample by sample in the same order as the columns path),
    without ever holding the columns of the batch (9x the input for a 3x3 kernel) or paying for fresh
    pages to hold them.
    Returns (dx, {"weight": dW}). Arguments as normalised by :func:`conv2d_forward` (pairs; padding a pair
    or a 4-tuple)."""
    n = x.shape[0]
    _check_dout_lead(dout, x, w)
    per_sample = w.shape[1] * groups * w.shape[2] * w.shape[3] * dout.shape[2] * dout.shape[3] * x.itemsize
    step = max(1, chunk_bytes // max(per_sample, 1))
    xp = array_module(x)
    dx = xp.empty(x.shape, dtype=dout.dtype)
    dw = None
    for s in range(0, n, step):
        cols = im2col(x[s:s + step], w.shape[2], w.shape[3], stride, padding, dilation, pad_value)
        dx[s:s + step], parts = _conv2d_backward_parts(dout[s:s + step], cols, w, cols.shape[:2] + x.shape[2:],
                                                       stride, padding, dilation, groups)
        for part in parts:  # sample by sample, in order: the same float sum as the columns path
            if dw is None:
                dw = part.copy()
            else:
                dw += part
    if dw is None:  # an empty batch
        return dx, {"weight": xp.zeros(w.shape, dtype=dout.dtype)}
    return dx, {"weight": dw.reshape(w.shape)}


def _check_dout_lead(dout, x, w):
    """dout must be 4-D with x's samples and w's output channels (its spatial size is checked where the
    columns or the geometry give it): a same-sized dout of another shape is never reshaped silently."""
    if not hasattr(dout, "shape") or len(dout.shape) != 4 or dout.shape[:2] != (x.shape[0], w.shape[0]):
        raise ValueError(f"dout: expected shape ({x.shape[0]}, {w.shape[0]}, *, *) for this input and weight, got "
                         f"{tuple(getattr(dout, 'shape', ()))}")


def _conv2d_backward_parts(dout, cols, w, x_shape, stride, padding, dilation, groups):
    """dx and the per-sample weight gradients dout[n] cols[n]^T, shape (N, g, O/g, kg)."""
    xp = array_module(dout)
    n, c, kh, kw, ho, wo = cols.shape
    o = w.shape[0]
    check_shape(dout, "dout", (n, o, ho, wo))
    g = groups
    kg = (c // g) * kh * kw
    colsg = cols.reshape(n, g, kg, ho * wo)
    doutg = dout.reshape(n, g, o // g, ho * wo)
    per_sample_dw = xp.matmul(doutg, colsg.transpose(0, 1, 3, 2))
    wg = w.reshape(1, g, o // g, kg)
    dcols = xp.matmul(wg.transpose(0, 1, 3, 2), doutg)  # (N, g, kg, L)
    dx = col2im(dcols.reshape(cols.shape), x_shape, stride, padding, dilation)
    return dx, per_sample_dw
