"""IR-Net (Qin et al., CVPR 2020): the Libra-PB weight quantizer and the Error Decay Estimator (EDE).

Defaults follow the official code (htqin/IR-Net @ f63a590, CIFAR-10/ResNet20/1w1a/modules/ir_1w1a.py
and binaryfunction.py): torch.sign (sign(0) = 0), unbiased std without epsilon, gradients through
the balance/standardization, k = 10 and t = 0.1 before any schedule. ``from_convention`` selects the
paper's choices (Algorithm 1) with the paper convention (the default of ``refbnn train``). The t/k
schedule is ``irnet_tk`` (``refbnn.schedules.EDE_SCHEDULE``, formula ``ede_state``, IR-Net Eq. 18).
"""
from __future__ import annotations

import numpy as np

from ..checks import array_module
from ..conventions import STANDARDIZE_GRADS, sign
from .base import (Quantizer, check_bool, check_choice, check_ddof, check_nonnegative, check_positive, check_sign_zero)
from .sign import ElementwiseSign
from .standardize import row_standardize_backward, row_standardize_forward, row_standardize_surrogate


def ede_surrogate(x, t, k):
    """g(x) = k tanh(t x)  (IR-Net Eq. 17)."""
    return k * array_module(x).tanh(t * x)


def ede_grad(x, t, k):
    """g'(x) = k t (1 - tanh^2(t x))  (IR-Net Eq. 17, Algorithm 1 lines 7-8; binaryfunction.py L15)."""
    th = array_module(x).tanh(t * x)
    return (k * t) * (1.0 - th * th)


def bit_shift_scale(w_std):
    """The per-output-channel power-of-two scale 2^round(log2(mean |w_std|)) (IR-Net Eq. 11-12 in the code's
    form, ir_1w1a.py L20): round half to even like torch.round, so it is 1 or 1/2 for typical rows; a
    constant for backprop (the code detaches it)."""
    xp = array_module(w_std)
    m = abs(w_std).mean(axis=tuple(range(1, w_std.ndim)), keepdims=True)
    with np.errstate(divide="ignore"):  # an all-zero row (eps > 0, constant weights): 2^-inf = 0, as torch
        return (2.0 ** xp.round(xp.log2(m))).astype(w_std.dtype, copy=False)


class _EdeState:
    """The schedule-controlled pair (t, k) of the EDE."""

    def state(self):
        return {"t": self.t, "k": self.k}

    def check_state(self, name, value):
        return check_positive(name, float(value))


class LibraPB(_EdeState, Quantizer):
    """IR-Net's Libra-PB weight quantizer with the EDE estimator (per output channel, axis 0).

    forward (ir_1w1a.py L18-23; IR-Net Eq. 9-13):
        w_hat = w - mean_o(w)                                  balance
        w_std = w_hat / std_o(w)                               standardize (unbiased std, no eps in the code)
        s_o   = 2^round(log2(mean_o |w_std|))                  bit shift, detached (``bit_shift=False``: 1)
        y     = sign(w_std) * s_o                              (sign(0) = ``sign_zero``)
    backward, g = dy (IR-Net Algorithm 1 line 9 / the code's autograd):
        g1 = g * s_o * k t (1 - tanh^2(t w_std))               EDE at the standardized weight
        ``standardize_grad="through"`` (code): g1 back through the centering and the std
            dL/dw = (1/s)(g1 - mean(g1)) - (u^T g1) u / ((n - 1) s^3),  u = w_hat    (docs/methods/irnet.md)
            per channel the gradient sums to zero and is orthogonal to u (eps = 0)
        ``standardize_grad="detached"`` (mean and std constants): dL/dw = g1 / s
        ``standardize_grad="identity"`` (Algorithm 1): dL/dw = g1
    surrogate: s_o(ref) k tanh(t standardize(x))   (standardize read as above; refbnn.quantizers.standardize)
    Parameters: t=0.1, k=10.0 (state; > 0), sign_zero=0.0, std_ddof=1, eps=0.0, eps_inside_sqrt=True,
    standardize_grad="through", bit_shift=True.
    Conventions read: sign_zero, std_ddof, eps_inside_sqrt, standardize_grad.
    A constant row (zero std) with eps = 0 raises ValueError (the code would produce NaN).
    """

    name = "libra_pb"
    part = "weight"
    precision = 1

    def __init__(self, t: float = 0.1, k: float = 10.0, sign_zero: float = 0.0, std_ddof: int = 1, eps: float = 0.0,
                 eps_inside_sqrt: bool = True, standardize_grad: str = "through", bit_shift: bool = True):
        self.t, self.k = check_positive("t", t), check_positive("k", k)
        self.sign_zero = check_sign_zero(sign_zero)
        self.std_ddof = check_ddof(std_ddof)
        self.eps = check_nonnegative("eps", eps)
        self.eps_inside_sqrt = check_bool("eps_inside_sqrt", eps_inside_sqrt)
        self.standardize_grad = check_choice("standardize_grad", standardize_grad, STANDARDIZE_GRADS)
        self.bit_shift = check_bool("bit_shift", bit_shift)

    @classmethod
    def convention_kwargs(cls, c):
        return {"sign_zero": c.sign_zero, "std_ddof": c.std_ddof, "eps_inside_sqrt": c.eps_inside_sqrt,
                "standardize_grad": c.standardize_grad}

    def _std_kwargs(self):
        return {"center": True, "ddof": self.std_ddof, "eps": self.eps, "eps_inside_sqrt": self.eps_inside_sqrt}

    def _scale(self, w_std):
        return bit_shift_scale(w_std) if self.bit_shift else w_std.dtype.type(1)

    def standardized(self, x):
        """w_std = (w - mean_o w) / std_o(w), the balanced and standardized weights."""
        return row_standardize_forward(x, what="output channel", **self._std_kwargs())[0]

    def forward(self, x, training=True):
        w_std, scache = row_standardize_forward(x, what="output channel", **self._std_kwargs())
        s = self._scale(w_std)
        y = (sign(w_std, self.sign_zero) * s).astype(x.dtype, copy=False)
        return y, (w_std, s, scache)

    def backward(self, dy, cache):
        w_std, s, scache = cache
        g1 = (dy * s * ede_grad(w_std, self.t, self.k)).astype(dy.dtype, copy=False)
        return row_standardize_backward(g1, scache, self.standardize_grad)

    def surrogate(self, x, ref=None, training=True):
        ref = x if ref is None else ref
        s = self._scale(self.standardized(ref))
        w_std = row_standardize_surrogate(x, ref, self.standardize_grad, **self._std_kwargs())
        return s * ede_surrogate(w_std, self.t, self.k)

    @property
    def binary(self):
        return not self.bit_shift and self.sign_zero != 0.0


class EDE(_EdeState, ElementwiseSign):
    """IR-Net's Error Decay Estimator on a plain sign (IR-Net's activations; usable for any input).

    forward:   y = sign(x)  (sign(0) = ``sign_zero``; IR-Net code: torch.sign, 0)
    backward:  dx = dy * k t (1 - tanh^2(t x))     (IR-Net Eq. 17, Algorithm 1 line 8; binaryfunction.py L15)
    surrogate: k tanh(t x)
    Parameters: t=0.1, k=10.0 (state, > 0; the code's values before any schedule, ir_1w1a.py L12-13),
    sign_zero=0.0. Conventions read: sign_zero.
    Schedule (IR-Net Eq. 18; trainer.py L130-143): t = T_min 10^(p log10(T_max / T_min)), k = max(1/t, 1).
    """

    name = "ede"
    accepts_inf = True  # sign(+-Inf) = +-1, k t (1 - tanh^2(t x)) = 0 there

    def __init__(self, t: float = 0.1, k: float = 10.0, sign_zero: float = 0.0):
        self.t, self.k = check_positive("t", t), check_positive("k", k)
        self.sign_zero = check_sign_zero(sign_zero)

    def derivative(self, x):
        return ede_grad(x, self.t, self.k).astype(x.dtype, copy=False)

    def surrogate(self, x, ref=None, training=True):
        return ede_surrogate(x, self.t, self.k)
