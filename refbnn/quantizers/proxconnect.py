"""ProxConnect++ (Lu, Yu, Li, Partovi Nia; NeurIPS 2023, arXiv 2402.17710): a forward quantizer F
and a backward quantizer B as a pair.

[reconstructed] No official code exists and the paper body was not available when this was written
(docs/methods/proxconnect.md); the update below is the most plausible reading of the paper's description:

    w_t = F(theta_t)                                   (forward: the network uses F of the latent weights)
    theta_(t+1) = theta_t - eta_t B'(theta_t) * grad_w L(w_t)   (backward: B' replaces F')

with the decomposition criterion F = P o B, P a proximal (monotone) quantizer. The instances
(``PC_INSTANCES``) follow the table of docs/methods/proxconnect.md; every parameter is explicit. The 1-D maps:

- forward F: ``sign`` (sign(0) = sign_zero), ``swish`` (the sign-Swish SS_beta of BNN+, not
  monotone, so not itself a proximal map: BNN++ needs P = identity), ``prox`` (P_mu below);
- backward B (B' is what the estimator multiplies by): ``identity`` (B' = 1), ``clip``
  (B' = 1[|x| <= clip_value]), ``swish`` (B' = SS_beta').

P_mu, the proximal quantizer of plain ProxConnect [reconstructed: the paper's text was not available to give
Dockhorn et al.'s family]: the proximal map of mu * dist(w, {-1, +1}), the "W-shaped" regularizer
of ProxQuant (Bai et al. 2019): move x towards the nearest of +-1 by mu and stop there,

    P_mu(x) = sign(x) (1 + soft(|x| - 1, mu)) = x - clip(x - sign(x), -mu, mu),
    soft(v, mu) = sign(v) max(|v| - mu, 0),

monotone non-decreasing (a proximal map), the identity at mu = 0, sign(x) on |x| <= 1 + mu once
mu >= 1, and -> sign as mu -> infinity. P_mu(0) = sign_zero * min(mu, 1) (the map is set-valued at 0).

Evaluation: ``eval_forward="sign"`` evaluates the network with sign(theta) (a binary network at test
time); ``"train"`` keeps F. [reconstructed choice: it is not known whether BNN++ binarizes
with sign at the end of training.]
"""
from __future__ import annotations

from ..checks import array_module
from ..conventions import clip_mask, sign
from .base import Quantizer, check_bool, check_choice, check_nonnegative, check_positive, check_sign_zero
from .sign import _clip, sign_swish, sign_swish_grad

FORWARDS = ("sign", "swish", "prox")
BACKWARDS = ("identity", "clip", "swish")

# PC++ instances as (forward F, backward B, proximal P with F = P o B); docs/methods/proxconnect.md
PC_INSTANCES = {
    "bc": ("sign", "identity", "sign"),
    "bnn": ("sign", "clip", "sign"),
    "bnnplus": ("sign", "swish", "sign"),
    "bnnpp": ("swish", "swish", "identity"),
    "pc": ("prox", "identity", "prox"),
}


def prox_w(x, mu, sign_zero=1.0):
    """P_mu(x) = sign(x) (1 + soft(|x| - 1, mu)): the prox of mu * dist(., {-1, +1}) (ProxQuant's W regularizer)."""
    xp = array_module(x)
    nearest = sign(x, 1.0)
    y = x - xp.clip(x - nearest, -mu, mu)  # = sign(x)(1 + soft(|x| - 1, mu)), exactly x at mu = 0
    return xp.where(x == 0, sign_zero * min(mu, 1.0), y).astype(x.dtype, copy=False)


class ProxConnectPair(Quantizer):
    """A ProxConnect++ pair (F, B) [reconstructed; see the module docstring].

    forward (training): y = F(x), F in {sign, swish (SS_beta), prox (P_mu)}
    forward (eval):     sign(x) with ``eval_forward="sign"``, else F(x)
    backward:           dx = dy B'(x),  B in {identity (1), clip (1[|x| <= clip_value]), swish (SS_beta')}
    surrogate:          B(x)  (the backward quantizer itself)
    Parameters: forward_map="sign", backward_map="identity", beta=5.0 (state when a swish map is used; > 0),
    mu=0.0 (state when forward_map="prox"; >= 0), clip_value=1.0, clip_inclusive=True, sign_zero=1.0,
    eval_forward="sign". Conventions read: sign_zero, clip_inclusive.
    Instances (``PC_INSTANCES``): BC (sign, identity), BNN (sign, clip), BNN+ (sign, swish),
    BNN++ (swish, swish), ProxConnect (prox, identity).
    """

    name = "pc_pair"
    precision = 1

    def __init__(self, forward_map: str = "sign", backward_map: str = "identity", beta: float = 5.0, mu: float = 0.0,
                 clip_value: float = 1.0, clip_inclusive: bool = True, sign_zero: float = 1.0,
                 eval_forward: str = "sign"):
        self._init_pair(forward_map, backward_map, beta, mu, clip_value, clip_inclusive, sign_zero, eval_forward)

    def _init_pair(self, forward_map, backward_map, beta, mu, clip_value, clip_inclusive, sign_zero, eval_forward):
        self.forward_map = check_choice("forward_map", forward_map, FORWARDS)
        self.backward_map = check_choice("backward_map", backward_map, BACKWARDS)
        self.beta = check_positive("beta", beta)
        self.mu = check_nonnegative("mu", mu)
        self.clip_value = check_positive("clip_value", clip_value)
        self.clip_inclusive = check_bool("clip_inclusive", clip_inclusive)
        self.sign_zero = check_sign_zero(sign_zero)
        self.eval_forward = check_choice("eval_forward", eval_forward, ("sign", "train"))

    @classmethod
    def convention_kwargs(cls, c):
        accepted = cls.parameter_names()
        return {k: v for k, v in (("sign_zero", c.sign_zero), ("clip_inclusive", c.clip_inclusive)) if k in accepted}

    def state(self):
        out = {}
        if "swish" in (self.forward_map, self.backward_map):
            out["beta"] = self.beta
        if self.forward_map == "prox":
            out["mu"] = self.mu
        return out

    def check_state(self, name, value):
        return check_positive("beta", float(value)) if name == "beta" else check_nonnegative("mu", float(value))

    @property
    def binary(self):
        return self.forward_map == "sign" and self.sign_zero != 0.0

    def forward_value(self, x):
        """F(x), the training-time forward map."""
        if self.forward_map == "sign":
            return sign(x, self.sign_zero)
        if self.forward_map == "swish":
            return sign_swish(x, self.beta)
        return prox_w(x, self.mu, self.sign_zero)

    def backward_value(self, x):
        """B(x), the backward quantizer (its derivative is the estimator)."""
        if self.backward_map == "identity":
            return x
        if self.backward_map == "clip":
            return _clip(x, self.clip_value)
        return sign_swish(x, self.beta)

    def backward_grad(self, x):
        """B'(x)."""
        if self.backward_map == "identity":
            return None
        if self.backward_map == "clip":
            return clip_mask(x, self.clip_value, self.clip_inclusive)
        return sign_swish_grad(x, self.beta)

    def forward(self, x, training=True):
        if not training and self.eval_forward == "sign":
            y = sign(x, self.sign_zero)
        else:
            y = self.forward_value(x)
        return y, self.backward_grad(x)

    def backward(self, dy, cache):
        return dy if cache is None else dy * cache

    def surrogate(self, x, ref=None, training=True):
        return self.backward_value(x)


class SignSwish(ProxConnectPair):
    """BNN++: the sign-Swish as both forward and backward quantizer (PC++ with F = B = SS_beta, P = identity)
    [reconstructed, see the module docstring].

    forward (training): y = SS_beta(x) = 2 sigmoid(b x)[1 + b x (1 - sigmoid(b x))] - 1  (odd, overshoots to
                        1.19968 at b x = 2.3994);  forward (eval): sign(x) (``eval_forward="sign"``) or SS_beta(x)
    backward:           dx = dy SS_beta'(x) = dy b [2 - b x tanh(b x / 2)] / [1 + cosh(b x)]
    surrogate:          SS_beta(x)
    Parameters: beta=5.0 (state, > 0; refbnn's bnnpp method grows it per epoch, ``schedules.beta_state``),
    eval_forward="sign", sign_zero=1.0 (eval sign). Conventions read: sign_zero.
    Sources: BNN+ Eq. 5-6 (SS_beta); PC++ abstract (BNN++ = BNN+ with the sign forward replaced by SS_beta).
    """

    name = "sign_swish"

    def __init__(self, beta: float = 5.0, eval_forward: str = "sign", sign_zero: float = 1.0):
        self._init_pair("swish", "swish", beta, 0.0, 1.0, True, sign_zero, eval_forward)


class ProxSign(ProxConnectPair):
    """Plain ProxConnect's forward: the monotone proximal quantizer P_mu with the identity backward
    (PC++ with F = P_mu, B = identity) [reconstructed, see the module docstring].

    forward (training): y = P_mu(x) = sign(x) (1 + soft(|x| - 1, mu));  forward (eval): sign(x) or P_mu(x)
    backward:           dx = dy   (the gradient at the quantized point updates the latent weights
                        straight through the prox: BinaryConnect / ProxConnect as dual averaging, PARQ 1.1)
    surrogate:          x
    Parameters: mu=0.0 (state, >= 0; refbnn's pc method grows it per epoch, ``schedules.mu_state``),
    eval_forward="sign", sign_zero=1.0. Conventions read: sign_zero.
    Sources: Dockhorn et al. 2021 (ProxConnect), Bai et al. 2019 (ProxQuant's W-shaped regularizer), PARQ
    (Jin et al.) section 1.1.
    """

    name = "prox_sign"

    def __init__(self, mu: float = 0.0, eval_forward: str = "sign", sign_zero: float = 1.0):
        self._init_pair("prox", "identity", 5.0, mu, 1.0, True, sign_zero, eval_forward)
