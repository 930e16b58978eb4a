"""Which convention choices a bundle's inputs exercise.

Random inputs without an exact 0 leave sign(0) untested, and without a value exactly at a clip point the
clip's inclusivity: both conventions then "pass". For every quantizer of the check, each constructor
argument that a convention decides (``convention_kwargs``: ``sign_zero``, ``clip_inclusive``,
``std_ddof``, ``grad_through_stats``, ...) is flipped to its other values on fresh copies
(``type(q)(**q.config())``), and the choice counts as exercised when the output or the input gradient
changes on the bundle's inputs. Alongside, one small function per boundary kind counts the points where
a choice can show: exact zeros (``sign_zero``), values exactly at +-``clip_value`` (``clip_inclusive``),
constant rows (zero variance, for quantizers that standardize: ``std_ddof`` in their config), and for a
conv layer the border (``pad_value``). :func:`exercised` returns the structured result (for
``Report.settings["exercised"]``) and one note per choice the result could depend on but the inputs never
reach.
"""
from __future__ import annotations

import numpy as np

from ..conventions import PRESETS
from .layout import _kernel_from_refbnn, _kernel_to_refbnn


def zero_mean_row(a, rng, hwio=False):
    """Row 0 of ``a`` (an output channel of a weight; ``hwio``: of a kernel laid out HWIO or (in, out)) as
    pairs +-v with v in {0, 0.5, 1, 2} (and a 0 when the row is odd): its mean is exactly 0 in any summation
    order, so a quantizer that standardizes (subtracts the mean, divides by the std) keeps its exact zeros,
    and sign(0) is exercised there too. One pair is +-1, so the row never has zero variance."""
    if a.ndim < 2 or a.shape[0] == 0 or a[0].size < 2:
        return a
    if hwio and a.ndim in (2, 4):
        return _kernel_from_refbnn(zero_mean_row(_kernel_to_refbnn(a), rng))
    n = a[0].size
    v = rng.choice(np.array([0.0, 0.5, 1.0, 2.0]), size=n // 2)
    v[0] = 1.0
    row = np.concatenate([np.stack([v, -v], axis=1).reshape(-1), np.zeros(n % 2)])
    a = a.copy()
    a[0] = row.reshape(a[0].shape).astype(a.dtype)
    return a


def _zeros(q, x):
    return {"zeros": int(np.count_nonzero(x == 0))}


def _at_clip(q, x):
    c = q.config().get("clip_value")
    if c is None:
        return None
    return {"clip_value": float(c), "at_clip": int(np.count_nonzero(np.abs(x) == c))}


def _constant_rows(q, x):
    """Rows along axis 0 (output channels of a weight, samples of an activation) with zero variance."""
    if x.ndim == 0 or x.shape[0] == 0:
        return {"constant_rows": 0}
    flat = x.reshape(x.shape[0], -1)
    return {"constant_rows": int(np.count_nonzero((flat == flat[:, :1]).all(axis=1)))}


# per convention field: the boundary points it concerns (config key that must be present -> counter)
POINTS = {"sign_zero": _zeros, "clip_inclusive": _at_clip, "std_ddof": _constant_rows,
          "eps_inside_sqrt": _constant_rows}


def _alternatives(value):
    if isinstance(value, bool):
        return (not value,)
    if isinstance(value, (int, float)) and value in (1.0, 0.0, -1.0):  # sign_zero, std_ddof
        return tuple(v for v in ((1.0, 0.0, -1.0) if isinstance(value, float) else (0, 1)) if v != value)
    return ()


def _probe(q, x):
    """An input of ``x``'s shape that holds every boundary a quantizer may have: exact zeros, +-1 and
    +-clip_value, and a first row of mean exactly 0 (so zeros survive a standardization)."""
    rng = np.random.default_rng(1)
    p = rng.standard_normal(x.shape) * 1.5
    c = q.config().get("clip_value")
    specials = np.array([0.0, 1.0, -1.0] + ([c, -c] if isinstance(c, (int, float)) else []))
    mask = rng.random(x.shape) < 0.3
    p[mask] = rng.choice(specials, size=int(mask.sum()))
    return zero_mean_row(p, rng).astype(x.dtype)


def _run(q, x, g, training):
    y, cache = q.forward(x.copy(), training=training)
    return y, q.backward(g, cache)


def _depends(q, field, x, g, training):
    """Whether another value of ``field`` changes the output or the gradient on ``x`` (fresh copies, so a
    quantizer that draws random numbers draws the same ones)."""
    cfg = q.config()
    try:
        base = _run(type(q)(**cfg), x, g, training)
    except (TypeError, ValueError):
        return None
    for alt in _alternatives(cfg[field]):
        try:
            other = _run(type(q)(**{**cfg, field: alt}), x, g, training)
        except (TypeError, ValueError):
            continue
        if any(not np.array_equal(a, b, equal_nan=True) for a, b in zip(base, other)):
            return True
    return False


def _note(field, info, who):
    if field == "sign_zero":
        why = "hold no exact 0" if not info.get("zeros") else "have no 0 where the sign is taken (they are " \
                                                               "transformed first)"
        return f"sign(0): the {who} {why}, so sign_zero was not tested"
    if field == "clip_inclusive":
        c = info.get("clip_value")
        where = f"exactly at +-{c:g} where the estimator clips" if c is not None else "exactly at a clip point"
        return f"clip: no {who} value lies {where}, so clip_inclusive was not tested"
    return f"{field}: the {who} give the same result for every value of it, so {field} was not tested"


def quantizer_boundaries(q, x, training=True, who="inputs"):
    """({field: {"value", "exercised", counts...}}, notes) for one quantizer on its input ``x``."""
    if q is None:
        return {}, []
    cfg = q.config()
    fields = [f for f in type(q).convention_kwargs(PRESETS["paper"]) if f in cfg and _alternatives(cfg[f])]
    g = np.random.default_rng(0).standard_normal(x.shape).astype(x.dtype)
    result, notes = {}, []
    for f in fields:
        dep = _depends(q, f, x, g, training)
        if dep is None or (not dep and not _depends(q, f, _probe(q, x), g, training)):
            continue  # no input of this shape would show the choice (e.g. ReCU's statistics without normalize)
        info = {"value": cfg[f], "exercised": dep}
        counter = POINTS.get(f)
        if counter is not None:
            info.update(counter(q, x) or {})
        result[f] = info
        if not dep:
            notes.append(_note(f, info, who))
    return result, notes


def pad_boundary(pads, pad_value):
    """The layer's border: ``pad_value`` is exercised when any side is padded."""
    info = {"value": pad_value, "exercised": any(p > 0 for p in pads), "padding": list(pads)}
    notes = [] if info["exercised"] else ["pad value: the layer pads nothing, so pad_value was not tested"]
    return info, notes


def exercised(quantized: dict, pads=None, pad_value=None, training=True):
    """``quantized``: role -> (quantizer or None, its input in refbnn's layout, a description). Returns
    (``{role: {field: info}}`` plus ``{"layer": {"pad_value": info}}`` for a conv layer, notes)."""
    out, notes = {}, []
    for role, (q, x, who) in quantized.items():
        res, n = quantizer_boundaries(q, x, training, who)
        if res:
            out[role] = res
            notes += n
    if pads is not None:
        info, n = pad_boundary(pads, pad_value)
        out["layer"] = {"pad_value": info}
        notes += n
    return out, notes
