"""Full-precision layers, each a thin object over an op pair in refbnn.ops."""
from __future__ import annotations

import math

import numpy as np

from .. import kernels, ops
from ..checks import (MAX_INT, check_bool_arg, check_choice_arg, check_float_dtype, check_int, check_real,
                      conv_padding, pair)
from .base import Module


def _rng(rng):
    """A generator: ``rng`` itself, or ``numpy.random.default_rng(rng)`` for None or a seed >= 0."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is not None and (isinstance(rng, (bool, np.bool_)) or not isinstance(rng, (int, np.integer)) or rng < 0):
        raise ValueError(f"rng: expected a numpy.random.Generator, None or a seed (an int >= 0), got {rng!r}")
    return np.random.default_rng(rng)


def check_param_shape(name, shape):
    """A parameter of ``shape`` must have at most 2**31 - 1 elements (what the checks allow any size)."""
    n = 1
    for d in shape:
        n *= d
    if n > MAX_INT:
        raise ValueError(f"{name}: a parameter of shape {tuple(shape)} has {n} elements, more than {MAX_INT}")
    return tuple(shape)


def check_conv_args(in_channels, out_channels, kernel_size, stride, padding, dilation, groups):
    """Validated (in, out, (kh, kw), stride, padding, dilation, groups) of a convolution layer."""
    in_channels = check_int("in_channels", in_channels, 1)
    out_channels = check_int("out_channels", out_channels, 1)
    kh, kw = pair(kernel_size, "kernel_size", 1)
    stride, padding, dilation = pair(stride, "stride", 1), conv_padding(padding), pair(dilation, "dilation", 1)
    groups = check_int("groups", groups, 1)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups: channels {in_channels}->{out_channels} are not divisible by groups={groups}; "
                         "expected a common divisor of in_channels and out_channels")
    check_param_shape("weight", (out_channels, in_channels // groups, kh, kw))
    return in_channels, out_channels, (kh, kw), stride, padding, dilation, groups


def kaiming_uniform(rng, shape, fan_in, dtype):
    """PyTorch's default init for Linear/Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def kaiming_normal(rng, shape, fan_out, dtype):
    """He normal init, N(0, 2 / fan_out) (fan_out mode, as the CIFAR ResNet codes use)."""
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_out)).astype(dtype)


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float32):
        super().__init__()
        rng = _rng(rng)
        in_features, out_features = check_int("in_features", in_features, 1), check_int("out_features", out_features, 1)
        check_param_shape("weight", (out_features, in_features))
        bias, dtype = check_bool_arg("bias", bias), check_float_dtype("dtype", dtype)
        self.in_features, self.out_features = in_features, out_features
        self.params["weight"] = kaiming_uniform(rng, (out_features, in_features), in_features, dtype)
        if bias:
            self.params["bias"] = kaiming_uniform(rng, (out_features,), in_features, dtype)
        self.zero_grad()

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={'bias' in self.params}"

    def forward(self, x):
        return ops.linear_forward(x, self.params["weight"], self.params.get("bias"))

    def backward(self, dout, cache):
        dx, grads = ops.linear_backward(dout, cache)
        self.accumulate(grads)
        return dx


class Conv2d(Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, rng=None, dtype=np.float32, init="uniform", backend="auto"):
        super().__init__()
        check_choice_arg("backend", backend, kernels.BACKENDS + ("auto",))
        self.backend = backend
        rng = _rng(rng)
        in_channels, out_channels, (kh, kw), stride, padding, dilation, groups = check_conv_args(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        bias, dtype = check_bool_arg("bias", bias), check_float_dtype("dtype", dtype)
        check_choice_arg("init", init, ("uniform", "kaiming_normal"))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kh, kw)
        self.stride, self.padding = stride, padding
        self.dilation, self.groups = dilation, groups
        shape = (out_channels, in_channels // groups, kh, kw)
        fan_in = shape[1] * kh * kw
        if init == "uniform":
            self.params["weight"] = kaiming_uniform(rng, shape, fan_in, dtype)
        elif init == "kaiming_normal":
            self.params["weight"] = kaiming_normal(rng, shape, out_channels * kh * kw, dtype)
        else:
            raise ValueError(f"init: expected 'uniform' or 'kaiming_normal', got {init!r}")
        if bias:
            self.params["bias"] = kaiming_uniform(rng, (out_channels,), fan_in, dtype)
        self.zero_grad()

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, bias={'bias' in self.params}")

    def forward(self, x):
        return ops.conv2d_forward(x, self.params["weight"], self.params.get("bias"), self.stride, self.padding,
                                  self.dilation, self.groups, backend=self.backend)

    def backward(self, dout, cache):
        dx, grads = ops.conv2d_backward(dout, cache)
        self.accumulate(grads)
        return dx


class BatchNorm(Module):
    """Batch norm over channel axis 1 of (N, C) or (N, C, H, W); see refbnn.ops.batchnorm."""

    ndim = (2, 4)

    def __init__(self, num_features, momentum=0.1, eps=1e-5, dtype=np.float32, gamma_init=1.0, backend="auto"):
        super().__init__()
        check_choice_arg("backend", backend, kernels.BACKENDS + ("auto",))
        self.backend = backend
        num_features = check_int("num_features", num_features, 1)
        momentum = check_real("momentum", momentum, 0.0, 1.0)
        eps = check_real("eps", eps, 0.0, open_min=True)
        gamma_init, dtype = check_real("gamma_init", gamma_init), check_float_dtype("dtype", dtype)
        self.num_features, self.momentum, self.eps = num_features, momentum, eps
        self.params["gamma"] = np.full(num_features, gamma_init, dtype=dtype)
        self.params["beta"] = np.zeros(num_features, dtype=dtype)
        self.buffers["running_mean"] = np.zeros(num_features, dtype=dtype)
        self.buffers["running_var"] = np.ones(num_features, dtype=dtype)
        self.zero_grad()

    def extra_repr(self):
        return f"{self.num_features}, momentum={self.momentum}, eps={self.eps}"

    def forward(self, x):
        if x.ndim not in self.ndim:
            raise ValueError(f"{type(self).__name__}: expected a {' or '.join(map(str, self.ndim))}-D input, "
                             f"got shape {tuple(x.shape)}")
        return ops.batchnorm_forward(x, self.params["gamma"], self.params["beta"], self.buffers["running_mean"],
                                     self.buffers["running_var"], self.training, self.momentum, self.eps,
                                     backend=self.backend)

    def backward(self, dout, cache):
        dx, grads = ops.batchnorm_backward(dout, cache)
        self.accumulate(grads)
        return dx


class BatchNorm1d(BatchNorm):
    ndim = (2,)


class BatchNorm2d(BatchNorm):
    ndim = (4,)


class _Stateless(Module):
    """A layer with no parameters: forward/backward are an op pair with fixed arguments."""

    def backward(self, dout, cache):
        return self._backward(dout, cache)[0]


class Hardtanh(_Stateless):
    def __init__(self, min_val=-1.0, max_val=1.0, backend="auto"):
        super().__init__()
        check_choice_arg("backend", backend, kernels.BACKENDS + ("auto",))
        self.backend = backend
        self.min_val, self.max_val = check_real("min_val", min_val), check_real("max_val", max_val)
        if not self.min_val < self.max_val:
            raise ValueError(f"min_val, max_val: expected min_val < max_val, got {min_val!r}, {max_val!r}")

    def forward(self, x):
        return ops.hardtanh_forward(x, self.min_val, self.max_val, self.backend)

    def _backward(self, dout, cache):
        return ops.hardtanh_backward(dout, cache, self.backend)


class ReLU(_Stateless):
    forward = staticmethod(ops.relu_forward)
    _backward = staticmethod(ops.relu_backward)


class Identity(_Stateless):
    def forward(self, x):
        return x, None

    def _backward(self, dout, cache):
        return dout, {}


def check_channel_args(num_channels, init, dtype):
    return (check_int("num_channels", num_channels, 1), check_real("init", init),
            check_float_dtype("dtype", dtype))


class PReLU(Module):
    def __init__(self, num_channels, init=0.25, dtype=np.float32):
        super().__init__()
        num_channels, init, dtype = check_channel_args(num_channels, init, dtype)
        self.params["weight"] = np.full(num_channels, init, dtype=dtype)
        self.zero_grad()

    def forward(self, x):
        return ops.prelu_forward(x, self.params["weight"])

    def backward(self, dout, cache):
        dx, grads = ops.prelu_backward(dout, cache)
        self.accumulate(grads)
        return dx


class RPReLU(Module):
    """ReActNet's RPReLU: y = PReLU(x - gamma) + zeta, all per channel."""

    def __init__(self, num_channels, init=0.25, dtype=np.float32):
        super().__init__()
        num_channels, init, dtype = check_channel_args(num_channels, init, dtype)
        self.params["gamma"] = np.zeros(num_channels, dtype=dtype)
        self.params["weight"] = np.full(num_channels, init, dtype=dtype)
        self.params["zeta"] = np.zeros(num_channels, dtype=dtype)
        self.zero_grad()

    def forward(self, x):
        return ops.rprelu_forward(x, self.params["gamma"], self.params["weight"], self.params["zeta"])

    def backward(self, dout, cache):
        dx, grads = ops.rprelu_backward(dout, cache)
        self.accumulate(grads)
        return dx


class LearnableBias(Module):
    """y = x + b per channel (ReActNet's learnable shift)."""

    def __init__(self, num_channels, dtype=np.float32):
        super().__init__()
        num_channels, _, dtype = check_channel_args(num_channels, 0.0, dtype)
        self.params["bias"] = np.zeros(num_channels, dtype=dtype)
        self.zero_grad()

    def forward(self, x):
        return ops.bias_forward(x, self.params["bias"])

    def backward(self, dout, cache):
        dx, grads = ops.bias_backward(dout, cache)
        self.accumulate(grads)
        return dx


class MaxPool2d(_Stateless):
    def __init__(self, kernel_size=2, stride=None, padding=0):
        super().__init__()
        k = pair(kernel_size, "kernel_size", 1)
        s = k if stride is None else pair(stride, "stride", 1)
        p = pair(padding, "padding")
        if p[0] > k[0] // 2 or p[1] > k[1] // 2:
            raise ValueError(f"padding: expected at most half the kernel size {k}, got {p}")
        self.kernel_size, self.stride, self.padding = k, s, p

    def forward(self, x):
        return ops.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)

    _backward = staticmethod(ops.maxpool2d_backward)


class AvgPool2d(MaxPool2d):
    def forward(self, x):
        return ops.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding)

    _backward = staticmethod(ops.avgpool2d_backward)


class GlobalAvgPool(_Stateless):
    forward = staticmethod(ops.global_avgpool_forward)
    _backward = staticmethod(ops.global_avgpool_backward)


class Flatten(_Stateless):
    forward = staticmethod(ops.flatten_forward)
    _backward = staticmethod(ops.flatten_backward)


class ShortcutA(_Stateless):
    """Option-A shortcut: subsample (or average-pool) by ``stride``, zero-pad channels in -> out."""

    def __init__(self, in_channels, out_channels, stride=2, mode="subsample"):
        super().__init__()
        in_channels = check_int("in_channels", in_channels, 1)
        out_channels = check_int("out_channels", out_channels, 1)
        stride = check_int("stride", stride, 1)
        mode = check_choice_arg("mode", mode, ("subsample", "avgpool"))
        if out_channels < in_channels:
            raise ValueError(f"out_channels: shortcut A cannot reduce channels ({in_channels} -> {out_channels}); "
                             "expected out_channels >= in_channels")
        extra = out_channels - in_channels
        self.stride, self.mode = stride, mode
        self.pad_before, self.pad_after = extra // 2, extra - extra // 2

    def forward(self, x):
        return ops.shortcut_a_forward(x, self.stride, self.pad_before, self.pad_after, self.mode)

    _backward = staticmethod(ops.shortcut_a_backward)
