"""Larq's remaining quantizers under Larq's names and semantics (larq/larq 0.14, larq/quantizers.py):
``ste_heaviside``, ``ste_tern`` and ``noop``. (``ste_sign``, ``approx_sign``, ``swish_sign`` and
``magnitude_aware_sign`` live in sign.py, ``dorefa_quantizer`` in dorefa.py.)
"""
from __future__ import annotations

import numpy as np

from ..checks import array_module, check_finite_statistic, host_float
from ..conventions import clip_mask
from .base import Quantizer, check_bool, check_nonnegative, check_positive
from .sign import _clip


class SteHeaviside(Quantizer):
    """Heaviside step with a clipped straight-through estimator; Larq's ``ste_heaviside``.

    forward:   y = 1 if x > 0 else 0   (Larq's math.heaviside = sign(relu(x)): h(0) = 0)
    backward:  dx = dy * 1[|x| <= clip_value]  (identity when clip_value is None)
    surrogate: clip(x, -clip_value, clip_value)
    Parameters: clip_value=1.0 (> 0 or None), clip_inclusive=True. Conventions read: clip_inclusive.
    Outputs are {0, 1}, so not ``binary`` (which means +-1). Source: Larq ``SteHeaviside``.
    """

    name = "ste_heaviside"
    precision = 1
    accepts_inf = True  # h(+Inf) = 1, h(-Inf) = 0, the clipped estimator is 0 there

    def __init__(self, clip_value: float | None = 1.0, clip_inclusive: bool = True):
        self.clip_value = check_positive("clip_value", clip_value, allow_none=True)
        self.clip_inclusive = check_bool("clip_inclusive", clip_inclusive)

    @classmethod
    def convention_kwargs(cls, c):
        return {"clip_inclusive": c.clip_inclusive}

    def forward(self, x, training=True):
        y = (x > 0).astype(x.dtype)
        return y, None if self.clip_value is None else clip_mask(x, self.clip_value, self.clip_inclusive)

    def backward(self, dy, cache):
        return dy if cache is None else dy * cache

    def surrogate(self, x, ref=None, training=True):
        return _clip(x, self.clip_value)


class SteTern(Quantizer):
    """Ternarization with a clipped straight-through estimator; Larq's ``ste_tern``.

    forward:   y = tsign(tsign(x + D) + tsign(x - D)), tsign = sign with tsign(0) = 0 (tf.sign), i.e.
               y = +1 for x >= D, -1 for x <= -D, 0 for |x| < D (D > 0; the boundary goes to +-1)
               D = threshold_value, or with ``ternary_weight_networks`` the TWN threshold
               D = 0.7 mean |x| over the whole tensor (Li et al. 2016 Eq. 10), a constant for backprop
    backward:  dx = dy * 1[|x| <= clip_value]
    surrogate: clip(x, -clip_value, clip_value)
    Parameters: threshold_value=0.05 (>= 0), ternary_weight_networks=False, clip_value=1.0, clip_inclusive=True.
    Conventions read: clip_inclusive. Precision 2. Source: Larq ``SteTern``.
    """

    name = "ste_tern"
    precision = 2

    def __init__(self, threshold_value: float = 0.05, ternary_weight_networks: bool = False,
                 clip_value: float | None = 1.0, clip_inclusive: bool = True):
        self.threshold_value = check_nonnegative("threshold_value", threshold_value)
        self.ternary_weight_networks = check_bool("ternary_weight_networks", ternary_weight_networks)
        self.clip_value = check_positive("clip_value", clip_value, allow_none=True)
        self.clip_inclusive = check_bool("clip_inclusive", clip_inclusive)

    @classmethod
    def convention_kwargs(cls, c):
        return {"clip_inclusive": c.clip_inclusive}

    def threshold(self, x):
        if not self.ternary_weight_networks:
            return self.threshold_value
        with np.errstate(over="ignore"):
            return host_float(0.7 * check_finite_statistic(abs(x).mean(), "mean |x|", x.dtype))

    def forward(self, x, training=True):
        xp = array_module(x)
        d = self.threshold(x)
        y = xp.sign(xp.sign(x + d) + xp.sign(x - d)).astype(x.dtype, copy=False)
        return y, None if self.clip_value is None else clip_mask(x, self.clip_value, self.clip_inclusive)

    def backward(self, dy, cache):
        return dy if cache is None else dy * cache

    def surrogate(self, x, ref=None, training=True):
        return _clip(x, self.clip_value)


class NoOp(Quantizer):
    """The identity that only records a precision; Larq's ``NoOp`` (``NoOpQuantizer``).

    forward: y = x;  backward: dx = dy;  surrogate: x.
    Parameters: precision=32 (a positive int; Larq requires it, refbnn defaults it so that every
    registry entry builds without arguments). ``NoOp(precision=1)`` tags latent-free binary weights for
    Bop (refbnn.optim.is_binary_weight, Larq's ``Bop.is_binary_variable``). Source: Larq ``NoOp``.
    """

    name = "noop"

    def __init__(self, precision: int = 32):
        if isinstance(precision, bool) or not isinstance(precision, int) or precision < 1:
            raise ValueError(f"precision: expected a positive int (bits), got {precision!r}")
        self.precision = precision

    def forward(self, x, training=True):
        return x, None

    def backward(self, dy, cache):
        return dy

    def surrogate(self, x, ref=None, training=True):
        return x
