"""The layer check: a method's binary conv/linear layer, or a Larq-style layer of two quantizers."""
from __future__ import annotations

import numpy as np

from ..conventions import Convention, get_convention
from ..layers import BinaryConv2d, BinaryLinear
from ..methods import LayerFactory, Method, get_method
from ..quantizers import get_quantizer
from .boundaries import exercised
from .bundle import (GEOMETRY, BundleError, _check_input_dtypes, _expect_shape, _fmt, _int, _Namespace, _need, _pair,
                     _same_value)
from .layout import _LAYER_SHAPES, _conv_out, _kernel_from_refbnn, _kernel_to_refbnn, _padding4, _to_nchw, _to_nhwc
from .settings import (CONVENTION_FIELDS, Request, _check_schedule_values, _configured_method,
                       _convention_with, _on_epoch, _set_explicit_state)

def _layer_geometry(req: Request, arrays, ns: _Namespace):
    """Validate the layer's arrays in the bundle's layout; return the geometry and output shape."""
    layout = req.layout
    wname = "kernel" if layout == "nhwc" else "weight"
    other = "weight" if wname == "kernel" else "kernel"
    if wname not in arrays and other in arrays:
        hint = ("'kernel' is the Larq/TensorFlow name (HWIO or (in, out)): use --layout nhwc" if other == "kernel"
                else "in --layout nhwc the weight is named 'kernel' and laid out HWIO (conv) or (in, out) (dense); "
                     "for PyTorch's (O, I, kh, kw) / (out, in) 'weight' use --layout nchw")
        raise BundleError(f"the bundle has {other!r} but not {wname!r}: {hint}")
    layer = req.layer
    if layer is None:
        w = arrays.get(wname)
        layer = "conv2d" if w is not None and w.ndim == 4 else "linear" if w is not None and w.ndim == 2 else None
        if layer is None:
            _need(arrays, wname, "(O, C/groups, kh, kw) for conv2d or (out, in) for linear" if layout == "nchw"
                  else "(kh, kw, C/groups, O) for conv2d or (in, out) for dense")
            raise BundleError(f"{wname}: expected a 4-D (conv2d) or 2-D (linear) array, got shape "
                              f"{_fmt(arrays[wname].shape)}")
    docs = _LAYER_SHAPES[(layer, layout)]
    x = _need(arrays, "x", docs["x"], " (the layer input)")
    w = _need(arrays, wname, docs["w"])
    nd = 4 if layer == "conv2d" else 2
    for name, a, doc in (("x", x, docs["x"]), (wname, w, docs["w"])):
        if a.ndim != nd:
            raise BundleError(f"{name}: expected a {nd}-D array {doc} for --layer {layer}, got shape {_fmt(a.shape)}")
    geo = {"layer": layer, "wname": wname}
    if layer == "linear":
        for g in GEOMETRY:
            if ns.has(g):
                raise BundleError(f"{g}: a linear layer has no {g}; remove it from the bundle")
        fin, fout = (w.shape[1], w.shape[0]) if layout == "nchw" else (w.shape[0], w.shape[1])
        if x.shape[1] != fin:
            hint = ""
            if layout == "nchw" and x.shape[1] == w.shape[0]:
                hint = ("; the weight looks (in, out) (Larq/TensorFlow): use --layout nhwc and name it 'kernel', "
                        "or store PyTorch's (out, in)")
            elif layout == "nhwc" and x.shape[1] == w.shape[1]:
                hint = "; the kernel looks (out, in) (PyTorch): use --layout nchw and name it 'weight'"
            raise BundleError(f"x: expected shape ({x.shape[0]}, {fin}) (N, in) to match {wname} {_fmt(w.shape)} "
                              f"{docs['w']}, got {_fmt(x.shape)}{hint}")
        geo.update(out_channels=fout, out_shape=(x.shape[0], fout))
        return geo
    groups = _int("groups", ns.take("groups", 1))
    if groups < 1:
        raise BundleError(f"groups: expected a positive int, got {groups}")
    stride = _pair("stride", ns.take("stride", 1), 1)
    dilation = _pair("dilation", ns.take("dilation", 1), 1)
    padding = req.padding if req.padding is not None else ns.take("padding", 0)
    if req.padding is not None and ns.has("padding"):
        ns.take("padding")
        if not _same_value(ns.values["padding"], req.padding):
            raise BundleError(f"padding is given by the bundle ({ns.values['padding']!r}) and by --padding "
                              f"({req.padding!r}); remove one")
    if layout == "nchw":
        n, c, h, wd = x.shape
        o, cg, kh, kw = w.shape
        alt_c = x.shape[3]
    else:
        n, h, wd, c = x.shape
        kh, kw, cg, o = w.shape
        alt_c = x.shape[1]
    if c != cg * groups:
        hint = ""
        if alt_c == cg * groups:
            hint = (f"; x looks {'channels-last (NHWC)' if layout == 'nchw' else 'channels-first (NCHW)'}: use "
                    f"--layout {'nhwc' if layout == 'nchw' else 'nchw'}")
        want = f"(N, {cg * groups}, H, W)" if layout == "nchw" else f"(N, H, W, {cg * groups})"
        raise BundleError(f"x: expected shape {want} to match {wname} {_fmt(w.shape)} {docs['w']} with "
                          f"groups={groups}, got {_fmt(x.shape)}{hint}")
    if o % groups:
        raise BundleError(f"{wname}: {o} output channels are not divisible by groups={groups}")
    pads = _padding4(padding, (kh, kw), stride, dilation, (h, wd))
    ho = _conv_out(h, kh, stride[0], pads[0], pads[1], dilation[0])
    wo = _conv_out(wd, kw, stride[1], pads[2], pads[3], dilation[1])
    if ho < 1 or wo < 1:
        raise BundleError(f"x: input {h}x{wd} is smaller than the (dilated) kernel {kh}x{kw} with padding {padding!r}")
    out_shape = (n, o, ho, wo) if layout == "nchw" else (n, ho, wo, o)
    geo.update(out_channels=o, in_channels=c, kernel=(kh, kw), stride=stride, dilation=dilation, groups=groups,
               pads=pads, padding=padding, out_shape=out_shape)
    return geo


def _validate_layer_arrays(arrays, geo, layout, scale, bundle_doc):
    wname = geo["wname"]
    docs = _LAYER_SHAPES[(geo["layer"], layout)]
    o = geo["out_channels"]
    _expect_shape(arrays, "bias", (o,), "(one per output channel)")
    if "alpha" in arrays and scale != "learned":
        raise BundleError(f"alpha: this layer has no learned scale ({bundle_doc} uses scale={scale!r}); remove "
                          f"'alpha' and 'grad_alpha' or use a method with a learned scale (--param scale=learned)")
    if scale == "learned":
        _need(arrays, "alpha", f"({o},)", f" (the learned per-output-channel scale of {bundle_doc})")
        _expect_shape(arrays, "alpha", (o,), "(one per output channel)")
    if "grad_bias" in arrays and "bias" not in arrays:
        raise BundleError(f"grad_bias: the bundle has no 'bias' (shape ({o},)); add it or remove grad_bias")
    out_shape = geo["out_shape"]
    geometry_doc = ""
    if geo["layer"] == "conv2d":
        geometry_doc = (f" for stride={geo['stride']}, padding={geo['padding']!r}, dilation={geo['dilation']}, "
                        f"groups={geo['groups']} (set them in the bundle or with --param)")
    for name in ("out", "grad_out"):
        if name in arrays and tuple(arrays[name].shape) != tuple(out_shape):
            a = arrays[name]
            hint = ""
            if sorted(a.shape) == sorted(out_shape):
                hint = "; it holds the same sizes in another order: check --layout (nchw or nhwc)"
            raise BundleError(f"{name}: expected shape {_fmt(out_shape)} {docs['out']}{geometry_doc}, got "
                              f"{_fmt(a.shape)}{hint} (shapes must agree exactly; nothing is broadcast)")
    _expect_shape(arrays, "grad_x", arrays["x"].shape, "(the shape of x)")
    _expect_shape(arrays, "grad_" + wname, arrays[wname].shape, f"(the shape of {wname})")
    for other in ("grad_weight", "grad_kernel"):
        if other != "grad_" + wname and other in arrays:
            raise BundleError(f"{other}: in --layout {layout} the weight is {wname!r}, so its gradient is "
                              f"'grad_{wname}'")
    _expect_shape(arrays, "grad_bias", (o,))
    _expect_shape(arrays, "grad_alpha", (o,))
    wants_grads = [k for k in arrays if k.startswith("grad_") and k != "grad_out"]
    if wants_grads and "grad_out" not in arrays:
        raise BundleError(f"the bundle lacks 'grad_out' (dL/dout, shape {_fmt(out_shape)}), needed to compare "
                          f"{', '.join(wants_grads)}")


def _larq_method(req: Request) -> Method:
    """A Larq-style layer as a method of its two quantizers (so ``Method.with_params`` routes the named values)."""
    names = [None if n in (None, "none") else n for n in (req.kernel_quantizer, req.input_quantizer)]
    return Method("larq", "a Larq-style layer", weight_quantizer=names[0], input_quantizer=names[1])


def _larq_quantizers(method: Method, conv: Convention | None):
    """(kernel quantizer, input quantizer): the quantizers' own defaults (Larq's), or the convention's."""
    if conv is not None:
        return method.build_quantizers(conv)
    return (get_quantizer(method.weight_quantizer, **method.weight_params),
            get_quantizer(method.input_quantizer, **method.input_params))


def _build_layer(req: Request, geo, dtype, ns: _Namespace):
    """The refbnn layer for a layer-mode request: a method's from ``LayerFactory`` (the convention's pad value
    and quantizers, the method's scale), a Larq layer's from its two quantizers. Returns the layer, the
    configured method (None for Larq), the convention, the ``with_params`` parameters and the names known."""
    kind = geo["layer"]
    settings = _layer_settings_names(req, kind)
    if req.mode == "method":
        conv = _convention_with(get_convention(req.convention), ns)
        method, params, known = _configured_method(get_method(req.method), ns, settings, f"method {req.method}")
        factory = LayerFactory(method, rng=0, dtype=dtype, convention=conv, backend="numpy")
        if kind == "conv2d":
            layer = factory.binary_conv(geo["in_channels"], geo["out_channels"], geo["kernel"], geo["stride"],
                                        geo["pads"], geo["dilation"], geo["groups"])
        else:
            layer = factory.binary_linear(geo["in_features"], geo["out_channels"])
        return layer, method, conv, params, known | settings
    conv = get_convention(req.convention) if req.convention else None
    pad_value = conv.pad_value if conv is not None else 0.0  # Larq's default pad_values = 0
    if kind == "conv2d":
        pad_value = ns.take("pad_value", pad_value)
    larq, params, known = _configured_method(_larq_method(req), ns, settings, "Larq layer")
    try:
        kq, iq = _larq_quantizers(larq, conv)
    except ValueError as exc:
        raise BundleError(f"Larq layer: {exc}") from exc
    if kind == "conv2d":
        layer = BinaryConv2d(geo["in_channels"], geo["out_channels"], geo["kernel"], geo["stride"], geo["pads"],
                             geo["dilation"], geo["groups"], weight_quantizer=kq, input_quantizer=iq,
                             pad_value=float(pad_value), backend="numpy", dtype=dtype)
    else:
        layer = BinaryLinear(geo["in_features"], geo["out_channels"], kq, iq, backend="numpy", dtype=dtype)
    return layer, None, conv, params, known | settings


def _layer_settings_names(req, layer_kind):
    """The names a layer check takes itself (the rest are the method's or the quantizers' parameters)."""
    names = {"training"}
    if layer_kind == "conv2d":
        names |= set(GEOMETRY) | {"pad_value", "pad_values"}
    if req.mode == "method":
        names |= {"epoch", "epochs"} | set(CONVENTION_FIELDS)
    return names


def _layer_quantizers(layer) -> dict:
    return {"weight": getattr(layer, "weight_quantizer", None), "input": getattr(layer, "input_quantizer", None)}


def _run_layer(req: Request, arrays: dict, ns: _Namespace, want_grads: bool):
    """Build the layer, load the bundle's inputs, run forward (and backward); outputs in the bundle's layout."""
    geo = _layer_geometry(req, arrays, ns)
    layout, wname = req.layout, geo["wname"]
    x, w = arrays["x"], arrays[wname]
    _check_input_dtypes(arrays, ("x", wname, "bias", "alpha", "grad_out"))
    dtype = x.dtype
    if geo["layer"] == "linear":
        geo["in_features"] = w.shape[1] if layout == "nchw" else w.shape[0]
    layer, method, conv, params, known = _build_layer(req, geo, dtype, ns)
    scale = getattr(layer, "scale", None)
    bundle_doc = f"method {req.method}" if req.mode == "method" else "a Larq layer"
    _validate_layer_arrays(arrays, geo, layout, scale, bundle_doc)

    # parameters, in refbnn's layout
    layer.params["weight"] = np.array(_kernel_to_refbnn(w) if layout == "nhwc" else w, dtype=dtype, copy=True)
    if "bias" in arrays:
        layer.params["bias"] = np.array(arrays["bias"], dtype=dtype, copy=True)
    if "alpha" in arrays:
        layer.params["alpha"] = np.array(arrays["alpha"], dtype=dtype, copy=True)
    layer.zero_grad()

    # the epoch's schedule values, then explicit ones (they win), then the mode
    quantizers = _layer_quantizers(layer)
    hooked = _on_epoch(method, layer, ns, conv) if method is not None and (ns.has("epoch") or ns.has("epochs")) \
        else {}
    state = _set_explicit_state(quantizers, params)
    _check_schedule_values(quantizers, hooked, state, method, bundle_doc)
    training = bool(ns.take("training", True))
    layer.train(training)  # the layer hands ``training`` to its quantizers' forward
    ns.check_all_used(known)

    xin = _to_nchw(x) if layout == "nhwc" and x.ndim == 4 else x
    quantized = {"input": (quantizers["input"], xin, "inputs x"),
                 "weight": (quantizers["weight"], layer.params["weight"], "weights")}
    pads = geo.get("pads") if hasattr(layer, "pad_value") else None  # a float Conv2d pads with zeros, always
    boundaries, notes = exercised(quantized, pads, getattr(layer, "pad_value", None), training)
    g = arrays.get("grad_out")
    gin = None if g is None else (_to_nchw(g) if layout == "nhwc" and g.ndim == 4 else g)
    out, cache = layer.forward(xin)
    dx = layer.backward(gin, cache) if (want_grads and gin is not None) else None
    results = {"out": _to_nhwc(out) if layout == "nhwc" and out.ndim == 4 else out}
    if dx is not None:
        results["grad_x"] = _to_nhwc(dx) if layout == "nhwc" and dx.ndim == 4 else dx
        gw = layer.grads["weight"]
        results["grad_" + wname] = _kernel_from_refbnn(gw) if layout == "nhwc" else gw
        if "bias" in layer.params:
            results["grad_bias"] = layer.grads["bias"]
        if "alpha" in layer.params:
            results["grad_alpha"] = layer.grads["alpha"]
    info = {"layer": geo["layer"], "dtype": str(dtype), "training": training}
    if geo["layer"] == "conv2d":
        info.update(stride=geo["stride"], padding=geo["padding"], dilation=geo["dilation"], groups=geo["groups"],
                    pad_value=getattr(layer, "pad_value", None))
    if conv is not None:
        info["convention_fields"] = conv.as_dict()
    info["quantizers"] = {r: repr(q) for r, q in quantizers.items() if q is not None}
    if scale is not None:
        info["scale"] = scale
    if hooked:
        info["schedule_values"] = hooked
    if state:
        info["state"] = state
    info["exercised"], info["boundary_notes"] = boundaries, notes
    return results, info
