"""Export: a trained refbnn model becomes an inference graph of packed weights and folded constants.

What changes between training and inference (the pipeline of Larq Compute Engine's converter,
github.com/larq/compute-engine, ``mlir/transforms/optimize.cc`` and ``core/bconv2d/``):

- the latent float weights of a binary layer become their signs, packed 64 per uint64 word along
  the input channels (OHWI; LCE polarity, bit 1 = -1, see ``docs/kernels.md``), plus a
  per-output-channel float scale when the method has one;
- a binary layer whose output goes, through per-channel float ops (scale, batch norm in eval
  mode, hardtanh, ...) and possibly a max pool, into the next binary layer's sign, writes that
  sign directly as packed bits: the composite map f is monotone in the integer dot product d, so
  one integer threshold per channel decides each bit (``refbnn.kernels.threshold_fold`` evaluates
  f itself on every integer in [-K, K], so the bits equal the float network's; a decreasing f, a
  negative gamma, becomes a flip; gamma = 0 a constant bit);
- a binary layer followed by a float layer writes float output d * multiplier + bias, with the
  scale and a following batch norm folded into the per-channel multiplier and bias (equal to the
  float network's value within float32 rounding);
- where a float residual add sits between two binary layers (the Bi-Real double skip of
  ``refbnn.models.resnet.BiRealBlock``, and the second conv of ResNet-18's ``BasicBlock``), the add needs the real value: the binary conv writes float
  output d * scale, batch norm runs as the training op does (bit for bit), the add and the
  activation run in float, and the next layer's sign is packed from that;
- a max pool between a binary layer and the next sign runs on the packed bits (``bmaxpool2d``:
  the AND of the window's bits is the max of the +-1 values). Max pool commutes with a
  non-decreasing per-channel map; behind a decreasing one (gamma < 0) it becomes a min pool, done
  as AND on inverted bits that are inverted back after the pool (``pool_invert``).

Which methods export. The inference forward must be sign(x) . sign(W) times a per-output-channel
constant. Checked on the layers themselves (so ``--param`` overrides are judged by what they
build): the weight quantizer's eval output must be +-s_o per output channel with no zero (s_o
folds into the multiplier or the thresholds); the input quantizer must be an elementwise sign
with sign(0) = +1 or -1 in eval mode. Per method, with the default ``paper`` convention:

- exported: ``bnn``, ``xnorpp``, ``bnnplus`` (learned per-channel alpha folds), ``bireal``
  (mean |W| per channel folds), ``irnet`` and ``recu`` under the ``paper`` convention;
- refused: ``float`` (nothing binary), ``bc``, ``irnet_1w32a``, ``pc``, ``bnnpp`` (real-valued
  activations: there is no packed input), ``xnor`` (its activation scale is per sample, so the map
  from d to the next sign differs between images and no fixed threshold exists), ``dorefa``
  ({0, 1} activations), every method under the ``official`` convention whose sign has sign(0) = 0
  (torch.sign: a third value that no bit holds).
"""
from __future__ import annotations

import numpy as np

from .. import ops
from ..checkpoint import load_checkpoint
from ..kernels import threshold_fold
from ..layers import (
    BatchNorm,
    Conv2d,
    Flatten,
    GlobalAvgPool,
    Hardtanh,
    Identity,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    ShortcutA,
)
from ..layers.binary import BinaryConv2d, BinaryLinear, _BinaryLayer
from ..models.resnet import BasicBlock, BiRealBlock
from .format import FORMAT, Graph

# input shapes of the data sets refbnn trains on (the checkpoint stores the data set's name)
DATASET_SHAPES = {"digits": ((1, 8, 8), 10), "mnist1d": ((1, 1, 40), 10), "mnist": ((1, 28, 28), 10),
                  "cifar10": ((3, 32, 32), 10)}


class ExportError(ValueError):
    """The model cannot become a sign x sign inference graph (the message says which layer and why)."""


# ---- what a binary layer computes at inference ---------------------------------------------------

def _sign(x, sign_zero):
    return np.where(x > 0, 1.0, np.where(x < 0, -1.0, sign_zero)).astype(x.dtype)


def input_sign_zero(layer, name) -> float:
    """sign(0) of the layer's input quantizer, after checking that its eval forward is an
    elementwise sign with sign(0) = +-1 (ExportError otherwise)."""
    q = layer.input_quantizer
    if q is None:
        raise ExportError(f"{name}: the input is not binarized (real-valued activations); the inference "
                          "forward must be sign x sign")
    sz = getattr(q, "sign_zero", None)
    if not getattr(q, "binary", False) or sz not in (1.0, -1.0):
        why = ("sign(0) = 0, a third value" if sz == 0.0 else "its outputs are not a sign" if sz is None
               else "its outputs are scaled (a per-sample scale has no fixed threshold)")
        raise ExportError(f"{name}: input quantizer {q.name!r} does not output exactly +-1 in eval mode ({why}); "
                          "a bit holds only +-1")
    rng = np.random.default_rng(0)   # a per-sample or per-row statistic would show on varied rows
    probe = (rng.standard_normal((4, 33)) * np.array([[1e-3], [1.0], [10.0], [1e3]])).astype(np.float32)
    probe[:, :3] = [0.0, -0.0, 1e-30]
    out, _ = q.forward(probe, training=False)
    if not np.array_equal(out, _sign(probe, sz)):
        raise ExportError(f"{name}: input quantizer {q.name!r} is not an elementwise sign in eval mode "
                          "(a per-sample scale or statistic: no fixed threshold exists)")
    return float(sz)


def weight_signs_and_scale(layer, name):
    """(signs +-1 float32 of the weight's shape, per-output-channel scale float32 or None) of the
    layer's eval-mode quantized weights, which must be +-s_o with s_o > 0 per output channel."""
    if layer.weight_quantizer is None:
        raise ExportError(f"{name}: the weights are not binarized")
    wq, _ = layer.weight_quantizer.forward(layer.params["weight"], training=False)
    wq = np.asarray(wq)
    flat = np.abs(wq.reshape(wq.shape[0], -1))
    if not (flat > 0).all():
        raise ExportError(f"{name}: weight quantizer {layer.weight_quantizer.name!r} outputs 0 for some weight "
                          "(sign(0) = 0); a bit holds only +-1")
    if not (flat == flat[:, :1]).all():
        raise ExportError(f"{name}: weight quantizer {layer.weight_quantizer.name!r} does not output +-s per output "
                          "channel (the magnitudes differ within a channel)")
    s = flat[:, 0].astype(np.float32)
    return np.where(wq < 0, -1.0, 1.0).astype(np.float32), (None if (s == 1).all() else s)


def layer_scale(layer, s):
    """The layer's integer-to-float map as per-channel (weight scale, alpha, bias) arrays or None."""
    alpha = None
    if layer.scale == "learned":
        alpha = layer.params["alpha"].astype(np.float32)
    elif layer.scale == "mean_abs":
        w = layer.params["weight"]
        alpha = np.abs(w).mean(axis=tuple(range(1, w.ndim))).astype(np.float32)
    return s, alpha, layer.params.get("bias")


def apply_scale(d, s, alpha, bias):
    """The float value a binary layer outputs for integer dot products d (float32, channels on
    axis 1), in the order the layer computes it: (d * s) * alpha + bias."""
    bshape = (1, -1) + (1,) * (d.ndim - 2)
    y = d if s is None else d * s.reshape(bshape)
    y = y if alpha is None else y * alpha.reshape(bshape)
    return y if bias is None else y + bias.reshape(bshape)


def float_ops(layers):
    """The per-channel float maps of ``layers`` (BatchNorm in eval mode, Hardtanh, ReLU), each as
    a function on a (rows, channels) float32 array, computed by the training ops themselves."""
    fns = []
    for m in layers:
        if isinstance(m, BatchNorm):
            p, b = m.params, m.buffers
            fns.append(lambda z, p=p, b=b, eps=m.eps: ops.batchnorm_forward(
                z, p["gamma"], p["beta"], b["running_mean"], b["running_var"], False, 0.1, eps)[0])
        elif isinstance(m, Hardtanh):
            fns.append(lambda z, m=m: ops.hardtanh_forward(z, m.min_val, m.max_val)[0])
        elif isinstance(m, ReLU):
            fns.append(lambda z: ops.relu_forward(z)[0])
        else:
            raise ExportError(f"{type(m).__name__}: not a per-channel float map")
    return fns


def _is_elementwise(m):
    return isinstance(m, (BatchNorm, Hardtanh, ReLU, Identity))


# ---- the exporter -----------------------------------------------------------------------------

class _Builder:
    def __init__(self, input_shape):
        self.nodes, self.arrays, self.count = [], {}, 0
        self.input_shape = tuple(int(s) for s in input_shape)

    def name(self):
        self.count += 1
        return f"t{self.count}"

    def add(self, op, inputs, arrays=None, **attrs):
        idx = len(self.nodes)
        node = {"op": op, "in": list(inputs), "out": self.name(), **attrs}
        if arrays:
            node["arrays"] = {}
            for key, a in arrays.items():
                full = f"n{idx}.{key}"
                self.arrays[full] = np.ascontiguousarray(a)
                node["arrays"][key] = full
        self.nodes.append(node)
        return node["out"]


def _bn_arrays(m):
    return {"gamma": m.params["gamma"], "beta": m.params["beta"], "mean": m.buffers["running_mean"],
            "var": m.buffers["running_var"]}


def _float_node(b, m, t, name):
    """A float layer as a node on tensor t; returns the new tensor name."""
    if isinstance(m, Flatten):
        return b.add("flatten", [t])
    if isinstance(m, Linear):
        arrays = {"weight": m.params["weight"]}
        if "bias" in m.params:
            arrays["bias"] = m.params["bias"]
        return b.add("linear", [t], arrays, layer=name)
    if isinstance(m, Conv2d):
        arrays = {"weight": m.params["weight"]}
        if "bias" in m.params:
            arrays["bias"] = m.params["bias"]
        return b.add("conv2d", [t], arrays, layer=name, stride=list(m.stride), padding=list(m.padding),
                     dilation=list(m.dilation), groups=m.groups)
    if isinstance(m, BatchNorm):
        return b.add("batchnorm", [t], _bn_arrays(m), layer=name, eps=float(m.eps))
    if isinstance(m, Hardtanh):
        return b.add("hardtanh", [t], min_val=float(m.min_val), max_val=float(m.max_val))
    if isinstance(m, ReLU):
        return b.add("relu", [t])
    if isinstance(m, Identity):
        return t
    if isinstance(m, MaxPool2d):
        return b.add("maxpool2d", [t], **_pool_geometry(m))
    if isinstance(m, GlobalAvgPool):
        return b.add("global_avgpool", [t])
    if isinstance(m, ShortcutA):
        return b.add("shortcut_a", [t], stride=int(m.stride), pad_before=int(m.pad_before),
                     pad_after=int(m.pad_after), mode=m.mode)
    raise ExportError(f"{name}: layer {type(m).__name__} has no inference form")


def _packed_weights(layer, name):
    signs, s = weight_signs_and_scale(layer, name)
    if isinstance(layer, BinaryLinear):
        signs = signs.reshape(signs.shape[0], signs.shape[1], 1, 1)
    from ..kernels import pack_bits
    words = pack_bits(signs, axis=1)                       # (O, kh, kw, ceil(C/64))
    return words, s


def _conv_attrs(layer):
    if isinstance(layer, BinaryLinear):
        return {"kind": "linear", "channels": layer.in_features, "out_channels": layer.out_features,
                "kernel_size": [1, 1], "stride": [1, 1], "padding": [0, 0], "pad_value": 0.0}
    if layer.dilation != (1, 1) or layer.groups != 1:
        raise ExportError("binary convolutions with dilation or groups are not exported")
    return {"kind": "conv", "channels": layer.in_channels, "out_channels": layer.out_channels,
            "kernel_size": list(layer.kernel_size), "stride": list(layer.stride), "padding": list(layer.padding),
            "pad_value": float(layer.pad_value)}


def _k(layer):
    if isinstance(layer, BinaryLinear):
        return layer.in_features
    return layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels


def _bits_node(b, layer, name, t, maxpool, post, next_layer, next_name):
    """Binary layer -> [max pool] -> per-channel float maps `post` -> next layer's sign, as one
    bconv writing packed bits (and a bmaxpool2d)."""
    words, s = _packed_weights(layer, name)
    s, alpha, bias = layer_scale(layer, s)
    sz = input_sign_zero(next_layer, next_name)
    fns = float_ops(post)
    k, o = _k(layer), words.shape[0]

    def f(d):
        z = apply_scale(d, s, alpha, bias)
        for fn in fns:
            z = fn(z)
        return z

    thresholds, flip = threshold_fold(k, f, o, sign_zero=sz)
    arrays = {"weight": words, "thresholds": thresholds}
    attrs = dict(_conv_attrs(layer), output="bits", layer=name)
    if maxpool is None:
        arrays["flip"] = flip
        return b.add("bconv", [t], arrays, **attrs)
    # the pool sits before the float maps: behind a decreasing map (gamma < 0) it is a min pool
    invert = np.zeros(o, bool)           # hardtanh and ReLU are non-decreasing; batch norm's direction is gamma's
    for p in post:
        if isinstance(p, BatchNorm):
            invert ^= p.params["gamma"] < 0
    arrays["flip"] = flip ^ invert
    t = b.add("bconv", [t], arrays, **attrs)
    return b.add("bmaxpool2d", [t], {"invert": invert}, **_pool_geometry(maxpool), channels=o)


def _float_out_node(b, layer, name, t, bn=None):
    """Binary layer writing float output d * multiplier + bias (NCHW / (N, O)); with ``bn``, that
    batch norm folded into the multiplier and bias (equal within float32 rounding)."""
    words, s = _packed_weights(layer, name)
    s, alpha, bias = layer_scale(layer, s)
    o = words.shape[0]
    mul = np.ones(o, np.float64)
    for v in (s, alpha):
        if v is not None:
            mul = mul * v
    add = np.zeros(o, np.float64) if bias is None else bias.astype(np.float64)
    if bn is not None:
        g = bn.params["gamma"].astype(np.float64) / np.sqrt(bn.buffers["running_var"].astype(np.float64) + bn.eps)
        mul, add = mul * g, (add - bn.buffers["running_mean"]) * g + bn.params["beta"]
    arrays = {"weight": words, "multiplier": mul.astype(np.float32), "bias": add.astype(np.float32)}
    return b.add("bconv", [t], arrays, **dict(_conv_attrs(layer), output="float", layer=name))


def _exact_float_out_node(b, layer, name, t):
    """Binary layer writing d * s * alpha (+ bias) in the layer's own float operations (one rounding
    per factor), for a float residual add that a later sign reads."""
    words, s = _packed_weights(layer, name)
    s, alpha, bias = layer_scale(layer, s)
    if s is not None and alpha is not None:
        raise ExportError(f"{name}: a weight scale and a layer scale together before a residual add are not "
                          "exported exactly")
    mul = s if s is not None else alpha
    arrays = {"weight": words}
    if mul is not None:
        arrays["multiplier"] = mul
    if bias is not None:
        arrays["bias"] = bias
    return b.add("bconv", [t], arrays, **dict(_conv_attrs(layer), output="float", layer=name))


def _pack_node(b, t, layer, name):
    return b.add("pack", [t], sign_zero=input_sign_zero(layer, name), layer=name)


def flatten_modules(model, prefix=""):
    """(qualified name, module) of a Sequential's children, nested Sequentials expanded, residual blocks
    kept whole: the order export walks a model in (refbnn.summary predicts the file in that order too)."""
    if isinstance(model, Sequential):
        out = []
        for n, c in model.children.items():
            out += flatten_modules(c, f"{prefix}{n}.")
        return out
    return [(prefix.rstrip("."), model)]


def _block(b, blk, name, t):
    """BiRealBlock: h = act1(bn1(conv1(x)) + shortcut(x)); out = act2(bn2(conv2(h)) + h)."""
    m = blk.children
    p = _pack_node(b, t, m["conv1"], f"{name}.conv1")
    y = _exact_float_out_node(b, m["conv1"], f"{name}.conv1", p)
    y = _float_node(b, m["bn1"], y, f"{name}.bn1")
    sc = _float_node(b, m["shortcut"], t, f"{name}.shortcut")
    h = _float_node(b, m["act1"], b.add("add", [y, sc]), f"{name}.act1")
    p = _pack_node(b, h, m["conv2"], f"{name}.conv2")
    y = _exact_float_out_node(b, m["conv2"], f"{name}.conv2", p)
    y = _float_node(b, m["bn2"], y, f"{name}.bn2")
    return _float_node(b, m["act2"], b.add("add", [y, h]), f"{name}.act2")


def _basic_block(b, blk, name, t):
    """BasicBlock: out = act2(bn2(conv2(act1(bn1(conv1(x))))) + shortcut(x)); conv1 writes conv2's
    packed input through thresholds, conv2 writes float output for the add."""
    m = blk.children
    p = _pack_node(b, t, m["conv1"], f"{name}.conv1")
    p = _bits_node(b, m["conv1"], f"{name}.conv1", p, None, [m["bn1"], m["act1"]], m["conv2"], f"{name}.conv2")
    y = _exact_float_out_node(b, m["conv2"], f"{name}.conv2", p)
    y = _float_node(b, m["bn2"], y, f"{name}.bn2")
    sc = t
    for sub_name, sub in flatten_modules(m["shortcut"], f"{name}.shortcut."):
        sc = _float_node(b, sub, sc, sub_name)
    return _float_node(b, m["act2"], b.add("add", [y, sc]), f"{name}.act2")


def export_model(model, input_shape, num_classes, source=None) -> Graph:
    """The inference graph of ``model`` (a refbnn model of Sequential layers and BiRealBlocks) for
    inputs of ``input_shape`` (C, H, W); ExportError when a layer has no sign x sign inference form."""
    model.eval()
    binary = [n for n, m in model.modules() if isinstance(m, _BinaryLayer)]
    if not binary:
        raise ExportError("the model has no binary layers (a float model needs no packed inference)")
    for n, m in model.modules():
        if isinstance(m, (BiRealBlock, BasicBlock)) and not all(isinstance(m.children[c], BinaryConv2d) for c in ("conv1", "conv2")):
            raise ExportError(f"{n}: a residual block with float convolutions has no packed inference form")
    b = _Builder(input_shape)
    items = flatten_modules(model)
    t, kind = "input", "float"
    i = 0
    while i < len(items):
        name, m = items[i]
        if isinstance(m, (BiRealBlock, BasicBlock)):
            if kind == "bits":
                raise ExportError(f"{name}: a residual block after packed bits has no inference form")
            t = (_block if isinstance(m, BiRealBlock) else _basic_block)(b, m, name, t)
            i += 1
            continue
        if not isinstance(m, _BinaryLayer):
            if kind == "bits":
                raise ExportError(f"{name}: {type(m).__name__} after packed bits has no inference form")
            t = _float_node(b, m, t, name)
            i += 1
            continue
        if not isinstance(m, (BinaryLinear, BinaryConv2d)):
            raise ExportError(f"{name}: unknown binary layer {type(m).__name__}")
        if kind == "float":
            t = _pack_node(b, t, m, name)
        # look ahead: [max pool] per-channel maps, then the next binary layer?
        j = i + 1
        pool = None
        if j < len(items) and isinstance(items[j][1], MaxPool2d):
            pool, j = items[j][1], j + 1
        post = []
        while j < len(items) and _is_elementwise(items[j][1]):
            post.append(items[j][1])
            j += 1
        nxt = items[j] if j < len(items) else None
        if nxt is not None and isinstance(nxt[1], (BinaryLinear, BinaryConv2d)) and \
                isinstance(nxt[1], BinaryLinear) == isinstance(m, BinaryLinear):
            t = _bits_node(b, m, name, t, pool, [p for p in post if not isinstance(p, Identity)], nxt[1], nxt[0])
            kind, i = "bits", j
        elif pool is None and i + 1 < len(items) and isinstance(items[i + 1][1], BatchNorm):
            t = _float_out_node(b, m, name, t, bn=items[i + 1][1])
            kind, i = "float", i + 2
        else:
            t = _exact_float_out_node(b, m, name, t)
            kind, i = "float", i + 1
    if kind != "float":
        raise ExportError("the model ends in packed bits; its output must be float logits")
    graph = Graph({"format": FORMAT, "input_shape": list(b.input_shape), "num_classes": int(num_classes),
                   "output": t, "nodes": b.nodes, "source": source or {}}, b.arrays)
    graph.validate()
    return graph


def build_from_checkpoint(path):
    """(training model in eval mode, its run settings, input shape, classes) from a checkpoint."""
    from ..conventions import get_convention
    from ..methods import LayerFactory, get_method
    from ..models import MODELS, build_model

    state, _, meta = load_checkpoint(path)
    run = meta.get("run") if isinstance(meta.get("run"), dict) else None
    if run is None:
        raise ValueError(f"{path}: the checkpoint's metadata has no run settings ('run')")
    for key in ("dataset", "model", "method", "convention"):
        if key not in run:
            raise ValueError(f"{path}: the checkpoint's run settings lack {key!r}")
    if run["model"] not in MODELS:
        raise ValueError(f"{path}: unknown model {run['model']!r} in the checkpoint; known models: "
                         f"{', '.join(MODELS)}")
    if run["dataset"] not in DATASET_SHAPES:
        raise ValueError(f"{path}: unknown dataset {run['dataset']!r}; known: {', '.join(DATASET_SHAPES)}")
    shape, classes = DATASET_SHAPES[run["dataset"]]
    method = get_method(run["method"]).with_params(**(run.get("method_params") or {}))
    factory = LayerFactory(method, rng=np.random.default_rng(0), convention=get_convention(run["convention"]))
    model = build_model(run["model"], factory, shape, classes, run.get("width", 1.0))
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"{path}: the checkpoint's arrays do not match model {run['model']!r}: {exc}") from exc
    model.eval()
    return model, run, shape, classes


def export_checkpoint(path, out=None) -> Graph:
    """Export a ``refbnn train`` checkpoint; write the model file to ``out`` when given."""
    model, run, shape, classes = build_from_checkpoint(path)
    source = {k: run.get(k) for k in ("dataset", "model", "width", "method", "method_params", "convention")}
    try:
        graph = export_model(model, shape, classes, source=source)
    except ExportError as exc:
        raise ExportError(f"method {run['method']!r} (convention {run['convention']!r}) cannot be exported: {exc}") \
            from exc
    if out is not None:
        graph.save(out)
    return graph


__all__ = ["DATASET_SHAPES", "ExportError", "build_from_checkpoint", "export_checkpoint", "export_model"]


def _pool_geometry(pool):
    """A max pool's kernel_size, stride and padding as the model file holds them: ints or lists of two ints
    (the layer may hold ints or tuples; JSON has lists)."""
    def plain(v):
        return v if v is None or isinstance(v, int) else [int(e) for e in v]
    return {"kernel_size": plain(pool.kernel_size), "stride": plain(pool.stride), "padding": plain(pool.padding)}
