"""The packed runner: executes an inference graph with the bit-packed kernels.

Float layers (the stem, batch norm where a float residual add needs it, the head) run through the
same ops as training (``refbnn.ops``), so their values are the training model's bit for bit. A
``pack`` node turns float activations into packed NHWC words (bit 1 = -1; ``sign_zero`` -1 packs 0
as -1); ``bconv`` runs ``refbnn.kernels.bconv2d`` (a binary linear layer is a 1x1 convolution of
a 1x1 image) writing packed bits through thresholds or float output through multiplier and bias;
``bmaxpool2d`` ANDs the packed window words and re-inverts the channels marked ``invert``.
"""
from __future__ import annotations

import numpy as np

from .. import ops
from .format import BITS, Graph, read_graph


class InferenceModel:
    """A checked inference graph, ready to run: ``logits = model.forward(x)``."""

    def __init__(self, graph: Graph, threads: int | None = None):
        from .. import kernels
        self._k = kernels.compiled()          # ImportError naming the build command when not built
        self.specs = graph.validate()
        self.graph, self.meta, self.arrays = graph, graph.meta, graph.arrays
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads: expected a positive int, got {threads!r}")
        self.threads = threads
        self.input_shape = tuple(self.meta["input_shape"])
        self._invert_words, self._bn, last_use = {}, {}, {}
        for i, n in enumerate(self.nodes):
            for name in n["in"]:
                last_use[name] = i
            if n["op"] == "bmaxpool2d":
                inv = self.arrays[n["arrays"]["invert"]]
                self._invert_words[i] = self._k.pack_bits(np.where(inv, -1.0, 1.0).astype(np.float32))
            if n["op"] == "batchnorm":
                a = {key: self._a(n, key) for key in ("gamma", "beta", "mean", "var")}
                shape = (1, -1) + (1,) * (len(self.specs[n["in"][0]][1]) - 1)
                # the constants exactly as refbnn.ops.batchnorm_forward computes them in eval mode
                inv_std = (1.0 / np.sqrt(a["var"] + n["eps"])).astype(np.float32, copy=False)
                self._bn[i] = tuple(v.reshape(shape) for v in (a["mean"], inv_std, a["gamma"], a["beta"]))
        # a float tensor whose last reader is node i may be overwritten by node i (saves a copy per op)
        self._in_place = {i: [last_use.get(name) == i and name != "input" for name in n["in"]]
                          for i, n in enumerate(self.nodes)}

    @classmethod
    def load(cls, path, threads=None):
        """Read, check and prepare a model file (see refbnn.inference.format)."""
        return cls(read_graph(path), threads)

    @property
    def nodes(self):
        return self.meta["nodes"]

    def _a(self, node, key):
        name = node.get("arrays", {}).get(key)
        return None if name is None else self.arrays[name]

    def check_input(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x: expected a NumPy array, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise TypeError(f"x: expected float32 input (the exported model's dtype), got {x.dtype}")
        if x.ndim != 1 + len(self.input_shape) or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"x: expected shape (N, {', '.join(map(str, self.input_shape))}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("x: contains NaN or Inf")

    def forward(self, x, record=None):
        """Logits (N, classes) float32. ``record``: a dict that receives every tensor by name (packed
        bits as uint64 NHWC words), for tests that compare the boundaries; a float tensor whose last
        reader writes its output in place holds that output instead."""
        self.check_input(x)
        x = np.ascontiguousarray(x)
        t = {"input": x}
        for i, node in enumerate(self.nodes):
            t[node["out"]] = self._run(i, node, [t[n] for n in node["in"]])
        if record is not None:
            record.update(t)
        return t[self.meta["output"]]

    def predict(self, x, batch_size=256):
        """Class indices (N,) int64, computed batch by batch."""
        self.check_input(x)
        out = [self.forward(x[i:i + batch_size]).argmax(axis=1) for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def _run(self, i, node, ins):
        op, x, k, th = node["op"], ins[0], self._k, self.threads
        if op == "pack":
            if node["sign_zero"] == 1.0:
                w = k.pack_bits(x, axis=1, polarity="lce", threads=th)          # bit 1 iff x < 0
            else:
                w = k.pack_bits(-x, axis=1, polarity="bitorch", threads=th)     # bit 1 iff x <= 0
            return w.reshape(len(x), 1, 1, -1) if x.ndim == 2 else w
        if op == "bconv":
            float_out = node["output"] == "float"
            kw = {"output": node["output"], "threads": th}
            if float_out:
                kw.update(multiplier=self._a(node, "multiplier"), bias=self._a(node, "bias"), layout="nchw")
            else:
                kw.update(thresholds=self._a(node, "thresholds"), flip=self._a(node, "flip"))
            y = k.bconv2d(x, self._a(node, "weight"), node["channels"], tuple(node["stride"]),
                          tuple(node["padding"]), 1, 1, node["pad_value"], **kw)
            return y.reshape(len(y), -1) if float_out and node["kind"] == "linear" else y
        if op == "bmaxpool2d":
            y = k.bmaxpool2d(x, node["kernel_size"], node["stride"], node["padding"], threads=th)
            y ^= self._invert_words[i]
            return y
        own = self._in_place[i][0]
        if op == "add":
            if ins[0].shape != ins[1].shape:
                raise ValueError(f"node {i}: residual add of {ins[0].shape} and {ins[1].shape}")
            return np.add(ins[0], ins[1], out=ins[0] if own else None)
        if op == "flatten":
            return ops.flatten_forward(x)[0]
        if op == "linear":
            return ops.linear_forward(x, self._a(node, "weight"), self._a(node, "bias"))[0]
        if op == "conv2d":
            return ops.conv2d_forward(x, self._a(node, "weight"), self._a(node, "bias"), tuple(node["stride"]),
                                      tuple(node["padding"]), tuple(node["dilation"]), node["groups"])[0]
        if op == "batchnorm":    # ((x - mean) * inv_std) * gamma + beta: refbnn.ops.batchnorm_forward's order
            mean, inv_std, gamma, beta = self._bn[i]
            y = np.subtract(x, mean, out=x if own else None)
            y *= inv_std
            y *= gamma
            y += beta
            return y
        if op == "hardtanh":
            return np.clip(x, node["min_val"], node["max_val"], out=x if own else None)
        if op == "relu":
            return ops.relu_forward(x)[0]
        if op == "maxpool2d":
            return ops.maxpool2d_forward(x, node["kernel_size"], node["stride"], node["padding"])[0]
        if op == "global_avgpool":
            return ops.global_avgpool_forward(x)[0]
        if op == "shortcut_a":
            return ops.shortcut_a_forward(x, node["stride"], node["pad_before"], node["pad_after"], node["mode"])[0]
        raise ValueError(f"node {i}: unknown op {op!r}")  # pragma: no cover - validate() checks the ops


def load_model(path, threads=None) -> InferenceModel:
    return InferenceModel.load(path, threads)


def is_bits(spec):
    return spec[0] == BITS
