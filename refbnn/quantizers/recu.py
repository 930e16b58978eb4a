"""ReCU (Xu et al., ICCV 2021; arXiv 2103.12369 v1): weight standardization, the rectified clamp unit
with the Laplace-quantile threshold, the analytic or learned scaling factor, ApproxSign activations.

Two entry points, one documented default each:

- built by name (``get_quantizer("recu_weight")``, ``crosscheck --quantizer`` without
  ``--convention``): the constructor's defaults, which are the official code's (z-hXu/ReCU @ 9a73bed,
  cifar/modules/binarized_modules.py L9-67): centering, b* = 2 (the 2 sqrt(2) factor), unbiased
  variance + 1e-5 inside the sqrt, gradients through the statistics (``standardize_grad="through"``),
  tau = 1 (the registered buffer) until the schedule sets it, torch.sign, a learned per-channel alpha
  in the layer (so ``alpha="none"`` here) and the per-sample activation normalization in training;
- built through a convention (``from_convention``, ``LayerFactory``, ``refbnn train`` whose default
  convention is ``paper``): the convention's choices (docs/conventions.md); under ``paper``, no
  centering, sign(0) = +1, the analytic alpha, no activation normalization, the identity weight
  gradient.

b* is the Laplace scale the standardization aims for (docs/glossary.md): mean |w1| = b* for a Laplace
row. The tau schedule is ``recu_tau`` (``refbnn.schedules.RECU_SCHEDULE``, formula ``recu_state``,
ReCU Eq. 24).

The closed forms of the Laplace model (integrals of the La(0, b) density; tests/test_claims.py
checks them by Monte Carlo) are here too, for the tests and for readers: ``laplace_quantile``,
``clamped_fraction``, ``analytic_alpha``, ``quantization_error`` (corrected) and
``quantization_error_eq14`` (the paper's, which has an algebra error).
"""
from __future__ import annotations

import math

import numpy as np

from ..checks import array_module, host_float, on_host
from ..conventions import STANDARDIZE_GRADS, clip_mask, sign
from .base import Quantizer, check_bool, check_choice, check_ddof, check_nonnegative, check_positive, check_sign_zero
from .sign import approx_sign_grad, approx_sign_polynomial
from .standardize import row_standardize_backward, row_standardize_forward, row_standardize_surrogate


def check_tau(tau):
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.5 < tau <= 1.0:
        raise ValueError(f"tau: expected a value in (0.5, 1], got {tau!r}")
    return float(tau)


# -- the Laplace model La(0, b) ----------------------------------------------------------------------
def laplace_quantile(tau, b):
    """Q_tau = -b ln(2 - 2 tau), the tau-quantile of La(0, b) for tau > 1/2 (ReCU Eq. 10-11); +inf at tau = 1."""
    tau = check_tau(tau)
    return math.inf if tau == 1.0 else -host_float(b) * math.log(2.0 - 2.0 * tau)


def clamped_fraction(tau):
    """P(|w| >= Q_tau) = 2 - 2 tau under La(0, b) (ReCU Eq. 12)."""
    return 2.0 - 2.0 * check_tau(tau)


def analytic_alpha(tau, b):
    """alpha = E|ReCU(w)| = b - (Q + b) e^(-Q/b) + 2 Q (1 - tau) = b (2 tau - 1) (ReCU Eq. 13, A1)."""
    return host_float(b) * (2.0 * check_tau(tau) - 1.0)


def quantization_error(tau, b):
    """The correct QE(tau) = E[(ReCU(w) - alpha sign(ReCU(w)))^2] under La(0, b), alpha = b (2 tau - 1):
    b^2 (1 - p^2 + 2 p ln p), p = 2 - 2 tau; increasing on (1/2, 1] from 0 to b^2 (the integral of
    (w - alpha sign w)^2 against the clamped Laplace law)."""
    p = clamped_fraction(tau)
    return float(b) ** 2 * (1.0 - p * p + (2.0 * p * math.log(p) if p > 0 else 0.0))


def quantization_error_eq14(tau, b):
    """The paper's closed form (Eq. 14, A2-A6): b^2 (-16 tau^3 + 44 tau^2 - 40 tau - 4 (tau - 1) ln(2 - 2 tau) + 13).
    It equals the correct value + 16 b^2 (1 - tau)^3: Eq. 14's first term should read (alpha - b)^2 (1 - e^(-Q/b)),
    not (1 + e^(-Q/b)). Kept to show that a Monte Carlo estimate contradicts it."""
    tau = check_tau(tau)
    log_term = -4.0 * (tau - 1.0) * math.log(2.0 - 2.0 * tau) if tau < 1.0 else 0.0
    return float(b) ** 2 * (-16.0 * tau ** 3 + 44.0 * tau ** 2 - 40.0 * tau + log_term + 13.0)


def clamped_entropy(tau, b):
    """The paper's entropy of the clamped Laplace (Eq. 17): differential entropy of the continuous part plus
    the point masses' -2 (1 - tau) ln(1 - tau); = ln(2b) + 1 - p (1 + ln b)."""
    p = clamped_fraction(tau)
    return math.log(2.0 * b) + 1.0 - p * (1.0 + math.log(b))


def _no_clamp(q) -> bool:
    """Q = +inf (tau = 1): a Python float, never a device value (laplace_quantile)."""
    return isinstance(q, float) and math.isinf(q)


def _weak(v, dtype):
    """``v`` as NumPy uses a Python float against an array of ``dtype``: rounded to ``dtype``. A
    float stays a float (NumPy rounds it); a 0-d device value (float64, see RecuWeight.threshold) is
    rounded here, so that device and host compute the same bits."""
    return v if isinstance(v, float) else v.astype(dtype)


def recu_clamp(w, q):
    """ReCU(w) = max(min(w, Q), -Q) (Eq. 8 with Q_(1 - tau) = -Q_tau); d/dw = 1[-Q <= w <= Q]."""
    if _no_clamp(q):
        return w
    q = _weak(q, w.dtype)
    return array_module(w).clip(w, -q, q)


class RecuWeight(Quantizer):
    """ReCU's weight quantizer: standardize, rectified clamp, sign (optionally times the analytic alpha).

    forward (code order, binarized_modules.py L20-24, L32; paper Eq. 8-13, 19-23):
        w1 = sqrt(2) b* (w - c mean_o w) / s_o       standardization per output channel; c = 1 (``center``,
             s_o = sqrt(var_o(w) + eps)               code L20-21) or 0 (paper Eq. 22); b* = 2 in the code
        b  = mean |w1| over the whole tensor          the Laplace scale's MLE, a constant for backprop (L22)
        Q  = -b ln(2 - 2 tau)                         the tau-quantile; tau = 1 gives Q = inf (no clamp)
        w2 = clamp(w1, -Q, Q)                         the rectified clamp unit (L24)
        y  = alpha sign(w2),  alpha = b (2 tau - 1)   (``alpha="analytic"``, paper Eq. 13, detached) or 1
             (``alpha="none"``, the string: the code's learned per-channel alpha is the layer's
             ``scale="learned"``; on the command line ``--param alpha="'none'"``, unquoted none is None)
    backward, g = dy:
        g1 = g alpha 1[-Q <= w1 <= Q]                 identity STE of sign (L43-52) times the clamp's gradient
        then back through the standardization, ``standardize_grad`` (refbnn.quantizers.standardize):
        "through" (the code's autograd: mean and std not detached, L20-21), with c' = sqrt(2) b*,
            dL/dw = (c'/s)(g1 - c mean(g1)) - c' (z^T g1) u / ((n - 1) s^3)
            (c = 1, z = u when centering: the derivative of L20-21)
        "detached" (mean and std constants):  dL/dw = c' g1 / s   (c'/s = 2 sqrt(2) / sigma_o in the code,
            about 48 for Kaiming-initialised 3x3 convs with 64 channels)
        "identity" (the paper preset, IR-Net Algorithm 1 line 9):  dL/dw = g1
    surrogate: alpha(ref) clamp(S(x), -Q(ref), Q(ref)), S = the standardization read as ``standardize_grad``
    says (itself; its value at ref + c' (x - ref) / s(ref); its value at ref + (x - ref))
    Parameters: tau=1.0 (state, in (0.5, 1]), b_star=2.0, center=True, eps=1e-5, std_ddof=1,
    eps_inside_sqrt=True, standardize_grad="through", alpha="none", sign_zero=0.0, clip_inclusive=True.
    Conventions read: sign_zero, clip_inclusive, std_ddof, eps_inside_sqrt, standardize_grad,
    recu_ws_center (-> center), recu_alpha (-> alpha "analytic" or "none").
    Notes: the paper does not say whether its standardization is per channel or per layer; refbnn uses
    per output channel for both (the code's). The paper's alpha fuses weight and activation scales
    (Eq. 3); it is a single scalar per layer.
    """

    name = "recu_weight"
    part = "weight"
    precision = 1

    def __init__(self, tau: float = 1.0, b_star: float = 2.0, center: bool = True, eps: float = 1e-5,
                 std_ddof: int = 1, eps_inside_sqrt: bool = True, standardize_grad: str = "through",
                 alpha: str = "none", sign_zero: float = 0.0, clip_inclusive: bool = True):
        self.tau = check_tau(tau)
        self.b_star = check_positive("b_star", b_star)
        self.center = check_bool("center", center)
        self.eps = check_nonnegative("eps", eps)
        self.std_ddof = check_ddof(std_ddof)
        self.eps_inside_sqrt = check_bool("eps_inside_sqrt", eps_inside_sqrt)
        self.standardize_grad = check_choice("standardize_grad", standardize_grad, STANDARDIZE_GRADS)
        self.alpha = check_choice("alpha", alpha, ("none", "analytic"))
        self.sign_zero = check_sign_zero(sign_zero)
        self.clip_inclusive = check_bool("clip_inclusive", clip_inclusive)

    @classmethod
    def convention_kwargs(cls, c):
        return {"sign_zero": c.sign_zero, "clip_inclusive": c.clip_inclusive, "std_ddof": c.std_ddof,
                "eps_inside_sqrt": c.eps_inside_sqrt, "standardize_grad": c.standardize_grad,
                "center": c.recu_ws_center, "alpha": "analytic" if c.recu_alpha == "analytic" else "none"}

    def state(self):
        return {"tau": self.tau}

    def check_state(self, name, value):
        return check_tau(float(value))

    @property
    def binary(self):
        return self.alpha == "none" and self.sign_zero != 0.0

    def _std_kwargs(self):
        return {"center": self.center, "ddof": self.std_ddof, "eps": self.eps, "eps_inside_sqrt": self.eps_inside_sqrt,
                "gain": math.sqrt(2.0) * self.b_star}

    def standardized(self, x):
        """w1, the standardized weights (mean |w1| = b* for a Laplace row)."""
        return row_standardize_forward(x, what="output channel", **self._std_kwargs())[0]

    def threshold(self, w1):
        """(b, Q): the layer-wide mean |w1| and the clamp threshold -b ln(2 - 2 tau), plain floats on
        the host; on a device 0-d float64 arrays (the host's float, without waiting for the device),
        Q = inf a float."""
        b = abs(w1).mean()
        b = float(b) if on_host(b) else b.astype(np.float64)
        return b, laplace_quantile(self.tau, b)

    def scale(self, b):
        return analytic_alpha(self.tau, b) if self.alpha == "analytic" else 1.0

    def forward(self, x, training=True):
        w1, scache = row_standardize_forward(x, what="output channel", **self._std_kwargs())
        b, q = self.threshold(w1)
        a = _weak(self.scale(b), x.dtype)
        y = (a * sign(recu_clamp(w1, q), self.sign_zero)).astype(x.dtype, copy=False)
        m = 1.0 if _no_clamp(q) else clip_mask(w1, _weak(q, w1.dtype), self.clip_inclusive)
        return y, (a * m, scache)

    def backward(self, dy, cache):
        am, scache = cache
        return row_standardize_backward((dy * am).astype(dy.dtype, copy=False), scache, self.standardize_grad)

    def surrogate(self, x, ref=None, training=True):
        ref = x if ref is None else ref
        b, q = self.threshold(self.standardized(ref))
        w1 = row_standardize_surrogate(x, ref, self.standardize_grad, **self._std_kwargs())
        return _weak(self.scale(b), w1.dtype) * recu_clamp(w1, q)


class RecuActivation(Quantizer):
    """ReCU's activation quantizer: sign with the ApproxSign estimator, optionally on a per-sample
    normalized input (the official code's training mode; axis 0 = batch).

    forward:   y = sign(x)   (sign(0) = ``sign_zero``); in training mode with ``normalize`` the code first
               computes a0 = x / s_n, s_n = sqrt(var_n(x) + eps) over every axis but 0, unbiased, no
               centering, not detached (L26-29) -- sign(a0) = sign(x); otherwise a0 = x
    backward:  g0 = dy max(0, 2 - 2|a0|)   (ApproxSign, L55-67; paper Eq. 7)
               then back through the normalization when it was applied, as ``standardize_grad`` says:
               "through" (the code's autograd), dL/dx_j = g0_j / s - (x_j - mean x)(sum_i g0_i x_i) / ((M - 1) s^3)
               (the derivative of L27); "detached", dL/dx = g0 / s; "identity", dL/dx = g0.
               Net effect: the ApproxSign window is |x| < s_n.
    surrogate: F(a0(x)) with F the ApproxSign polynomial 2c - c|c|, c = clip(a0, -1, 1)
    Parameters: normalize=True, eps=1e-5, std_ddof=1, eps_inside_sqrt=True, standardize_grad="through",
    sign_zero=0.0. Conventions read: recu_act_norm (-> normalize), std_ddof, eps_inside_sqrt,
    standardize_grad, sign_zero.
    """

    name = "recu_act"
    part = "input"
    precision = 1

    def __init__(self, normalize: bool = True, eps: float = 1e-5, std_ddof: int = 1, eps_inside_sqrt: bool = True,
                 standardize_grad: str = "through", sign_zero: float = 0.0):
        self.normalize = check_bool("normalize", normalize)
        self.eps = check_nonnegative("eps", eps)
        self.std_ddof = check_ddof(std_ddof)
        self.eps_inside_sqrt = check_bool("eps_inside_sqrt", eps_inside_sqrt)
        self.standardize_grad = check_choice("standardize_grad", standardize_grad, STANDARDIZE_GRADS)
        self.sign_zero = check_sign_zero(sign_zero)

    @classmethod
    def convention_kwargs(cls, c):
        return {"normalize": c.recu_act_norm, "std_ddof": c.std_ddof, "eps_inside_sqrt": c.eps_inside_sqrt,
                "standardize_grad": c.standardize_grad, "sign_zero": c.sign_zero}

    @property
    def binary(self):
        return self.sign_zero != 0.0

    def _std_kwargs(self):
        return {"center": False, "ddof": self.std_ddof, "eps": self.eps, "eps_inside_sqrt": self.eps_inside_sqrt}

    def forward(self, x, training=True):
        y = sign(x, self.sign_zero)
        if self.normalize and training:
            a0, scache = row_standardize_forward(x, what="sample", **self._std_kwargs())
            return y, (approx_sign_grad(a0), scache)
        return y, (approx_sign_grad(x), None)

    def backward(self, dy, cache):
        grad, scache = cache
        g0 = dy * grad
        return g0 if scache is None else row_standardize_backward(g0, scache, self.standardize_grad)

    def surrogate(self, x, ref=None, training=True):
        if not (self.normalize and training):
            return approx_sign_polynomial(x)
        ref = x if ref is None else ref
        return approx_sign_polynomial(row_standardize_surrogate(x, ref, self.standardize_grad, **self._std_kwargs()))
