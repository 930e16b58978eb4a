"""Schedules: every schedule of ``refbnn.schedules`` by name, and the schedule check (``--schedule NAME``)."""
from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING

import numpy as np

from .. import schedules as _schedules
from ..conventions import PRESETS, get_convention
from ..schedules import QuantizerSchedule
from .bundle import BundleError, Readings, _int, _Namespace, _need, _expect_shape, _scalar
from .report import compare

if TYPE_CHECKING:  # settings imports this module (get_schedule)
    from .settings import Request

def _is_schedule_fn(obj):
    if not callable(obj):
        return False
    try:
        names = list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return False
    return names[:2] == ["epoch", "epochs"]


def _is_schedule(obj):
    return isinstance(obj, QuantizerSchedule) or _is_schedule_fn(obj)


def schedule_table() -> dict:
    """Every schedule in ``refbnn.schedules``: the entries of its upper-case name -> schedule tables
    (``QUANTIZER_SCHEDULES``: ``irnet_tk``, ``recu_tau``, ...; ``LR_SCHEDULES``: ``cosine``, ...; and any
    table the catalogue adds) and its public functions whose first two parameters are ``(epoch, epochs)``
    (``cosine_lr``, ...). A value is a :class:`~refbnn.schedules.QuantizerSchedule` (evaluated at the
    convention's clock) or a function ``f(epoch, epochs, **params)``."""
    table = {}
    for attr, obj in vars(_schedules).items():
        if attr.isupper() and isinstance(obj, dict):
            table.update({k: f for k, f in obj.items() if isinstance(k, str) and _is_schedule(f)})
    for attr, obj in vars(_schedules).items():
        if not attr.startswith("_") and inspect.isfunction(obj) and _is_schedule_fn(obj):
            table.setdefault(attr, obj)
    return table


def get_schedule(name):
    table = schedule_table()
    if name not in table:
        raise BundleError(f"unknown schedule {name!r}; known schedules: {', '.join(sorted(table))}")
    return table[name]


def _schedule_outputs(fn, value):
    """Names and values of one evaluation: a dict's keys, a namedtuple's fields, ``fn.outputs``; names
    ``None`` for one unnamed number."""
    if isinstance(value, dict):
        return tuple(value), tuple(value.values())
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return tuple(value._fields), tuple(value)
    names = getattr(fn, "outputs", None)
    if isinstance(value, (tuple, list)):
        if names is None or len(names) != len(value):
            raise BundleError(f"schedule {getattr(fn, '__name__', fn)} returns {len(value)} unnamed values; it needs "
                              f"an `outputs` attribute naming them (or to return a dict)")
        return tuple(names), tuple(value)
    return (tuple(names) if names else None), (value,)


def _default_output_name(fn):
    """The name an unnamed single value is exported under: ``fn.outputs[0]``, else the function name's
    last word (``cosine_lr`` -> ``lr``), else ``value``."""
    names = getattr(fn, "outputs", None)
    if names:
        return names[0]
    name = getattr(fn, "__name__", "")
    return name.rsplit("_", 1)[1] if "_" in name.strip("_") else "value"



def _schedule_parameters(sched) -> tuple:
    """(the names a schedule's parameters may have, their defaults)."""
    if isinstance(sched, QuantizerSchedule):
        defaults = {**sched.params, **{a: sched.params[c] for a, c in sched.aliases.items()}}
        return list(sched.params) + list(sched.aliases), defaults
    params = [p for p in list(inspect.signature(sched).parameters.values())[2:]
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return [p.name for p in params], {p.name: p.default for p in params if p.default is not p.empty}


def _schedule_call_args(sched, name, arrays, ns: _Namespace, readings=None):
    """The schedule's parameters the bundle (or --param) gives; (kwargs, every accepted name). A 1-d array is
    a tuple (``milestones``); a size-1 array is read as a scalar unless the parameter's default is a tuple."""
    names, defaults = _schedule_parameters(sched)
    readings = Readings() if readings is None else readings
    kwargs = {}
    for n in names:
        if n in arrays:
            a = np.asarray(arrays[n])
            if not isinstance(defaults.get(n), (tuple, list)):
                a = readings.scalar(n, a)
            kwargs[n] = _scalar(n, a) if a.ndim == 0 else tuple(v.item() for v in a.reshape(-1))
        elif ns.has(n):
            kwargs[n] = ns.take(n)
    missing = [n for n in names if n not in kwargs and n not in defaults]
    if missing:
        raise BundleError(f"the bundle lacks {missing[0]!r} (a 0-d value), a parameter of schedule "
                          f"{name}{inspect.signature(sched)}")
    return kwargs, set(names)


def _evaluate_schedule(sched, name, epochs_vec, epochs, kwargs, convention):
    """(value names, table of shape (len(epochs_vec), values), every parameter's value). A quantizer schedule
    is configured with ``QuantizerSchedule.with_params`` and evaluated with ``at`` at the convention's clock."""
    if isinstance(sched, QuantizerSchedule):
        try:
            configured = sched.with_params(**kwargs)
        except ValueError as exc:
            raise BundleError(f"schedule {name}: {exc}") from exc
        full = dict(configured.params)

        def evaluate(e):
            return configured.at(e, epochs, convention.schedule_clock)
    else:
        full = {**{k: v for k, v in _schedule_parameters(sched)[1].items() if v is not None}, **kwargs}

        def evaluate(e):
            return sched(e, epochs, **kwargs)
    rows, names = [], None
    for e in epochs_vec:
        try:
            value = evaluate(int(e))
        except (TypeError, ValueError) as exc:
            raise BundleError(f"schedule {name}(epoch={int(e)}, epochs={epochs}, "
                              f"{', '.join(f'{k}={v!r}' for k, v in full.items())}): {exc}") from exc
        n, vals = _schedule_outputs(sched, value)
        names = n if names is None else names
        rows.append([float(v) for v in vals])
    return names, np.array(rows, dtype=np.float64).reshape(len(rows), -1), full


def _schedule_epochs(arrays, ns: _Namespace, readings):
    epoch = _need(arrays, "epoch", "(E,) or ()", " (the 0-based epoch indices to evaluate)")
    if epoch.dtype.kind not in "iuf" or not np.all(epoch == np.round(epoch)):
        raise BundleError(f"epoch: expected integer epoch indices, got dtype {epoch.dtype}")
    epochs = arrays.get("epochs")
    if epochs is None and not ns.has("epochs"):
        raise BundleError("the bundle lacks 'epochs' (a 0-d integer: the total number of epochs E)")
    return epoch, _int("epochs", _scalar("epochs", readings.scalar("epochs", epochs)) if epochs is not None
                       else ns.take("epochs"))


def _run_schedule(req: Request, arrays, ns: _Namespace, readings=None):
    """The schedule's values at the bundle's epochs, in the bundle's shapes (a value held with singleton axes,
    (1,) for one epoch, is read in the shape of ``epoch`` and compared in its own)."""
    readings = Readings() if readings is None else readings
    sched = get_schedule(req.schedule)
    epoch, epochs = _schedule_epochs(arrays, ns, readings)
    conv = get_convention(req.convention) if req.convention else None
    kwargs, param_names = _schedule_call_args(sched, req.schedule, arrays, ns, readings)
    names, table, full = _evaluate_schedule(sched, req.schedule, np.asarray(epoch).reshape(-1), epochs, kwargs, conv)
    consumed = {"epoch", "epochs"} | param_names
    expected = [k for k in arrays if k not in consumed]
    if names is None:  # one unnamed value: the bundle's one other array names it
        if len(expected) != 1:
            raise BundleError(f"schedule {req.schedule} returns one unnamed value; the bundle should hold exactly one "
                              f"array of expected values besides epoch, epochs and the parameters "
                              f"{sorted(param_names)}, got {sorted(expected)}")
        names = (expected[0],)
    unknown = [k for k in expected if k not in names]
    if unknown:
        raise BundleError(f"{', '.join(repr(u) for u in unknown)}: not a parameter or a value of schedule "
                          f"{req.schedule}; its parameters: {sorted(param_names)}, its values: {list(names)}")
    ns.check_all_used(param_names | {"epochs"})
    results = {n: table[:, i].reshape(np.shape(epoch)) for i, n in enumerate(names)}
    for n in expected:
        _expect_shape({n: readings.as_shape(n, arrays[n], np.shape(epoch))}, n, np.shape(epoch),
                      "(one value per entry of epoch)")
        results[n] = readings.restore(n, results[n])
    info = {"schedule": req.schedule, "epochs": epochs, "parameters": full, "dtype": "float64"}
    if conv is not None:
        info["clock"] = conv.schedule_clock
    return results, info, expected


def _other_clock_notes(req: Request, arrays, rows, rtol, atol) -> list:
    """For a failing quantizer schedule: the other conventions whose clock reproduces the bundle."""
    if req.mode != "schedule" or all(r.passed for r in rows) or \
            not isinstance(get_schedule(req.schedule), QuantizerSchedule):
        return []
    notes = []
    for other in sorted(PRESETS):
        if other == req.convention:
            continue
        try:
            results, info, expected = _run_schedule(dataclasses.replace(req, convention=other), arrays,
                                                    _Namespace({}, req.params))
        except BundleError:
            continue
        if all(compare(k, results[k], arrays[k], rtol, atol).passed for k in expected):
            p = "e / E" if info["clock"] == "epoch" else "e / (E - 1)"
            notes.append(f"the expected values match --convention {other} instead (schedule clock "
                         f"{info['clock']!r}: p = {p})")
    return notes



