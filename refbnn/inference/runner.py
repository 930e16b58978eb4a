"""The packed runner: executes an inference graph with the bit-packed kernels.

Float layers (the stem, batch norm where a float residual add needs it, the head) compute the
same float operations as training (``refbnn.ops``), in the same order, so their values are the
training model's bit for bit. A ``pack`` node turns float activations into packed NHWC words
(bit 1 = -1; ``sign_zero`` -1 packs 0 as -1); ``bconv`` runs ``refbnn.kernels.bconv2d`` (a binary
linear layer is a 1x1 convolution of a 1x1 image) writing packed bits through thresholds or
float output through multiplier and bias; ``bmaxpool2d`` ANDs the packed window words and
re-inverts the channels marked ``invert``.

Two ways to run a graph, with the same values bit for bit (but for which zero a float max pool
over 0.0 and -0.0 gives, see _maxpool_step; ``tests/test_inference.py`` compares them): ``fuse=False`` runs node after node in the model file's NCHW layout (the readable form of
the graph), and ``fuse=True`` (the default) runs a plan made once at load time:

- **residual steps.** A binary convolution with float output, its batch norm, a residual ``add``
  and the activation after it (the float residual stream of ResNet-20's Bi-Real blocks and
  ResNet-18's basic blocks) become one step working in NHWC, the layout the kernel writes fastest
  and the one ``pack`` reads. The kernel's own float output transform, ``float(d) * multiplier +
  bias`` with two roundings (``src_cython/bk_epilogue.h``), computes the layer's scaled output and
  batch norm's first operation together: with bias = -running_mean, ``fl(z + (-mean))`` is
  ``fl(z - mean)`` exactly. The other three operations of ``refbnn.ops.batchnorm_forward`` in eval
  mode (times 1 / sqrt(var + eps), times gamma, plus beta, each rounded as NumPy rounds it) run in
  place with constants tiled to the output's (H, W, C), so that NumPy's loops run over whole
  images rather than C channels at a time; then the add and the clamp, in place. Folding batch
  norm into one multiplier and bias would round differently (1 ulp here and there), change the
  residual stream and, sooner or later, a bit; this step keeps every rounding of the training op.
- **NHWC between steps.** A tensor made by a residual step stays NHWC: ``pack`` packs its last
  axis, option-A shortcuts subsample and zero-pad it in NHWC (copies only); an op that needs the
  graph's NCHW layout gets a contiguous NCHW copy, so its float sums run in the training op's
  order (the global average pool: bit-equal logits).
- **row words.** A 3x3 binary convolution with stride 1 along W and 3C <= 64 input bits per row
  of taps runs as a (3, 1) convolution of words holding three horizontal taps (see _BConv).
- **buffers.** Outputs of kernels and residual steps come from a pool of arrays reused across
  calls (one pool per thread), released after their last reader; ``out=`` everywhere.
- **float max pool** as the running maximum of strided views, without the op's im2col columns.

The float stem convolution runs as training runs it (``refbnn.ops.conv2d_forward``: one float32
GEMM per sample): a GEMM of another shape (all images at once, or transposed to write NHWC)
rounds differently in OpenBLAS, and its output feeds the residual stream.
"""
from __future__ import annotations

import sys
import threading

import numpy as np

from .. import ops
from .format import BITS, Graph, read_graph

_ACTS = ("hardtanh", "relu")
ROW_WORDS_MIN_PIXELS = 16384
PACK_ONE_THREAD_MAX = 1 << 21


class InferenceModel:
    """A checked inference graph, ready to run: ``logits = model.forward(x)``.

    ``threads``: the kernels' OpenMP threads (None: OpenMP's default). ``fuse``: run the fused plan
    (default) or node after node (the same values bit for bit; for tests and reading)."""

    def __init__(self, graph: Graph, threads: int | None = None, fuse: bool = True):
        from .. import kernels
        self._k = kernels.compiled()          # ImportError naming the build command when not built
        self.specs = graph.validate()
        self.graph, self.meta, self.arrays = graph, graph.meta, graph.arrays
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads: expected a positive int, got {threads!r}")
        if not isinstance(fuse, bool):
            raise TypeError(f"fuse: expected a bool, got {fuse!r}")
        self.threads, self.fuse = threads, fuse
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
        self._local = threading.local()
        self.steps = _plan(self) if fuse else None

    @classmethod
    def load(cls, path, threads=None, fuse=True):
        """Read, check and prepare a model file (see refbnn.inference.format)."""
        return cls(read_graph(path), threads, fuse)

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
        """Logits (N, classes) float32. ``record``: a dict that receives every tensor the run
        materializes, by name, for tests that compare the boundaries: packed bits as uint64 NHWC
        words, float tensors in the graph's layout (NCHW), each its own value (while recording, no
        op writes in place and no buffer is reused). The fused plan materializes no tensor inside a
        residual step (the bconv's float output, the batch norm's, the sum before the activation)."""
        self.check_input(x)
        x = np.ascontiguousarray(x)
        if not self.fuse:
            t = {"input": x}
            for i, node in enumerate(self.nodes):
                t[node["out"]] = self._run(i, node, [t[n] for n in node["in"]], record is None)
            if record is not None:
                record.update(t)
            return t[self.meta["output"]]
        pool = None if record is not None else self._pool()
        if pool is not None:
            pool.start(len(x))
        t = {"input": x}
        for st in self.steps:
            mem = pool if (pool is not None and st.pooled) else _Fresh
            t[st.out] = st.run([t[n] for n in st.ins], mem, record is None)
            if record is not None:
                record[st.out] = np.ascontiguousarray(t[st.out].transpose(0, 3, 1, 2)) \
                    if st.layout == "nhwc" else t[st.out]
            elif pool is not None:
                for name in st.release:
                    pool.put(t.pop(name))
        return t[self.meta["output"]]

    def _pool(self):
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = _Pool()
        return pool

    def predict(self, x, batch_size=256):
        """Class indices (N,) int64, computed batch by batch."""
        self.check_input(x)
        out = [self.forward(x[i:i + batch_size]).argmax(axis=1) for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def _run(self, i, node, ins, in_place=True):
        """One node in the model file's layout (NCHW float, NHWC packed words); ``in_place``: it may
        overwrite a float input whose last reader it is."""
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
        own = in_place and self._in_place[i][0]
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


# ---- the fused plan -------------------------------------------------------------------------------

class _Fresh:
    """No pool: new arrays (while recording, and for steps whose output is no pooled array)."""

    @staticmethod
    def get(shape, dtype):
        return np.empty(shape, dtype)

    @staticmethod
    def put(a):
        pass


class _Pool:
    """Free arrays by (size, dtype), handed out again, reshaped, by later steps and runs (an NCHW
    array may come back as an NHWC one of the same size); emptied when the batch size changes (it
    holds at most the arrays of one run's widest point)."""

    def __init__(self):
        self.free, self.batch = {}, None

    def start(self, batch):
        if batch != self.batch:
            self.free, self.batch = {}, batch

    def get(self, shape, dtype):
        lst = self.free.get((int(np.prod(shape)), np.dtype(dtype)))
        return lst.pop().reshape(shape) if lst else np.empty(shape, dtype)

    def put(self, a):
        self.free.setdefault((a.size, a.dtype), []).append(a)


class _Step:
    """One step of the plan: ``run(inputs, mem, in_place)`` computes tensor ``out`` (in ``layout``:
    "nchw", "nhwc", "flat" (N, F) or "bits") from tensors ``ins``, taking arrays from ``mem.get``
    (and handing back scratch arrays with ``mem.put``). ``pooled``: its output is a whole array
    from ``mem`` (never a view of an input), so it may go back to the pool.
    ``aliases``: its output may be a view of an input or an input overwritten in place (NCHW
    inputs of node-by-node steps). ``release``: the pooled tensors whose last reader this step is
    (set by _plan)."""

    def __init__(self, run, ins, out, layout, pooled=False, aliases=False):
        self.run, self.ins, self.out, self.layout = run, list(ins), out, layout
        self.pooled, self.aliases, self.release = pooled, aliases, []


def _nchw(x, layout):
    return x.transpose(0, 3, 1, 2).copy() if layout == "nhwc" else x       # always a copy


def _tile(v, ho, wo):
    """(C,) -> (Ho, Wo, C): a per-channel constant laid over an NHWC image."""
    return np.ascontiguousarray(np.broadcast_to(v, (ho, wo, v.size)))


def _residual_chain(model, i, consumers):
    """The nodes that fuse into a residual step starting at float-output bconv node i: an optional
    batch norm, an optional add (of one other float tensor) and an optional activation, in this
    order, each the only reader of the one before. Returns (node indices, add's other input)."""
    nodes, chain, other = model.nodes, [i], None
    allowed = ["batchnorm", "add", "act"]
    cur = nodes[i]["out"]
    while True:
        readers = consumers.get(cur, [])
        if len(readers) != 1 or cur == model.meta["output"]:
            break
        j = readers[0]
        op = nodes[j]["op"]
        kind = "act" if op in _ACTS else op
        if kind not in allowed:
            break
        if op == "add":
            a, b = nodes[j]["in"]
            if a == b:
                break
            other = b if a == cur else a
        allowed = allowed[allowed.index(kind) + 1:]
        chain.append(j)
        cur = nodes[j]["out"]
    return chain, other


def _plan(model):
    """The fused steps of ``model``'s graph (see the module docstring)."""
    nodes = model.nodes
    consumers = {}
    for j, n in enumerate(nodes):
        for name in n["in"]:
            consumers.setdefault(name, []).append(j)
    layout = {"input": "nchw" if len(model.input_shape) == 3 else "flat"}
    fused_at, skip = {}, set()
    for i, n in enumerate(nodes):
        if n["op"] == "bconv" and n["output"] == "float" and n["kind"] == "conv" and i not in skip:
            chain, other = _residual_chain(model, i, consumers)
            if len(chain) > 1:
                skip.update(chain)
                # where the graph reads its last outside input: the add (another node that reads
                # ``other`` later may overwrite it in place, node after node)
                at = next((j for j in chain if nodes[j]["op"] == "add"), i)
                fused_at[at] = (chain, other)
    affine_at = {}
    for j, n in enumerate(nodes):
        if n["op"] == "batchnorm" and j not in skip and len(model.specs[n["in"][0]][1]) == 3:
            members = _affine_nhwc(model, j, consumers, skip)
            if members:
                skip.update(members)
                affine_at[j] = members
    steps = []
    for i, n in enumerate(nodes):
        if i in fused_at:
            st = _chain_step(model, *fused_at[i], layout)
        elif i in affine_at:
            st = _affine_step(model, affine_at[i], layout)
        elif i in skip:
            continue
        else:
            st = _node_step(model, i, n, layout)
        layout[st.out] = st.layout
        steps.append(st)
    # release each pooled tensor after its last reader, unless a reader may return a view of it or
    # write its output into it (node by node: flatten, in-place float ops)
    last, aliased = {}, set()
    for s, st in enumerate(steps):
        for name in st.ins:
            last[name] = s
            if st.aliases:
                aliased.add(name)
    pooled = {st.out for st in steps if st.pooled} - aliased - {model.meta["output"]}
    for name, s in last.items():
        if name in pooled:
            steps[s].release.append(name)
    return steps


def _chain_step(model, chain, other, layout):
    """A residual step: bconv (float, NHWC) -> [batch norm] -> [+ other] -> [activation]."""
    nodes = model.nodes
    b0 = nodes[chain[0]]
    o, ho, wo = model.specs[b0["out"]][1]
    mul, bias = model._a(b0, "multiplier"), model._a(b0, "bias")
    consts, sub_mean = [], None          # in-place ops after the kernel: (ufunc, tiled constant)
    act = None
    for j in chain[1:]:
        n = nodes[j]
        if n["op"] == "batchnorm":
            mean, inv_std, gamma, beta = (v.reshape(-1) for v in model._bn[j])
            if bias is None:
                bias = -mean                                  # fl(z + (-mean)) == fl(z - mean)
            else:
                sub_mean = _tile(mean, ho, wo)
            consts = [(np.subtract, sub_mean)] if sub_mean is not None else []
            consts += [(np.multiply, _tile(inv_std, ho, wo)), (np.multiply, _tile(gamma, ho, wo)),
                       (np.add, _tile(beta, ho, wo))]
        elif n["op"] in _ACTS:
            act = n
    has_add = any(nodes[j]["op"] == "add" for j in chain)
    conv = _BConv(model, b0)
    other_layout = layout.get(other)
    ins = [b0["in"][0]] + ([other] if has_add else [])

    def run(xs, mem, in_place):
        x = xs[0]
        y = mem.get((len(x), ho, wo, o), np.float32)
        conv(x, y, output="float", multiplier=mul, bias=bias)
        for ufunc, c in consts:
            ufunc(y, c, out=y)
        if has_add:
            r = xs[1]
            np.add(y, r.transpose(0, 2, 3, 1) if other_layout == "nchw" else r, out=y)
        _activation(y, act)
        return y

    return _Step(run, ins, nodes[chain[-1]]["out"], "nhwc", pooled=True)


def _node_step(model, i, n, layout):
    """A single node as a step: NHWC-aware for pack, bconv, bmaxpool2d and option-A shortcuts,
    NCHW (converted when needed) for the rest."""
    op, k, th = n["op"], model._k, model.threads
    lay = [layout[name] for name in n["in"]]
    if op == "pack" and lay[0] == "nhwc":
        sz = n["sign_zero"]
        return _Step(lambda xs, mem, in_place: pack_nhwc(k, xs[0], sz, th), n["in"], n["out"], BITS)
    if op == "conv2d":
        return _conv2d_step(model, n, lay[0])
    if op == "maxpool2d":
        return _maxpool_step(model, n, lay[0])
    if op == "bconv" and n["output"] == "bits":
        c, ho, wo = model.specs[n["out"]][1:]
        thr, flip = model._a(n, "thresholds"), model._a(n, "flip")
        conv = _BConv(model, n)

        def run(xs, mem, in_place):
            y = mem.get((len(xs[0]), ho, wo, -(-c // 64)), np.uint64)
            return conv(xs[0], y, output="bits", thresholds=thr, flip=flip)
        return _Step(run, n["in"], n["out"], BITS, pooled=True)
    if op == "bmaxpool2d":
        c, ho, wo = model.specs[n["out"]][1:]
        inv = model._invert_words[i]

        def run(xs, mem, in_place):
            y = mem.get((len(xs[0]), ho, wo, -(-c // 64)), np.uint64)
            k.bmaxpool2d(xs[0], n["kernel_size"], n["stride"], n["padding"], threads=th, out=y)
            y ^= inv
            return y
        return _Step(run, n["in"], n["out"], BITS, pooled=True)
    if op == "shortcut_a" and lay[0] == "nhwc" and n["mode"] == "subsample":
        s, pb = n["stride"], n["pad_before"]
        c_out, ho, wo = model.specs[n["out"]][1]

        def run(xs, mem, in_place):                  # refbnn.ops.shortcut_a_forward's copy, in NHWC
            x = xs[0]
            y = mem.get((len(x), ho, wo, c_out), np.float32)
            c = x.shape[3]
            y[..., :pb] = 0.0
            y[..., pb + c:] = 0.0
            y[..., pb:pb + c] = x[:, ::s, ::s, :]
            return y
        return _Step(run, n["in"], n["out"], "nhwc", pooled=True)
    # the node-by-node path, on NCHW inputs (a copy where a residual step left NHWC)
    def run(xs, mem, in_place):
        return model._run(i, n, [_nchw(x, a) for x, a in zip(xs, lay)], in_place)
    out_spec = model.specs[n["out"]]
    out_layout = BITS if out_spec[0] == BITS else ("nchw" if len(out_spec[1]) == 3 else "flat")
    return _Step(run, n["in"], n["out"], out_layout, aliases=True)


class _BConv:
    """The kernel call of a bconv node, ``conv(x, out, **transform)`` (``out``: NHWC, float or
    packed bits). With a 3-wide kernel, stride 1 and padding 1 along W, and 3 * C <= 64 (ResNet-20's
    first stage: C = 16), each pixel's word holds only C bits and the kernel runs 9 taps of one
    word; then the three horizontal taps go into one word per pixel, r[w] = x[w - 1] | x[w] << C |
    x[w + 1] << 2C (the C-bit pieces in the order of the kernel's columns), and a (kh, 1) kernel
    of 3C-bit taps computes the same dot products with a third of the word products (the
    kernel's vertical padding works as before: a padded row is 3C padded bits). The horizontal
    padding is in the word now, where the kernel cannot correct it: pad_value +-1 is written into
    the border pieces (exact), and for pad_value 0 the two border columns are computed again by
    the plain kernel on the two columns next to each border, written over the first result. The
    extra calls and NumPy passes cost about as much as they save below ROW_WORDS_MIN_PIXELS output
    pixels in the batch (8 images of 32 x 32 on a 2-core EPYC); smaller batches run the plain kernel.
    With 21 < C <= 42 the pieces would take two words per pixel, 6 word products instead of 9: on
    that machine ResNet-20's second stage (C = 32, 16 x 16, batch 64) ran no faster that way."""

    def __init__(self, model, n):
        self.k, self.th, self.n = model._k, model.threads, n
        self.weight, self.c = model._a(n, "weight"), n["channels"]
        self.stride, self.padding, self.pad_value = tuple(n["stride"]), tuple(n["padding"]), n["pad_value"]
        kh, kw = n["kernel_size"]
        c, h, w = model.specs[n["in"][0]][1:]
        self.rows = (kw == 3 and self.padding[1] == 1 and self.stride[1] == 1 and 3 * c <= 64 and w >= 2
                     and n["kind"] == "conv")
        if self.rows:
            from ..kernels import unpack_bits
            signs = unpack_bits(self.weight, c)                       # (O, kh, 3, C)
            self.w_rows = self.k.pack_bits(np.ascontiguousarray(signs.reshape(len(signs), kh, 1, 3 * c)))
            self.piece = np.uint64((1 << c) - 1)

    def __call__(self, x, out, **transform):
        k, th, c = self.k, self.th, self.c
        if not self.rows or out.shape[0] * out.shape[1] * out.shape[2] < ROW_WORDS_MIN_PIXELS:
            return k.bconv2d(x, self.weight, c, self.stride, self.padding, 1, 1, self.pad_value, out=out,
                             threads=th, **transform)
        n, h, w, _ = x.shape
        flat = x.reshape(-1)                               # one word per pixel (C <= 21 bits)
        r = np.left_shift(flat, np.uint64(c))
        r[1:] |= flat[:-1]                                 # the left neighbour, bits [0, C)
        r[:-1] |= np.left_shift(flat[1:], np.uint64(2 * c))  # the right one, bits [2C, 3C)
        r = r.reshape(n, h, w, 1)
        # the pieces that crossed a row of the image: padding (bit 0 = +1, bit 1 = -1)
        left, right = r[:, :, 0], r[:, :, w - 1]
        left &= ~self.piece
        right &= ~(self.piece << np.uint64(2 * c))
        if self.pad_value == -1.0:
            left |= self.piece
            right |= self.piece << np.uint64(2 * c)
        k.bconv2d(r, self.w_rows, 3 * c, self.stride, (self.padding[0], 0), 1, 1, self.pad_value, out=out,
                  threads=th, **transform)
        if self.pad_value == 0.0:
            # zero padding: the border columns again, from the image's two first and two last columns
            # side by side; with stride 3 along W the kernel's two windows are (pad, 0, 1) and
            # (W - 2, W - 1, pad)
            edges = np.concatenate([x[:, :, :2], x[:, :, w - 2:]], axis=2)
            edge = k.bconv2d(edges, self.weight, c, (self.stride[0], 3), self.padding, 1, 1, 0.0, threads=th,
                             **transform)
            out[:, :, 0] = edge[:, :, 0]
            out[:, :, w - 1] = edge[:, :, 1]
        return out


def _activation(y, act):
    """The activation node ``act`` (or None) in place on y, as refbnn.ops computes it."""
    if act is None:
        return
    if act["op"] == "hardtanh":
        np.clip(y, act["min_val"], act["max_val"], out=y)
    else:                                                   # refbnn.ops.relu_forward: x * (x > 0)
        np.multiply(y, y > 0, out=y)


def _affine_nhwc(model, j, consumers, skip):
    """Batch norm node j on an NCHW image, with the activation after it when that is its only
    reader: the nodes to run as one NHWC step, when every reader of the result takes NHWC (a pack,
    a residual step's add, an option-A subsample shortcut) and one of them is not a pack; else None."""
    nodes, out_name = model.nodes, model.meta["output"]
    members, cur = [j], nodes[j]["out"]
    readers = consumers.get(cur, [])
    if len(readers) == 1 and nodes[readers[0]]["op"] in _ACTS and cur != out_name:
        members.append(readers[0])
        cur = nodes[readers[0]]["out"]
    readers = consumers.get(cur, [])
    if cur == out_name or not readers:
        return None
    residual = False
    for r in readers:
        op = nodes[r]["op"]
        residual |= op != "pack"
        if not (op == "pack" or (op == "add" and r in skip) or
                (op == "shortcut_a" and nodes[r]["mode"] == "subsample")):
            return None
    # read by packs only (VGG-Small's stem), NCHW is faster: the pack vectorizes over pixels there,
    # and nothing else needs the transposed copy
    return members if residual else None


def _affine_step(model, members, layout):
    """Batch norm (eval) [-> activation] writing NHWC: its four operations in refbnn.ops'
    order, the first one reading the NCHW input through a transposed view (the layout change
    costs no pass of its own)."""
    nodes = model.nodes
    bn = nodes[members[0]]
    c, h, w = model.specs[bn["out"]][1]
    mean, inv_std, gamma, beta = (_tile(v.reshape(-1), h, w) for v in model._bn[members[0]])
    act = nodes[members[1]] if len(members) > 1 else None
    src = bn["in"][0]
    lay = layout[src]

    def run(xs, mem, in_place):
        x = xs[0]
        y = mem.get((len(x), h, w, c), np.float32)
        np.subtract(x.transpose(0, 2, 3, 1) if lay == "nchw" else x, mean, out=y)
        y *= inv_std
        y *= gamma
        y += beta
        _activation(y, act)
        return y
    return _Step(run, [src], nodes[members[-1]]["out"], "nhwc", pooled=True)


def _conv2d_step(model, n, lay):
    """A float convolution computed as refbnn.ops.conv2d_forward computes it (im2col as
    refbnn.kernels.reference.im2col, then one float32 GEMM per sample and group of the same
    shapes, ``np.matmul``), into pooled buffers."""
    w, b = model._a(n, "weight"), model._a(n, "bias")
    (sh, sw), (ph, pw), (dh, dw), g = n["stride"], n["padding"], n["dilation"], n["groups"]
    o, cg, kh, kw = w.shape
    wg = w.reshape(1, g, o // g, cg * kh * kw)
    ho, wo = model.specs[n["out"]][1][1:]

    def run(xs, mem, in_place):
        x = _nchw(xs[0], lay)
        nimg, c, hh, ww = x.shape
        if ph or pw:
            xpad = mem.get((nimg, c, hh + 2 * ph, ww + 2 * pw), x.dtype)
            xpad[:, :, :ph] = 0.0
            xpad[:, :, hh + ph:] = 0.0
            xpad[:, :, :, :pw] = 0.0
            xpad[:, :, :, ww + pw:] = 0.0
            xpad[:, :, ph:ph + hh, pw:pw + ww] = x
        else:
            xpad = x
        cols = mem.get((nimg, c, kh, kw, ho, wo), x.dtype)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, i, j] = xpad[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
        y = mem.get((nimg, o, ho, wo), x.dtype)
        np.matmul(wg, cols.reshape(nimg, g, (c // g) * kh * kw, ho * wo), out=y.reshape(nimg, g, o // g, ho * wo))
        if b is not None:
            y += b.reshape(1, o, 1, 1)
        if xpad is not x:
            mem.put(xpad)
        mem.put(cols)
        return y
    return _Step(run, n["in"], n["out"], "nchw", pooled=True)


def _maxpool_step(model, n, lay):
    """A float max pool (NCHW) as the running maximum of the window's strided views (padding taps
    -inf, as in refbnn.ops.maxpool2d_forward): a max rounds nothing, so these are the op's values
    (a window whose maximum is 0.0 and -0.0 may give the other zero: equal values, which no later op
    tells apart). The op builds im2col columns for its backward pass, which inference does not need."""
    def pair(v):
        return (v, v) if isinstance(v, int) else tuple(v)
    kh, kw = pair(n["kernel_size"])
    sh, sw = (kh, kw) if n["stride"] is None else pair(n["stride"])
    ph, pw = pair(n["padding"])
    c, ho, wo = model.specs[n["out"]][1]

    def run(xs, mem, in_place):
        x = _nchw(xs[0], lay)
        if ph or pw:
            xp = np.full(x.shape[:2] + (x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), -np.inf, x.dtype)
            xp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
            x = xp
        y = mem.get((len(x), c, ho, wo), x.dtype)
        y[...] = x[:, :, 0:sh * (ho - 1) + 1:sh, 0:sw * (wo - 1) + 1:sw]
        for i in range(kh):
            for j in range(kw):
                if i or j:
                    np.maximum(y, x[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw], out=y)
        return y
    return _Step(run, n["in"], n["out"], "nchw")


def pack_nhwc(k, x, sign_zero, threads=None):
    """Packed words (N, H, W, ceil(C/64)) of an NHWC float tensor: bit 1 iff x < 0 (sign_zero 1)
    or x <= 0 (sign_zero -1). With 8, 16 or 32 channels, a word per pixel holds only C bits and
    the kernel's per-row cost dominates; then 64 / C pixels are packed as one 64-value row and the
    word split into C-bit pieces (little-endian: piece q of a word is pixel q's channels). Up to
    PACK_ONE_THREAD_MAX values it packs on one thread whatever ``threads`` says: the kernel hands
    its threads one row at a time, and waking a second thread cost more than it saved there
    (ResNet-20's largest pack, 64 x 32 x 32 x 16 values, on a 2-core EPYC)."""
    if x.size <= PACK_ONE_THREAD_MAX:
        threads = 1
    if sign_zero == 1.0:
        src, polarity = x, "lce"                          # bit 1 iff x < 0
    else:
        src, polarity = -x, "bitorch"                     # bit 1 iff -x >= 0, i.e. x <= 0
    c = x.shape[-1]
    if c in (8, 16, 32) and x.size % 64 == 0 and sys.byteorder == "little" and x.flags.c_contiguous:
        words = k.pack_bits(src.reshape(-1, 64), axis=-1, polarity=polarity, threads=threads)
        return words.view(f"<u{c // 8}").astype(np.uint64).reshape(x.shape[:-1] + (1,))
    return k.pack_bits(src, axis=-1, polarity=polarity, threads=threads)


def load_model(path, threads=None, fuse=True) -> InferenceModel:
    return InferenceModel.load(path, threads, fuse)


def is_bits(spec):
    return spec[0] == BITS
