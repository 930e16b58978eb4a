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
- Exported (``refbnn export``, see ``docs/inference.md``): the bytes of the arrays the inference model
  file stores for the layer, predicted from the layer types and their order, without exporting. A
  binary layer: its packed weights (as above) plus per output channel either int32 thresholds and a
  bool flip (5 bytes; 1 more for the pool's bool invert when a max pool sits before the next binary
  layer) when it writes the next layer's packed input, or a float32 multiplier and bias (8 bytes)
  when the batch norm right after it folds into them, or else (a residual add or a pool before the
  batch norm) a float32 multiplier only where the layer has a scale and a float32 bias only where it
  has one. Batch norm: 0 when folded, else gamma, beta and the running mean and variance (16 bytes
  per channel). Float convolutions and linear layers: 4 bytes per parameter. The file adds, per
  array, the ``.npy`` header and the zip's two headers, and the JSON graph (tests/test_summary.py
  checks the prediction against files that ``refbnn export`` writes). Models that do not export
  (a method whose inference forward is not sign x sign) have None, with the exporter's reason.

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
    export_bytes: int | None = None


@dataclass
class Summary:
    layers: list
    input_shape: tuple
    export_error: str | None = None

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
        t["export_bytes"] = None if self.export_error else self._total("export_bytes")
        return t

    def as_dict(self) -> dict:
        return {"input_shape": list(self.input_shape),
                "layers": [{**asdict(r), "output_shape": list(r.output_shape)} for r in self.layers],
                "totals": self.totals, "export_error": self.export_error}

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
                (f"exported model (refbnn export): {t['export_bytes'] / 1024:.2f} kB of arrays (packed binary "
                 f"weights and the float layers, batch norm folded where it can be), plus the file's headers "
                 f"and JSON graph" if self.export_error is None else f"exported model: none ({self.export_error})"),
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
    exported, error = export_bytes(model)
    for r in rows:
        r.export_bytes = None if error else exported.get(r.name, 0)
    return Summary(rows, input_shape, error)


# ---- what refbnn export stores --------------------------------------------------------------------

def _channels(layer):
    return layer.params["weight"].shape[0]


def _exact_float_bytes(layer, name):
    """A binary layer writing float output for a residual add or a pool: a float32 multiplier where
    its weight or the layer has a scale, a float32 bias where it has one."""
    from .inference.export import weight_signs_and_scale
    _, s = weight_signs_and_scale(layer, name)
    scaled = s is not None or getattr(layer, "scale", None) in ("learned", "mean_abs")
    return 4 * _channels(layer) * (int(scaled) + int("bias" in layer.params))


def export_bytes(model):
    """({layer name: bytes of the arrays refbnn export stores for it}, None), or (None, why the model
    does not export). See the module docstring for the rules; exportability is judged by the
    exporter's own checks of the quantizers (refbnn.inference.export)."""
    from .inference.export import ExportError, flatten_modules, input_sign_zero, weight_signs_and_scale
    from .layers import BatchNorm, Conv2d, Hardtanh, Identity, Linear, MaxPool2d, ReLU
    from .models.resnet import BasicBlock, BiRealBlock

    def packed(layer):
        return packed_weight_bytes(layer.params["weight"].shape)

    def bn_bytes(layer):
        return 16 * layer.params["gamma"].size

    def float_bytes(layer):
        return 4 * sum(v.size for v in layer.params.values()) if isinstance(layer, (Conv2d, Linear)) else \
            bn_bytes(layer) if isinstance(layer, BatchNorm) else 0

    binary = [(n, m) for n, m in model.modules() if isinstance(m, _BinaryLayer)]
    if not binary:
        return None, "no binary layers"
    try:
        for n, m in binary:
            input_sign_zero(m, n.rstrip("."))
            weight_signs_and_scale(m, n.rstrip("."))
    except ExportError as exc:
        return None, str(exc)
    out = {}
    items = flatten_modules(model)
    i = 0
    while i < len(items):
        name, m = items[i]
        if isinstance(m, (BiRealBlock, BasicBlock)):
            c = m.children
            for sub_name, sub in c["shortcut"].modules():     # a float 1x1 conv and batch norm, or nothing
                full = f"{name}.shortcut.{sub_name}".rstrip(".")
                if float_bytes(sub):
                    out[full] = float_bytes(sub)
            if isinstance(m, BiRealBlock):                    # both convs float output, both batch norms kept
                out[f"{name}.conv1"] = packed(c["conv1"]) + _exact_float_bytes(c["conv1"], f"{name}.conv1")
                out[f"{name}.bn1"] = bn_bytes(c["bn1"])
            else:                                             # conv1 writes conv2's packed input
                out[f"{name}.conv1"] = packed(c["conv1"]) + 5 * _channels(c["conv1"])
            out[f"{name}.conv2"] = packed(c["conv2"]) + _exact_float_bytes(c["conv2"], f"{name}.conv2")
            out[f"{name}.bn2"] = bn_bytes(c["bn2"])
            i += 1
            continue
        if not isinstance(m, _BinaryLayer):
            out[name] = float_bytes(m)
            i += 1
            continue
        j, pool = i + 1, False
        if j < len(items) and isinstance(items[j][1], MaxPool2d):
            pool, j = True, j + 1
        while j < len(items) and isinstance(items[j][1], (BatchNorm, Hardtanh, ReLU, Identity)):
            j += 1
        nxt = items[j][1] if j < len(items) else None
        o = _channels(m)
        if isinstance(nxt, _BinaryLayer) and isinstance(nxt, BinaryLinear) == isinstance(m, BinaryLinear):
            out[name] = packed(m) + 5 * o + (o if pool else 0)   # thresholds, flips (and the pool's inverts)
            i = j                                                # the batch norms between fold: 0 bytes
        elif not pool and i + 1 < len(items) and isinstance(items[i + 1][1], BatchNorm):
            out[name] = packed(m) + 8 * o                        # multiplier and bias, the batch norm folded
            i += 2
        else:
            out[name] = packed(m) + _exact_float_bytes(m, name)
            i += 1
    return out, None


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
           "export_bytes", "INPUT_SHAPES"]
