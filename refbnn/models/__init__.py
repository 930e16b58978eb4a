"""Model builders: ``build_model(name, factory, input_shape, num_classes, width)``.

Every model keeps the first and last layers in full precision (as the papers do) and asks the
layer factory for the binary layers in between, so one builder serves every method.
"""
from __future__ import annotations

from .mlp import mlp
from .resnet import resnet18, resnet20
from .vgg import vgg_small

MODELS = {"mlp": mlp, "vgg_small": vgg_small, "resnet20": resnet20, "resnet18": resnet18}


def build_model(name, factory, input_shape, num_classes, width=1.0):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    if not width > 0:
        raise ValueError(f"width: expected a positive multiplier, got {width}")
    return MODELS[name](factory, tuple(input_shape), num_classes, width)


__all__ = ["MODELS", "build_model", "mlp", "vgg_small", "resnet20", "resnet18"]
