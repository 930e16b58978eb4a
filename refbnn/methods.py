"""Training methods: a method name says which quantizers, scale and schedules a BNN uses.

A :class:`Method` is plain data: the registry names of its weight and input quantizers and their
constructor parameters, the per-output-channel scale of its binary layers, the activation the models
use, a latent-weight clip, optimizer defaults, and an optional per-epoch quantizer schedule.
A :class:`LayerFactory` turns it into layers for the model builders: the models ask for "a binary
conv" and get a ``BinaryConv2d`` configured by the method (or a float ``Conv2d`` for ``float``).
First and last layers are built by the models themselves, in full precision.

Conventions. Each quantizer is built with ``cls.from_convention(convention, **params)``: the
convention decides sign(0), clip inclusivity, std ddof/epsilon placement, gradients through the
statistics and ReCU's paper/code switches (see each quantizer's ``convention_kwargs``); the
method's explicit parameters win over the convention. The binary layers take the convention's
``pad_value`` and ``bias_order`` (ReCU's code adds a bias before its learned alpha: out = alpha
(conv + b) under ``official``; alpha conv + b under ``paper``). ``Method.scale`` may be a function of the
convention (ReCU: the code's learned per-channel alpha under ``official``, none under ``paper``,
where the weight quantizer applies the analytic alpha = b (2 tau - 1) itself).

Overriding parameters. ``Method.with_params(**params)`` returns a copy with parameters changed;
``LayerFactory(method, ..., params={...})`` and ``refbnn train --param KEY=VALUE`` (``TrainConfig
.method_params``) use it. Keys:

- ``weight_quantizer``, ``input_quantizer``: registry names (``None`` drops the quantizer), e.g.
  ``weight_quantizer="stochastic_sign"`` turns ``bc`` into stochastic BinaryConnect;
- ``scale`` (None, "mean_abs", "learned"), ``scale_init`` ("ones", "uniform"), ``activation``
  ("hardtanh", "relu"), ``latent_clip`` (a float or None);
- ``weight.NAME`` / ``input.NAME``: a constructor parameter of that quantizer only;
- a plain name: every place that accepts it -- the schedule's parameters (``T_min``, ``T_max``,
  ``tau_start``, ``tau_end`` (alias ``tau_min``, ``tau_max``: the ReCU code's options), ``beta_start``,
  ``beta_end``, ``mu_start``, ``mu_end``) and the constructor parameters of the weight and/or input
  quantizer (``clip_value`` reaches both of ``bnn``'s quantizers that accept it). An unknown key
  raises ValueError listing the accepted ones.

Variants. Where implementations of one method commonly differ in a way the catalogue's own options
express, each common form is a method of its own, a plain entry of ``METHODS`` whose ``variant_of``
names the method it varies (``refbnn crosscheck --list`` and docs/usage.md list them together):
``xnor_common`` (XNOR-Net as PyTorch code usually writes it: autograd through the weights' mean|W|,
sign activations with the clipped STE, no activation scale), ``bnn_ste`` (the clipped STE on BNN's
weights too), ``bireal_scaled``/``bireal_unscaled`` (Bi-Real's weight gradient with or without the
mean|W| factor, whatever the convention), ``bc_stochastic`` (stochastic BinaryConnect).

Schedules. ``Method.on_epoch(model, epoch, epochs, convention, rng)`` runs once before each
epoch: it evaluates the method's :class:`~refbnn.schedules.QuantizerSchedule` at the convention's
clock and sets the values (``t``, ``k``, ``tau``, ``beta``, ``mu``) on every quantizer of the model
whose ``state()`` has them, hands ``rng`` to the quantizers that draw random numbers (stochastic
BinaryConnect), runs the extra ``epoch_hooks`` (``f(model, epoch, epochs, convention, rng) -> dict``)
and returns the values set (logged per epoch). The training loop passes
``rng = default_rng([seed, epoch, 1])``, so a resumed run draws the same numbers.

Training defaults on the digits data (MLP, 30 epochs, batch 64, cosine learning rate): Adam with
lr 1e-3 for every method; each reaches 98.3-100 % test accuracy in about 7-15 s (docs/usage.md's
"Methods" section has the measured table). Stochastic BinaryConnect needs lr 1e-2.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import numpy as np

from .conventions import Convention, get_convention
from .layers import BatchNorm1d, BatchNorm2d, BinaryConv2d, BinaryLinear, Conv2d, Hardtanh, Linear, ReLU
from .quantizers import QUANTIZERS
from .schedules import BETA_SCHEDULE, EDE_SCHEDULE, MU_SCHEDULE, RECU_SCHEDULE, QuantizerSchedule

METHOD_FIELDS = ("weight_quantizer", "input_quantizer", "scale", "scale_init", "activation", "latent_clip")


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    weight_quantizer: str | None = None            # registry name (refbnn.quantizers.QUANTIZERS)
    input_quantizer: str | None = None
    weight_params: Mapping = field(default_factory=dict)   # constructor parameters over the convention's
    input_params: Mapping = field(default_factory=dict)
    scale: str | None | Callable = None            # None, "mean_abs", "learned", or convention -> one of them
    scale_init: str = "ones"
    activation: str = "hardtanh"
    latent_clip: float | None = None               # BinaryConnect's weight clip after each step
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: QuantizerSchedule | None = None      # per-epoch quantizer state (t/k, tau, beta, mu)
    epoch_hooks: tuple = field(default_factory=tuple)   # f(model, epoch, epochs, convention, rng) -> dict
    source: str = ""
    variant_of: str | None = None                  # the method this one is a common variant of (listed with it)

    def __post_init__(self):
        for role in ("weight_quantizer", "input_quantizer"):
            q = getattr(self, role)
            if q is not None and q not in QUANTIZERS:
                raise ValueError(f"method {self.name}: unknown {role} {q!r}; known quantizers: "
                                 f"{', '.join(sorted(QUANTIZERS))}")

    @property
    def is_binary(self) -> bool:
        return self.weight_quantizer is not None

    # -- building ---------------------------------------------------------------------------------
    def build_quantizers(self, convention="paper"):
        """(weight quantizer, input quantizer) for a convention; fresh instances on every call."""
        c = get_convention(convention)
        wq = QUANTIZERS[self.weight_quantizer].from_convention(c, **self.weight_params) if self.weight_quantizer \
            else None
        iq = QUANTIZERS[self.input_quantizer].from_convention(c, **self.input_params) if self.input_quantizer \
            else None
        return wq, iq

    def scale_for(self, convention="paper"):
        return self.scale(get_convention(convention)) if callable(self.scale) else self.scale

    # -- parameters -------------------------------------------------------------------------------
    def accepted_params(self) -> list[str]:
        keys = list(METHOD_FIELDS)
        if self.schedule is not None:
            keys += list(self.schedule.params) + list(self.schedule.aliases)
        for role, prefix in (("weight_quantizer", "weight."), ("input_quantizer", "input.")):
            q = getattr(self, role)
            if q is not None:
                names = QUANTIZERS[q].parameter_names()
                keys += names + [prefix + n for n in names]
        return list(dict.fromkeys(keys))

    def with_params(self, **params) -> "Method":
        """A copy with parameters overridden (see the module docstring for the keys)."""
        m = replace(self, **{k: v for k, v in params.items() if k in METHOD_FIELDS})
        if "weight_quantizer" in params and params["weight_quantizer"] != self.weight_quantizer:
            m = replace(m, weight_params={})
        if "input_quantizer" in params and params["input_quantizer"] != self.input_quantizer:
            m = replace(m, input_params={})
        wp, ip = dict(m.weight_params), dict(m.input_params)
        sp = {}
        for key, value in params.items():
            if key in METHOD_FIELDS:
                continue
            claimed = False
            for role, prefix, store in (("weight_quantizer", "weight.", wp), ("input_quantizer", "input.", ip)):
                qname = getattr(m, role)
                names = QUANTIZERS[qname].parameter_names() if qname else []
                if key.startswith(prefix) and key[len(prefix):] in names:
                    store[key[len(prefix):]] = value
                    claimed = True
                elif key in names:
                    store[key] = value
                    claimed = True
            if m.schedule is not None and m.schedule.accepts(key):
                sp[key] = value
                claimed = True
            if not claimed:
                raise ValueError(f"method {self.name}: unknown parameter {key!r}; accepted: "
                                 f"{', '.join(m.accepted_params())}")
        m = replace(m, weight_params=wp, input_params=ip,
                    schedule=m.schedule.with_params(**sp) if sp else m.schedule)
        m.build_quantizers("paper")  # validate the values now (raises ValueError naming the expectation)
        m.build_quantizers("official")
        return m

    # -- per epoch --------------------------------------------------------------------------------
    def on_epoch(self, model, epoch: int, epochs: int, convention="paper", rng=None) -> dict:
        """Set this epoch's schedule values and random generator on the model's quantizers; return
        the values set."""
        c = get_convention(convention)
        values = {}
        if self.schedule is not None:
            values.update(self.schedule.at(epoch, epochs, c.schedule_clock))
            set_quantizer_state(model, **values)
        if rng is not None:
            for q in model_quantizers(model):
                if q.needs_rng:
                    q.set_rng(rng)
        for hook in self.epoch_hooks:
            values.update(hook(model, epoch, epochs, c, rng))
        return values


def model_quantizers(model):
    """Every quantizer of a model's binary layers."""
    for _, m in model.modules():
        if hasattr(m, "quantizers"):
            for q in m.quantizers().values():
                if q is not None:
                    yield q


def set_quantizer_state(model, **values) -> int:
    """Set schedule values on every quantizer whose state has them; returns how many were touched."""
    touched = 0
    for q in model_quantizers(model):
        mine = {k: v for k, v in values.items() if k in q.state()}
        if mine:
            q.set_state(**mine)
            touched += 1
    return touched


class LayerFactory:
    """Builds the method's layers with a shared RNG, dtype and convention.

    ``params`` overrides the method's parameters (``Method.with_params``), e.g.
    ``LayerFactory(get_method("irnet"), params={"T_min": 1e-3})`` or ``params={"clip_value": 1.2}``.
    """

    def __init__(self, method: Method, rng=None, dtype=np.float32, convention="paper", backend="auto",
                 params: Mapping | None = None):
        self.method = method.with_params(**params) if params else method
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.dtype = dtype
        self.convention: Convention = get_convention(convention)
        self.backend = backend

    def _quantizers(self):
        return self.method.build_quantizers(self.convention)

    def _scale(self):
        return self.method.scale_for(self.convention)

    def linear(self, in_features, out_features, bias=True):
        """A full-precision linear layer (first and last layers)."""
        return Linear(in_features, out_features, bias=bias, rng=self.rng, dtype=self.dtype)

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False, dilation=1, groups=1):
        """A full-precision conv layer (stems, downsampling shortcuts)."""
        return Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias,
                      rng=self.rng, dtype=self.dtype, init="kaiming_normal", backend=self.backend)

    def batchnorm1d(self, num_features):
        """Batch norm over (N, C) (after linear layers), on the factory's backend."""
        return BatchNorm1d(num_features, dtype=self.dtype, backend=self.backend)

    def batchnorm2d(self, num_features):
        """Batch norm over (N, C, H, W) (after conv layers), on the factory's backend."""
        return BatchNorm2d(num_features, dtype=self.dtype, backend=self.backend)

    def binary_linear(self, in_features, out_features):
        if not self.method.is_binary:
            return Linear(in_features, out_features, bias=False, rng=self.rng, dtype=self.dtype)
        wq, iq = self._quantizers()
        return BinaryLinear(in_features, out_features, wq, iq, scale=self._scale(),
                            scale_init=self.method.scale_init, backend=self.backend, rng=self.rng, dtype=self.dtype,
                            bias_order=self.convention.bias_order)

    def binary_conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1):
        """The method's binary conv (a float ``Conv2d`` for ``float``); ``padding`` as
        :func:`refbnn.ops.conv2d_forward` takes it (an int, a pair or (top, bottom, left, right))."""
        if not self.method.is_binary:
            return self.conv(in_channels, out_channels, kernel_size, stride, padding, False, dilation, groups)
        wq, iq = self._quantizers()
        return BinaryConv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                            weight_quantizer=wq, input_quantizer=iq, scale=self._scale(),
                            scale_init=self.method.scale_init, pad_value=self.convention.pad_value,
                            backend=self.backend, rng=self.rng, dtype=self.dtype, init="kaiming_normal",
                            bias_order=self.convention.bias_order)

    def act(self):
        if self.method.activation == "hardtanh":
            return Hardtanh(backend=self.backend)
        if self.method.activation == "relu":
            return ReLU()
        raise ValueError(f"unknown activation {self.method.activation!r}; expected 'hardtanh' or 'relu'")


def _recu_scale(c: Convention):
    """ReCU's scale: the code's learned per-channel alpha (official), or none in the layer because the
    paper's analytic alpha is applied by the weight quantizer (paper)."""
    return "learned" if c.recu_alpha == "learned" else None


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("float", "full precision (the baseline every BNN is compared with)", activation="relu"),
    Method("bc", "BinaryConnect: sign weights (identity STE, latent clip to [-1, 1]), real activations; "
           "bc_stochastic for the stochastic variant",
           weight_quantizer="identity_ste_sign", latent_clip=1.0, source="Courbariaux et al. 2015"),
    Method("bnn", "BNN (Hubara et al. 2016): sign weights (identity STE, latent clip) and sign activations "
           "(clipped STE); bnn_ste for the clipped STE on the weights too",
           weight_quantizer="identity_ste_sign", input_quantizer="ste_sign", latent_clip=1.0,
           source="Hubara et al. 2016, Algorithm 1"),
    Method("xnor", "XNOR-Net: per-channel mean|W| scaled sign weights (paper gradient; --param gradient=exact|"
           "detached), per-sample mean|A| scaled sign activations (clipped STE); xnor_common for the usual "
           "PyTorch form", weight_quantizer="xnor_weight", input_quantizer="xnor_act", source="Rastegari et al. 2016"),
    Method("xnorpp", "XNOR-Net++: sign weights and activations (clipped STE) with a learned per-output-channel "
           "scale", weight_quantizer="ste_sign", input_quantizer="ste_sign", scale="learned",
           source="Bulat & Tzimiropoulos 2019"),
    Method("dorefa", "DoReFa-Net W1A1: E(|W|) sign(W) weights (identity STE), 1-bit DoReFa activations "
           "round(clip(a, 0, 1))", weight_quantizer="dorefa_sign", input_quantizer="dorefa_quantizer",
           input_params={"k_bit": 1, "mode": "activations"}, source="Zhou et al. 2016"),
    Method("bireal", "Bi-Real Net: magnitude-aware sign weights, ApproxSign activations, latent clip; the "
           "weight gradient is scaled by mean|W| (paper) or not (official), see bireal_scaled/_unscaled",
           weight_quantizer="magnitude_aware_sign", input_quantizer="approx_sign", latent_clip=1.0,
           source="Liu et al. 2018"),
    Method("bnnplus", "BNN+: sign weights and activations with the SignSwish estimator (beta = 5), learned "
           "per-channel scale", weight_quantizer="swish_sign", input_quantizer="swish_sign", scale="learned",
           source="Darabi et al. 2018"),
    Method("irnet", "IR-Net 1W/1A: Libra-PB weights, sign activations, EDE estimator on both with the t/k "
           "schedule (T_min = 0.1, T_max = 10)", weight_quantizer="libra_pb", input_quantizer="ede",
           schedule=EDE_SCHEDULE, source="Qin et al. 2020"),
    Method("irnet_1w32a", "IR-Net 1W/32A: Libra-PB weights with EDE and the t/k schedule, real activations",
           weight_quantizer="libra_pb", activation="relu", schedule=EDE_SCHEDULE, source="Qin et al. 2020"),
    Method("recu", "ReCU: standardized, rectified-clamped sign weights (tau 0.85 -> 0.99), ApproxSign activations; "
           "alpha analytic (paper) or learned per channel (official)", weight_quantizer="recu_weight",
           input_quantizer="recu_act", scale=_recu_scale, scale_init="uniform", schedule=RECU_SCHEDULE,
           source="Xu et al. 2021"),
    Method("pc", "ProxConnect [reconstructed]: weights through the proximal quantizer P_mu (mu 0 -> 1), identity "
           "backward, real activations", weight_quantizer="prox_sign", activation="relu", schedule=MU_SCHEDULE,
           source="Dockhorn et al. 2021; Lu et al. 2023"),
    Method("bnnpp", "BNN++ [reconstructed]: weights through the sign-Swish forward and backward (beta 5 -> 100), "
           "real activations", weight_quantizer="sign_swish", activation="relu", schedule=BETA_SCHEDULE,
           source="Lu et al. 2023 (PC++)"),
    # common variants of the methods above (``variant_of``): the forms other implementations usually take
    Method("bc_stochastic", "variant of bc: stochastic BinaryConnect, weights +1 with probability "
           "clip((w + 1) / 2, 0, 1) (identity STE; sign at eval), real activations",
           weight_quantizer="stochastic_sign", latent_clip=1.0, lr=1e-2, source="Courbariaux et al. 2015, Eq. 3",
           variant_of="bc"),
    Method("bnn_ste", "variant of bnn: the clipped STE on the weights too (Larq's QuantDense with "
           "kernel_quantizer='ste_sign', as the Larq BNN examples), latent clip",
           weight_quantizer="ste_sign", input_quantizer="ste_sign", latent_clip=1.0,
           source="Hubara et al. 2016; Larq ste_sign", variant_of="bnn"),
    Method("xnor_common", "variant of xnor as PyTorch code usually writes it: sign weights times the per-output-"
           "channel mean|W| with autograd through the mean (gradient=exact), sign activations with the clipped "
           "STE and no activation scale", weight_quantizer="xnor_weight", input_quantizer="ste_sign",
           weight_params={"gradient": "exact"}, source="Rastegari et al. 2016, as autograd differentiates it",
           variant_of="xnor"),
    Method("bireal_scaled", "variant of bireal with the scaled weight gradient under every convention: "
           "dW = g mean|W| 1[|W| <= 1] (the paper, Larq's magnitude_aware_sign)",
           weight_quantizer="magnitude_aware_sign", input_quantizer="approx_sign", latent_clip=1.0,
           weight_params={"scale_gradient": True}, source="Liu et al. 2018; Larq MagnitudeAwareSign",
           variant_of="bireal"),
    Method("bireal_unscaled", "variant of bireal with the unscaled weight gradient under every convention: "
           "dW = g 1[|W| <= 1] (the Bi-Real and ReActNet code)",
           weight_quantizer="magnitude_aware_sign", input_quantizer="approx_sign", latent_clip=1.0,
           weight_params={"scale_gradient": False}, source="Bi-Real / ReActNet code (birealnet.py HardBinaryConv)",
           variant_of="bireal"),
]}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["Method", "LayerFactory", "METHODS", "get_method", "set_quantizer_state", "model_quantizers",
           "METHOD_FIELDS"]
