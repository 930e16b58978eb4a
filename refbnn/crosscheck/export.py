"""Export: bundles computed by refbnn, for another implementation to be checked against."""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from ..conventions import get_convention
from ..methods import get_method
from ..params import format_setting
from .bundle import GEOMETRY, LAYER_INPUTS, LAYER_OUTPUTS, BundleError, _int, _Namespace, _scalar, _split_bundle, \
    load_bundle, save_bundle
from .check import _as_request
from .boundaries import zero_mean_row as _zero_mean_row
from .layer import _larq_method, _larq_quantizers, _layer_geometry, _layer_settings_names, _run_layer
from .quantizer import _run_quantizer, _single_quantizer
from .schedule import _default_output_name, _evaluate_schedule, _schedule_call_args, get_schedule
from .settings import Request, _configured_method, _convention_with, _schedule_defaults

def _special_values(rng, shape, dtype, specials):
    """Standard normal values with exact specials (0, +-1, +-clip) sprinkled in: the points where
    conventions differ (sign(0), inclusive/exclusive clip) are exercised in every bundle."""
    a = rng.standard_normal(shape)
    mask = rng.random(shape) < 0.25
    a[mask] = rng.choice(np.array(specials, dtype=np.float64), size=int(mask.sum()))
    return a.astype(dtype)


def _standardizes(q):
    return q is not None and "std_ddof" in q.config()


def _specials(quantizers):
    vals = {0.0, 1.0, -1.0}
    for q in quantizers:
        if q is None:
            continue
        for v in q.config().values():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 10:
                vals |= {float(v), -float(v)}
    return sorted(vals)



# names that only a layer takes: a quantizer bundle (a method's -weight/-input part) must not hold them, or
# checking it would refuse them as settings with no effect
_LAYER_ONLY = GEOMETRY + ("pad_value", "pad_values", "scale")


def _bundle_params(params: dict, layer_bundle: bool) -> dict:
    """The request's parameters as a bundle stores them: the layer-only ones only in a layer bundle; None and
    strings spelled so that reading the bundle gives them back (:func:`refbnn.params.format_setting`)."""
    return {k: format_setting(v) for k, v in params.items() if layer_bundle or k not in _LAYER_ONLY}


def _meta(req: Request):
    return {k: np.array(str(v)) for k, v in req.describe().items()}


MAX_EXPORT_ELEMENTS = 1 << 24  # per exported array: 16 Mi values, 128 MiB in float64 (bundles are read up to 256 MiB)


def _parse_shape(v, name):
    """A shape given as ``"2,3,5,5"`` (or ``2x3x5x5``) or a sequence: positive integers, at most
    :data:`MAX_EXPORT_ELEMENTS` values in all, so that a typo is an error rather than an allocation."""
    if v is None:
        return v
    if isinstance(v, str):
        try:
            shape = tuple(int(s) for s in v.replace("x", ",").split(",") if s.strip())
        except ValueError as exc:
            raise BundleError(f"{name}: expected comma-separated integers, got {v!r}") from exc
    else:
        try:
            shape = tuple(_int(name, s) for s in v)
        except TypeError as exc:
            raise BundleError(f"{name}: expected a sequence of integers, got {v!r}") from exc
    if not shape or any(d < 1 for d in shape):
        raise BundleError(f"{name}: expected positive sizes, got {v!r}")
    if math.prod(shape) > MAX_EXPORT_ELEMENTS:
        raise BundleError(f"{name}: {v!r} has {math.prod(shape)} values; at most {MAX_EXPORT_ELEMENTS} are "
                          f"exported per array")
    return shape


def _write_all(planned, overwrite, source):
    """Write the planned ``(path, arrays)`` bundles, each atomically (:func:`save_bundle`). Before the first is
    written: an existing file is an error unless ``overwrite``, and the input bundle ``source`` is never
    replaced by its own export."""
    paths = [p for p, _ in planned]
    for p in paths:
        if os.path.isdir(p):
            raise BundleError(f"{p}: is a directory; the export would write a bundle file there")
    if source is not None and isinstance(source, (str, os.PathLike)):
        for p in paths:
            if os.path.exists(p) and os.path.samefile(p, source):
                raise BundleError(f"{p}: is the input bundle; the export would replace it with refbnn's own outputs "
                                  f"(write the export into another directory)")
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)}: exist{'s' if len(existing) == 1 else ''}; the export does "
                              f"not replace files unless --overwrite (overwrite=True) is given")
    return [save_bundle(p, arrays, overwrite=overwrite) for p, arrays in planned]


def export_bundles(directory, method=None, convention=None, part=None, layer=None, layout=None, params=None,
                   quantizer=None, input_quantizer=None, kernel_quantizer=None, schedule=None, padding=None,
                   seed=0, dtype="float64", x_shape=None, weight_shape=None, bias=True, bundle=None,
                   require_convention=False, overwrite=False) -> list:
    """Write bundles computed by refbnn into ``directory``; returns their paths.

    Inputs come from ``bundle`` (a path or mapping holding the inputs; any expected outputs in it are
    replaced) or are drawn from ``seed``, with exact zeros and clip points sprinkled in so that the
    conventions (sign(0), inclusive clip, pad value) are exercised. ``method`` exports the layer and,
    unless ``part`` names one, each quantizer the method has (``-weight``/``-input`` files);
    ``schedule`` exports its values at ``epoch = 0..epochs-1`` (``params["epochs"]``, default 10).
    Each file records how it was made (``method``, ``convention``, ...), so that ``crosscheck`` of an
    exported file needs no options. Every bundle is computed before the first is written; an existing file is
    an error unless ``overwrite`` (never the input ``bundle`` itself), and each is written atomically.
    """
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise BundleError(f"export: {directory}: exists and is not a directory")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise BundleError(f"dtype: expected float32 or float64, got {dtype}")
    given, meta = {}, {}
    if bundle is not None:
        data = load_bundle(bundle) if isinstance(bundle, (str, os.PathLike)) else dict(bundle)
        arrays, settings, meta = _split_bundle({k: np.asarray(v) for k, v in data.items()})
        given = {k: v for k, v in {**arrays, **settings}.items() if k not in LAYER_OUTPUTS}
    req = _as_request(meta, dict(method=method, convention=convention, part=part, layer=layer, layout=layout,
                                 padding=padding, quantizer=quantizer, input_quantizer=input_quantizer,
                                 kernel_quantizer=kernel_quantizer, schedule=schedule, params=params),
                      require_convention)
    rng = np.random.default_rng(seed)
    if req.mode == "schedule":
        return _write_all([_export_schedule(directory, req, given)], overwrite, bundle)

    planned = []

    def run_and_save(name, r: Request, inputs):
        arrays, settings, _ = _split_bundle(inputs)
        ns = _Namespace({k: _scalar(k, a) for k, a in settings.items()}, r.params)
        if r.mode == "quantizer" or r.part in ("weight", "input"):
            results, _ = _run_quantizer(r, arrays, ns, want_grads=True)
        else:
            results, _ = _run_layer(r, arrays, ns, want_grads=True)
        out = {**inputs, **{k: np.asarray(v) for k, v in results.items()}}
        layer_bundle = r.mode in ("method", "larq") and r.part == "layer"
        if r.padding is not None and "padding" not in out and layer_bundle:
            out["padding"] = np.array(r.padding)
        out.update({k: np.array(v) for k, v in _bundle_params(r.params, layer_bundle).items()})
        out.update(_meta(r))
        planned.append((os.path.join(directory, name), out))

    x_shape, weight_shape = _parse_shape(x_shape, "x_shape"), _parse_shape(weight_shape, "weight_shape")
    if req.mode == "quantizer":
        role = req.part if req.part in ("weight", "input") else None
        q, _ = _single_quantizer(req, role, _Namespace({}, {k: v for k, v in req.params.items() if k != "training"}),
                                 require_state=False)
        req = _with_unsaid_defaults(req, {None: q}, given, seed)
        inputs = given or _random_part_inputs(req, rng, dtype, _specials([q]), x_shape, weight_shape,
                                              zero_mean=_standardizes(q))
        run_and_save(f"{req.quantizer}{'-' + req.convention if req.convention else ''}.npz", req, inputs)
        return _write_all(planned, overwrite, bundle)
    (wq, iq), scale = _request_quantizers(req)
    req = _with_unsaid_defaults(req, {"weight": wq, "input": iq}, given, seed)
    specials = _specials([wq, iq])
    parts = [req.part]
    if req.mode == "method" and part is None and "part" not in meta and not given:
        parts += [p for p, q in (("weight", wq), ("input", iq)) if q is not None]
    stem = (f"{req.method}-{req.convention}" if req.mode == "method"
            else f"larq-{req.input_quantizer}-{req.kernel_quantizer}")
    for p in parts:
        r = dataclasses.replace(req, part=p)
        if p == "layer":
            if given:
                kind = req.layer or ("conv2d" if np.ndim(given.get("x")) == 4 else "linear")
            else:
                kind = req.layer or ("linear" if weight_shape is not None and len(weight_shape) == 2 else "conv2d")
            r = dataclasses.replace(r, layer=kind)
            inputs = given or _random_layer_inputs(r, rng, dtype, specials, x_shape, weight_shape, bias, scale,
                                                   zero_mean_weight=_standardizes(wq))
            run_and_save(f"{stem}-{kind}-{r.layout}.npz", r, inputs)
        else:  # a quantizer alone: without the layer's geometry, pad value and scale
            r = dataclasses.replace(r, padding=None, params={k: v for k, v in r.params.items() if k not in _LAYER_ONLY})
            inputs = given or _random_part_inputs(r, rng, dtype, specials, x_shape if len(parts) == 1 else None,
                                                  weight_shape if p == "weight" else None,
                                                  zero_mean=_standardizes(wq if p == "weight" else iq))
            run_and_save(f"{stem}-{p}-{r.layout}.npz", r, inputs)
    return _write_all(planned, overwrite, bundle)


def _with_unsaid_defaults(req: Request, quantizers: dict, given, seed) -> Request:
    """What a bundle must say to be reproduced, added to the request where it says nothing: without
    epoch/epochs, the quantizers' schedule values at their current values (a check refuses a bundle that
    leaves them unsaid); for a quantizer that draws random numbers without a seed, the export's ``seed``."""
    names = set(req.params) | set(given)
    defaults = {} if names & {"epoch", "epochs"} else _schedule_defaults(quantizers, names)
    if "seed" not in names and any(q is not None and q.needs_rng and q.config().get("seed", 0) is None
                                   for q in quantizers.values()):
        defaults["seed"] = int(seed)
    return dataclasses.replace(req, params={**defaults, **req.params}) if defaults else req


def _export_schedule(directory, req: Request, given):
    sched = get_schedule(req.schedule)
    p = dict(req.params)
    epochs = _int("epochs", p.pop("epochs", _scalar("epochs", given["epochs"]) if "epochs" in given else 10))
    b = {"epoch": np.arange(epochs), "epochs": np.array(epochs)}
    b.update({k: v for k, v in given.items() if k not in ("epochs",)})
    conv = get_convention(req.convention) if req.convention else None
    ns = _Namespace({}, p)
    kwargs, param_names = _schedule_call_args(sched, req.schedule, b, ns)
    ns.check_all_used(param_names)
    names, table, full = _evaluate_schedule(sched, req.schedule, np.asarray(b["epoch"]).reshape(-1), epochs, kwargs,
                                            conv)
    names = names or (_default_output_name(sched),)
    b = {k: v for k, v in b.items() if k not in param_names}  # every parameter, explicitly, by its own name
    b.update({k: np.array(v) for k, v in full.items()})
    b.update({n: table[:, i].reshape(np.shape(b["epoch"])) for i, n in enumerate(names)})
    b.update(_meta(dataclasses.replace(req, params={})))
    return os.path.join(directory, f"schedule-{req.schedule}{'-' + req.convention if conv else ''}.npz"), b


def _request_quantizers(req):
    """((weight quantizer, input quantizer), the layer's scale) of a method or Larq-layer export, built as the
    check builds them."""
    ns = _Namespace({}, req.params)
    settings = _layer_settings_names(req, "conv2d")
    if req.mode == "method":
        conv = _convention_with(get_convention(req.convention), ns)
        method, _, _ = _configured_method(get_method(req.method), ns, settings, f"method {req.method}")
        return method.build_quantizers(conv), method.scale_for(conv)
    larq, _, _ = _configured_method(_larq_method(req), ns, settings, "Larq layer")
    try:
        return _larq_quantizers(larq, get_convention(req.convention) if req.convention else None), None
    except ValueError as exc:
        raise BundleError(f"Larq layer: {exc}") from exc


def _random_layer_inputs(req, rng, dtype, specials, x_shape, weight_shape, bias, scale=None, zero_mean_weight=False):
    """Random inputs for a layer export; a shape not given is derived from the other one. ``zero_mean_weight``:
    the first output channel's weights have mean exactly 0 (:func:`_zero_mean_row`)."""
    kind, nhwc = req.layer, req.layout == "nhwc"
    nd = 4 if kind == "conv2d" else 2
    for name, shape in (("x_shape", x_shape), ("weight_shape", weight_shape)):
        if shape is not None and len(shape) != nd:
            raise BundleError(f"{name}: expected {nd} sizes for a {kind} layer, got {shape}")
    groups = _int("groups", req.params.get("groups", 1)) if kind == "conv2d" else 1
    if weight_shape is None:
        c = None if x_shape is None else (x_shape[-1] if nhwc and kind == "conv2d" else x_shape[1])
        if kind == "conv2d":
            c = c or 3 * groups
            weight_shape = (3, 3, c // groups, 4 * groups) if nhwc else (4 * groups, c // groups, 3, 3)
        else:
            c = c or 6
            weight_shape = (c, 5) if nhwc else (5, c)
    if x_shape is None:
        if kind == "conv2d":
            c = (weight_shape[2] if nhwc else weight_shape[1]) * groups
            x_shape = (2, 5, 5, c) if nhwc else (2, c, 5, 5)
        else:
            x_shape = (4, weight_shape[0] if nhwc else weight_shape[1])
    wname = "kernel" if nhwc else "weight"
    out = {"x": _special_values(rng, x_shape, dtype, specials), wname: _special_values(rng, weight_shape, dtype,
                                                                                        specials)}
    if zero_mean_weight:
        out[wname] = _zero_mean_row(out[wname], rng, hwio=nhwc)
    o = weight_shape[-1] if nhwc else weight_shape[0]
    if bias:
        out["bias"] = rng.standard_normal(o).astype(dtype)
    if scale == "learned":
        out["alpha"] = rng.uniform(0.5, 1.5, o).astype(dtype)
    if kind == "conv2d" and req.padding is None and "padding" not in req.params:
        out["padding"] = np.array(1)  # exercise the border (the pad value) by default
    ns = _Namespace({k: _scalar(k, v) for k, v in out.items() if k not in LAYER_INPUTS}, req.params)
    geo = _layer_geometry(req, out, ns)
    out["grad_out"] = rng.standard_normal(geo["out_shape"]).astype(dtype)
    return out


def _random_part_inputs(req, rng, dtype, specials, x_shape, weight_shape, zero_mean=False):
    role = req.part if req.part in ("weight", "input") else None
    if x_shape is not None:
        shape = x_shape
    elif role == "weight" and weight_shape is not None:
        shape = weight_shape
    elif role == "weight":
        shape = (4, 3, 3, 3) if req.layout == "nchw" else (3, 3, 3, 4)
    else:
        shape = (2, 3, 5, 5) if req.layout == "nchw" or role is None else (2, 5, 5, 3)
    x = _special_values(rng, shape, dtype, specials)
    if zero_mean:
        x = _zero_mean_row(x, rng, hwio=role == "weight" and req.layout == "nhwc")
    return {"x": x, "grad_out": rng.standard_normal(shape).astype(dtype)}


