"""Sign quantizers with straight-through estimators (BinaryConnect, BNN, Larq's ste_sign)."""
from __future__ import annotations

from ..checks import array_module
from ..conventions import clip_mask, sign
from .base import Quantizer


class SteSign(Quantizer):
    """Sign with a (clipped) straight-through estimator.

    forward:  y = sign(x), with sign(0) = ``sign_zero`` (+1: BNN paper, Larq; 0: torch.sign)
    backward: dx = dy * 1[|x| <= clip_value]   (``clip_inclusive=False``: |x| < clip_value)
              dx = dy                          when ``clip_value`` is None (identity STE)
    surrogate: clip(x, -clip_value, clip_value), or x for the identity STE.

    Sources: BinaryConnect (Courbariaux et al. 2015, identity STE on weights), BNN (Hubara et al.
    2016, Eq. 4: g_r = g_q 1[|r| <= 1]), Larq ``ste_sign(clip_value=1.0)``.
    """

    name = "ste_sign"
    precision = 1

    def __init__(self, clip_value: float | None = 1.0, sign_zero: float = 1.0, clip_inclusive: bool = True):
        if clip_value is not None and not clip_value > 0:
            raise ValueError(f"clip_value: expected a positive number or None, got {clip_value!r}")
        if sign_zero not in (1.0, 0.0, -1.0):
            raise ValueError(f"sign_zero: expected 1.0, 0.0 or -1.0, got {sign_zero!r}")
        self.clip_value = clip_value
        self.sign_zero = sign_zero
        self.clip_inclusive = clip_inclusive

    @property
    def binary(self):
        return self.sign_zero != 0.0

    def config(self):
        return {"clip_value": self.clip_value, "sign_zero": self.sign_zero, "clip_inclusive": self.clip_inclusive}

    def forward(self, x):
        y = sign(x, self.sign_zero)
        if self.clip_value is None:
            return y, None
        return y, clip_mask(x, self.clip_value, self.clip_inclusive)

    def backward(self, dy, cache):
        return dy if cache is None else dy * cache

    def surrogate(self, x):
        return x if self.clip_value is None else array_module(x).clip(x, -self.clip_value, self.clip_value)


class IdentitySteSign(SteSign):
    """Sign with the identity straight-through estimator (BinaryConnect's weights).

    forward: y = sign(x) (sign(0) = ``sign_zero``);  backward: dx = dy;  surrogate: x.
    Equivalent to Larq's ``ste_sign(clip_value=None)``.
    """

    name = "identity_ste_sign"

    def __init__(self, sign_zero: float = 1.0):
        super().__init__(clip_value=None, sign_zero=sign_zero)

    def config(self):
        return {"sign_zero": self.sign_zero}
