"""``--diagnose``: which nearby choice makes a differing tensor pass.

When a bundle's tensors differ from refbnn's, the cause is usually one choice that the other implementation
makes differently: sign(0), the clip of a straight-through estimator, the standard deviation's ddof,
gradients through the statistics, the schedule's clock, the estimator, the memory layout. The diagnosis
re-runs the very check :func:`~refbnn.crosscheck.crosscheck` runs (``check._evaluate``) with one such choice
changed, then with pairs of them, and reports for each differing tensor the changes under which it passes.

The nearby choices, each derived from the catalogue, so that a field, quantizer or method added later is
covered without a change here:

- ``convention``: every other value of every field of :class:`~refbnn.conventions.Convention`
  (``dataclasses.fields``): a bool field's negation; otherwise the values the presets use plus those its
  validation names (the message ``Convention`` raises for an impossible value lists them), plus
  :data:`FIELD_VALUES` for a field whose values cannot be derived. The field is changed where the check
  reads it: the bundle's own setting of that name, else the request's convention; a check without a
  convention (``--quantizer`` or a Larq layer without ``--convention``) gets the quantizer parameters the
  field decides (the difference of ``convention_kwargs`` between the field's values) or, for a layer
  setting of the same name (``pad_value``), that setting.
  In a layer with two quantizers, each field is also changed in one quantizer only (through those
  constructor parameters, which win over the convention): torch.sign in one, +1 in the other.
- ``estimator``: every catalogue quantizer (``refbnn.quantizers.QUANTIZERS``) in place of each of the
  check's quantizers, kept only where the check's forward output (the quantizer's ``out``, or the layer's)
  equals refbnn's, so that only the estimator differs: for a sign quantizer, the identity and the clipped
  STE, ApproxSign, EDE (at the bundle's ``t``/``k``), SwishSign, ... The bundle's values that the new
  quantizer accepts are kept (``clip_value``, ``t``, ...), the others dropped.
- ``layout``: the bundle's activations (``x``, ``grad_out``, ``out``, ``grad_x``) read in the other layout
  (NHWC instead of NCHW, or the reverse), and its weight and weight gradient in the other layout (HWIO or
  (in, out) instead of OIHW or (out, in), or the reverse); a transpose whose shapes do not fit the check is
  not applicable.
- ``variant``: the method's documented variants: ``Method.variants`` (name -> values) if the method table
  gives it, else the ``--param NAME=VALUE`` (``VALUE|VALUE``) settings its description names.

Search (bounded: every re-run is a full check): each single change first; then, for each differing tensor
that no single change fixes, pairs among the single changes that reduced its error (fewer differing
elements or a smaller max_abs), and, when no single change makes every tensor pass, pairs among the changes
that fixed or reduced some differing tensor. Two changes of one slot (two values of one field, two
estimators for one quantizer) are never paired. At most ``max_runs`` re-runs (:data:`MAX_RUNS`); the
diagnosis says when that bound cut the search short. A change that makes a differing tensor pass but makes
a passing one differ is reported as such ("fixes grad_x but breaks out").
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..conventions import PRESETS, Convention, get_convention
from ..methods import METHOD_FIELDS, METHODS, get_method
from ..params import parse_value
from ..quantizers import QUANTIZERS
from .bundle import GEOMETRY, _Namespace, _scalar
from .check import _evaluate
from .layer import _larq_method, _larq_quantizers, _layer_settings_names
from .quantizer import _single_quantizer
from .report import TensorResult, compare
from .settings import CONVENTION_FIELDS, QUANTIZER_PREFIXES, Request, _configured_method, _param_key

MAX_RUNS = 200  # the default bound on re-runs of one diagnosis (a layer bundle's check takes a few ms)

# Values of a Convention field that neither its type nor its validation reveals: field name -> values.
# (Every field of refbnn's Convention is derived today; a float or str field added without a validation
# that lists its values needs an entry here, or gets only the values the presets use.)
FIELD_VALUES: dict = {}

_KIND_ORDER = ("convention", "estimator", "variant", "layout")
_ACTIVATIONS = ("x", "grad_out", "out", "grad_x")
_SHOWN = 4  # fixes listed per tensor in the table (the JSON has all)


# -- the nearby values of a convention field ---------------------------------------------------------
def _validated_values(name, ftype) -> list:
    """The values ``Convention`` names when it refuses an impossible one for field ``name`` (its message
    ``expected 1.0, 0.0 or -1.0, got ...``), read as the field's type; [] when it names none."""
    probe = "\x00not-a-value"
    try:
        Convention(**{name: probe})
    except (ValueError, TypeError) as exc:
        text = str(exc)
    else:
        return []
    head, sep, _ = text.partition("got")
    if not sep or "expected" not in head:
        return []
    head = head.split("expected", 1)[1]
    if ftype == "str":
        return [a or b for a, b in re.findall(r"'([^']*)'|\"([^\"]*)\"", head)]
    numbers = re.findall(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?", head)
    if ftype == "int":
        return [int(float(v)) for v in numbers if float(v) == int(float(v))]
    if ftype == "float":
        return [float(v) for v in numbers]
    return []


def field_values(name) -> tuple:
    """Every value refbnn knows for Convention field ``name`` (each one accepted by ``Convention``)."""
    fields = {f.name: f for f in dataclasses.fields(Convention)}
    if name not in fields:
        raise ValueError(f"{name!r}: not a field of Convention; fields: {', '.join(fields)}")
    f = fields[name]
    ftype = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    values = list(FIELD_VALUES.get(name, ()))
    if ftype == "bool" or isinstance(f.default, bool):
        values += [True, False]
    values += [getattr(p, name) for p in PRESETS.values() if hasattr(p, name)] + [f.default]
    values += _validated_values(name, ftype)
    if ftype.startswith(("Literal[", "typing.Literal[")):  # Literal["a", "b"]: its values
        values += [a or b for a, b in re.findall(r"'([^']*)'|\"([^\"]*)\"", ftype)]
        values += [float(v) if "." in v else int(v) for v in re.findall(r"(?<![\w'\"])[-+]?\d+(?:\.\d*)?", ftype)]
    out = []
    for v in values:
        if any(type(v) is type(u) and v == u for u in out):
            continue
        try:
            Convention(**{name: v})
        except (ValueError, TypeError):
            continue
        out.append(v)
    return tuple(out)


def _controlled_params(cls, name, value) -> dict:
    """The constructor parameters of quantizer class ``cls`` that Convention field ``name`` decides, at
    ``value``: those of ``cls.convention_kwargs`` that change between the field's values."""
    base = Convention()
    try:
        mine = cls.convention_kwargs(base.with_(**{name: value}))
        others = [cls.convention_kwargs(base.with_(**{name: u})) for u in field_values(name)]
    except (ValueError, TypeError, AttributeError):
        return {}
    return {p: v for p, v in mine.items() if any(o.get(p) != v for o in others)}


# -- a trial: the request, arrays and settings one re-run checks ---------------------------------------
_SETTINGS = {"training", "epoch", "epochs", "pad_value", "pad_values"} | set(GEOMETRY) | set(CONVENTION_FIELDS)


class _NotApplicable(Exception):
    """A change that does not apply to this check (nothing it would change)."""


@dataclass
class _Trial:
    req: Request
    arrays: dict
    settings: dict          # the bundle's settings (0-d arrays); ``req.params`` holds the others
    tags: tuple = ()        # the layout transposes applied

    def copy(self) -> "_Trial":
        return _Trial(dataclasses.replace(self.req, params=dict(self.req.params)), dict(self.arrays),
                      dict(self.settings), self.tags)

    def _key(self, name):
        for k in (name, "pad_values" if name == "pad_value" else None):
            if k is not None and (k in self.settings or k in self.req.params):
                return k
        return None

    def names(self) -> list:
        return list(self.settings) + [k for k in self.req.params if k not in self.settings]

    def has(self, name) -> bool:
        return self._key(name) is not None

    def get(self, name, default=None):
        k = self._key(name)
        if k is None:
            return default
        return self.req.params[k] if k in self.req.params else _scalar(k, self.settings[k])

    def set(self, name, value):
        k = self._key(name) or name
        if k in self.settings:
            self.settings[k] = np.array("none" if value is None else value)
        else:
            self.req.params[k] = value

    def drop(self, name):
        k = self._key(name)
        self.settings.pop(k, None)
        self.req.params.pop(k, None)

    def signature(self):
        r = self.req
        conv = None if r.convention is None else tuple(
            (k, repr(v)) for k, v in get_convention(r.convention).as_dict().items() if k != "name")
        values = tuple(sorted((k, repr(self.get(k))) for k in self.names()))
        return (r.method, r.quantizer, r.input_quantizer, r.kernel_quantizer, r.schedule, r.part, r.layer, r.layout,
                repr(r.padding), conv, values, self.tags)


def _roles(trial, all_roles=False) -> dict:
    """The check's quantizers: role -> registry name (``quantizer`` for ``--quantizer``)."""
    req = trial.req
    if req.mode == "quantizer":
        return {"quantizer": req.quantizer}
    if req.mode == "larq":
        names = {"weight": req.kernel_quantizer, "input": req.input_quantizer}
    elif req.mode == "method":
        m = get_method(req.method)
        names = {r: trial.get(f"{r}_quantizer", getattr(m, f"{r}_quantizer")) for r in ("weight", "input")}
    else:
        return {}
    names = {r: n for r, n in names.items() if n not in (None, "none") and n in QUANTIZERS}
    if not all_roles and req.part in ("weight", "input"):
        names = {r: n for r, n in names.items() if r == req.part}
    return names


def _role_key(trial, role, param):
    """How a value reaches one quantizer's parameter: plain for ``--quantizer``, else prefixed."""
    if trial.req.mode == "quantizer":
        return param
    return f"{'kernel' if trial.req.mode == 'larq' and role == 'weight' else role}_quantizer.{param}"


def _quantizer_configs(trial) -> dict:
    """role -> ``config()`` of the check's quantizers where no convention builds them (``--quantizer`` or a
    Larq layer without ``--convention``); {} where they cannot be built here."""
    req = trial.req
    values = {k: trial.get(k) for k in trial.names()}
    try:
        if req.mode == "quantizer":
            ns = _Namespace({k: v for k, v in values.items() if k != "training"}, {})
            q, _ = _single_quantizer(req, req.part if req.part in ("weight", "input") else None, ns)
            return {"quantizer": q.config()}
        if req.mode == "larq":
            ns = _Namespace({k: v for k, v in values.items() if k not in _SETTINGS}, {})
            larq, _, _ = _configured_method(_larq_method(req), ns, _SETTINGS, "Larq layer")
            kq, iq = _larq_quantizers(larq, None)
            return {r: q.config() for r, q in (("weight", kq), ("input", iq)) if q is not None}
    except (ValueError, TypeError):
        return {}
    return {}


# -- the changes ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    """One nearby choice: ``kind`` (convention, estimator, layout, variant), ``slot`` (two changes of one
    slot are never combined), ``text`` (what it says), ``detail`` (the same as data) and ``apply``."""
    kind: str
    slot: str
    text: str
    detail: dict = field(default_factory=dict, compare=False)
    apply: Callable = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "slot": self.slot, "text": self.text, **self.detail}


def _equal(a, b) -> bool:
    """Equal values of one kind (True is not 1 here; 1 is 1.0)."""
    return a is not None and b is not None and isinstance(a, bool) == isinstance(b, bool) and a == b


def _fmt(v):
    return repr(v) if isinstance(v, str) else str(v)


def _apply_field(trial, name, value):
    req = trial.req
    if trial.has(name):
        trial.set(name, value)
        return trial
    if req.convention is not None:
        conv = get_convention(req.convention)
        trial.req = dataclasses.replace(req, convention=conv.with_(**{name: value},
                                                                   name=f"{conv.name}+{name}={value}"))
        return trial
    if req.mode == "larq":
        w = trial.arrays.get("kernel", trial.arrays.get("weight"))
        if w is not None and name in _layer_settings_names(req, "conv2d" if w.ndim == 4 else "linear"):
            trial.set(name, value)  # a Larq conv's pad_value
            return trial
    configs = _quantizer_configs(trial)
    changed = False
    for role, qname in _roles(trial, all_roles=True).items():
        for p, v in _controlled_params(QUANTIZERS[qname], name, value).items():
            if configs.get(role, {}).get(p, object()) != v:
                trial.set(_role_key(trial, role, p), v)
                changed = True
    if not changed:
        raise _NotApplicable
    return trial


def _convention_changes(base: _Trial, base_info: dict) -> list:
    req = base.req
    if req.mode == "schedule" and req.convention is None:
        return []  # a function of (epoch, epochs) that no convention changes
    conv = get_convention(req.convention) if req.convention is not None else None
    configs = _quantizer_configs(base) if conv is None else {}
    out = []
    for name in CONVENTION_FIELDS:
        translated = False
        if base.has(name):
            was = base.get(name)
        elif conv is not None:
            was = getattr(conv, name)
        elif name in base_info:  # a layer setting of that name (a Larq conv's pad_value)
            was = base_info[name]
        else:  # no convention: the quantizer parameters the field decides
            was, translated = None, True
        for v in field_values(name):
            if _equal(v, was):
                continue
            text = f"convention {name}={_fmt(v)}" + ("" if was is None else f" instead of {_fmt(was)}")
            if translated:
                params = [(_role_key(base, role, p), pv, configs.get(role, {}).get(p))
                          for role, qname in _roles(base, all_roles=True).items()
                          for p, pv in _controlled_params(QUANTIZERS[qname], name, v).items()]
                params = [(k, pv, cur) for k, pv, cur in params if not _equal(pv, cur)]
                if not params:
                    continue  # no quantizer here reads that field
                text += " (without a convention, as " + ", ".join(
                    f"{k}={_fmt(pv)}" + ("" if cur is None else f" instead of {_fmt(cur)}")
                    for k, pv, cur in params) + ")"
            out.append(Change("convention", f"convention.{name}", text, {"field": name, "value": v, "was": was},
                              lambda t, n=name, v=v: _apply_field(t, n, v)))
    return out + _one_quantizer_changes(base, conv, configs)


def _role_setting(trial, role, qname, param, conv, configs):
    """The value one quantizer's parameter has in the check: given by name (prefixed or plain), else the
    convention's (``convention_kwargs``), else the quantizer's own (``config``)."""
    for key in (_role_key(trial, role, param), param):
        if trial.has(key):
            return trial.get(key)
    if conv is not None:
        fields = {n: trial.get(n) for n in CONVENTION_FIELDS if trial.has(n)}
        try:
            return QUANTIZERS[qname].convention_kwargs(conv.with_(**fields)).get(param)
        except (ValueError, TypeError):
            return None
    return configs.get(role, {}).get(param)


def _set_params(trial, items):
    for key, value in items:
        trial.set(key, value)
    return trial


def _one_quantizer_changes(base: _Trial, conv, configs) -> list:
    """A layer's two quantizers: each field's other values in one quantizer only (through the constructor
    parameters the field decides, which win over the convention), for an implementation whose weight and
    activation quantizers disagree (torch.sign in one, +1 in the other)."""
    roles = _roles(base)
    if len(roles) < 2:
        return []
    out = []
    for name in CONVENTION_FIELDS:
        for role, qname in roles.items():
            for v in field_values(name):
                items = [(_role_key(base, role, p), pv, _role_setting(base, role, qname, p, conv, configs))
                         for p, pv in _controlled_params(QUANTIZERS[qname], name, v).items()]
                if not items or all(_equal(pv, cur) for _, pv, cur in items):
                    continue
                which = "kernel" if base.req.mode == "larq" and role == "weight" else role
                text = (f"convention {name}={_fmt(v)} in the {which} quantizer only (as " + ", ".join(
                    f"{k}={_fmt(pv)}" + ("" if cur is None else f" instead of {_fmt(cur)}") for k, pv, cur in items)
                    + ")")
                out.append(Change("convention", f"convention.{name}.{role}", text,
                                  {"field": name, "value": v, "role": role, "was": items[0][2]},
                                  lambda t, kv=tuple((k, pv) for k, pv, _ in items): _set_params(t, kv)))
    return out


def _swap_quantizer(trial, role, new):
    """``role``'s quantizer replaced by catalogue entry ``new``; the values it accepts are kept."""
    req = trial.req
    new_names = set(QUANTIZERS[new].parameter_names())
    if req.mode == "quantizer":
        configs = _quantizer_configs(trial) if req.convention is None else {}
        for key in trial.names():
            prefix, dot, rest = key.partition(".")
            name = rest if dot and prefix in QUANTIZER_PREFIXES else key
            if key != "training" and name not in new_names:
                trial.drop(key)
        if configs:  # no convention: keep the parameters a convention would decide (sign(0), ...) as they were
            decided = set(QUANTIZERS[new].convention_kwargs(Convention()))
            for p, v in configs["quantizer"].items():
                if p in decided and p in new_names and not trial.has(p):
                    trial.set(p, v)
        trial.req = dataclasses.replace(trial.req, quantizer=new)
        return trial
    roles = _roles(trial, all_roles=True)
    other = roles.get("input" if role == "weight" else "weight")
    other_names = set(QUANTIZERS[other].parameter_names()) if other else set()
    schedule = get_method(req.method).schedule if req.mode == "method" else None
    configs = _quantizer_configs(trial) if req.mode == "larq" and req.convention is None else {}
    for key in trial.names():
        if key in _SETTINGS or key in METHOD_FIELDS:
            continue
        prefix, dot, rest = _param_key(key).partition(".")
        if dot:
            if prefix == role and rest not in new_names:
                trial.drop(key)
        elif key not in new_names and key not in other_names and not (schedule is not None and schedule.accepts(key)):
            trial.drop(key)
    if configs.get(role):
        decided = set(QUANTIZERS[new].convention_kwargs(Convention()))
        for p, v in configs[role].items():
            if p in decided and p in new_names and not trial.has(_role_key(trial, role, p)):
                trial.set(_role_key(trial, role, p), v)
    if req.mode == "method":
        trial.set(f"{role}_quantizer", new)
    else:
        name = "kernel_quantizer" if role == "weight" else "input_quantizer"
        trial.req = dataclasses.replace(trial.req, **{name: new})
    return trial


def _estimator_text(trial, role, new, was):
    if trial.req.mode == "quantizer":
        return f"quantizer {new} instead of {was}"
    if trial.req.mode == "larq":
        return f"{'kernel' if role == 'weight' else 'input'}_quantizer={new} instead of {was}"
    return f"{role}_quantizer={new} instead of {was}"


def _estimator_changes(base: _Trial) -> list:
    out = []
    for role, was in _roles(base).items():
        for new in sorted(QUANTIZERS):
            if new == was:
                continue
            out.append(Change("estimator", f"estimator.{role}", _estimator_text(base, role, new, was),
                              {"role": role, "quantizer": new, "was": was},
                              lambda t, r=role, n=new: _swap_quantizer(t, r, n)))
    return out


def _act_transpose(nchw):
    """Activations stored in the other layout, read in the requested one."""
    return (0, 3, 1, 2) if nchw else (0, 2, 3, 1)


def _kernel_transpose(nchw, ndim):
    if ndim == 2:
        return (1, 0)
    return (3, 2, 0, 1) if nchw else (2, 3, 1, 0)


def _transpose(trial, keys, axes_of, tag):
    for k in keys:
        trial.arrays[k] = np.ascontiguousarray(trial.arrays[k].transpose(axes_of(trial.arrays[k].ndim)))
    trial.tags = tuple(sorted(trial.tags + (tag,)))
    return trial


def _layout_changes(base: _Trial) -> list:
    req, arrays = base.req, base.arrays
    if req.mode == "schedule" or "x" not in arrays:
        return []
    nchw = req.layout != "nhwc"
    here, there = ("NCHW", "NHWC") if nchw else ("NHWC", "NCHW")
    out = []

    def activations(keys):
        text = f"{', '.join(keys)} stored {there}, not {here} (transposed to {here})"
        out.append(Change("layout", "layout.activations", text, {"arrays": list(keys), "stored": there},
                          lambda t, ks=tuple(keys): _transpose(t, ks, lambda nd: _act_transpose(nchw), "act")))

    def kernel(keys, ndim):
        stored = ("HWIO" if nchw else "OIHW") if ndim == 4 else ("(in, out)" if nchw else "(out, in)")
        wanted = ("OIHW" if nchw else "HWIO") if ndim == 4 else ("(out, in)" if nchw else "(in, out)")
        text = f"{', '.join(keys)} stored {stored}, not {wanted} (transposed to {wanted})"
        out.append(Change("layout", "layout.weight", text, {"arrays": list(keys), "stored": stored},
                          lambda t, ks=tuple(keys): _transpose(t, ks, lambda nd: _kernel_transpose(nchw, nd),
                                                               "weight")))

    if req.mode in ("method", "larq") and req.part in (None, "layer"):
        acts = [k for k in _ACTIVATIONS if k in arrays and arrays[k].ndim == 4]
        if "x" in acts:
            activations(acts)
        wname = "weight" if "weight" in arrays else "kernel" if "kernel" in arrays else None
        if wname is not None and arrays[wname].ndim in (2, 4):
            kernel([k for k in (wname, "grad_" + wname) if k in arrays], arrays[wname].ndim)
        return out
    keys = [k for k in _ACTIVATIONS if k in arrays]
    role = req.part if req.part in ("weight", "input") else None
    nd = arrays["x"].ndim
    if nd == 4 and role in (None, "input"):
        activations(keys)
    if nd in (2, 4) and role in (None, "weight"):
        kernel(keys, nd)
    return out


_DOCUMENTED = re.compile(r"--param\s+([A-Za-z_][\w.]*)=([^\s,;()]+)")


def method_variants(method) -> list:
    """A method's documented variants as (name, value): ``method.variants`` (name -> value or values) if the
    method table gives it, else each ``--param NAME=VALUE|VALUE`` its description names."""
    declared = getattr(method, "variants", None)
    items = []
    if declared:
        for name, vals in dict(declared).items():
            for v in (vals if isinstance(vals, (list, tuple)) else (vals,)):
                items.append((name, v))
        return items
    for name, vals in _DOCUMENTED.findall(method.description or ""):
        items += [(name, parse_value(v)) for v in vals.split("|") if v]
    for variant in METHODS.values():  # the method table's variants of it (``variant_of``): what each changes
        if getattr(variant, "variant_of", None) != method.name:
            continue
        for field_name in ("weight_quantizer", "input_quantizer"):
            if getattr(variant, field_name) != getattr(method, field_name):
                items.append((field_name, getattr(variant, field_name)))
        for params_name in ("weight_params", "input_params"):
            mine = dict(getattr(method, params_name) or {})
            items += [(k, v) for k, v in dict(getattr(variant, params_name) or {}).items() if mine.get(k) != v]
    unique = []
    for item in items:
        if item not in unique:
            unique.append(item)
    return unique


def _apply_variant(trial, name, value):
    if name in ("weight_quantizer", "input_quantizer") and value is not None and value in QUANTIZERS:
        return _swap_quantizer(trial, name.split("_")[0], value)
    trial.set(name, value)
    return trial


def _variant_changes(base: _Trial) -> list:
    if base.req.mode != "method":
        return []
    out = []
    for name, value in method_variants(get_method(base.req.method)):
        was = base.get(name, getattr(get_method(base.req.method), name, None))
        if _equal(was, value):
            continue
        out.append(Change("variant", f"variant.{name}", f"method variant {name}={_fmt(value)}",
                          {"param": name, "value": value, "was": was},
                          lambda t, n=name, v=value: _apply_variant(t, n, v)))
    return out


# -- runs and results ----------------------------------------------------------------------------------
@dataclass
class _Outcome:
    changes: tuple
    rows: dict
    results: dict
    info: dict


def _run(trial, expected, rtol, atol):
    """One re-run: (results, info, rows by name), or None where the changed check does not apply (a shape
    that no longer fits, a value a quantizer refuses, ...)."""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            results, info, names, _ = _evaluate(trial.req, trial.arrays, trial.settings)
            if set(names) != set(expected):
                return None
            rows = {k: compare(k, results[k], trial.arrays[k], rtol, atol) for k in expected}
    except (ValueError, TypeError, ArithmeticError):
        return None
    return results, info, rows


def _same(a, b, rtol, atol) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and compare("out", a, b, rtol, atol).passed


def _better(after: TensorResult, before: TensorResult) -> bool:
    return after.mismatches < before.mismatches or after.max_abs < before.max_abs * (1 - 1e-9)


def _configured(outcome, change) -> str | None:
    """The quantizer a swap configured, as the re-run built it (its repr)."""
    if change.kind not in ("estimator", "variant"):
        return None
    role = change.detail.get("role") or (change.detail.get("param", "").split("_")[0]
                                         if change.detail.get("param") in ("weight_quantizer", "input_quantizer")
                                         else None)
    if role is None:
        return None
    if "quantizers" in outcome.info:
        return outcome.info["quantizers"].get(role)
    return outcome.info.get("quantizer")


def _error(r: TensorResult) -> dict:
    return {"max_abs": r.max_abs if np.isfinite(r.max_abs) else str(r.max_abs),
            "max_rel": r.max_rel if np.isfinite(r.max_rel) else str(r.max_rel), "mismatches": r.mismatches,
            "size": int(np.prod(r.shape)), "passed": r.passed}


@dataclass
class Fix:
    """A change (or a pair) and what it does: the error of one tensor after it, the differing tensors it
    makes pass (``fixes``) and the passing tensors it makes differ (``breaks``)."""
    changes: tuple
    configured: tuple           # per change: the quantizer a swap configured (repr), else None
    after: TensorResult | None  # None for a change listed under every_tensor (all of them pass)
    fixes: list
    breaks: list

    def text(self) -> str:
        parts = [c.text + (f" [{q}]" if q else "") for c, q in zip(self.changes, self.configured)]
        return " + ".join(parts)

    def as_dict(self) -> dict:
        return {"changes": [dict(c.as_dict(), **({"configured": q} if q else {}))
                            for c, q in zip(self.changes, self.configured)],
                "after": None if self.after is None else _error(self.after), "fixes": list(self.fixes),
                "breaks": list(self.breaks)}


@dataclass
class TensorDiagnosis:
    """One differing tensor: its error, the single changes (else pairs) that make it pass, else the closest."""
    name: str
    before: TensorResult
    by: str | None              # "single", "pair" or None (no change tried makes it pass)
    fixes: list                 # of Fix, best first (fewest tensors broken, most fixed, smallest error)
    closest: Fix | None = None  # when nothing fixes it: the change that reduced its error most

    def as_dict(self) -> dict:
        return {"before": _error(self.before), "by": self.by, "fixes": [f.as_dict() for f in self.fixes],
                "closest": None if self.closest is None else self.closest.as_dict()}


@dataclass
class Diagnosis:
    """What ``--diagnose`` found: per differing tensor a :class:`TensorDiagnosis`; ``every_tensor``: the
    changes under which every tensor passes; the re-runs spent, the bound and whether it was reached."""
    tensors: dict
    every_tensor: list
    runs: int
    max_runs: int
    cap_hit: bool
    tried: dict                 # kind -> single changes tried (run and applicable)
    not_tried: int = 0          # single changes and pairs left when the bound was reached

    def as_dict(self) -> dict:
        return {"runs": self.runs, "max_runs": self.max_runs, "cap_hit": self.cap_hit, "tried": dict(self.tried),
                "not_tried": self.not_tried, "every_tensor": [f.as_dict() for f in self.every_tensor],
                "tensors": {k: v.as_dict() for k, v in self.tensors.items()}}

    def lines(self) -> list:
        tried = ", ".join(f"{k} {n}" for k, n in self.tried.items() if n) or "none applies to this check"
        out = [f"diagnosis: {self.runs} re-runs of the check with nearby choices changed ({tried})"]
        if self.every_tensor:
            best = self.every_tensor[0]
            out.append(f"  every tensor passes with: {best.text()}"
                       + (f" (or {len(self.every_tensor) - 1} other way{'s' if len(self.every_tensor) > 2 else ''})"
                          if len(self.every_tensor) > 1 else ""))
        for name, td in self.tensors.items():
            b = td.before
            head = f"  {name} (max_abs {b.max_abs:.3g}; {b.mismatches} of {int(np.prod(b.shape))} elements differ)"
            if td.by is None:
                line = f"{head}: no nearby choice tried makes it pass"
                if td.closest is not None:
                    a = td.closest.after
                    line += (f"; closest: {td.closest.text()}: max_abs {b.max_abs:.3g} -> {a.max_abs:.3g}, "
                             f"{b.mismatches} -> {a.mismatches} elements differ")
                out.append(line)
                continue
            out.append(f"{head} passes with {'one change' if td.by == 'single' else 'a pair of changes'}:")
            for fx in td.fixes[:_SHOWN]:
                line = f"    - {fx.text()}: max_abs {b.max_abs:.3g} -> {fx.after.max_abs:.3g}"
                if fx.breaks:
                    line += f"; fixes {', '.join(fx.fixes)} but breaks {', '.join(fx.breaks)}"
                out.append(line)
            if len(td.fixes) > _SHOWN:
                out.append(f"    ... and {len(td.fixes) - _SHOWN} more (the JSON report has them all)")
        if self.cap_hit:
            out.append(f"  note: the bound of {self.max_runs} re-runs was reached; {self.not_tried} single changes "
                       f"or pairs were not tried (crosscheck(..., diagnose=N) raises the bound)")
        return out


def _candidates(base, base_info) -> list:
    changes = (_convention_changes(base, base_info) + _estimator_changes(base) + _variant_changes(base)
               + _layout_changes(base))
    return changes


def diagnose_bundle(req: Request, arrays: dict, settings: dict, base_results: dict, rows: list, rtol, atol,
                    max_runs=MAX_RUNS, base_info=None) -> Diagnosis:
    """Re-run a failing check with nearby choices changed (see the module docstring); ``rows`` are the
    check's compared tensors, ``base_results`` refbnn's arrays."""
    if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1:
        raise ValueError(f"max_runs: expected a positive int, got {max_runs!r}")
    base = _Trial(dataclasses.replace(req, params=dict(req.params)), dict(arrays), dict(settings))
    expected = [r.name for r in rows]
    before = {r.name: r for r in rows}
    failing = [r.name for r in rows if not r.passed]
    passing = [r.name for r in rows if r.passed]
    seen = {base.signature()}
    runs = 0
    singles: list[_Outcome] = []
    tried = {k: 0 for k in _KIND_ORDER}
    queue = _candidates(base, base_info or {})
    left = 0

    def attempt(changes):
        nonlocal runs
        trial = base.copy()
        try:
            for c in changes:
                trial = c.apply(trial)
        except (_NotApplicable, ValueError, TypeError):
            return None
        sig = trial.signature()
        if sig in seen:
            return None
        seen.add(sig)
        runs += 1
        res = _run(trial, expected, rtol, atol)
        if res is None:
            return None
        results, info, got = res
        return _Outcome(tuple(changes), got, results, info)

    for i, change in enumerate(queue):
        if runs >= max_runs:
            left += len(queue) - i
            break
        o = attempt([change])
        if o is None:
            continue
        if change.kind == "estimator" and not _same(o.results.get("out"), base_results.get("out"), rtol, atol):
            continue  # another forward: not an estimator of this quantizer
        tried[change.kind] += 1
        singles.append(o)

    def fixes_of(o):
        return [t for t in failing if o.rows[t].passed]

    def improves(o, t):
        return _better(o.rows[t], before[t])

    # pairs: for each tensor no single change fixes, among the changes that reduced its error; then, when no
    # single change makes every tensor pass, among the changes that fixed or reduced some differing tensor
    pools = []
    for t in failing:
        if not any(o.rows[t].passed for o in singles):
            pool = [o for o in singles if improves(o, t)]
            pools.append(sorted(pool, key=lambda o, t=t: (o.rows[t].mismatches, o.rows[t].max_abs)))
    if not any(all(o.rows[t].passed for t in expected) for o in singles):
        pool = [o for o in singles if any(improves(o, t) or o.rows[t].passed for t in failing)]
        pools.append(sorted(pool, key=lambda o: (-len(fixes_of(o)), sum(o.rows[t].mismatches for t in failing))))
    ranked = {}
    for pool in pools:
        for i in range(len(pool)):
            for j in range(i + 1, len(pool)):
                a, b = pool[i], pool[j]
                if a.changes[0].slot == b.changes[0].slot:
                    continue
                key = (id(a), id(b)) if id(a) < id(b) else (id(b), id(a))
                ranked[key] = (min(ranked[key][0], i + j) if key in ranked else i + j, (a, b))
    pairs: list[_Outcome] = []
    order = sorted(ranked.values(), key=lambda v: v[0])
    for n, (_, (a, b)) in enumerate(order):
        if runs >= max_runs:
            left += len(order) - n
            break
        o = attempt([a.changes[0], b.changes[0]])
        if o is not None:
            pairs.append(o)

    def fix(o, t):
        conf = tuple(_configured(o, c) for c in o.changes)
        return Fix(o.changes, conf, None if t is None else o.rows[t], fixes_of(o),
                   [p for p in passing if not o.rows[p].passed])

    def rank(fx: Fix):
        return (len(fx.breaks), -len(fx.fixes), len(fx.changes),
                min(_KIND_ORDER.index(c.kind) for c in fx.changes), 0.0 if fx.after is None else fx.after.max_abs)

    tensors = {}
    for t in failing:
        one = [fix(o, t) for o in singles if o.rows[t].passed]
        two = [fix(o, t) for o in pairs if o.rows[t].passed]
        if one or two:
            tensors[t] = TensorDiagnosis(t, before[t], "single" if one else "pair", sorted(one or two, key=rank))
        else:
            better = [o for o in singles + pairs if improves(o, t)]
            closest = min(better, key=lambda o: (o.rows[t].mismatches, o.rows[t].max_abs), default=None)
            tensors[t] = TensorDiagnosis(t, before[t], None, [], None if closest is None else fix(closest, t))
    every = [fix(o, None) for o in singles if all(o.rows[t].passed for t in expected)]
    if not every:
        every = [fix(o, None) for o in pairs if all(o.rows[t].passed for t in expected)]
    return Diagnosis(tensors, sorted(every, key=rank), runs, max_runs, left > 0, tried, left)
