"""The quantizer check: one quantizer by name (``--quantizer NAME``), or a method's weight or input
quantizer (``--method M --part weight|input``)."""
from __future__ import annotations

from ..conventions import get_convention
from ..methods import LayerFactory, get_method
from ..quantizers import QUANTIZERS, get_quantizer
from .boundaries import exercised
from .bundle import QUANTIZER_INPUTS, BundleError, _check_input_dtypes, _expect_shape, _fmt, _Namespace, _need, \
    _no_effect, _same_value
from .layer import _layer_quantizers
from .layout import _from_refbnn, _to_refbnn
from .settings import (CONVENTION_FIELDS, QUANTIZER_PREFIXES, Request, _check_schedule_values,
                       _configured_method, _convention_with, _on_epoch, _set_explicit_state)

def _method_part_quantizer(req: Request, role, dtype, ns: _Namespace):
    """A method's weight or input quantizer, built as in its layers (``LayerFactory``), at the bundle's epoch."""
    conv = _convention_with(get_convention(req.convention), ns)
    settings = {"training", "epoch", "epochs"} | set(CONVENTION_FIELDS)
    method, params, known = _configured_method(get_method(req.method), ns, settings, f"method {req.method}")
    holder = LayerFactory(method, rng=0, dtype=dtype, convention=conv, backend="numpy").binary_linear(1, 1)
    quantizers = _layer_quantizers(holder)  # a layer holds them, so that Method.on_epoch reaches them
    if quantizers[role] is None:
        what = "binarizes nothing" if not method.is_binary else (
            "has no input quantizer (its activations stay real)" if role == "input" else "has no weight quantizer")
        has = [p for p, q in quantizers.items() if q is not None]
        raise BundleError(f"--part {role}: method {method.name} {what}; parts to check: {', '.join(has + ['layer'])}")
    hooked = _on_epoch(method, holder, ns, conv) if ns.has("epoch") or ns.has("epochs") else {}
    state = _set_explicit_state({role: quantizers[role]}, params)
    _check_schedule_values({role: quantizers[role]}, hooked, state, method, f"method {method.name}")
    return quantizers[role], hooked, state, known | settings


def _single_quantizer(req: Request, role, ns: _Namespace, require_state=True):
    """``--quantizer NAME`` with the named values as constructor parameters (``get_quantizer``, or
    ``from_convention`` with ``--convention``). A prefixed name must match ``--part`` (any prefix without it)."""
    cls = QUANTIZERS[req.quantizer]
    names = cls.parameter_names()
    params, unknown = {}, []
    for key, v in ns.rest(exclude={"training"}).items():
        prefix, dot, rest = key.partition(".")
        if dot and prefix in QUANTIZER_PREFIXES and (role is None or QUANTIZER_PREFIXES[prefix] == role):
            name = rest
        else:
            name = key
        if name not in names:
            unknown.append(key)
        elif name in params and not _same_value(params[name], v):
            raise BundleError(f"{name} is given twice with different values ({params[name]!r}, {v!r})")
        else:
            params[name] = v
            ns.used.add(key)
    known = {"training"} | set(names)
    if unknown:
        raise _no_effect(sorted(unknown), known)
    try:
        q = cls.from_convention(get_convention(req.convention), **params) if req.convention is not None else \
            get_quantizer(req.quantizer, **params)
    except ValueError as exc:
        raise BundleError(str(exc)) from exc
    if require_state:
        _check_schedule_values({None: q}, params, {}, None, f"--quantizer {req.quantizer}")
    return q, known


def _run_quantizer(req: Request, arrays, ns: _Namespace, want_grads):
    x = _need(arrays, "x", "(any shape)", " (the quantizer's input)")
    _check_input_dtypes(arrays, QUANTIZER_INPUTS)
    role = req.part if req.part in ("weight", "input") else None
    if req.layout == "nhwc" and role is None and x.ndim in (2, 4):
        raise BundleError("--layout nhwc with --quantizer: say whether x is a kernel (--part weight: HWIO or "
                          "(in, out)) or an activation (--part input: NHWC)")
    hooked, state = {}, {}
    if req.mode == "method":
        q, hooked, state, known = _method_part_quantizer(req, role, x.dtype, ns)
    else:
        q, known = _single_quantizer(req, role, ns)
    training = bool(ns.take("training", True))
    ns.check_all_used(known)

    xin = _to_refbnn(x, req.layout, role)
    boundaries, notes = exercised({role or "quantizer": (q, xin, "x")}, training=training)
    y, cache = q.forward(xin, training=training)
    out = _from_refbnn(y, req.layout, role)
    results = {"out": out}
    _expect_shape(arrays, "out", out.shape, "(the quantizer's output)")
    g = arrays.get("grad_out")
    if "grad_x" in arrays and g is None:
        raise BundleError(f"the bundle lacks 'grad_out' (dL/dout, shape {_fmt(out.shape)}), needed to compare grad_x")
    if g is not None:
        _expect_shape(arrays, "grad_out", out.shape, "(the quantizer's output)")
        _expect_shape(arrays, "grad_x", x.shape, "(the shape of x)")
        if want_grads:
            results["grad_x"] = _from_refbnn(q.backward(_to_refbnn(g, req.layout, role), cache), req.layout, role)
    info = {"dtype": str(x.dtype), "quantizer": repr(q), "training": training}
    if hooked:
        info["schedule_values"] = hooked
    if state:
        info["state"] = state
    info["exercised"], info["boundary_notes"] = boundaries, notes
    return results, info



