"""The quantizer interface.

A quantizer is a forward/backward pair on one array:

    y, cache = q.forward(x)        # the quantized values used by the network
    dx = q.backward(dy, cache)     # the gradient estimator (the "pseudo-gradient")

and ``q.surrogate(x)`` is the differentiable function whose derivative the backward applies
(identity for the identity straight-through estimator, clip(x, -1, 1) for the clipped one,
ApproxSign's polynomial, ...). The tests check every backward against finite differences of its
surrogate. ``binary`` says whether every output value is exactly -1 or +1 (then the packed
kernels may compute a layer's product); ``precision`` is the bit width Larq would report.

Quantizers hold no learnable parameters; values that schedules change once per epoch
(ReCU's tau, IR-Net's t and k, ...) are plain attributes listed by ``state()`` so that checkpoints
can save and restore them.
"""
from __future__ import annotations


class Quantizer:
    name = "quantizer"
    precision = 32
    binary = False

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy, cache):
        raise NotImplementedError

    def surrogate(self, x):
        raise NotImplementedError

    def state(self) -> dict:
        """Schedule-controlled values, saved in checkpoints."""
        return {}

    def set_state(self, **values):
        unknown = set(values) - set(self.state())
        if unknown:
            raise ValueError(f"{self.name}: unknown state {sorted(unknown)}; expected {sorted(self.state())}")
        for k, v in values.items():
            setattr(self, k, v)

    def config(self) -> dict:
        """Constructor arguments, for repr and reports."""
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
