"""XNOR-Net (Rastegari et al. 2016): per-output-channel scaled sign weights with the three weight
gradients found in the literature, and the per-sample scaled sign activations."""
from __future__ import annotations

import math

from ..checks import array_module
from ..conventions import clip_mask, sign
from .base import Quantizer, check_bool, check_choice, check_positive, check_sign_zero
from .sign import _clip, _row_mean_abs

GRADIENTS = ("paper", "exact", "detached")


def _row_size(x):
    """n, the entries per output channel (1 for an empty array: then there is nothing to scale)."""
    return max(math.prod(x.shape[1:]), 1) if x.ndim else 1


class XnorWeight(Quantizer):
    """XNOR-Net weights: W~_o = a_o sign(W_o), a_o = mean |W_o| = ||W_o||_1 / n per output channel (axis 0).

    forward:  y = a_o sign(x)   (sign(0) = ``sign_zero``)
    backward, with m = 1[|x| <= clip_value], n = entries per output channel, g = dy:
      gradient="paper"    dx = g (1/n + a_o m)   -- XNOR-Net section 3.1, the diagonal of the Jacobian of
                          a_o sign(W) with the STE for sign [reconstructed: formula recalled, docs/methods/baselines.md;
                          the paper's "r 1[|r| <= 1]" is read as 1[|r| <= 1]]
      gradient="exact"    dx_j = (1/n) sign(x_j) sum_i g_i sign(x_i) + a_o g_j m_j   -- autograd of
                          a_o(W) sign(W) with a_o not detached and the STE for sign
      gradient="detached" dx = g m   -- the common code form (Bi-Real/ReActNet/BiBench): the STE trick
                          differentiates clip(W), so the scale does not multiply the gradient
    surrogates: "paper" x/n + a_o(ref) clip(x); "exact" a_o(x) [sign(ref) - clip(ref) + clip(x)];
                "detached" clip(x)
    Parameters: gradient="paper", clip_value=1.0 (> 0 or None), clip_inclusive=True, sign_zero=1.0.
    Conventions read: sign_zero, clip_inclusive. Sources: XNOR-Net Eq. 2-4 and section 3.1; docs/methods/baselines.md.
    """

    name = "xnor_weight"
    part = "weight"
    precision = 1

    def __init__(self, gradient: str = "paper", clip_value: float | None = 1.0, clip_inclusive: bool = True,
                 sign_zero: float = 1.0):
        self.gradient = check_choice("gradient", gradient, GRADIENTS)
        self.clip_value = check_positive("clip_value", clip_value, allow_none=True)
        self.clip_inclusive = check_bool("clip_inclusive", clip_inclusive)
        self.sign_zero = check_sign_zero(sign_zero)

    @classmethod
    def convention_kwargs(cls, c):
        return {"sign_zero": c.sign_zero, "clip_inclusive": c.clip_inclusive}

    def _mask(self, x):
        return 1.0 if self.clip_value is None else clip_mask(x, self.clip_value, self.clip_inclusive)

    def forward(self, x, training=True):
        a = _row_mean_abs(x)
        b = sign(x, self.sign_zero)
        return (a * b).astype(x.dtype, copy=False), (x, a, b, self._mask(x))

    def backward(self, dy, cache):
        x, a, b, m = cache
        n = _row_size(x)
        if self.gradient == "detached":
            dx = dy * m
        elif self.gradient == "paper":
            dx = dy * (1.0 / n + a * m)
        else:
            xp = array_module(x)
            gb = (dy * b).sum(axis=tuple(range(1, x.ndim)), keepdims=True)
            dx = xp.sign(x) * gb / n + a * dy * m
        return dx.astype(dy.dtype, copy=False)

    def surrogate(self, x, ref=None, training=True):
        ref = x if ref is None else ref
        c = _clip(x, self.clip_value)
        if self.gradient == "detached":
            return c
        if self.gradient == "paper":
            return x / _row_size(x) + _row_mean_abs(ref) * c
        return _row_mean_abs(x) * (sign(ref, self.sign_zero) - _clip(ref, self.clip_value) + c)


class XnorActivation(Quantizer):
    """XNOR-Net activations: A ~ K sign(A) with a per-sample scale K (axis 0 = batch).

    forward:   y = K_n sign(x), with ``scale`` one of
               - ``"per_sample"`` (default): K_n = mean |x| over every axis but 0 (the form BiBench uses),
                 a constant for backprop (no gradient flows through K_n);
               - ``"none"`` (the string): K = 1, plain sign(x) with the clipped STE (the XNOR-Net++ / ReCU /
                 IR-Net comparisons drop K). On the command line the string is written in quotes,
                 ``--param input_quantizer.scale="'none'"``: an unquoted ``none`` means None, which is refused.
    backward:  dx = dy K_n 1[|x| <= clip_value]   (K_n = 1 for ``scale="none"``)
    surrogate: K_n(ref) clip(x, -clip_value, clip_value)
    Parameters: scale="per_sample", clip_value=1.0, clip_inclusive=True, sign_zero=1.0.
    Conventions read: sign_zero, clip_inclusive.
    Not implemented: the paper's spatial map K = (channel mean of |A|) * box filter of the conv kernel's
    size (XNOR-Net section 3.2); it depends on the layer's kernel, and a quantizer knows no layer.
    Sources: XNOR-Net section 3.2; BiBench xnor.py; docs/methods/baselines.md.
    """

    name = "xnor_act"
    part = "input"
    precision = 1

    def __init__(self, scale: str = "per_sample", clip_value: float | None = 1.0, clip_inclusive: bool = True,
                 sign_zero: float = 1.0):
        self.scale = check_choice("scale", scale, ("per_sample", "none"))
        self.clip_value = check_positive("clip_value", clip_value, allow_none=True)
        self.clip_inclusive = check_bool("clip_inclusive", clip_inclusive)
        self.sign_zero = check_sign_zero(sign_zero)

    @classmethod
    def convention_kwargs(cls, c):
        return {"sign_zero": c.sign_zero, "clip_inclusive": c.clip_inclusive}

    @property
    def binary(self):
        return self.scale == "none" and self.sign_zero != 0.0

    def _scale(self, x):
        return _row_mean_abs(x) if self.scale == "per_sample" else 1.0

    def forward(self, x, training=True):
        k = self._scale(x)
        m = 1.0 if self.clip_value is None else clip_mask(x, self.clip_value, self.clip_inclusive)
        return (k * sign(x, self.sign_zero)).astype(x.dtype, copy=False), k * m

    def backward(self, dy, cache):
        return (dy * cache).astype(dy.dtype, copy=False)

    def surrogate(self, x, ref=None, training=True):
        return self._scale(x if ref is None else ref) * _clip(x, self.clip_value)
