"""Model builders: ``build_model(name, factory, input_shape, num_classes, width)``.

Every model keeps the first and last layers in full precision (as the papers do) and asks the
layer factory for the binary layers in between, so one builder serves every method.

Every layer has a readable name (the builders' docstrings list them): ``input.fc``, ``hidden1.fc``,
``stage2.block1.conv1``, ...; parameters and buffers are ``<layer name>.<key>`` in ``state_dict()``
and ``model/<layer name>.<key>`` in a checkpoint. :func:`binary_layers` lists the binary ones.
"""
from __future__ import annotations

from ..layers.binary import _BinaryLayer
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


def binary_layers(model) -> list:
    """``(name, layer)`` of every binary layer of ``model``, in model order: a binary layer (BinaryLinear,
    BinaryConv2d) whose weight quantizer has precision 1 (the weights it uses are 1 bit; Larq's rule, which
    Bop's routing and ``refbnn summary`` use too). Names carry no trailing dot (``"stage2.block1.conv1"``)."""
    out = []
    for prefix, m in model.modules():
        q = getattr(m, "weight_quantizer", None)
        if isinstance(m, _BinaryLayer) and q is not None and getattr(q, "precision", 32) == 1:
            out.append((prefix[:-1], m))
    return out


def layer_names(name) -> list:
    """The names of the layers of model ``name`` that hold parameters or buffers (its state-dict prefixes, in
    model order), from a tiny float instance (width and data do not change the names; a method whose
    activation has parameters adds its ``...act`` layers)."""
    from ..methods import LayerFactory, get_method  # noqa: PLC0415 - methods imports the layers, not the models

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    model = build_model(name, LayerFactory(get_method("float"), rng=0), (3, 8, 8), 2, width=1e-3)
    return [prefix[:-1] for prefix, m in model.modules() if m.params or m.buffers]


__all__ = ["MODELS", "build_model", "binary_layers", "layer_names", "mlp", "vgg_small", "resnet20", "resnet18"]
