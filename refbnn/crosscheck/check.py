"""``crosscheck``: run refbnn on a bundle's inputs and compare with its expected outputs."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np

from .bundle import (GEOMETRY, LAYER_INPUTS, LAYER_OUTPUTS, QUANTIZER_INPUTS, QUANTIZER_OUTPUTS, BundleError,
                     QUANTIZER_ALIASES, Readings, _Namespace, _scalar, _split_bundle, _unknown_array, load_bundle)
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


def _read_arrays(req: Request, arrays: dict, settings: dict, readings: Readings):
    """The bundle's arrays and settings as refbnn's checks take them (size-1 settings as scalars, per-channel
    arrays with singleton axes as (O,), a weight quantizer's ``weight``/``kernel`` as its ``x``), each reading
    noted in ``readings``; unknown array names refused with the nearest known one. Returns (request, arrays,
    settings); the request's part is the one the arrays say where the quantizer applies to one part only."""
    if req.mode == "schedule":
        return req, {**arrays, **settings}, {}
    quantizer_check = req.mode == "quantizer" or req.part in ("weight", "input")
    known = (QUANTIZER_INPUTS + QUANTIZER_OUTPUTS + QUANTIZER_ALIASES + tuple("grad_" + a for a in QUANTIZER_ALIASES)
             if quantizer_check else LAYER_INPUTS + LAYER_OUTPUTS)
    settings = readings.scalars(settings)
    for k, a in settings.items():
        if a.ndim and not (k in GEOMETRY and a.ndim == 1 and a.size in (2, 4)) and a.dtype.kind in "biufUS":
            raise _unknown_array(k, a, known)
    if quantizer_check:
        arrays, role = readings.quantizer_arrays(arrays, req.part, req.layout)
        if role != req.part:
            req = dataclasses.replace(req, part=role)
    else:
        arrays = readings.layer_arrays(arrays, req.layout)
    return req, arrays, settings


def _evaluate(req: Request, arrays: dict, settings: dict, readings: Readings | None = None):
    """Run refbnn for a resolved request on a bundle's arrays (inputs and expected outputs) and settings (0-d
    arrays; ``req.params`` joins them), both as :func:`_read_arrays` returns them: (refbnn's results by name,
    info, the expected names compared, the float dtypes of the inputs). ``crosscheck`` calls it once;
    ``--diagnose`` once per nearby choice."""
    readings = Readings() if readings is None else readings
    if req.mode == "schedule":
        arrays = {**arrays, **settings}
        ns = _Namespace({}, req.params)
        results, info, expected = _run_schedule(req, arrays, ns, readings)
        dtypes = [arrays[k].dtype for k in expected if arrays[k].dtype.kind == "f"]
    else:
        quantizer_check = req.mode == "quantizer" or req.part in ("weight", "input")
        try:
            values = {k: _scalar(k, a) for k, a in settings.items()}
        except BundleError as exc:
            known = QUANTIZER_INPUTS + QUANTIZER_OUTPUTS if quantizer_check else LAYER_INPUTS + LAYER_OUTPUTS
            raise BundleError(f"{exc}; arrays the bundle may hold here: {', '.join(known)}") from exc
        ns = _Namespace(values, req.params)
        if quantizer_check:
            allowed = QUANTIZER_INPUTS + QUANTIZER_OUTPUTS
            extra = sorted(set(arrays) - set(allowed))
            if extra:
                raise BundleError(f"{', '.join(extra)}: not an array of a quantizer check; it takes "
                                  f"{', '.join(allowed)} (a weight's also as weight/grad_weight or "
                                  f"kernel/grad_kernel)")
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
    return results, info, expected, dtypes


def crosscheck(bundle, method=None, convention=None, part=None, layer=None, layout=None, rtol=None, atol=None,
               params=None, quantizer=None, input_quantizer=None, kernel_quantizer=None, schedule=None, padding=None,
               require_convention=False, diagnose=False) -> Report:
    """Run refbnn on a bundle's inputs and compare its outputs with the bundle's expected ones.

    ``bundle``: a path to an ``.npz`` or a mapping name -> array. Select what to check with
    ``method`` (+ ``convention``, ``part``), ``quantizer``, ``schedule``, or Larq's
    ``input_quantizer``/``kernel_quantizer``. ``params``: name -> value for settings the bundle does not
    hold (an error where it holds a different value). Returns a :class:`Report`; ``report.passed``.

    ``diagnose``: when some tensor differs, re-run the check over the nearby choices refbnn knows (each
    convention field's other values, the catalogue's estimators with the same forward, the other layout,
    the method's documented variants) and put in ``report.diagnosis`` which single change, or pair of
    changes, makes each differing tensor pass (:mod:`.diagnose`). True for the default bound on the
    re-runs (:data:`~.diagnose.MAX_RUNS`), or a positive int for another bound.
    """
    if not isinstance(diagnose, (bool, int)) or (not isinstance(diagnose, bool) and diagnose < 1):
        raise ValueError(f"diagnose: expected True, False or a positive number of re-runs, got {diagnose!r}")
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    _refuse_torch_module(bundle)
    if isinstance(bundle, (str, os.PathLike)):
        data = load_bundle(bundle)
    elif isinstance(bundle, Mapping):
        data = {k: _as_array(k, v) for k, v in bundle.items()}
    else:
        raise TypeError(f"bundle: expected a path to an .npz or a mapping name -> array, got "
                        f"{type(bundle).__name__}")
    arrays, settings, meta = _split_bundle(data)
    req = _as_request(meta, dict(method=method, convention=convention, part=part, layer=layer, layout=layout,
                                 padding=padding, quantizer=quantizer, input_quantizer=input_quantizer,
                                 kernel_quantizer=kernel_quantizer, schedule=schedule, params=params),
                      require_convention)
    readings = Readings()
    if req.mode == "quantizer" and part is None and "part" not in meta and req.part is not None:
        readings.lines.append(f"part {req.part}: quantizer {req.quantizer} quantizes {req.part}s only")
    req, arrays, settings = _read_arrays(req, arrays, settings, readings)
    results, info, expected, dtypes = _evaluate(req, arrays, settings, readings)
    low = np.float32 if any(d == np.float32 for d in dtypes) else np.float64
    d_rtol, d_atol = default_tolerances(low)
    rtol = d_rtol if rtol is None else float(rtol)
    atol = d_atol if atol is None else float(atol)
    rows = [compare(readings.name(k), readings.restore(k, results[k]), data[readings.name(k)], rtol, atol)
            for k in expected]
    boundary_notes = info.pop("boundary_notes", [])  # convention choices the inputs never exercise
    settings_out = {**req.describe(), **info, "params": req.params or None}
    report = Report(rows, rtol, atol, settings_out,
                    notes=boundary_notes + _other_clock_notes(req, arrays, rows, rtol, atol), readings=readings.lines)
    if diagnose and not report.passed:
        from .diagnose import MAX_RUNS, diagnose_bundle  # diagnose imports this module (_evaluate)
        # the diagnosis compares in refbnn's own names and shapes (the arrays as read)
        own_rows = [compare(k, results[k], arrays[k], rtol, atol) for k in expected]
        report.diagnosis = diagnose_bundle(req, arrays, settings, results, own_rows, rtol, atol,
                                           max_runs=MAX_RUNS if diagnose is True else int(diagnose), base_info=info)
    return report


def _as_array(name, v):
    try:
        return np.asarray(v)
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. a torch tensor that requires grad
        raise BundleError(f"{name}: cannot be read as a NumPy array ({exc}); store NumPy arrays (a tensor: "
                          f".detach().cpu().numpy()), or record a PyTorch module with record_torch") from exc


def _refuse_torch_module(obj):
    """A PyTorch module is not a bundle: say how to make one (without importing torch)."""
    if any(c.__name__ == "Module" and c.__module__.startswith("torch.nn") for c in type(obj).__mro__):
        raise TypeError(f"crosscheck: got a PyTorch module ({type(obj).__name__}), not a bundle; record it first "
                        f"with record_torch: crosscheck(record_torch(module, x), method=..., convention=...)")



