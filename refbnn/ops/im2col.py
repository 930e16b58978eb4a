"""im2col / col2im: the float helpers behind the convolution and pooling ops (refbnn.ops.conv,
refbnn.ops.pooling), plain array code for NumPy and CuPy alike.

im2col turns a convolution into a matrix product: every kernel tap (c, i, j) becomes a row of
columns, every output pixel (p, q) a column; col2im is its adjoint (it adds the columns back onto
the input positions they were read from). The geometry (output sizes, shape checks) is
refbnn.kernels.geometry's, shared with the kernels.
"""
from __future__ import annotations

from ..checks import array_module, padding4
from ..kernels.geometry import conv_output_size

__all__ = ["col2im", "im2col"]


def im2col(x, kh, kw, stride, padding, dilation, pad_value=0.0):
    """x (N, C, H, W) -> cols (N, C, kh, kw, Ho, Wo), padded with ``pad_value``.

    cols[n, c, i, j, p, q] = xpad[n, c, p*sh + i*dh, q*sw + j*dw], where xpad is x with ``top``
    rows above, ``bottom`` below, ``left`` columns before and ``right`` after (``padding``: a pair
    (ph, pw) for symmetric padding, or (top, bottom, left, right)).
    """
    xp = array_module(x)
    n, c, h, w = x.shape
    (sh, sw), (dh, dw) = stride, dilation
    top, bottom, left, right = padding4(padding)
    ho = conv_output_size(h, kh, sh, (top, bottom), dh)
    wo = conv_output_size(w, kw, sw, (left, right), dw)
    if top or bottom or left or right:
        xpad = xp.full((n, c, h + top + bottom, w + left + right), pad_value, dtype=x.dtype)
        xpad[:, :, top:top + h, left:left + w] = x
    else:
        xpad = x
    cols = xp.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xpad[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                                    j * dw:j * dw + sw * (wo - 1) + 1:sw]
    return cols


def col2im(cols, x_shape, stride, padding, dilation):
    """Adjoint of :func:`im2col` (padding taps are dropped): sums cols back into (N, C, H, W)."""
    xp = array_module(cols)
    n, c, h, w = x_shape
    _, _, kh, kw, ho, wo = cols.shape
    (sh, sw), (dh, dw) = stride, dilation
    top, bottom, left, right = padding4(padding)
    dxpad = xp.zeros((n, c, h + top + bottom, w + left + right), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxpad[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                  j * dw:j * dw + sw * (wo - 1) + 1:sw] += cols[:, :, i, j]
    return dxpad[:, :, top:top + h, left:left + w]
