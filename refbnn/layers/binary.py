"""Binary layers: the input and the latent weights pass through quantizers before the linear op.

    xq, cx = input_quantizer.forward(x)          (identity when input_quantizer is None: 1wNa)
    wq, cw = weight_quantizer.forward(W)
    y      = op(xq, wq)
    out    = alpha * y + b       (bias_order="after_scale", the default)
    out    = alpha * (y + b)     (bias_order="before_scale": ReCU's code, z-hXu/ReCU @ 9a73bed,
                                  cifar/modules/binarized_modules.py L35-39, adds the bias in the conv,
                                  then multiplies by alpha)
    (alpha per output channel, optional; without it both orders are out = y + b)

Backward, with dout = dL/dout: dL/dy = alpha dout (either order); after_scale: dL/db = sum dout,
dL/dalpha = sum dout y; before_scale: dL/db = sum alpha dout, dL/dalpha = sum dout (y + b) (sums
over the batch and spatial axes). The op's backward gives dL/dxq and dL/dwq; the quantizers'
estimators turn them into dL/dx and dL/dW (the latent weights receive the gradient, BinaryConnect's
rule). The quantizers run in the layer's mode: ``forward(x, training=self.training)``.

Scale ``alpha`` (per output channel, broadcast over the batch and spatial axes):
- ``None``: no scale;
- ``"mean_abs"``: alpha_o = mean |W_o| of the latent weights, a constant for backprop (XNOR-Net's
  scale in its common detached code form, Bi-Real's magnitude-aware scale);
- ``"learned"``: a parameter ``alpha`` trained by backprop (dL/dalpha above; XNOR-Net++, ReCU's
  code), initialised to ones or U[0, 1) (``scale_init="uniform"``, ReCU's code).

When both quantizers output exactly +-1 (``quantizer.binary``), the product runs through the kernel
interface (``refbnn.kernels``), so a packed kernel may compute it; the result is bit-identical to
the float path by construction. In eval mode always; in training mode when ``backend`` resolves to
a compiled kernel. The op's cache (``ops.conv2d_cache`` / ``ops.linear_cache``, the same contract as
the float forward's) then holds the input, not im2col columns, and the backward computes the
gradients from it: with the compiled float ops for float32 (``refbnn.kernels.float_ops``: within
the float tolerance they state, docs/training-speed.md), else with the reference, which builds the
columns a few samples at a time (``ops.conv2d_backward_from_input``, bit-identical to the float
path's gradients). With the NumPy reference (``backend="numpy"``), training keeps the float op.
The scale and the bias are applied here in Python after the product, on either path, in the order
``bias_order`` says (``refbnn.methods.LayerFactory`` takes it from the convention).
"""
from __future__ import annotations

import numpy as np

from .. import kernels, ops
from ..checks import check_bool_arg, check_choice_arg, check_float_dtype, check_int
from ..conventions import BIAS_ORDERS
from ..ops.linear import check_linear_operands
from ..quantizers import get_quantizer
from .base import Module
from .core import _rng, check_conv_args, check_param_shape, kaiming_normal, kaiming_uniform

SCALES = (None, "mean_abs", "learned")


class _BinaryLayer(Module):
    def _setup(self, weight_quantizer, input_quantizer, scale, scale_init, out_features, backend, rng, dtype,
               bias_order="after_scale"):
        check_choice_arg("scale", scale, SCALES)
        check_choice_arg("scale_init", scale_init, ("ones", "uniform"))
        check_choice_arg("backend", backend, kernels.BACKENDS + ("auto",))
        check_choice_arg("bias_order", bias_order, BIAS_ORDERS)
        self.bias_order = bias_order
        self.weight_quantizer = get_quantizer(weight_quantizer)
        self.input_quantizer = get_quantizer(input_quantizer)
        self.scale, self.backend = scale, backend
        if scale == "learned":
            if scale_init == "ones":
                self.params["alpha"] = np.ones(out_features, dtype=dtype)
            elif scale_init == "uniform":
                self.params["alpha"] = rng.uniform(0.0, 1.0, size=out_features).astype(dtype)
            else:
                raise ValueError(f"scale_init: expected 'ones' or 'uniform', got {scale_init!r}")

    def quantizers(self):
        return {"weight_quantizer": self.weight_quantizer, "input_quantizer": self.input_quantizer}

    def quantizer_state(self):
        return {f"{n}.{k}": v for n, q in self.quantizers().items() if q is not None for k, v in q.state().items()}

    def load_quantizer_state(self, values):
        for n, q in self.quantizers().items():
            if q is not None:
                mine = {k.split(".", 1)[1]: v for k, v in values.items() if k.split(".", 1)[0] == n}
                q.set_state(**mine)

    def _quantize(self, x):
        """Both quantizers in the layer's mode (``training``: e.g. ReCU's per-sample activation
        normalization and stochastic BinaryConnect's sampling happen only in training mode)."""
        t = self.training
        xq, cx = (x, None) if self.input_quantizer is None else self.input_quantizer.forward(x, training=t)
        wq, cw = (self.params["weight"], None) if self.weight_quantizer is None else \
            self.weight_quantizer.forward(self.params["weight"], training=t)
        return xq, cx, wq, cw

    def _use_kernel(self, xq):
        """Exactly-binary operands: the product may go to a packed kernel (see the module docstring)."""
        binary = (self.input_quantizer is not None and self.input_quantizer.binary
                  and self.weight_quantizer is not None and self.weight_quantizer.binary)
        return binary and (not self.training or kernels.resolve_backend(self.backend, xq) is not kernels.reference)

    def _alpha(self, bshape):
        if self.scale is None:
            return None
        if self.scale == "learned":
            return self.params["alpha"].reshape(bshape)
        w = self.params["weight"]
        return abs(w).mean(axis=tuple(range(1, w.ndim))).reshape(bshape)

    def _finish(self, y, bshape):
        """out = alpha y + b (after_scale) or alpha (y + b) (before_scale); returns (out, alpha, the
        scaled factor: y or y + b)."""
        alpha = self._alpha(bshape)
        b = self.params["bias"].reshape(bshape) if "bias" in self.params else None
        if alpha is None:
            return (y if b is None else y + b), None, y
        if b is None:
            return y * alpha, alpha, y
        if self.bias_order == "before_scale":
            yb = y + b
            return yb * alpha, alpha, yb
        return y * alpha + b, alpha, y

    def _backward_common(self, dout, scaled, alpha, cx, cw, op_backward, op_cache, axes):
        grads = {}
        dy = dout if alpha is None else dout * alpha
        if "bias" in self.params:
            grads["bias"] = (dy if self.bias_order == "before_scale" else dout).sum(axis=axes)
        if self.scale == "learned":
            grads["alpha"] = (dout * scaled).sum(axis=axes)
        dxq, g = op_backward(dy, op_cache)
        dwq = g["weight"]
        grads["weight"] = dwq if self.weight_quantizer is None else self.weight_quantizer.backward(dwq, cw)
        self.accumulate(grads)
        return dxq if self.input_quantizer is None else self.input_quantizer.backward(dxq, cx)


class BinaryLinear(_BinaryLayer):
    """y = Q_in(x) Q_w(W)^T * alpha + b (or (... + b) * alpha, ``bias_order``); x (N, in), W (out, in)."""

    def __init__(self, in_features, out_features, weight_quantizer="ste_sign", input_quantizer="ste_sign",
                 scale=None, scale_init="ones", bias=False, backend="auto", rng=None, dtype=np.float32,
                 bias_order="after_scale"):
        super().__init__()
        rng = _rng(rng)
        in_features, out_features = check_int("in_features", in_features, 1), check_int("out_features", out_features, 1)
        check_param_shape("weight", (out_features, in_features))
        bias, dtype = check_bool_arg("bias", bias), check_float_dtype("dtype", dtype)
        self.in_features, self.out_features = in_features, out_features
        self.params["weight"] = kaiming_uniform(rng, (out_features, in_features), in_features, dtype)
        if bias:
            self.params["bias"] = np.zeros(out_features, dtype=dtype)
        self._setup(weight_quantizer, input_quantizer, scale, scale_init, out_features, backend, rng, dtype,
                    bias_order)
        self.zero_grad()

    def extra_repr(self):
        return (f"{self.in_features}, {self.out_features}, weight_quantizer={self.weight_quantizer!r}, "
                f"input_quantizer={self.input_quantizer!r}, scale={self.scale!r}")

    def forward(self, x):
        xq, cx, wq, cw = self._quantize(x)
        if self._use_kernel(xq):
            check_linear_operands(xq, wq)
            y, op_cache = kernels.binary_matmul(xq, wq, self.backend), ops.linear_cache(xq, wq)
        else:
            y, op_cache = ops.linear_forward(xq, wq)
        out, alpha, scaled = self._finish(y, (1, -1))
        return out, (scaled, alpha, cx, cw, op_cache)

    def backward(self, dout, cache):
        scaled, alpha, cx, cw, op_cache = cache
        return self._backward_common(dout, scaled, alpha, cx, cw, ops.linear_backward, op_cache, (0,))


class BinaryConv2d(_BinaryLayer):
    """y = conv(Q_in(x), Q_w(W)) * alpha + b (or (... + b) * alpha, ``bias_order``), padding the
    *binarized* input with ``pad_value`` (0.0: the official codes' zero padding, border taps see 0;
    +1.0/-1.0: sign padding). ``padding``: an int, a pair (ph, pw) or a 4-tuple (top, bottom, left,
    right) (TensorFlow's ``same`` for an even kernel or a stride), as :func:`refbnn.ops.conv2d_forward`
    takes it."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 weight_quantizer="ste_sign", input_quantizer="ste_sign", scale=None, scale_init="ones",
                 bias=False, pad_value=0.0, backend="auto", rng=None, dtype=np.float32, init="uniform",
                 bias_order="after_scale"):
        super().__init__()
        rng = _rng(rng)
        in_channels, out_channels, (kh, kw), stride, padding, dilation, groups = check_conv_args(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        check_choice_arg("pad_value", pad_value, (0.0, 1.0, -1.0))
        bias, dtype = check_bool_arg("bias", bias), check_float_dtype("dtype", dtype)
        check_choice_arg("init", init, ("uniform", "kaiming_normal"))
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding = stride, padding
        self.dilation, self.groups, self.pad_value = dilation, groups, float(pad_value)
        shape = (out_channels, in_channels // groups, kh, kw)
        if init == "uniform":
            self.params["weight"] = kaiming_uniform(rng, shape, shape[1] * kh * kw, dtype)
        elif init == "kaiming_normal":
            self.params["weight"] = kaiming_normal(rng, shape, out_channels * kh * kw, dtype)
        else:
            raise ValueError(f"init: expected 'uniform' or 'kaiming_normal', got {init!r}")
        if bias:
            self.params["bias"] = np.zeros(out_channels, dtype=dtype)
        self._setup(weight_quantizer, input_quantizer, scale, scale_init, out_channels, backend, rng, dtype,
                    bias_order)
        self.zero_grad()

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, pad_value={self.pad_value}, weight_quantizer={self.weight_quantizer!r}, "
                f"input_quantizer={self.input_quantizer!r}, scale={self.scale!r}")

    def _conv_args(self):
        return self.stride, self.padding, self.dilation, self.groups, self.pad_value

    def forward(self, x):
        xq, cx, wq, cw = self._quantize(x)
        s, p, d, g, pv = self._conv_args()
        if self._use_kernel(xq):
            y = kernels.binary_conv2d(xq, wq, s, p, d, g, pv, self.backend)
            op_cache = ops.conv2d_cache(xq, wq, s, p, d, g, pv, backend=self.backend)  # the input, no columns
        else:
            y, op_cache = ops.conv2d_forward(xq, wq, None, s, p, d, g, pv, backend=self.backend)
        out, alpha, scaled = self._finish(y, (1, -1, 1, 1))
        return out, (scaled, alpha, cx, cw, op_cache)

    def backward(self, dout, cache):
        scaled, alpha, cx, cw, op_cache = cache
        return self._backward_common(dout, scaled, alpha, cx, cw, ops.conv2d_backward, op_cache, (0, 2, 3))
