"""Record what Keras/Larq computes, as refbnn crosscheck bundles.

Larq 0.14 needs NumPy < 2 and refbnn NumPy >= 2, so this file runs in an environment of its own: it imports
only the standard library, NumPy, and (inside the functions that need them) TensorFlow and Larq, never
refbnn. Run it as a script to record the CI set of bundles:

    TF_USE_LEGACY_KERAS=1 python refbnn/crosscheck/record_keras.py --out DIR

(it sets TF_USE_LEGACY_KERAS=1 itself when unset: Larq needs Keras 2, the tf-keras package, on TF >= 2.16),
then check them with refbnn in refbnn's environment: ``refbnn crosscheck DIR/ste_sign.npz`` or
``refbnn.crosscheck.crosscheck(path)``, no options needed.

:func:`record_keras` runs one Larq layer (``larq.layers.QuantDense``, ``QuantConv2D``, or a plain
``tf.keras.layers.Dense``/``Conv2D`` as a layer without quantizers) or one Larq quantizer (an instance such
as ``larq.quantizers.SteSign(clip_value=0.5)``, or Larq's function ``larq.quantizers.ste_sign``) forward
and backward under ``tf.GradientTape``, with L = sum(out * grad_out), and returns the bundle:

- a layer: ``x``, ``kernel`` (HWIO for Conv2D, (in, out) for Dense: Larq's layout; the latent, unquantized
  kernel), ``bias`` (when the layer has one), ``grad_out``, ``out``, ``grad_x``, ``grad_kernel``,
  ``grad_bias``; the settings ``training`` and, for Conv2D, ``stride``, ``padding`` ("same"/"valid"),
  ``dilation``, ``groups``, ``pad_values``; the quantizers' refbnn names as 0-d strings
  ``input_quantizer``/``kernel_quantizer`` ("none" where the layer has none) and their parameters as
  ``input_quantizer.clip_value``, ``kernel_quantizer.clip_value``, ...; ``layout`` = "nhwc";
- a quantizer: ``quantizer`` (its refbnn name), ``x``, ``grad_out``, ``out``, ``grad_x``, its parameters
  by name (``clip_value``, ``beta``, ...), ``training``, ``layout`` = "nhwc" and ``part``: "weight" for
  the kernel quantizers (``magnitude_aware_sign``, ``dorefa_quantizer`` with ``mode="weights"``, whose
  statistics run over a kernel's axes), "input" otherwise (element-wise: the part only says how the
  NHWC layout applies).

Larq's quantizer names map to refbnn's catalogue (``refbnn.quantizers.QUANTIZERS``) through
:data:`LARQ_QUANTIZERS`; a parameter whose value is None is stored as the string "none".
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # run as a script: its own folder (refbnn/crosscheck/) must not shadow any module
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402

# Larq's quantizer class -> (refbnn's catalogue name, {Larq config key: refbnn parameter}, part).
# Part None: element-wise, recorded as part "input"; "weight": statistics over a kernel's axes;
# a callable: decided from the quantizer's configuration.
LARQ_QUANTIZERS = {
    "SteSign": ("ste_sign", {"clip_value": "clip_value"}, None),
    "ApproxSign": ("approx_sign", {}, None),
    "SwishSign": ("swish_sign", {"beta": "beta"}, None),
    "MagnitudeAwareSign": ("magnitude_aware_sign", {"clip_value": "clip_value"}, "weight"),
    "SteHeaviside": ("ste_heaviside", {"clip_value": "clip_value"}, None),
    "SteTern": ("ste_tern", {"threshold_value": "threshold_value",
                             "ternary_weight_networks": "ternary_weight_networks", "clip_value": "clip_value"},
                None),
    "DoReFa": ("dorefa_quantizer", {"k_bit": "k_bit", "mode": "mode"},
               lambda config: "weight" if config.get("mode") == "weights" else "input"),
    "NoOp": ("noop", {"precision": "precision"}, None),
}
LARQ_QUANTIZERS["DoReFaQuantizer"] = LARQ_QUANTIZERS["DoReFa"]  # Larq's old class name
LARQ_QUANTIZERS["NoOpQuantizer"] = LARQ_QUANTIZERS["NoOp"]

# Larq's quantizer functions (larq.quantizers.ste_sign, ...) -> their classes (their defaults are the same)
LARQ_FUNCTIONS = {"ste_sign": "SteSign", "approx_sign": "ApproxSign", "swish_sign": "SwishSign",
                  "ste_heaviside": "SteHeaviside", "ste_tern": "SteTern"}

# Keys of a Keras layer's configuration that are not quantizer parameters.
_KERAS_LAYER_KEYS = ("name", "trainable", "dtype", "metrics", "batch_input_shape", "build_config")

SUPPORTED = ("larq.layers.QuantDense", "larq.layers.QuantConv2D", "tf.keras.layers.Dense",
             "tf.keras.layers.Conv2D", "a Larq quantizer instance (larq.quantizers.SteSign(), ...)",
             "a Larq quantizer function (larq.quantizers.ste_sign, ...)")


class RecordError(ValueError):
    """An argument record_keras cannot record; the message names it and what was expected."""


def _tf():
    """TensorFlow and Larq, imported on first use (Larq needs Keras 2: TF_USE_LEGACY_KERAS=1)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notes, not its warnings
    try:
        import tensorflow as tf
        import larq as lq
    except ImportError as exc:
        raise ImportError(f"record_keras needs TensorFlow and Larq ({exc}); install pinned versions, e.g. "
                          f"tensorflow-cpu==2.21.0 larq==0.14.0 numpy==1.26.4 and tf-keras==2.21.0 "
                          f"(--no-deps), as .ci/run does") from exc
    return tf, lq


# ---------------------------------------------------------------------------------------------
# What is being recorded
# ---------------------------------------------------------------------------------------------

def _quantizer_entry(q, role):
    """(refbnn name, {refbnn parameter: value}, part) of a Larq quantizer, or ("none", {}, None) for None."""
    tf, lq = _tf()
    if q is None:
        return "none", {}, None
    if isinstance(q, lq.quantizers.Quantizer):
        cls = type(q).__name__
        if cls not in LARQ_QUANTIZERS:
            raise RecordError(f"{role}: Larq quantizer {cls} has no refbnn counterpart; known: "
                              f"{', '.join(sorted(LARQ_QUANTIZERS))}")
        config = q.get_config()
    elif callable(q) and getattr(q, "__module__", None) == "larq.quantizers" \
            and getattr(q, "__name__", None) in LARQ_FUNCTIONS:
        cls = LARQ_FUNCTIONS[q.__name__]
        config = getattr(lq.quantizers, cls)().get_config()  # the function's defaults are the class's
    else:
        raise RecordError(f"{role}: expected a Larq quantizer (an instance of larq.quantizers.Quantizer, or one "
                          f"of the functions larq.quantizers.{', '.join(sorted(LARQ_FUNCTIONS))}), got {q!r}")
    name, keys, part = LARQ_QUANTIZERS[cls]
    unknown = sorted(k for k in config if k not in keys and k not in _KERAS_LAYER_KEYS)
    if unknown:
        raise RecordError(f"{role}: {cls} has configuration keys {unknown} that refbnn's {name} does not take")
    params = {keys[k]: config[k] for k in keys if k in config}
    if callable(part):
        part = part(config)
    return name, params, part


def _describe(obj):
    """("layer", kind) for a layer with a kernel, ("quantizer", None) for a quantizer; errors otherwise."""
    tf, lq = _tf()
    if isinstance(obj, lq.quantizers.Quantizer) or (callable(obj) and not isinstance(obj, tf.keras.layers.Layer)
                                                    and getattr(obj, "__module__", None) == "larq.quantizers"):
        return "quantizer", None
    layers = tf.keras.layers
    others = tuple(c for c in (getattr(layers, n, None) for n in (
        "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Conv1D", "Conv3D", "DepthwiseConv1D",
        "SeparableConv1D", "Conv1DTranspose", "Conv3DTranspose", "LocallyConnected1D", "LocallyConnected2D",
        "EinsumDense")) if isinstance(c, type))
    if isinstance(obj, others):
        raise RecordError(f"layer: {type(obj).__name__} is a layer refbnn has no counterpart of; expected one of: "
                          f"{'; '.join(SUPPORTED)}")
    if isinstance(obj, layers.Conv2D):
        return "layer", "conv2d"
    if isinstance(obj, layers.Dense):
        return "layer", "dense"
    if isinstance(obj, layers.Layer):
        raise RecordError(f"layer: {type(obj).__name__} is a layer without a kernel; expected one of: "
                          f"{'; '.join(SUPPORTED)}")
    raise RecordError(f"layer: expected a Keras/Larq layer or quantizer ({'; '.join(SUPPORTED)}), got "
                      f"{type(obj).__name__}")


def _as_array(name, a, tf):
    """A NumPy array from a NumPy array or a TensorFlow tensor/variable; anything else is an error."""
    if isinstance(a, np.ndarray):
        arr = a
    elif tf.is_tensor(a) or isinstance(a, tf.Variable):
        arr = np.asarray(a.numpy())
    else:
        raise RecordError(f"{name}: expected a NumPy array or a TensorFlow tensor, got {type(a).__name__}")
    if arr.dtype not in (np.float32, np.float64):
        raise RecordError(f"{name}: expected dtype float32 or float64, got {arr.dtype}")
    if not np.isfinite(arr).all():
        raise RecordError(f"{name}: contains NaN or Inf")
    return arr


def _pair_setting(v):
    v = tuple(int(e) for e in v)
    return np.array(v[0]) if v[0] == v[1] else np.array(v)


# ---------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------

def record_keras(layer, x, grad_out=None, *, seed=0, training=True):
    """Run a Keras/Larq layer or quantizer forward and backward; return a refbnn crosscheck bundle (a dict
    name -> NumPy array, see the module docstring). ``grad_out`` (dL/dout) defaults to a standard normal
    tensor drawn from ``seed``. An unbuilt layer is built on ``x`` (its initializers choose the kernel).

    Raises :class:`RecordError` (a ValueError) naming the argument for what cannot be recorded: an object
    that is not a supported layer or Larq quantizer, a layer without a kernel, an activation inside the
    layer, channels-first data, an ``x`` that is not a float array/tensor of the layer's dtype and rank,
    a ``grad_out`` of another shape or dtype.
    """
    tf, lq = _tf()
    kind, layer_kind = _describe(layer)
    xa = _as_array("x", x, tf)
    if not isinstance(training, (bool, np.bool_)):
        raise RecordError(f"training: expected a bool, got {training!r}")
    if kind == "quantizer":
        qname, params, part = _quantizer_entry(layer, "quantizer")
        if isinstance(layer, tf.keras.layers.Layer) and xa.dtype != np.dtype(layer.dtype):
            raise RecordError(f"x: expected dtype {layer.dtype} (the quantizer's dtype; Keras would cast), got "
                              f"{xa.dtype}")
        out_shape = xa.shape
    else:
        config = layer.get_config()
        if config.get("activation") not in (None, "linear"):
            raise RecordError(f"layer: has activation {config.get('activation')!r}; refbnn's check compares the "
                              f"layer without one: build it with activation=None and apply the activation "
                              f"separately")
        nd = 4 if layer_kind == "conv2d" else 2
        if xa.ndim != nd:
            want = "(N, H, W, C)" if nd == 4 else "(N, in)"
            raise RecordError(f"x: expected a {nd}-D array {want} for {type(layer).__name__}, got shape {xa.shape}")
        if layer_kind == "conv2d" and config.get("data_format", "channels_last") != "channels_last":
            raise RecordError("layer: data_format must be 'channels_last' (NHWC), as Larq's default")
        if layer_kind == "conv2d" and layer.padding not in ("same", "valid"):
            raise RecordError(f"layer: padding {layer.padding!r} is not recorded; expected 'same' or 'valid'")
        if xa.dtype != np.dtype(layer.dtype):
            raise RecordError(f"x: expected dtype {layer.dtype} (the layer's dtype; Keras would cast), got {xa.dtype}")
        entries = {role: _quantizer_entry(getattr(layer, role, None), role)
                   for role in ("input_quantizer", "kernel_quantizer")}
        for role in entries:
            q = getattr(layer, role, None)
            if isinstance(q, tf.keras.layers.Layer) and q.dtype != layer.dtype:
                raise RecordError(f"{role}: dtype {q.dtype} differs from the layer's {layer.dtype} (Larq cannot mix "
                                  f"them); build it as larq.quantizers.{type(q).__name__}(dtype={layer.dtype!r})")
        if not layer.built:
            layer.build(xa.shape)
        out_shape = tuple(int(s) for s in layer.compute_output_shape(xa.shape))
    if grad_out is None:
        g = np.random.default_rng(seed).standard_normal(out_shape).astype(xa.dtype)
    else:
        g = _as_array("grad_out", grad_out, tf)
        if g.shape != tuple(out_shape) or g.dtype != xa.dtype:
            raise RecordError(f"grad_out: expected shape {tuple(out_shape)} and dtype {xa.dtype} (the output's), "
                              f"got shape {g.shape} dtype {g.dtype}")
    if kind == "quantizer":
        return _record_quantizer(tf, layer, xa, g, qname, params, part, training)
    return _record_layer(tf, layer, layer_kind, xa, g, training, entries)


def _run(tf, fn, x, g, variables, training):
    tx = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tx)
        y = fn(tx, training)
        loss = tf.reduce_sum(y * tf.constant(g))
    grads = tape.gradient(loss, [tx] + variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return y.numpy(), [gr.numpy() for gr in grads]


def _record_quantizer(tf, q, x, g, qname, params, part, training):
    if isinstance(q, tf.keras.layers.Layer):
        def fn(t, tr):
            return q(t, training=tr)
    else:
        def fn(t, tr):
            return q(t)
    out, (dx,) = _run(tf, fn, x, g, [], training)
    bundle = {"quantizer": np.array(qname), "part": np.array(part or "input"), "layout": np.array("nhwc"),
              "x": x, "grad_out": g, "out": out, "grad_x": dx, "training": np.array(bool(training))}
    bundle.update({k: _setting(v) for k, v in params.items()})
    return bundle


def _record_layer(tf, layer, layer_kind, x, g, training, entries):
    kernel_var = layer.kernel
    latent = getattr(kernel_var, "latent_variable", kernel_var)  # Larq's QuantizedVariable wraps the latent one
    variables = [kernel_var] + ([layer.bias] if layer.use_bias else [])
    kernel = np.array(latent.numpy())
    bias = np.array(layer.bias.numpy()) if layer.use_bias else None
    out, grads = _run(tf, lambda t, tr: layer(t, training=tr), x, g, variables, training)
    bundle = {"layout": np.array("nhwc"), "x": x, "kernel": kernel, "grad_out": g, "out": out,
              "grad_x": grads[0], "grad_kernel": grads[1], "training": np.array(bool(training))}
    if bias is not None:
        bundle.update(bias=bias, grad_bias=grads[2])
    for role, (name, params, _) in entries.items():
        bundle[role] = np.array(name)
        bundle.update({f"{role}.{k}": _setting(v) for k, v in params.items()})
    if layer_kind == "conv2d":
        pad_values = getattr(layer, "pad_values", 0.0)
        bundle.update(stride=_pair_setting(layer.strides), padding=np.array(layer.padding),
                      dilation=_pair_setting(layer.dilation_rate), groups=np.array(int(layer.groups)),
                      pad_values=np.array(float(tf.keras.backend.get_value(pad_values)), dtype=np.float64))
    return bundle


def _setting(v):
    """A setting as a 0-d array; None -> the string "none" (npz has no None)."""
    if v is None:
        return np.array("none")
    if isinstance(v, (bool, np.bool_)):
        return np.array(bool(v))
    return np.array(v)


def save_bundle(path, bundle):
    """Write ``bundle`` (name -> array) as an ``.npz`` (``np.savez``; plain numbers and strings, so it reads
    without pickle), atomically: a temporary file in the same folder, then ``os.replace``. Appends ``.npz``
    when the path lacks it, as ``np.savez``; returns the path written."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    if not isinstance(bundle, dict) or not bundle:
        raise RecordError(f"bundle: expected a non-empty dict name -> array, got {type(bundle).__name__}")
    arrays = {}
    for k, v in bundle.items():
        if not isinstance(k, str) or not k:
            raise RecordError(f"bundle: names must be non-empty strings, got {k!r}")
        a = np.asarray(v)
        if a.dtype.kind not in "biufU":
            raise RecordError(f"bundle[{k!r}]: expected numbers or a string, got dtype {a.dtype} (it would need "
                              f"pickle to read)")
        arrays[k] = a
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


# ---------------------------------------------------------------------------------------------
# The CI set
# ---------------------------------------------------------------------------------------------

def with_specials(rng, shape, specials, dtype=np.float32):
    """Standard normal values with exact specials (0, +-1, clip points, thresholds) in about a quarter of
    the places, each at least once (where there is room): where sign(0), inclusive clips and thresholds are
    decided."""
    specials = np.array(sorted(specials), dtype=np.float64)
    a = rng.standard_normal(shape)
    mask = rng.random(shape) < 0.25
    a[mask] = rng.choice(specials, size=int(mask.sum()))
    if a.size >= specials.size:  # each special at least once
        a.flat[rng.choice(a.size, size=specials.size, replace=False)] = specials
    return a.astype(dtype)


def _pm(*values):
    return {0.0} | {s * v for v in values for s in (1.0, -1.0)}


# name -> (Larq quantizer class, its arguments, specials, shape); shape (3, 3, 3, 4) is an HWIO kernel
CI_QUANTIZERS = {
    "ste_sign": ("SteSign", {}, _pm(1.0), (2, 5, 5, 3)),
    "ste_sign-clip0.5": ("SteSign", {"clip_value": 0.5}, _pm(1.0, 0.5), (2, 5, 5, 3)),
    "ste_sign-noclip": ("SteSign", {"clip_value": None}, _pm(1.0), (4, 7)),
    "approx_sign": ("ApproxSign", {}, _pm(1.0, 0.5), (2, 5, 5, 3)),
    "swish_sign": ("SwishSign", {}, _pm(1.0, 0.5), (2, 5, 5, 3)),
    "swish_sign-beta2": ("SwishSign", {"beta": 2.0}, _pm(1.0, 0.5), (4, 7)),
    "magnitude_aware_sign": ("MagnitudeAwareSign", {}, _pm(1.0), (3, 3, 3, 4)),
    "magnitude_aware_sign-dense": ("MagnitudeAwareSign", {"clip_value": 0.5}, _pm(1.0, 0.5), (6, 5)),
    "ste_heaviside": ("SteHeaviside", {}, _pm(1.0), (2, 5, 5, 3)),
    "ste_tern": ("SteTern", {"threshold_value": 0.25}, _pm(1.0, 0.25), (2, 5, 5, 3)),
    "ste_tern-twn": ("SteTern", {"ternary_weight_networks": True}, _pm(1.0), (3, 3, 3, 4)),
    "dorefa_quantizer": ("DoReFa", {"k_bit": 2}, _pm(1.0) | {1 / 3, 2 / 3}, (2, 5, 5, 3)),
    "dorefa_quantizer-weights": ("DoReFa", {"k_bit": 2, "mode": "weights"}, _pm(1.0), (3, 3, 3, 4)),
    "noop": ("NoOp", {"precision": 1}, _pm(1.0), (2, 5, 5, 3)),
    "ste_sign-float64": ("SteSign", {"dtype": "float64"}, _pm(1.0), (2, 5, 5, 3)),
}

# name -> (layer class, its arguments, x shape); every layer: input and kernel quantizer ste_sign and
# kernel_constraint "weight_clip", as Larq's documentation builds a BNN layer, unless the arguments say else.
# float64 bundles are checked at float64's tolerance (1e-10 relative).
CI_LAYERS = {
    "dense": ("QuantDense", {"units": 5}, (4, 6)),
    "dense-nobias": ("QuantDense", {"units": 5, "use_bias": False}, (4, 6)),
    "conv2d-same": ("QuantConv2D", {"filters": 4, "kernel_size": 3, "padding": "same"}, (2, 6, 6, 3)),
    "conv2d-valid": ("QuantConv2D", {"filters": 4, "kernel_size": 3, "padding": "valid"}, (2, 6, 6, 3)),
    "conv2d-same-stride2": ("QuantConv2D", {"filters": 4, "kernel_size": 3, "padding": "same", "strides": 2},
                            (2, 6, 6, 3)),
    "conv2d-valid-stride2": ("QuantConv2D", {"filters": 4, "kernel_size": 3, "padding": "valid", "strides": 2},
                             (2, 7, 7, 3)),
    "conv2d-same-pad1": ("QuantConv2D", {"filters": 4, "kernel_size": 3, "padding": "same", "pad_values": 1.0},
                         (2, 6, 6, 3)),
    "conv2d-same-stride2-pad1": ("QuantConv2D", {"filters": 4, "kernel_size": 3, "padding": "same", "strides": 2,
                                                 "pad_values": 1.0}, (2, 6, 6, 3)),
    "conv2d-same-dilation2-pad1": ("QuantConv2D", {"filters": 4, "kernel_size": 3, "padding": "same",
                                                   "dilation_rate": 2, "pad_values": 1.0}, (2, 7, 7, 3)),
    "conv2d-bireal-same-pad1": ("QuantConv2D", {"filters": 4, "kernel_size": 3, "padding": "same",
                                                "pad_values": 1.0, "input_quantizer": "approx_sign",
                                                "kernel_quantizer": "magnitude_aware_sign"}, (2, 6, 6, 3)),
    "conv2d-bireal-same-stride2-pad1-float64": ("QuantConv2D", {
        "filters": 4, "kernel_size": 3, "padding": "same", "strides": 2, "pad_values": 1.0, "dtype": "float64",
        "input_quantizer": "approx_sign", "kernel_quantizer": "magnitude_aware_sign"}, (2, 6, 6, 3)),
    "dense-float64": ("QuantDense", {"units": 5, "dtype": "float64"}, (4, 6)),
}

CI_BUNDLES = tuple(f"quantizer-{n}.npz" for n in CI_QUANTIZERS) + tuple(f"layer-{n}.npz" for n in CI_LAYERS)


def record_ci_set(out_dir, seed=0) -> list:
    """Record :data:`CI_BUNDLES` into ``out_dir`` (inputs with exact zeros and clip points); returns the paths."""
    tf, lq = _tf()
    paths = []
    for i, (name, (cls, kwargs, specials, shape)) in enumerate(CI_QUANTIZERS.items()):
        rng = np.random.default_rng([seed, 0, i])
        q = getattr(lq.quantizers, cls)(**kwargs)
        x = with_specials(rng, shape, specials, dtype=kwargs.get("dtype", np.float32))
        bundle = record_keras(q, x, seed=int(rng.integers(2 ** 31)))
        paths.append(save_bundle(os.path.join(out_dir, f"quantizer-{name}.npz"), bundle))
    for i, (name, (cls, kwargs, x_shape)) in enumerate(CI_LAYERS.items()):
        rng = np.random.default_rng([seed, 1, i])
        kw = {"input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign", "kernel_constraint": "weight_clip",
              **kwargs}
        dtype = kw.get("dtype", "float32")
        if dtype != "float32":  # a quantizer named by a string is built in float32; Larq needs the layer's dtype
            for role in ("input_quantizer", "kernel_quantizer"):
                kw[role] = getattr(lq.quantizers, REFBNN_TO_LARQ[kw[role]])(dtype=dtype)
        layer = getattr(lq.layers, cls)(**kw)
        x = with_specials(rng, x_shape, _pm(1.0), dtype=dtype)
        layer.build(x.shape)
        weights = [with_specials(rng, tuple(layer.kernel.shape), _pm(1.0), dtype=dtype)]
        if layer.use_bias:
            weights.append(rng.standard_normal(tuple(layer.bias.shape)).astype(dtype))
        layer.set_weights(weights)
        bundle = record_keras(layer, x, seed=int(rng.integers(2 ** 31)))
        paths.append(save_bundle(os.path.join(out_dir, f"layer-{name}.npz"), bundle))
    return paths


# The quantizer-pair matrix of tests/test_larq_parity.py: every element-wise Larq quantizer as the input
# quantizer, those and magnitude_aware_sign as the kernel quantizer, QuantConv2D in four geometries
# (padding, stride, pad_values) and QuantDense, plus each element-wise quantizer alone.
PARITY_INPUT_QUANTIZERS = ("ste_sign", "approx_sign", "swish_sign", "ste_heaviside")
PARITY_KERNEL_QUANTIZERS = PARITY_INPUT_QUANTIZERS + ("magnitude_aware_sign",)
PARITY_CONV_GEOMETRIES = (("same", 1, 0.0), ("same", 1, 1.0), ("same", 2, 1.0), ("valid", 1, 0.0))


def parity_conv_name(input_quantizer, kernel_quantizer, padding, stride, pad_values):
    return f"conv2d-{input_quantizer}-{kernel_quantizer}-{padding}-stride{stride}-pad{pad_values:g}.npz"


def parity_dense_name(input_quantizer, kernel_quantizer):
    return f"dense-{input_quantizer}-{kernel_quantizer}.npz"


def parity_quantizer_name(name):
    return f"quantizer-{name}.npz"


def record_parity_set(out_dir, seed=0) -> list:
    """Record the quantizer-pair matrix (see :data:`PARITY_INPUT_QUANTIZERS`) into ``out_dir``."""
    tf, lq = _tf()
    paths = []

    def layer_bundle(layer, x_shape, rng):
        x = with_specials(rng, x_shape, _pm(1.0))
        layer.build(x.shape)
        layer.set_weights([with_specials(rng, tuple(layer.kernel.shape), _pm(1.0)),
                           rng.standard_normal(tuple(layer.bias.shape)).astype(np.float32)])
        return record_keras(layer, x, seed=int(rng.integers(2 ** 31)))

    for i, iq in enumerate(PARITY_INPUT_QUANTIZERS):
        for j, kq in enumerate(PARITY_KERNEL_QUANTIZERS):
            for k, (padding, stride, pad_values) in enumerate(PARITY_CONV_GEOMETRIES):
                rng = np.random.default_rng([seed, 2, i, j, k])
                layer = lq.layers.QuantConv2D(4, 3, strides=stride, padding=padding, pad_values=pad_values,
                                              input_quantizer=iq, kernel_quantizer=kq,
                                              kernel_constraint="weight_clip")
                paths.append(save_bundle(os.path.join(out_dir, parity_conv_name(iq, kq, padding, stride, pad_values)),
                                         layer_bundle(layer, (2, 6, 6, 3), rng)))
            rng = np.random.default_rng([seed, 3, i, j])
            layer = lq.layers.QuantDense(5, input_quantizer=iq, kernel_quantizer=kq, kernel_constraint="weight_clip")
            paths.append(save_bundle(os.path.join(out_dir, parity_dense_name(iq, kq)),
                                     layer_bundle(layer, (4, 6), rng)))
        rng = np.random.default_rng([seed, 4, i])
        bundle = record_keras(lq.quantizers.get(iq), with_specials(rng, (3, 7), _pm(1.0)),
                              seed=int(rng.integers(2 ** 31)))
        paths.append(save_bundle(os.path.join(out_dir, parity_quantizer_name(iq)), bundle))
    return paths


# ---------------------------------------------------------------------------------------------
# Replaying a bundle in Larq (the other direction: refbnn's bundles recomputed by Larq)
# ---------------------------------------------------------------------------------------------

# refbnn's name -> Larq's quantizer class (the inverse of LARQ_QUANTIZERS)
REFBNN_TO_LARQ = {entry[0]: cls for cls, entry in LARQ_QUANTIZERS.items()
                  if cls not in ("DoReFaQuantizer", "NoOpQuantizer")}
_REPLAY_LAYER_KEYS = ("x", "kernel", "bias", "grad_out", "out", "grad_x", "grad_kernel", "grad_bias", "layout",
                      "layer", "part", "input_quantizer", "kernel_quantizer", "stride", "padding", "dilation",
                      "groups", "pad_values", "pad_value", "training")
_REPLAY_QUANTIZER_KEYS = ("x", "grad_out", "out", "grad_x", "layout", "part", "quantizer", "training")


def _value(name, a):
    """A bundle setting as a Python value ("none" -> None)."""
    a = np.asarray(a)
    if a.dtype.kind == "U" and a.ndim == 0:
        text = str(a[()])
        return None if text.lower() == "none" else text
    if a.ndim == 0 and a.dtype.kind in "biuf":
        return a.item()
    if a.ndim == 1 and a.size == 2 and a.dtype.kind in "iu":
        return tuple(int(v) for v in a)
    raise RecordError(f"{name}: expected a 0-d number or string (or a pair for a geometry), got dtype {a.dtype} "
                      f"shape {a.shape}")


def larq_quantizer(name, params=None):
    """The Larq quantizer for refbnn's catalogue name with refbnn's parameter names (None for "none")."""
    tf, lq = _tf()
    if name in (None, "none"):
        if params:
            raise RecordError(f"parameters {sorted(params)} given for no quantizer")
        return None
    if name not in REFBNN_TO_LARQ:
        raise RecordError(f"quantizer {name!r}: Larq has no counterpart; known: {', '.join(sorted(REFBNN_TO_LARQ))}")
    cls = REFBNN_TO_LARQ[name]
    keys = {refbnn: larq for larq, refbnn in LARQ_QUANTIZERS[cls][1].items()}
    unknown = sorted(set(params or {}) - set(keys))
    if unknown:
        raise RecordError(f"quantizer {name}: parameters {unknown} have no Larq counterpart; Larq's {cls} takes "
                          f"{sorted(keys) or 'none'}")
    return getattr(lq.quantizers, cls)(**{keys[k]: v for k, v in (params or {}).items()})


def _split_quantizer_params(settings, roles):
    """{role: {parameter: value}} from ``role.parameter`` names; bare names go to every role's quantizer
    that takes them (as refbnn's check routes them); returns also the names nothing took."""
    per_role = {r: {} for r in roles}
    left = {}
    for key, v in settings.items():
        prefix, dot, rest = key.partition(".")
        if dot and prefix in roles:
            per_role[prefix][rest] = v
        else:
            left[key] = v
    taken = set()
    for key, v in left.items():
        for role, name in roles.items():
            cls = REFBNN_TO_LARQ.get(name)
            if cls and key in LARQ_QUANTIZERS[cls][1].values():
                per_role[role][key] = v
                taken.add(key)
    return per_role, sorted(set(left) - taken)


def replay_bundle(bundle, seed=0):
    """Recompute a refbnn bundle in Larq: the Larq layer (``input_quantizer``/``kernel_quantizer``, NHWC,
    ``kernel`` HWIO or (in, out)) or the Larq quantizer (``quantizer``) it describes, run on its ``x``
    (and ``kernel``, ``bias``, ``grad_out``) with :func:`record_keras`; returns Larq's bundle. Settings
    Larq has no counterpart of (a method, a convention, integer padding, ...) are errors."""
    tf, lq = _tf()
    if not isinstance(bundle, dict):
        raise RecordError(f"bundle: expected a dict name -> array, got {type(bundle).__name__}")
    data = {k: np.asarray(v) for k, v in bundle.items()}
    if "x" not in data:
        raise RecordError("bundle: lacks 'x'")
    layout = _value("layout", data["layout"]) if "layout" in data else "nhwc"
    if layout != "nhwc":
        raise RecordError(f"layout: Larq's bundles are NHWC with HWIO / (in, out) kernels; got {layout!r}")
    training = bool(_value("training", data["training"])) if "training" in data else True
    grad_out = data.get("grad_out")
    if "quantizer" in data:
        settings = {k: _value(k, a) for k, a in data.items() if k not in _REPLAY_QUANTIZER_KEYS}
        q = larq_quantizer(_value("quantizer", data["quantizer"]), settings)
        return record_keras(q, data["x"], grad_out, seed=seed, training=training)
    if "kernel" not in data:
        raise RecordError("bundle: expected a Larq layer ('kernel', 'input_quantizer'/'kernel_quantizer') or a "
                          "quantizer ('quantizer') bundle" + ("; a method's bundle ('method') has no Larq counterpart"
                                                              if "method" in data else ""))
    roles = {r: _value(r, data[r]) if r in data else "none" for r in ("input_quantizer", "kernel_quantizer")}
    settings = {k: _value(k, a) for k, a in data.items() if k not in _REPLAY_LAYER_KEYS}
    per_role, unknown = _split_quantizer_params(settings, roles)
    if unknown:
        raise RecordError(f"{', '.join(unknown)}: no setting of a Larq layer")
    quantizers = {r: larq_quantizer(roles[r], per_role[r]) for r in roles}
    kernel = data["kernel"]
    use_bias = "bias" in data
    if kernel.ndim == 2:
        for g in ("stride", "padding", "dilation", "groups", "pad_values", "pad_value"):
            if g in data:
                raise RecordError(f"{g}: a dense layer has no {g}")
        layer = lq.layers.QuantDense(kernel.shape[1], use_bias=use_bias, **quantizers)
    elif kernel.ndim == 4:
        padding = _value("padding", data["padding"]) if "padding" in data else "valid"
        if padding not in ("same", "valid"):
            raise RecordError(f"padding: Larq's QuantConv2D pads 'same' or 'valid', got {padding!r}")
        geo = {g: _value(g, data[g]) if g in data else 1 for g in ("stride", "dilation", "groups")}
        pad_key = "pad_values" if "pad_values" in data else "pad_value"
        pad_values = float(_value(pad_key, data[pad_key])) if pad_key in data else 0.0
        layer = lq.layers.QuantConv2D(int(kernel.shape[3]), tuple(kernel.shape[:2]), strides=geo["stride"],
                                      padding=padding, dilation_rate=geo["dilation"], groups=geo["groups"],
                                      pad_values=pad_values, use_bias=use_bias, **quantizers)
    else:
        raise RecordError(f"kernel: expected (kh, kw, C, O) or (in, out), got shape {kernel.shape}")
    x = data["x"]
    if x.dtype != np.float32:
        raise RecordError(f"x: Larq's layers compute in float32; got {x.dtype} (export with dtype float32)")
    layer.build(x.shape)
    layer.set_weights([kernel] + ([data["bias"]] if use_bias else []))
    return record_keras(layer, x, grad_out, seed=seed, training=training)


def versions() -> dict:
    tf, lq = _tf()
    try:
        import tf_keras
        keras = f"tf-keras {tf_keras.__version__}"
    except ImportError:
        keras = f"keras {getattr(tf.keras, '__version__', '?')}"
    return {"python": sys.version.split()[0], "numpy": np.__version__, "tensorflow": tf.__version__,
            "keras": keras, "larq": lq.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Record Keras/Larq outputs and gradients as refbnn crosscheck "
                                                 "bundles (the CI set); check them with refbnn crosscheck.")
    parser.add_argument("--out", required=True, help="folder to write the .npz bundles into (created)")
    parser.add_argument("--set", choices=("ci", "parity"), default="ci",
                        help="ci: every Larq quantizer alone and the CI's layers (default); parity: the "
                             "quantizer-pair matrix of tests/test_larq_parity.py")
    parser.add_argument("--replay", metavar="BUNDLE", nargs="+",
                        help="recompute these bundles (e.g. exported by refbnn) in Larq and write Larq's bundles "
                             "into --out under the same file names")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    args = parser.parse_args(argv)
    if args.replay:
        for path in args.replay:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            written = save_bundle(os.path.join(args.out, os.path.basename(path)), replay_bundle(data, seed=args.seed))
            print(f"replayed {path} in Larq: {written}")
        return 0
    paths = (record_ci_set if args.set == "ci" else record_parity_set)(args.out, seed=args.seed)
    info = versions()
    with open(os.path.join(args.out, "versions.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(f"recorded {len(paths)} bundles into {args.out} with " + ", ".join(f"{k} {v}" for k, v in info.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
