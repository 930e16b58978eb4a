"""The inference model file: one uncompressed ``.npz`` of named arrays plus a JSON graph in it.

Entries: ``graph``, a 0-d unicode array holding JSON, and one array per constant, named
``n<node index>.<key>``. The JSON holds

- ``format``: ``"refbnn-inference-v1"``; ``input_shape`` (C, H, W) or (features,);
  ``num_classes``; ``output`` (the tensor holding the logits); ``source`` (what was exported);
- ``nodes``: in execution order, each ``{"op", "in": [tensor names], "out": name, "arrays":
  {key: entry name}, ...attributes}``; the graph's input tensor is ``"input"``;
- ``arrays``: ``{entry name: {"shape", "dtype"}}``, the declaration every stored array must match.

Loading reads every entry (``allow_pickle=False``), then checks the whole description before
anything runs: every declared array present with its shape and dtype and none extra, every node's
op, attributes and arrays, and the tensor shapes through the graph (a linear layer's weight
against its input's features, a packed weight's words against its channels, thresholds per output
channel, ...). A file that fails any check raises :class:`ModelFileError` naming what is wrong,
and nothing of it is used.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "refbnn-inference-v1"
BITS = "bits"


class ModelFileError(ValueError):
    """A model file (or graph) that is not a valid refbnn inference model."""


def _words(c):
    return -(-c // 64)


def _ints(v, what, n=2, minimum=0):
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v] * n
    if not (isinstance(v, list) and len(v) == n and all(isinstance(i, int) and not isinstance(i, bool) for i in v)):
        raise ModelFileError(f"{what}: expected {n} integers, got {v!r}")
    if min(v) < minimum:
        raise ModelFileError(f"{what}: expected integers >= {minimum}, got {v!r}")
    return tuple(v)


def _out_size(size, k, s, p, d=1):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# op -> (required arrays, optional arrays); every array is per-op checked in _infer_node
OPS = {
    "flatten": ((), ()), "relu": ((), ()), "hardtanh": ((), ()), "global_avgpool": ((), ()), "add": ((), ()),
    "maxpool2d": ((), ()), "shortcut_a": ((), ()), "pack": ((), ()),
    "linear": (("weight",), ("bias",)), "conv2d": (("weight",), ("bias",)),
    "batchnorm": (("gamma", "beta", "mean", "var"), ()),
    "bconv": (("weight",), ("thresholds", "flip", "multiplier", "bias")),
    "bmaxpool2d": (("invert",), ()),
}


class Graph:
    """An inference graph: ``meta`` (the JSON description) and ``arrays`` (name -> ndarray)."""

    def __init__(self, meta: dict, arrays: dict):
        self.meta, self.arrays = meta, arrays

    @property
    def nodes(self):
        return self.meta["nodes"]

    def validate(self):
        """Check the description and arrays against each other; returns {tensor: spec}, a spec being
        ("float", shape without the batch) or ("bits", channels, height, width)."""
        return validate(self.meta, self.arrays)

    def save(self, path):
        """Write the model file atomically (temporary file in the same directory, then rename)."""
        self.validate()
        meta = dict(self.meta, arrays={k: {"shape": list(a.shape), "dtype": str(a.dtype)}
                                       for k, a in self.arrays.items()})
        entries = dict(self.arrays)
        entries["graph"] = np.asarray(json.dumps(meta))
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **entries)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def packed_weight_bytes(self):
        return sum(self.arrays[n["arrays"]["weight"]].nbytes for n in self.nodes if n["op"] == "bconv")

    def float_array_bytes(self):
        packed = {n["arrays"]["weight"] for n in self.nodes if n["op"] == "bconv"}
        return sum(a.nbytes for k, a in self.arrays.items() if k not in packed)


def read_graph(path) -> Graph:
    """Read and check a model file; ModelFileError naming the problem (nothing is partly loaded)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ModelFileError(f"{path}: not a valid model file (corrupt or truncated .npz: {exc})") from exc
    g = arrays.pop("graph", None)
    if g is None or g.dtype.kind != "U" or g.shape != ():
        raise ModelFileError(f"{path}: not a refbnn inference model (no 'graph' entry holding JSON)")
    try:
        meta = json.loads(str(g))
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: the graph description is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                             f"expected {FORMAT!r}")
    declared = meta.get("arrays")
    if not isinstance(declared, dict):
        raise ModelFileError(f"{path}: the graph description has no 'arrays' table")
    missing, extra = sorted(set(declared) - set(arrays)), sorted(set(arrays) - set(declared))
    if missing or extra:
        raise ModelFileError(f"{path}: the arrays do not match the description: missing {missing[:5]}, "
                             f"not described {extra[:5]}")
    for k, d in declared.items():
        a = arrays[k]
        if not isinstance(d, dict) or list(a.shape) != d.get("shape") or str(a.dtype) != d.get("dtype"):
            raise ModelFileError(f"{path}: array {k!r} has shape {list(a.shape)} dtype {a.dtype}, the description "
                                 f"says {d!r}")
    graph = Graph(meta, arrays)
    try:
        graph.validate()
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
    return graph


def _array(arrays, node, key, dtype, shape, where):
    name = node.get("arrays", {}).get(key)
    if name is None:
        return None
    if name not in arrays:
        raise ModelFileError(f"{where}: array {key!r} names entry {name!r}, which is not stored")
    a = arrays[name]
    if a.dtype != np.dtype(dtype) or a.shape != tuple(shape):
        raise ModelFileError(f"{where}: array {key!r} ({name}) is {a.dtype} {a.shape}, expected {np.dtype(dtype)} "
                             f"{tuple(shape)}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ModelFileError(f"{where}: array {key!r} ({name}) holds NaN or Inf")
    return a


def validate(meta, arrays):
    for key in ("input_shape", "num_classes", "output", "nodes"):
        if key not in meta:
            raise ModelFileError(f"the graph description lacks {key!r}")
    shape = meta["input_shape"]
    if not (isinstance(shape, list) and 1 <= len(shape) <= 3 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise ModelFileError(f"input_shape: expected 1 to 3 positive integers, got {shape!r}")
    if not isinstance(meta["nodes"], list) or not meta["nodes"]:
        raise ModelFileError("nodes: expected a non-empty list")
    specs = {"input": ("float", tuple(shape))}
    used = set()
    for i, node in enumerate(meta["nodes"]):
        where = f"node {i} ({node.get('op') if isinstance(node, dict) else node!r})"
        if not isinstance(node, dict) or node.get("op") not in OPS:
            raise ModelFileError(f"{where}: unknown op; known ops: {', '.join(OPS)}")
        req, opt = OPS[node["op"]]
        names = node.get("arrays", {})
        if not isinstance(names, dict):
            raise ModelFileError(f"{where}: 'arrays' must map keys to entry names")
        if set(req) - set(names) or set(names) - set(req) - set(opt):
            raise ModelFileError(f"{where}: arrays {sorted(names)}; expected {list(req)} and optionally {list(opt)}")
        used.update(names.values())
        ins = node.get("in")
        n_in = 2 if node["op"] == "add" else 1
        if not (isinstance(ins, list) and len(ins) == n_in and all(t in specs for t in ins)):
            raise ModelFileError(f"{where}: inputs {ins!r}: expected {n_in} tensor(s) computed earlier")
        out = node.get("out")
        if not isinstance(out, str) or out in specs:
            raise ModelFileError(f"{where}: output name {out!r} must be a new tensor name")
        specs[out] = _infer_node(node, [specs[t] for t in ins], arrays, where)
    unused = sorted(set(arrays) - used)
    if unused:
        raise ModelFileError(f"arrays {unused[:5]} are stored but no node uses them")
    if meta["output"] not in specs:
        raise ModelFileError(f"output: tensor {meta['output']!r} is not computed by any node")
    out = specs[meta["output"]]
    if out != ("float", (meta["num_classes"],)):
        raise ModelFileError(f"output: expected float logits of shape ({meta['num_classes']},), got {out}")
    return specs


def _infer_node(node, ins, arrays, where):
    op = node["op"]
    x = ins[0]
    if op == "add":
        if ins[0] != ins[1] or x[0] != "float":
            raise ModelFileError(f"{where}: adds {ins[0]} and {ins[1]}; expected two float tensors of one shape")
        return x
    if op in ("bconv", "bmaxpool2d"):
        if x[0] != BITS:
            raise ModelFileError(f"{where}: expected packed bits as input, got {x}")
    elif x[0] != "float":
        raise ModelFileError(f"{where}: expected a float input, got {x}")
    shp = x[1] if x[0] == "float" else None
    if op == "flatten":
        return ("float", (int(np.prod(shp)),))
    if op in ("relu", "hardtanh"):
        if op == "hardtanh" and not (isinstance(node.get("min_val"), float) and isinstance(node.get("max_val"), float)
                                     and node["min_val"] < node["max_val"]):
            raise ModelFileError(f"{where}: expected float min_val < max_val")
        return x
    if op == "linear":
        if len(shp) != 1:
            raise ModelFileError(f"{where}: expects (N, features) input, got feature shape {shp}")
        w = arrays.get(node["arrays"]["weight"])
        if w is None or w.dtype != np.float32 or w.ndim != 2 or w.shape[1] != shp[0]:
            raise ModelFileError(f"{where}: weight must be float32 (out, {shp[0]}), got "
                                 f"{None if w is None else (w.dtype, w.shape)}")
        _array(arrays, node, "weight", np.float32, w.shape, where)
        _array(arrays, node, "bias", np.float32, (w.shape[0],), where)
        return ("float", (w.shape[0],))
    if op in ("conv2d", "maxpool2d", "global_avgpool", "shortcut_a") and len(shp) != 3:
        raise ModelFileError(f"{where}: expects (N, C, H, W) input, got feature shape {shp}")
    if op == "conv2d":
        w = arrays.get(node["arrays"]["weight"])
        g = node.get("groups")
        if not isinstance(g, int) or g < 1:
            raise ModelFileError(f"{where}: groups must be a positive int, got {g!r}")
        if w is None or w.dtype != np.float32 or w.ndim != 4 or w.shape[1] * g != shp[0] or w.shape[0] % g:
            raise ModelFileError(f"{where}: weight must be float32 (O, {shp[0]} / groups, kh, kw), got "
                                 f"{None if w is None else (w.dtype, w.shape)}")
        _array(arrays, node, "weight", np.float32, w.shape, where)
        _array(arrays, node, "bias", np.float32, (w.shape[0],), where)
        s, p = _ints(node.get("stride"), f"{where} stride", minimum=1), _ints(node.get("padding"), f"{where} padding")
        d = _ints(node.get("dilation"), f"{where} dilation", minimum=1)
        ho, wo = (_out_size(shp[i + 1], w.shape[2 + i], s[i], p[i], d[i]) for i in range(2))
        if ho < 1 or wo < 1:
            raise ModelFileError(f"{where}: input {shp} is smaller than the kernel")
        return ("float", (w.shape[0], ho, wo))
    if op == "batchnorm":
        c = shp[0]
        for k in ("gamma", "beta", "mean", "var"):
            _array(arrays, node, k, np.float32, (c,), where)
        if not (isinstance(node.get("eps"), float) and node["eps"] > 0):
            raise ModelFileError(f"{where}: eps must be a positive float")
        if (arrays[node["arrays"]["var"]] < 0).any():
            raise ModelFileError(f"{where}: running variance must be non-negative")
        return x
    if op == "global_avgpool":
        return ("float", (shp[0],))
    if op in ("maxpool2d", "bmaxpool2d"):
        k = _ints(node.get("kernel_size"), f"{where} kernel_size", minimum=1)
        s = k if node.get("stride") is None else _ints(node.get("stride"), f"{where} stride", minimum=1)
        p = _ints(node.get("padding"), f"{where} padding")
        if p[0] > k[0] // 2 or p[1] > k[1] // 2:
            raise ModelFileError(f"{where}: padding must be at most half the kernel")
        hw = shp[1:] if op == "maxpool2d" else x[2:]
        ho, wo = (_out_size(hw[i], k[i], s[i], p[i]) for i in range(2))
        if ho < 1 or wo < 1:
            raise ModelFileError(f"{where}: input {hw} is smaller than the window {k}")
        if op == "maxpool2d":
            return ("float", (shp[0], ho, wo))
        if node.get("channels") != x[1]:
            raise ModelFileError(f"{where}: channels {node.get('channels')!r}, but the input has {x[1]}")
        _array(arrays, node, "invert", np.bool_, (x[1],), where)
        return (BITS, x[1], ho, wo)
    if op == "shortcut_a":
        s, pb, pa = node.get("stride"), node.get("pad_before"), node.get("pad_after")
        if not all(isinstance(v, int) for v in (s, pb, pa)) or s < 1 or pb < 0 or pa < 0 or \
                node.get("mode") not in ("subsample", "avgpool"):
            raise ModelFileError(f"{where}: expected int stride >= 1, pad_before, pad_after >= 0 and mode "
                                 "'subsample' or 'avgpool'")
        h, w = shp[1:]
        if node["mode"] == "subsample":
            h, w = -(-h // s), -(-w // s)
        else:
            h, w = h // s, w // s
        return ("float", (shp[0] + pb + pa, h, w))
    if op == "pack":
        if node.get("sign_zero") not in (1.0, -1.0):
            raise ModelFileError(f"{where}: sign_zero must be 1.0 or -1.0, got {node.get('sign_zero')!r}")
        if len(shp) == 1:
            return (BITS, shp[0], 1, 1)
        if len(shp) == 3:
            return (BITS, shp[0], shp[1], shp[2])
        raise ModelFileError(f"{where}: packs (N, C) or (N, C, H, W), got feature shape {shp}")
    if op == "bconv":
        return _infer_bconv(node, x, arrays, where)
    raise ModelFileError(f"{where}: unknown op")  # pragma: no cover - OPS is checked first


def _infer_bconv(node, x, arrays, where):
    c, o, kind = node.get("channels"), node.get("out_channels"), node.get("kind")
    if not (isinstance(c, int) and isinstance(o, int) and c >= 1 and o >= 1):
        raise ModelFileError(f"{where}: channels and out_channels must be positive ints")
    if kind not in ("linear", "conv"):
        raise ModelFileError(f"{where}: kind must be 'linear' or 'conv', got {kind!r}")
    if c != x[1]:
        raise ModelFileError(f"{where}: channels = {c}, but the packed input holds {x[1]}")
    k = _ints(node.get("kernel_size"), f"{where} kernel_size", minimum=1)
    s = _ints(node.get("stride"), f"{where} stride", minimum=1)
    p = _ints(node.get("padding"), f"{where} padding")
    if node.get("pad_value") not in (0.0, 1.0, -1.0):
        raise ModelFileError(f"{where}: pad_value must be 0.0, 1.0 or -1.0")
    if kind == "linear" and (k != (1, 1) or x[2:] != (1, 1)):
        raise ModelFileError(f"{where}: a linear layer takes (N, features) bits with a 1x1 kernel")
    _array(arrays, node, "weight", np.uint64, (o, k[0], k[1], _words(c)), where)
    ho, wo = (_out_size(x[2 + i], k[i], s[i], p[i]) for i in range(2))
    if ho < 1 or wo < 1:
        raise ModelFileError(f"{where}: input {x[2:]} is smaller than the kernel {k}")
    out = node.get("output")
    names = node.get("arrays", {})
    if out == "bits":
        if "thresholds" not in names or {"multiplier", "bias"} & set(names):
            raise ModelFileError(f"{where}: bit output needs thresholds (and flip), no multiplier or bias")
        _array(arrays, node, "thresholds", np.int32, (o,), where)
        _array(arrays, node, "flip", np.bool_, (o,), where)
        return (BITS, o, ho, wo)
    if out == "float":
        if {"thresholds", "flip"} & set(names):
            raise ModelFileError(f"{where}: float output takes multiplier and bias, no thresholds")
        _array(arrays, node, "multiplier", np.float32, (o,), where)
        _array(arrays, node, "bias", np.float32, (o,), where)
        return ("float", (o,) if kind == "linear" else (o, ho, wo))
    raise ModelFileError(f"{where}: output must be 'bits' or 'float', got {out!r}")
