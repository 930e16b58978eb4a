"""MLP: flatten -> FP linear -> BN -> act -> [binary linear -> BN -> act] x depth -> FP linear.

Layer names: ``flatten``, ``input.fc``, ``input.bn``, ``input.act``, ``hidden1.fc``, ``hidden1.bn``,
``hidden1.act``, ..., ``hidden<depth>.act``, ``classifier``; the binary layers are ``hidden<i>.fc``.
"""
from __future__ import annotations

import math

from ..layers import Flatten, Sequential


def mlp(factory, input_shape, num_classes, width=1.0, hidden=512, depth=2):
    h = max(1, int(round(hidden * width)))
    layers = [("flatten", Flatten()), ("input.fc", factory.linear(math.prod(input_shape), h, bias=False)),
              ("input.bn", factory.batchnorm1d(h)), ("input.act", factory.act())]
    for i in range(1, depth + 1):
        layers += [(f"hidden{i}.fc", factory.binary_linear(h, h)), (f"hidden{i}.bn", factory.batchnorm1d(h)),
                   (f"hidden{i}.act", factory.act())]
    layers.append(("classifier", factory.linear(h, num_classes)))
    return Sequential(*layers)
