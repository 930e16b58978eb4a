"""Layer objects over the ops (CS231n API: ``out, cache = forward(x)``, ``dx = backward(dout, cache)``)."""
from .base import Module, Sequential
from .binary import BinaryConv2d, BinaryLinear
from .core import (AvgPool2d, BatchNorm, BatchNorm1d, BatchNorm2d, Conv2d, Flatten, GlobalAvgPool, Hardtanh,
                   Identity, LearnableBias, Linear, MaxPool2d, PReLU, ReLU, RPReLU, ShortcutA)

__all__ = ["Module", "Sequential", "BinaryConv2d", "BinaryLinear", "AvgPool2d", "BatchNorm", "BatchNorm1d",
           "BatchNorm2d", "Conv2d", "Flatten", "GlobalAvgPool", "Hardtanh", "Identity", "LearnableBias", "Linear",
           "MaxPool2d", "PReLU", "ReLU", "RPReLU", "ShortcutA"]
