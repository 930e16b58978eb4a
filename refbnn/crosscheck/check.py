"""``crosscheck``: run refbnn on a bundle's inputs and compare with its expected outputs."""
from __future__ import annotations

import os

import numpy as np

from .bundle import (LAYER_INPUTS, LAYER_OUTPUTS, QUANTIZER_INPUTS, QUANTIZER_OUTPUTS, BundleError, _Namespace,
                     _scalar, _split_bundle, load_bundle)
from .layer import _run_layer
from .quantizer import _run_quantizer
from .report import Report, compare, default_tolerances
from .schedule import _other_clock_notes, _run_schedule
from .settings import Request

def check_tolerance(name, value):
    """A tolerance: None (the dtype's default) or a finite number >= 0. NaN would pass every tensor, a negative
    one fail identical tensors, so both are errors."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise BundleError(f"{name}: expected a finite number >= 0, got {value!r}")
    if not (np.isfinite(value) and value >= 0):
        raise BundleError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def _as_request(bundle_meta, kwargs, require_convention=False):
    params = dict(kwargs.pop("params", None) or {})
    req = Request(**kwargs, params=params)
    return req.resolve(bundle_meta, require_convention=require_convention)


def crosscheck(bundle, method=None, convention=None, part=None, layer=None, layout=None, rtol=None, atol=None,
               params=None, quantizer=None, input_quantizer=None, kernel_quantizer=None, schedule=None, padding=None,
               require_convention=False) -> Report:
    """Run refbnn on a bundle's inputs and compare its outputs with the bundle's expected ones.

    ``bundle``: a path to an ``.npz`` or a mapping name -> array. Select what to check with
    ``method`` (+ ``convention``, ``part``), ``quantizer``, ``schedule``, or Larq's
    ``input_quantizer``/``kernel_quantizer``. ``params``: name -> value for settings the bundle does not
    hold (an error where it holds a different value). Returns a :class:`Report`; ``report.passed``.
    """
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    data = load_bundle(bundle) if isinstance(bundle, (str, os.PathLike)) else {k: np.asarray(v) for k, v in
                                                                                 dict(bundle).items()}
    arrays, settings, meta = _split_bundle(data)
    req = _as_request(meta, dict(method=method, convention=convention, part=part, layer=layer, layout=layout,
                                 padding=padding, quantizer=quantizer, input_quantizer=input_quantizer,
                                 kernel_quantizer=kernel_quantizer, schedule=schedule, params=params),
                      require_convention)
    if req.mode == "schedule":
        arrays = {**arrays, **settings}
        ns = _Namespace({}, req.params)
        results, info, expected = _run_schedule(req, arrays, ns)
        dtypes = [arrays[k].dtype for k in expected if arrays[k].dtype.kind == "f"]
    else:
        try:
            values = {k: _scalar(k, a) for k, a in settings.items()}
        except BundleError as exc:
            known = LAYER_INPUTS + LAYER_OUTPUTS if req.mode != "quantizer" else QUANTIZER_INPUTS + QUANTIZER_OUTPUTS
            raise BundleError(f"{exc}; arrays the bundle may hold here: {', '.join(known)}") from exc
        ns = _Namespace(values, req.params)
        if req.mode == "quantizer" or req.part in ("weight", "input"):
            allowed = QUANTIZER_INPUTS + QUANTIZER_OUTPUTS
            extra = sorted(set(arrays) - set(allowed))
            if extra:
                raise BundleError(f"{', '.join(extra)}: not an array of a quantizer check; it takes "
                                  f"{', '.join(allowed)}")
            expected = [k for k in QUANTIZER_OUTPUTS if k in arrays]
            results, info = _run_quantizer(req, arrays, ns, want_grads="grad_x" in arrays)
        else:
            expected = [k for k in LAYER_OUTPUTS if k in arrays]
            results, info = _run_layer(req, arrays, ns, want_grads=any(k.startswith("grad_") for k in expected))
        dtypes = [a.dtype for a in arrays.values() if a.dtype.kind == "f"]
    if not expected:
        raise BundleError("the bundle holds no expected output to compare: add any of "
                          + (", ".join(LAYER_OUTPUTS) if req.mode in ("method", "larq") and req.part == "layer"
                             else ", ".join(QUANTIZER_OUTPUTS) if req.mode != "schedule" else "the schedule's values"))
    low = np.float32 if any(d == np.float32 for d in dtypes) else np.float64
    d_rtol, d_atol = default_tolerances(low)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    rows = [compare(k, results[k], arrays[k], rtol, atol) for k in expected]
    settings_out = {**req.describe(), **info, "params": req.params or None}
    return Report(rows, rtol, atol, settings_out, notes=_other_clock_notes(req, arrays, rows, rtol, atol))



