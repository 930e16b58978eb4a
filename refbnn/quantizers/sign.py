"""Sign quantizers: BinaryConnect, BNN, Bi-Real, BNN+ (Larq's ste_sign, approx_sign, swish_sign,
magnitude_aware_sign; refbnn's identity_ste_sign and stochastic_sign).

Every class here outputs sign(x) (possibly scaled) in the forward pass and differs only in the
estimator. Larq's names keep Larq's semantics (larq/larq 0.14, larq/quantizers.py): sign(0) = +1 by default,
clipped gradients pass at abs(x) == clip_value.
"""
from __future__ import annotations

import numpy as np

from ..checks import array_module, check_finite_statistic
from ..conventions import clip_mask, sign
from .base import Quantizer, check_bool, check_choice, check_positive, check_sign_zero


def _row_mean_abs(x):
    """mean |x| over every axis but 0 (per output channel), keepdims; refused if it overflows."""
    with np.errstate(over="ignore"):
        m = abs(x).mean(axis=tuple(range(1, x.ndim)), keepdims=True)
    return check_finite_statistic(m, "mean |x| per row", x.dtype) if m.size else m


def _clip(x, c):
    return x if c is None else array_module(x).clip(x, -c, c)


# -- sign-Swish (BNN+, Darabi et al. 2018), shared with refbnn.quantizers.proxconnect ---------------
# |v| = |b x / 2| beyond this gives tanh(v) = 1 exactly in float32 and float64, so both formulas below
# have reached their limits (SS = +-1, SS' = 0); clipping v there keeps b x from overflowing to Inf,
# where v (1 - tanh(v)^2) = Inf * 0 would be NaN. Values within the bound are unchanged.
_SWISH_V_MAX = 1e4


def _swish_v(xp, x, beta):
    """v = b x / 2, clipped to +-_SWISH_V_MAX (an overflow to Inf is clipped too)."""
    with np.errstate(over="ignore"):
        v = xp.asarray((0.5 * beta) * x)
    return xp.clip(v, -_SWISH_V_MAX, _SWISH_V_MAX, out=v)


def sign_swish(x, beta):
    """SS_b(x) = 2 sigmoid(b x) [1 + b x (1 - sigmoid(b x))] - 1 = tanh(v) + v (1 - tanh(v)^2), v = b x / 2.

    Odd, SS(0) = 0, not monotone: max 1.19968 at b x = 2.3994, -> sign(x) as b -> infinity
    (docs/methods/baselines.md). The tanh form has no overflow for large |b x|.
    """
    xp = array_module(x)
    v = _swish_v(xp, x, beta)
    t = xp.tanh(v)
    return (t + v * (1.0 - t * t)).astype(x.dtype, copy=False)


def sign_swish_grad(x, beta):
    """SS_b'(x) = b [2 - b x tanh(b x / 2)] / [1 + cosh(b x)] = b (1 - tanh(v)^2) (1 - v tanh(v)), v = b x / 2.

    SS'(0) = b; the integral over R is 2 (Larq's swish_sign gradient, BNN+ Eq. 6)."""
    xp = array_module(x)
    v = _swish_v(xp, x, beta)
    t = xp.tanh(v)
    return (beta * (1.0 - t * t) * (1.0 - v * t)).astype(x.dtype, copy=False)


def approx_sign_polynomial(x):
    """Bi-Real's ApproxSign F(x): -1 (x < -1), 2x + x^2 (-1 <= x < 0), 2x - x^2 (0 <= x < 1), 1 (x >= 1)
    = 2c - c|c| with c = clip(x, -1, 1). F'(x) = max(0, 2 - 2|x|)."""
    c = array_module(x).clip(x, -1.0, 1.0)
    return 2.0 * c - c * abs(c)


def approx_sign_grad(x):
    return array_module(x).maximum(2.0 - 2.0 * abs(x), 0.0).astype(x.dtype, copy=False)


class ElementwiseSign(Quantizer):
    """The common shape of the sign quantizers whose estimator is element-wise:

    forward:  y = sign(x), sign(0) = ``sign_zero``;  the cache is the surrogate's derivative at x
    backward: dx = dy * derivative(x)            (``derivative`` None: the identity, dx = dy)

    Subclasses give ``derivative(x)`` and ``surrogate``. Outputs are exactly +-1 (``binary``) unless
    sign(0) = 0.
    """

    precision = 1

    @classmethod
    def convention_kwargs(cls, c):
        return {"sign_zero": c.sign_zero}

    @property
    def binary(self):
        return self.sign_zero != 0.0

    def derivative(self, x):
        raise NotImplementedError

    def forward(self, x, training=True):
        return sign(x, self.sign_zero), self.derivative(x)

    def backward(self, dy, cache):
        return dy if cache is None else dy * cache


class SteSign(ElementwiseSign):
    """Sign with a (clipped) straight-through estimator; Larq's ``ste_sign``.

    forward:   y = sign(x), with sign(0) = ``sign_zero`` (+1: BNN paper, Larq; 0: torch.sign)
    backward:  dx = dy * 1[|x| <= clip_value]   (``clip_inclusive=False``: |x| < clip_value)
               dx = dy                          when ``clip_value`` is None (identity STE)
    surrogate: clip(x, -clip_value, clip_value), or x for the identity STE.
    Parameters: clip_value=1.0 (> 0 or None), sign_zero=1.0, clip_inclusive=True.
    Conventions read: sign_zero, clip_inclusive.

    Sources: BNN (Hubara et al. 2016, Eq. 4: g_r = g_q 1[|r| <= 1]); Larq ``SteSign(clip_value=1.0)``
    (larq/quantizers.py: math.sign forward, ``_clipped_gradient`` with less_equal); docs/methods/baselines.md.
    """

    name = "ste_sign"
    precision = 1
    accepts_inf = True  # sign(+-Inf) = +-1, the clipped estimator is 0 there

    def __init__(self, clip_value: float | None = 1.0, sign_zero: float = 1.0, clip_inclusive: bool = True):
        self.clip_value = check_positive("clip_value", clip_value, allow_none=True)
        self.sign_zero = check_sign_zero(sign_zero)
        self.clip_inclusive = check_bool("clip_inclusive", clip_inclusive)

    @classmethod
    def convention_kwargs(cls, c):
        return {"sign_zero": c.sign_zero, "clip_inclusive": c.clip_inclusive}

    def derivative(self, x):
        return None if self.clip_value is None else clip_mask(x, self.clip_value, self.clip_inclusive)

    def surrogate(self, x, ref=None, training=True):
        return _clip(x, self.clip_value)


class IdentitySteSign(SteSign):
    """Sign with the identity straight-through estimator (BinaryConnect's and BNN's weights).

    forward: y = sign(x) (sign(0) = ``sign_zero``);  backward: dx = dy;  surrogate: x.
    Parameters: sign_zero=1.0. Conventions read: sign_zero.
    Sources: BinaryConnect (Courbariaux et al. 2015, Algorithm 1: the gradient w.r.t. w_b updates the
    latent w); docs/methods/baselines.md. Equivalent to Larq's ``SteSign(clip_value=None)``.
    """

    name = "identity_ste_sign"

    def __init__(self, sign_zero: float = 1.0):
        super().__init__(clip_value=None, sign_zero=sign_zero)

    convention_kwargs = ElementwiseSign.convention_kwargs


class StochasticSign(Quantizer):
    """Stochastic BinaryConnect: sample +-1 with the hard-sigmoid probability, identity STE.

    forward (training): y = +1 with probability p = hard_sigmoid(x) = clip((x + 1) / 2, 0, 1), else -1
                        (y = +1 iff u < p with u ~ U[0, 1) drawn from ``self.rng``)
    forward (eval):     ``eval_forward="sign"``: y = sign(x) (a binary network at test time, BC's
                        inference method 1); ``"real"``: y = x (the real-valued weights, inference
                        method 2, which BinaryConnect's paper reports for the stochastic variant
                        [recalled from the paper])
    backward:           dx = dy (identity STE);   surrogate: x.
    Parameters: eval_forward="sign", sign_zero=1.0 (eval sign only), seed=None (the generator used
    until the training loop hands over a per-epoch one with ``set_rng``).
    Source: Courbariaux et al. 2015, Eq. 2-3 and section 2.6; docs/methods/baselines.md.
    """

    name = "stochastic_sign"
    precision = 1
    needs_rng = True

    def __init__(self, eval_forward: str = "sign", sign_zero: float = 1.0, seed: int | None = None):
        self.eval_forward = check_choice("eval_forward", eval_forward, ("sign", "real"))
        self.sign_zero = check_sign_zero(sign_zero)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    @classmethod
    def convention_kwargs(cls, c):
        return {"sign_zero": c.sign_zero}

    @property
    def binary(self):
        return self.eval_forward == "sign" and self.sign_zero != 0.0

    def set_rng(self, rng):
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"{self.name}: expected a numpy.random.Generator, got {type(rng).__name__}")
        self.rng = rng

    @staticmethod
    def probability(x):
        """The hard sigmoid clip((x + 1) / 2, 0, 1): P(y = +1)."""
        return array_module(x).clip((x + 1.0) * 0.5, 0.0, 1.0)

    def forward(self, x, training=True):
        xp = array_module(x)
        if not training:
            return (sign(x, self.sign_zero) if self.eval_forward == "sign" else x.copy()), None
        u = xp.asarray(self.rng.random(x.shape, dtype=x.dtype))  # in [0, 1), in x's dtype
        return xp.where(u < self.probability(x), 1.0, -1.0).astype(x.dtype), None

    def backward(self, dy, cache):
        return dy

    def surrogate(self, x, ref=None, training=True):
        return x


class ApproxSign(ElementwiseSign):
    """Bi-Real Net's ApproxSign estimator; Larq's ``approx_sign``.

    forward:   y = sign(x)  (sign(0) = ``sign_zero``, Larq: +1)
    backward:  dx = dy * max(0, 2 - 2|x|)   (2 at 0, 0 for |x| >= 1)
    surrogate: F(x) = 2c - c|c|, c = clip(x, -1, 1)   (the piecewise polynomial of Bi-Real Eq. 4)
    Parameters: sign_zero=1.0. Conventions read: sign_zero.
    Sources: Liu et al. 2018 (Bi-Real Net) Eq. 4-5; ReCU Eq. 7; Larq ``ApproxSign``; docs/methods/baselines.md.
    """

    name = "approx_sign"
    accepts_inf = True  # sign(+-Inf) = +-1, max(0, 2 - 2|x|) = 0 there

    def __init__(self, sign_zero: float = 1.0):
        self.sign_zero = check_sign_zero(sign_zero)

    def derivative(self, x):
        return approx_sign_grad(x)

    def surrogate(self, x, ref=None, training=True):
        return approx_sign_polynomial(x)


class SwishSign(ElementwiseSign):
    """BNN+'s SignSwish estimator; Larq's ``swish_sign``.

    forward:   y = sign(x)  (sign(0) = ``sign_zero``, Larq: +1)
    backward:  dx = dy * SS_b'(x) = dy * b [2 - b x tanh(b x / 2)] / [1 + cosh(b x)]
    surrogate: SS_b(x) = 2 sigmoid(b x) [1 + b x (1 - sigmoid(b x))] - 1
    Parameters: beta=5.0 (> 0), sign_zero=1.0. Conventions read: sign_zero.
    Sources: Darabi et al. 2018 (BNN+) Eq. 5-6; Larq ``SwishSign(beta=5.0)``; docs/methods/baselines.md.
    """

    name = "swish_sign"

    def __init__(self, beta: float = 5.0, sign_zero: float = 1.0):
        self.beta = check_positive("beta", beta)
        self.sign_zero = check_sign_zero(sign_zero)

    def derivative(self, x):
        return sign_swish_grad(x, self.beta)

    def surrogate(self, x, ref=None, training=True):
        return sign_swish(x, self.beta)


class MagnitudeAwareSign(Quantizer):
    """Bi-Real Net's magnitude-aware sign; Larq's ``magnitude_aware_sign``.

    forward:   y = a_o sign(x),  a_o = mean |x| over every axis but 0 (per output channel), a constant
               for backprop (Larq: stop_gradient; Larq reduces over every axis but the *last*, its
               HWIO kernels' output axis; refbnn's weights are OIHW / (out, in), so axis 0)
    backward:  ``scale_gradient=True`` (Larq, Bi-Real paper): dx = dy * a_o * 1[|x| <= clip_value]
               ``scale_gradient=False`` (Bi-Real / ReActNet code): dx = dy * 1[|x| <= clip_value]
    surrogate: a_o(ref) clip(x, -clip_value, clip_value)  (or without a_o)
    Parameters: clip_value=1.0 (> 0 or None), scale_gradient=True, sign_zero=1.0, clip_inclusive=True.
    Conventions read: sign_zero, clip_inclusive, bireal_scaled_grad (-> scale_gradient).
    Sources: Liu et al. 2018 section 3.3 (the paper's gradient is a_o 1[|w| < 1], [reconstructed]);
    Larq ``MagnitudeAwareSign``; ReActNet ``birealnet.py`` HardBinaryConv; docs/methods/baselines.md.
    """

    name = "magnitude_aware_sign"
    part = "weight"
    precision = 1

    def __init__(self, clip_value: float | None = 1.0, scale_gradient: bool = True, sign_zero: float = 1.0,
                 clip_inclusive: bool = True):
        self.clip_value = check_positive("clip_value", clip_value, allow_none=True)
        self.scale_gradient = check_bool("scale_gradient", scale_gradient)
        self.sign_zero = check_sign_zero(sign_zero)
        self.clip_inclusive = check_bool("clip_inclusive", clip_inclusive)

    @classmethod
    def convention_kwargs(cls, c):
        return {"sign_zero": c.sign_zero, "clip_inclusive": c.clip_inclusive, "scale_gradient": c.bireal_scaled_grad}

    def forward(self, x, training=True):
        a = _row_mean_abs(x)
        y = a * sign(x, self.sign_zero)
        mult = a if self.scale_gradient else 1.0
        if self.clip_value is not None:
            mult = mult * clip_mask(x, self.clip_value, self.clip_inclusive)
        return y, mult

    def backward(self, dy, cache):
        return (dy * cache).astype(dy.dtype, copy=False)

    def surrogate(self, x, ref=None, training=True):
        ref = x if ref is None else ref
        s = _clip(x, self.clip_value)
        return _row_mean_abs(ref) * s if self.scale_gradient else s
