"""DoReFa-Net quantizers (Zhou et al. 2016): Larq's k-bit ``dorefa_quantizer`` and the 1-bit weight
quantizer ``dorefa_sign`` (E(|w|) sign(w)) that the IR-Net and ReCU tables compare with."""
from __future__ import annotations

import numpy as np

from ..checks import array_module, check_finite_statistic, host_float
from ..conventions import sign
from .base import Quantizer, check_choice, check_sign_zero


class DoReFa(Quantizer):
    """k-bit DoReFa quantizer; Larq's ``dorefa_quantizer`` (class ``DoReFa``, old name ``DoReFaQuantizer``).

    With n = 2^k_bit - 1 and round = round-half-to-even (tf.round, np.round: "Larq's rounding"):
    mode="activations":
        forward   y = round(n clip(x, 0, 1)) / n
        backward  dx = dy * 1[0 <= x <= 1]      (identity through round; tf.clip_by_value's gradient
                                                 passes at the bounds)
        surrogate clip(x, 0, 1)
    mode="weights":
        forward   t = tanh(x);  D = max |t| over the tensor (a constant for backprop; D = 0 gives 0, as
                  tf.math.divide_no_nan);  y = 2 round(n (t / (2D) + 1/2)) / n - 1
        backward  dx = dy * (1 - t^2) / D
        surrogate tanh(x) / D(ref)
    Parameters: k_bit=2 (positive int; the precision), mode="activations".
    Outputs are exactly +-1 only for mode="weights", k_bit=1 (then ``binary``).
    Sources: DoReFa-Net Eq. 5 (quantize_k), Eq. 9 (weights, k > 1), Eq. 11 (activations); Larq ``DoReFa``.
    """

    name = "dorefa_quantizer"

    def __init__(self, k_bit: int = 2, mode: str = "activations"):
        if isinstance(k_bit, bool) or not isinstance(k_bit, int) or k_bit < 1:
            raise ValueError(f"k_bit: expected a positive int, got {k_bit!r}")
        self.k_bit = k_bit
        self.mode = check_choice("mode", mode, ("activations", "weights"))

    @property
    def precision(self):
        return self.k_bit

    @property
    def binary(self):
        return self.mode == "weights" and self.k_bit == 1

    def _levels(self):
        return float(2 ** self.k_bit - 1)

    def _divisor(self, x):
        """max |tanh x|: a float on the host, a 0-d array on a device (no synchronisation)."""
        return host_float(abs(array_module(x).tanh(x)).max()) if x.size else 0.0

    def forward(self, x, training=True):
        xp = array_module(x)
        n = self._levels()
        if self.mode == "activations":
            y = xp.round(xp.clip(x, 0.0, 1.0) * n) / n
            return y.astype(x.dtype, copy=False), ((x >= 0) & (x <= 1)).astype(x.dtype)
        t = xp.tanh(x)
        d = self._divisor(x)
        if isinstance(d, float):
            normed = t / (2.0 * d) + 0.5 if d > 0 else xp.full_like(t, 0.5)
            grad = (1.0 - t * t) / d if d > 0 else xp.zeros_like(t)
        else:  # on a device: the same values without asking it whether d > 0 (d = 0 only when x = 0)
            safe = xp.where(d > 0, d, 1.0).astype(x.dtype)
            normed = xp.where(d > 0, t / (2.0 * safe) + 0.5, 0.5).astype(t.dtype, copy=False)
            grad = xp.where(d > 0, (1.0 - t * t) / safe, 0.0).astype(t.dtype, copy=False)
        y = 2.0 * (xp.round(normed * n) / n) - 1.0
        return y.astype(x.dtype, copy=False), grad.astype(x.dtype, copy=False)

    def backward(self, dy, cache):
        return dy * cache

    def surrogate(self, x, ref=None, training=True):
        xp = array_module(x)
        if self.mode == "activations":
            return xp.clip(x, 0.0, 1.0)
        d = self._divisor(x if ref is None else ref)
        if not isinstance(d, float):
            return xp.where(d > 0, xp.tanh(x) / xp.where(d > 0, d, 1.0).astype(x.dtype), 0.0).astype(x.dtype)
        return xp.tanh(x) / d if d > 0 else xp.zeros_like(x)


class DoReFaSign(Quantizer):
    """DoReFa-Net's 1-bit weights: the layer-wide mean magnitude times the sign, identity STE.

    forward:   y = E(|x|) sign(x), E = mean over the whole tensor (a scalar), a constant for backprop
    backward:  dx = dy   (straight-through: DoReFa Eq. 7-8 pass the gradient of r_o to r_i unchanged)
    surrogate: x
    Parameters: sign_zero=1.0. Conventions read: sign_zero.
    Sources: DoReFa-Net section 2.2 (k = 1 case, Eq. 7-8); docs/methods/baselines.md.
    """

    name = "dorefa_sign"
    part = "weight"
    precision = 1

    def __init__(self, sign_zero: float = 1.0):
        self.sign_zero = check_sign_zero(sign_zero)

    @classmethod
    def convention_kwargs(cls, c):
        return {"sign_zero": c.sign_zero}

    def forward(self, x, training=True):
        with np.errstate(over="ignore"):
            e = check_finite_statistic(abs(x).mean(), "mean |x|", x.dtype) if x.size else x.dtype.type(0)
        return (e * sign(x, self.sign_zero)).astype(x.dtype, copy=False), None

    def backward(self, dy, cache):
        return dy

    def surrogate(self, x, ref=None, training=True):
        return x
