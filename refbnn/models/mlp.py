"""MLP: flatten -> FP linear -> BN -> act -> [binary linear -> BN -> act] x depth -> FP linear."""
from __future__ import annotations

import math

from ..layers import BatchNorm1d, Flatten, Sequential


def mlp(factory, input_shape, num_classes, width=1.0, hidden=512, depth=2):
    h = max(1, int(round(hidden * width)))
    layers = [Flatten(), factory.linear(math.prod(input_shape), h, bias=False), BatchNorm1d(h, dtype=factory.dtype),
              factory.act()]
    for _ in range(depth):
        layers += [factory.binary_linear(h, h), BatchNorm1d(h, dtype=factory.dtype), factory.act()]
    layers.append(factory.linear(h, num_classes))
    return Sequential(*layers)
