"""A Larq-style model summary: per layer and in total, parameters by precision, memory and MACs.

Modelled on Larq's ``larq.models.summary`` (larq/larq, ``larq/models.py``): one row per layer with
its output shape, its parameters split into 1-bit and 32-bit, its memory, and its multiply-accumulates
split into binary (both operands 1-bit: an XNOR-popcount) and float.

What counts as what:

- 1-bit parameters: the ``weight`` of a :class:`~refbnn.layers.binary.BinaryConv2d` /
  :class:`~refbnn.layers.binary.BinaryLinear` whose weight quantizer has ``precision`` 1 (the bit width
  Larq would report, see :mod:`refbnn.quantizers.base`). 32-bit: every other parameter (float layers,
  biases, batch-norm gamma/beta, learned alphas). Batch-norm running statistics are buffers: counted
  in their own column and total, and excluded from the parameter counts and the memory.
- Memory (packed): a binary weight (O, C/groups, kh, kw) is stored as refbnn's packed kernels store it,
  ``pack_bits(weight, axis=1)``: 1 bit per weight, rounded up to whole 64-bit words per (output channel,
  kh, kw) row, i.e. O * kh * kw * ceil((C/groups) / 64) * 8 bytes (a linear layer: O * ceil(in / 64) * 8);
  plus 4 bytes per 32-bit parameter. Memory (float32): 4 bytes per parameter.
- MACs for one input (N = 1): a convolution Ho * Wo * O * (C/groups) * kh * kw, a linear layer
  in * out; every other layer 0. Binary MACs: a binary layer whose weight and input quantizers both have
  precision 1; all other MACs are float (float layers, and binary-weight layers with real activations
  such as ``irnet_1w32a``).

Output shapes come from one forward pass of a zero input in eval mode.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .layers import Conv2d, Linear
from .layers.binary import BinaryConv2d, BinaryLinear, _BinaryLayer

# the per-sample input shape each data set's loader produces (refbnn.data: NCHW images, (1, 1, L) signals)
INPUT_SHAPES = {"digits": (1, 8, 8), "mnist1d": (1, 1, 40), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
NUM_CLASSES = 10


@dataclass
class LayerSummary:
    name: str
    type: str
    output_shape: tuple
    params_1bit: int
    params_32bit: int
    buffers: int
    memory_packed_bytes: int
    memory_float32_bytes: int
    binary_macs: int
    float_macs: int


@dataclass
class Summary:
    layers: list
    input_shape: tuple

    def _total(self, key):
        return sum(getattr(r, key) for r in self.layers)

    @property
    def totals(self) -> dict:
        keys = ("params_1bit", "params_32bit", "buffers", "memory_packed_bytes", "memory_float32_bytes",
                "binary_macs", "float_macs")
        t = {k: self._total(k) for k in keys}
        params, macs = t["params_1bit"] + t["params_32bit"], t["binary_macs"] + t["float_macs"]
        t["params"] = params
        t["macs"] = macs
        t["binary_param_share"] = t["params_1bit"] / params if params else 0.0
        t["binary_mac_share"] = t["binary_macs"] / macs if macs else 0.0
        return t

    def as_dict(self) -> dict:
        return {"input_shape": list(self.input_shape),
                "layers": [{**asdict(r), "output_shape": list(r.output_shape)} for r in self.layers],
                "totals": self.totals}

    def table(self) -> str:
        head = ("Layer", "Type", "Output shape", "# 1-bit", "# 32-bit", "Buffers", "Memory (kB)",
                "1-bit MACs", "32-bit MACs")
        rows = [(r.name, r.type, "x".join(map(str, r.output_shape)), f"{r.params_1bit:,}", f"{r.params_32bit:,}",
                 f"{r.buffers:,}", f"{r.memory_packed_bytes / 1024:.2f}", f"{r.binary_macs:,}",
                 f"{r.float_macs:,}") for r in self.layers]
        t = self.totals
        total = ("Total", "", "", f"{t['params_1bit']:,}", f"{t['params_32bit']:,}", f"{t['buffers']:,}",
                 f"{t['memory_packed_bytes'] / 1024:.2f}", f"{t['binary_macs']:,}", f"{t['float_macs']:,}")
        widths = [max(len(row[i]) for row in [head, total, *rows]) for i in range(len(head))]

        def line(row):
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

        rule = "-" * len(line(head))
        out = [f"input shape: {'x'.join(map(str, self.input_shape))}", rule, line(head), rule,
               *map(line, rows), rule, line(total), rule]
        packed, full = t["memory_packed_bytes"], t["memory_float32_bytes"]
        out += [f"total parameters: {t['params']:,} (1-bit {t['params_1bit']:,}, 32-bit {t['params_32bit']:,}); "
                f"buffers (batch-norm running statistics, not in the memory): {t['buffers']:,}",
                f"memory: packed {packed / 1024:.2f} kB vs float32 {full / 1024:.2f} kB"
                + (f" ({full / packed:.2f}x smaller)" if packed else ""),
                f"MACs: {t['macs']:,} (1-bit {t['binary_macs']:,}, 32-bit {t['float_macs']:,})",
                f"binarized share: {100 * t['binary_param_share']:.2f} % of parameters, "
                f"{100 * t['binary_mac_share']:.2f} % of MACs"]
        return "\n".join(out)


def _precision(quantizer) -> int:
    return 32 if quantizer is None else int(getattr(quantizer, "precision", 32))


def binary_weight(layer) -> bool:
    """The layer's ``weight`` is stored as 1 bit: a binary layer whose weight quantizer has precision 1."""
    return isinstance(layer, _BinaryLayer) and _precision(layer.weight_quantizer) == 1


def binary_input(layer) -> bool:
    """The layer's input is quantized to 1 bit (its input quantizer has precision 1)."""
    return isinstance(layer, _BinaryLayer) and _precision(layer.input_quantizer) == 1


def packed_weight_bytes(weight_shape) -> int:
    """Bytes of ``pack_bits(weight, axis=1)`` for a weight (O, C) or (O, C, kh, kw): 64-bit words per row."""
    o, c, *k = weight_shape
    return o * math.prod(k) * -(-c // 64) * 8


def layer_macs(layer, in_shape, out_shape) -> int:
    """Multiply-accumulates of one sample: conv Ho Wo O (C/groups) kh kw, linear in out, else 0."""
    if isinstance(layer, (Conv2d, BinaryConv2d)):
        o, ho, wo = out_shape
        cg, kh, kw = layer.params["weight"].shape[1:]
        return ho * wo * o * cg * kh * kw
    if isinstance(layer, (Linear, BinaryLinear)):
        return layer.in_features * layer.out_features
    return 0


def summarize(model, input_shape) -> Summary:
    """Summarize ``model`` for one sample of ``input_shape`` (without the batch axis), e.g. (3, 32, 32).

    Runs one forward pass of a zero input of shape (1, *input_shape) in eval mode, recording each leaf
    layer's input and output shapes; the model's training mode is restored afterwards.
    """
    if not (isinstance(input_shape, (tuple, list)) and input_shape
            and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in input_shape)):
        raise ValueError(f"input_shape: expected a non-empty tuple of positive ints, got {input_shape!r}")
    input_shape = tuple(int(d) for d in input_shape)
    leaves = [(name.rstrip("."), m) for name, m in model.modules() if not m.children]
    seen: dict[int, tuple] = {}

    def record(module):
        inner = module.forward

        def forward(x):
            out, cache = inner(x)
            seen.setdefault(id(module), (tuple(x.shape[1:]), tuple(out.shape[1:])))
            return out, cache
        return forward

    was_training = model.training
    model.eval()
    try:
        for _, m in leaves:
            m.forward = record(m)
        model.forward(np.zeros((1, *input_shape), dtype=np.float32))
    finally:
        for _, m in leaves:
            m.__dict__.pop("forward", None)
        model.train(was_training)

    rows = []
    for name, m in sorted(((n, m) for n, m in leaves if id(m) in seen), key=lambda nm: list(seen).index(id(nm[1]))):
        in_shape, out_shape = seen[id(m)]
        p1 = p32 = packed = 0
        for key, value in m.params.items():
            if key == "weight" and binary_weight(m):
                p1 += value.size
                packed += packed_weight_bytes(value.shape)
            else:
                p32 += value.size
                packed += 4 * value.size
        macs = layer_macs(m, in_shape, out_shape)
        both_binary = binary_weight(m) and binary_input(m)
        rows.append(LayerSummary(name or type(m).__name__, type(m).__name__, out_shape, p1, p32,
                                 sum(b.size for b in m.buffers.values()), packed, 4 * (p1 + p32),
                                 macs if both_binary else 0, 0 if both_binary else macs))
    return Summary(rows, input_shape)


def build_summary_model(model_name, method_name="recu", dataset="digits", width=1.0, convention="paper"):
    """The model ``refbnn train`` builds for these settings (refbnn.train.build) and its input shape."""
    from .methods import LayerFactory, get_method
    from .models import build_model

    if dataset not in INPUT_SHAPES:
        raise ValueError(f"dataset: unknown {dataset!r}; known data sets: {', '.join(INPUT_SHAPES)}")
    factory = LayerFactory(get_method(method_name), rng=np.random.default_rng(0), convention=convention)
    shape = INPUT_SHAPES[dataset]
    return build_model(model_name, factory, shape, NUM_CLASSES, width), shape


__all__ = ["Summary", "LayerSummary", "summarize", "build_summary_model", "packed_weight_bytes", "layer_macs",
           "INPUT_SHAPES"]
