"""Training methods: a method name says which quantizers, scale and schedules a BNN uses.

A :class:`Method` is plain data plus two factories (weight and input quantizer, built for a
convention). A :class:`LayerFactory` turns it into layers for the model builders: the models ask
for "a binary conv" and get a ``BinaryConv2d`` configured by the method (or a float ``Conv2d`` for
``float``). First and last layers are built by the models themselves, in full precision.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .conventions import Convention, get_convention
from .layers import BinaryConv2d, BinaryLinear, Conv2d, Hardtanh, Linear, ReLU
from .quantizers import IdentitySteSign, SteSign


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    weight_quantizer: Callable | None = None       # convention -> Quantizer
    input_quantizer: Callable | None = None        # convention -> Quantizer
    scale: str | None = None                       # None, "mean_abs", "learned"
    scale_init: str = "ones"
    activation: str = "hardtanh"
    latent_clip: float | None = None               # BinaryConnect's weight clip after each step
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    # per-epoch hooks: f(model, epoch, epochs, convention) -> dict of the values set (logged)
    epoch_hooks: tuple = field(default_factory=tuple)

    @property
    def is_binary(self) -> bool:
        return self.weight_quantizer is not None


class LayerFactory:
    """Builds the method's layers with a shared RNG, dtype and convention."""

    def __init__(self, method: Method, rng=None, dtype=np.float32, convention="paper", backend="auto"):
        self.method = method
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.dtype = dtype
        self.convention: Convention = get_convention(convention)
        self.backend = backend

    def _quantizers(self):
        m, c = self.method, self.convention
        return (m.weight_quantizer(c) if m.weight_quantizer else None,
                m.input_quantizer(c) if m.input_quantizer else None)

    def linear(self, in_features, out_features, bias=True):
        """A full-precision linear layer (first and last layers)."""
        return Linear(in_features, out_features, bias=bias, rng=self.rng, dtype=self.dtype)

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        """A full-precision conv layer (stems, downsampling shortcuts)."""
        return Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias, rng=self.rng,
                      dtype=self.dtype, init="kaiming_normal")

    def binary_linear(self, in_features, out_features):
        if not self.method.is_binary:
            return Linear(in_features, out_features, bias=False, rng=self.rng, dtype=self.dtype)
        wq, iq = self._quantizers()
        return BinaryLinear(in_features, out_features, wq, iq, scale=self.method.scale,
                            scale_init=self.method.scale_init, backend=self.backend, rng=self.rng, dtype=self.dtype)

    def binary_conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        if not self.method.is_binary:
            return Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False, rng=self.rng,
                          dtype=self.dtype, init="kaiming_normal")
        wq, iq = self._quantizers()
        return BinaryConv2d(in_channels, out_channels, kernel_size, stride, padding, weight_quantizer=wq,
                            input_quantizer=iq, scale=self.method.scale, scale_init=self.method.scale_init,
                            pad_value=self.convention.pad_value, backend=self.backend, rng=self.rng,
                            dtype=self.dtype, init="kaiming_normal")

    def act(self):
        if self.method.activation == "hardtanh":
            return Hardtanh()
        if self.method.activation == "relu":
            return ReLU()
        raise ValueError(f"unknown activation {self.method.activation!r}")


def _ste_sign(c: Convention):
    return SteSign(clip_value=1.0, sign_zero=c.sign_zero, clip_inclusive=c.clip_inclusive)


def _identity_ste_sign(c: Convention):
    return IdentitySteSign(sign_zero=c.sign_zero)


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("float", "full precision (the baseline every BNN is compared with)", activation="relu"),
    Method("bc", "BinaryConnect: sign weights (identity STE, latent clip to [-1, 1]), real activations",
           weight_quantizer=_identity_ste_sign, latent_clip=1.0),
    Method("bnn", "BNN (Hubara et al. 2016): sign weights (identity STE, latent clip) and sign activations "
           "(clipped STE)", weight_quantizer=_identity_ste_sign, input_quantizer=_ste_sign, latent_clip=1.0),
]}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]
