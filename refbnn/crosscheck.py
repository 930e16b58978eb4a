"""Cross-checking: compare refbnn with your own implementation through reference bundles.

A *reference bundle* is an ``.npz`` of named arrays (read with ``allow_pickle=False``):

- inputs: ``x``, ``weight`` (``kernel`` in the NHWC/Larq layout), ``bias``, ``alpha``, ``grad_out``;
- expected outputs (any that apply): ``out``, ``grad_x``, ``grad_weight`` (``grad_kernel``),
  ``grad_bias``, ``grad_alpha``; gradients are those of L = sum(out * grad_out);
- settings as 0-d arrays: ``stride``, ``padding`` (an int, a pair, or ``"same"``/``"valid"``),
  ``dilation``, ``groups``, ``pad_value`` (Larq: ``pad_values``), ``training``, ``epoch``/``epochs``
  (``Method.on_epoch`` sets the method's schedule values at the convention's clock), and any quantizer
  parameter (``clip_value``, ``beta``, ...), schedule value (``tau``, ``t``, ``k``, ...), schedule
  parameter (``T_min``, ``tau_min``, ...), convention field (``sign_zero``, ...) or method field
  (``scale``, ``weight_quantizer``, ``input_quantizer``) by name;
- optionally how it was made, as 0-d strings: ``method``, ``convention``, ``quantizer``,
  ``input_quantizer``, ``kernel_quantizer``, ``schedule``, ``part``, ``layer``, ``layout`` (written by
  :func:`export_bundles`; they act as defaults, and a conflicting command-line value is an error).

:func:`crosscheck` runs refbnn on the bundle's inputs and compares every expected output it holds;
:func:`export_bundles` writes bundles computed by refbnn. Both are generic over the registries and
build everything through the catalogue's own paths: a method's layer with
``LayerFactory(method, convention=..., params=...)`` (``Method.with_params`` routes the named values
to the method's fields, quantizer constructors and schedule), its epoch with ``Method.on_epoch``, a
quantizer with ``get_quantizer``/``from_convention``, a schedule from the tables of
``refbnn.schedules`` (``QUANTIZER_SCHEDULES``, evaluated with ``QuantizerSchedule.at`` at the
convention's clock, and the learning-rate schedules; see :func:`schedule_table`). Layer settings
(geometry, ``pad_value``, ``training``, ``epoch``/``epochs``) and convention fields are taken here;
every other name goes to the method's (or the Larq layer's, or the quantizer's) parameters. A name
that nothing takes is an error, so a typo in a bundle is never ignored. Prefix a name with
``weight_quantizer.``, ``kernel_quantizer.`` or ``input_quantizer.`` (or ``Method.with_params``'s
``weight.``/``input.``) to reach one quantizer only. Schedule values given by name (``tau``, ``t``,
``k``) win over those ``epoch``/``epochs`` set.

Arrays are compared element-wise after casting to float64: ``max_abs = max |refbnn - yours|``,
``max_rel = max_abs / max(max |refbnn|, max |yours|)`` (relative to the tensor's scale, so exact
zeros in one gradient do not blow it up), and a tensor passes when ``max_abs <= atol + rtol * scale``.
Default tolerances follow the dtype (:data:`DEFAULT_TOLERANCES`); NaN/Inf must match exactly.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from . import schedules as _schedules
from .conventions import PRESETS, Convention, get_convention
from .layers import BinaryConv2d, BinaryLinear
from .methods import METHOD_FIELDS, LayerFactory, Method, get_method
from .quantizers import QUANTIZERS, get_quantizer
from .schedules import QuantizerSchedule

# (rtol, atol) per computation dtype: float64 about 1e-10 relative, float32 about 1e-5.
DEFAULT_TOLERANCES = {"float64": (1e-10, 1e-12), "float32": (1e-5, 1e-6)}

LAYERS = ("conv2d", "linear")
LAYOUTS = ("nchw", "nhwc")
PARTS = ("layer", "weight", "input")
META_KEYS = ("method", "convention", "quantizer", "input_quantizer", "kernel_quantizer", "schedule", "part", "layer",
             "layout")
GEOMETRY = ("stride", "padding", "dilation", "groups")
# name prefixes that reach one quantizer: crosscheck's spelling and Method.with_params' own
QUANTIZER_PREFIXES = {"weight_quantizer": "weight", "kernel_quantizer": "weight", "input_quantizer": "input",
                      "weight": "weight", "input": "input"}
CONVENTION_FIELDS = tuple(f.name for f in dataclasses.fields(Convention) if f.name != "name")
# Method.with_params fields that do not change one layer's forward/backward (so a bundle may not set them):
# the alpha comes from the bundle, the activation and the latent clip are outside the layer.
_METHOD_FIELDS_NOT_LAYER = ("scale_init", "activation", "latent_clip")


class BundleError(ValueError):
    """A bundle or a request that cannot be checked; the message names the array and what was expected."""


# ---------------------------------------------------------------------------------------------
# Reading bundles and values
# ---------------------------------------------------------------------------------------------

def load_bundle(path) -> dict:
    """The arrays of an ``.npz`` file, read with ``allow_pickle=False``; clear errors otherwise."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such bundle file")
    if os.path.isdir(path):
        raise BundleError(f"{path}: is a directory; expected an .npz bundle file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any failure to parse means "not a bundle"; the reason is kept
        raise BundleError(f"{path}: not a readable .npz bundle ({type(exc).__name__}: {exc}); write one with "
                          f"numpy.savez(path, x=..., out=..., ...)") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise BundleError(f"{path}: holds a single array (.npy), not a bundle of named arrays; write one with "
                          f"numpy.savez(path, x=..., out=..., ...)")
    data = {}
    with loaded:
        for name in loaded.files:
            try:
                data[name] = loaded[name]
            except Exception as exc:  # noqa: BLE001 - object arrays, truncated members, ...
                raise BundleError(f"{path}: array {name!r} cannot be read without pickle ({exc}); store numbers "
                                  f"and strings only") from exc
    if not data:
        raise BundleError(f"{path}: the bundle holds no arrays")
    return data


def parse_value(text: str):
    """A ``--param`` value: ``none`` -> None, ``true``/``false`` -> bool, then int, float, else the string."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_params(items) -> dict:
    """``["tau=0.9", "clip_value=none"]`` -> ``{"tau": 0.9, "clip_value": None}``."""
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise BundleError(f"--param {item!r}: expected NAME=VALUE (VALUE 'none' for None)")
        name = name.strip()
        if name in out:
            raise BundleError(f"--param {name} given twice")
        out[name] = parse_value(value)
    return out


def _scalar(name, a):
    """A bundle setting (0-d array, or a short 1-d int vector for pairs) as a Python value."""
    a = np.asarray(a)
    if a.dtype.kind in "US":
        if a.ndim:
            raise BundleError(f"{name}: expected a 0-d string, got shape {a.shape}")
        text = str(a[()])
        return None if text.lower() == "none" else text  # npz has no None: the string "none" stands for it
    if a.dtype.kind not in "biuf":
        raise BundleError(f"{name}: expected a number, got dtype {a.dtype}")
    if a.ndim == 0:
        return a.item()
    if a.ndim == 1 and a.size in (2, 4) and name in GEOMETRY:
        return tuple(v.item() for v in a)
    raise BundleError(f"{name}: expected a scalar (0-d array), got shape {a.shape}")


def _int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or v != int(v):
        raise BundleError(f"{name}: expected an integer, got {v!r}")
    return int(v)


def _pair(name, v, minimum):
    vals = (v, v) if not isinstance(v, tuple) else v
    if len(vals) != 2:
        raise BundleError(f"{name}: expected an int or a pair of ints, got {v!r}")
    vals = tuple(_int(name, e) for e in vals)
    if min(vals) < minimum:
        raise BundleError(f"{name}: expected values >= {minimum}, got {v!r}")
    return vals


def _same_value(a, b):
    try:
        return bool(np.all(np.asarray(a) == np.asarray(b)))
    except Exception:  # noqa: BLE001
        return False


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

@dataclass
class TensorResult:
    """One compared tensor: errors, pass/fail, and the worst element (index, refbnn's and yours)."""
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    passed: bool
    mismatches: int = 0
    worst_index: tuple | None = None
    refbnn: float | None = None
    yours: float | None = None

    def as_dict(self):
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["worst_index"] = None if self.worst_index is None else list(self.worst_index)
        for k in ("max_abs", "max_rel", "refbnn", "yours"):  # JSON has no inf/nan
            if isinstance(d[k], float) and not math.isfinite(d[k]):
                d[k] = str(d[k])
        return d


@dataclass
class Report:
    rows: list
    rtol: float
    atol: float
    settings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    def __bool__(self):
        return self.passed

    def row(self, name) -> TensorResult:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no compared tensor {name!r}; compared: {[r.name for r in self.rows]}")

    def as_dict(self):
        return {"passed": self.passed, "rtol": self.rtol, "atol": self.atol, "settings": self.settings,
                "tensors": [r.as_dict() for r in self.rows], "notes": list(self.notes)}

    def to_json(self, indent=2) -> str:
        return json.dumps(self.as_dict(), indent=indent, default=str)

    def table(self) -> str:
        flat = {k: v for k, v in self.settings.items() if not isinstance(v, dict) and v is not None}
        lines = ["refbnn crosscheck: " + ", ".join(f"{k}={v}" for k, v in flat.items())]
        for k in ("quantizers", "schedule_values", "state", "parameters", "params"):
            if self.settings.get(k):
                lines.append(f"  {k}: " + ", ".join(f"{n}={v}" for n, v in self.settings[k].items()))
        lines.append(f"tolerance per tensor: max|refbnn - yours| <= {self.atol:g} + {self.rtol:g} * "
                     f"max(|refbnn|, |yours|)")
        width = max([len("tensor")] + [len(r.name) for r in self.rows]) + 2
        lines.append(f"{'tensor':<{width}}{'shape':<20}{'max_abs':>12}{'max_rel':>12}  result")
        for r in self.rows:
            line = (f"{r.name:<{width}}{str(tuple(r.shape)):<20}{r.max_abs:>12.3g}{r.max_rel:>12.3g}  "
                    f"{'pass' if r.passed else 'FAIL'}")
            if not r.passed:
                idx = tuple(int(i) for i in r.worst_index) if r.worst_index is not None else ()
                line += (f"  ({r.mismatches} of {int(np.prod(r.shape))} elements differ; worst at {idx}: "
                         f"refbnn {r.refbnn:.10g}, yours {r.yours:.10g})")
            lines.append(line)
        n_bad = sum(not r.passed for r in self.rows)
        lines += [f"note: {n}" for n in self.notes]
        lines.append("PASS: every tensor agrees with refbnn" if self.passed
                     else f"FAIL: {n_bad} of {len(self.rows)} tensors differ from refbnn")
        return "\n".join(lines)

    __str__ = table


def compare(name, refbnn, yours, rtol, atol) -> TensorResult:
    """Compare refbnn's array with yours (same shape; never broadcast)."""
    a = np.asarray(refbnn, dtype=np.float64)
    e = np.asarray(yours, dtype=np.float64)
    if a.shape != e.shape:
        raise BundleError(f"{name}: expected shape {a.shape}, got {e.shape}")
    finite = np.isfinite(a) & np.isfinite(e)
    same_nonfinite = ~finite & ((np.isnan(a) & np.isnan(e)) | (a == e))
    diff = np.zeros(a.shape)
    np.subtract(a, e, out=diff, where=finite)
    diff = np.abs(diff)
    diff[~finite & ~same_nonfinite] = np.inf
    scale = max(np.abs(a[finite]).max(initial=0.0), np.abs(e[finite]).max(initial=0.0))
    max_abs = float(diff.max(initial=0.0))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    bad = diff > atol + rtol * scale
    res = TensorResult(name, tuple(a.shape), max_abs, float(max_rel), not bool(bad.any()), int(bad.sum()))
    if not res.passed:
        idx = np.unravel_index(int(np.argmax(diff)), a.shape) if a.ndim else ()
        res.worst_index = tuple(int(i) for i in idx)
        res.refbnn, res.yours = float(a[idx]), float(e[idx])
    return res


def default_tolerances(dtype):
    dtype = np.dtype(dtype)
    return DEFAULT_TOLERANCES["float32" if dtype == np.float32 else "float64"]


# ---------------------------------------------------------------------------------------------
# Schedules: generic lookup
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# The request: what to build, and the named values that configure it
# ---------------------------------------------------------------------------------------------

@dataclass
class Request:
    """What a bundle is checked against (or exported as). Exactly one of ``method``, ``quantizer``,
    ``schedule`` or the Larq pair ``input_quantizer``/``kernel_quantizer`` selects the mode."""
    method: str | None = None
    convention: str | None = None
    part: str | None = None
    layer: str | None = None
    layout: str | None = None
    padding: object = None
    quantizer: str | None = None
    input_quantizer: str | None = None
    kernel_quantizer: str | None = None
    schedule: str | None = None
    params: dict = field(default_factory=dict)

    @property
    def larq(self):
        return self.input_quantizer is not None or self.kernel_quantizer is not None

    @property
    def mode(self):
        return ("method" if self.method else "quantizer" if self.quantizer else "schedule" if self.schedule
                else "larq" if self.larq else None)

    def resolve(self, meta: dict | None = None, require_convention=False) -> "Request":
        """Fill unset fields from a bundle's metadata (conflicts are errors) and validate names."""
        r = dataclasses.replace(self, params=dict(self.params))
        for k, v in (meta or {}).items():
            mine = getattr(r, k)
            if mine is None:
                setattr(r, k, v)
            elif str(mine) != v:
                raise BundleError(f"the bundle was made with {k}={v!r} (its '{k}' array), but {k}={mine!r} was "
                                  f"requested; expected outputs would not be comparable")
        for k in ("input_quantizer", "kernel_quantizer"):
            if isinstance(getattr(r, k), str) and getattr(r, k).lower() == "none":
                setattr(r, k, "none")
        modes = [m for m, on in (("--method", r.method), ("--quantizer", r.quantizer), ("--schedule", r.schedule),
                                 ("--input-quantizer/--kernel-quantizer", r.larq)) if on]
        if len(modes) != 1:
            raise BundleError("say what to check against: exactly one of --method, --quantizer, --schedule or "
                              "--input-quantizer/--kernel-quantizer" + (f" (got {', '.join(modes)})" if modes else ""))
        if r.method is not None:
            get_method(r.method)
            if r.convention is None:
                if require_convention:
                    raise BundleError(f"--method {r.method} needs --convention: one of {', '.join(sorted(PRESETS))} "
                                      f"(they differ in sign(0), statistics and schedules)")
                r.convention = "paper"
        if r.schedule is not None:
            sched = get_schedule(r.schedule)
            if isinstance(sched, QuantizerSchedule) and r.convention is None:
                if require_convention:
                    raise BundleError(f"--schedule {r.schedule} needs --convention: one of {', '.join(sorted(PRESETS))} "
                                      f"(its clock: paper p = e / (E - 1), the end value is reached; official "
                                      f"p = e / E, as the official code)")
                r.convention = "paper"
            elif not isinstance(sched, QuantizerSchedule) and r.convention is not None:
                raise BundleError(f"--convention {r.convention}: schedule {r.schedule} is a function of (epoch, "
                                  f"epochs) that no convention changes; remove --convention")
        if r.convention is not None:
            get_convention(r.convention)
        if r.quantizer is not None:
            _check_quantizer_name(r.quantizer)
        for k in ("input_quantizer", "kernel_quantizer"):
            v = getattr(r, k)
            if v not in (None, "none"):
                _check_quantizer_name(v)
        if r.larq:  # an unnamed Larq quantizer is absent, as in Larq (None)
            r.input_quantizer = r.input_quantizer or "none"
            r.kernel_quantizer = r.kernel_quantizer or "none"
        for name, allowed in (("part", PARTS), ("layer", LAYERS + ("dense",)), ("layout", LAYOUTS)):
            v = getattr(r, name)
            if v is not None and v not in allowed:
                raise BundleError(f"unknown {name} {v!r}; known: {', '.join(allowed)}")
        if r.layer == "dense":
            r.layer = "linear"
        if r.layout is None and r.mode != "schedule":
            r.layout = "nhwc" if r.larq else "nchw"
        if r.part is None and r.mode in ("method", "larq"):
            r.part = "layer"
        if r.part not in (None, "layer") and r.mode == "larq":
            raise BundleError("--part weight/input checks a method's quantizer; for one Larq quantizer use "
                              "--quantizer NAME")
        if r.part == "layer" and r.mode == "quantizer":
            raise BundleError("--part layer needs --method or --input-quantizer/--kernel-quantizer; --quantizer "
                              "checks one quantizer (--part weight/input only say how --layout applies)")
        return r

    def describe(self) -> dict:
        d = {k: getattr(self, k) for k in ("method", "quantizer", "input_quantizer", "kernel_quantizer", "schedule",
                                           "convention", "part", "layer", "layout")}
        return {k: v for k, v in d.items() if v is not None}


def _check_quantizer_name(name):
    """The catalogue's check (an unknown name lists the known ones)."""
    get_quantizer(name)


class _Namespace:
    """Named values: the bundle's settings and ``--param``, one value per name (a different value in both
    is an error). ``take`` marks a name used; every name must end up used by someone (see
    :func:`_check_all_used`)."""

    def __init__(self, bundle_values: dict, params: dict):
        values = {("pad_value" if k == "pad_values" else k): v for k, v in bundle_values.items()}
        for k, v in params.items():
            k = "pad_value" if k == "pad_values" else k
            if k in values and not _same_value(values[k], v):
                raise BundleError(f"{k} is given by the bundle ({values[k]!r}) and by --param ({v!r}); remove one")
            values[k] = v
        self.values = values
        self.used: set = set()

    def take(self, name, default=None):
        if name in self.values:
            self.used.add(name)
            return self.values[name]
        return default

    def has(self, name):
        return name in self.values

    def rest(self, exclude=()) -> dict:
        """The names not used yet and not excluded: name -> value."""
        return {k: v for k, v in self.values.items() if k not in self.used and k not in exclude}

    def check_all_used(self, known):
        unused = sorted(set(self.values) - self.used)
        if unused:
            raise _no_effect(unused, known)


def _no_effect(names, known):
    return BundleError(f"{', '.join(repr(u) for u in names)}: not a setting of this check, so "
                       f"{'it' if len(names) == 1 else 'they'} would have no effect; settings known here: "
                       f"{', '.join(sorted(known))}")


def _param_key(name):
    """A name in ``Method.with_params``' spelling: ``weight_quantizer.X``/``kernel_quantizer.X`` ->
    ``weight.X``, ``input_quantizer.X`` -> ``input.X``; other names unchanged."""
    prefix, dot, rest = name.partition(".")
    return f"{QUANTIZER_PREFIXES[prefix]}.{rest}" if dot and prefix in QUANTIZER_PREFIXES else name


def _with_prefixes(names):
    """Accepted ``with_params`` names as a message shows them: ``weight.X`` as ``weight_quantizer.X``,
    ``input.X`` as ``input_quantizer.X``."""
    return {(f"{n.partition('.')[0]}_quantizer.{n.partition('.')[2]}" if n.partition(".")[0] in ("weight", "input")
             and n.partition(".")[1] else n) for n in names}


def _convention_with(conv: Convention, ns: _Namespace) -> Convention:
    """The convention with the fields the named values set (``sign_zero``, ``pad_value``, ...)."""
    changes = {}
    for name in CONVENTION_FIELDS:
        if ns.has(name):
            v = ns.take(name)
            ftype = {f.name: f.type for f in dataclasses.fields(Convention)}[name]
            changes[name] = float(v) if ftype in ("float", float) and isinstance(v, (int, float)) \
                and not isinstance(v, bool) else v
    if not changes:
        return conv
    try:
        return conv.with_(**changes, name=f"{conv.name}+{','.join(f'{k}={v}' for k, v in changes.items())}")
    except (TypeError, ValueError) as exc:
        raise BundleError(f"convention: {exc}") from exc


def _configured_method(method: Method, ns: _Namespace, settings, what) -> tuple:
    """``method.with_params`` with every named value not taken by the layer settings: returns the
    configured method and the parameters (in ``with_params``' spelling). Unknown names and names with no
    effect on one layer are errors that list the names known here."""
    params = {_param_key(k): v for k, v in ns.rest(exclude=settings).items()}
    originals = {_param_key(k): k for k in ns.rest(exclude=settings)}
    fields = {k: v for k, v in params.items() if k in METHOD_FIELDS and k not in _METHOD_FIELDS_NOT_LAYER}
    try:
        base = method.with_params(**fields) if fields else method
    except ValueError as exc:
        raise BundleError(f"{what}: {exc}") from exc
    accepted = [k for k in base.accepted_params() if k not in _METHOD_FIELDS_NOT_LAYER]
    unknown = [originals[k] for k in params if k not in accepted]
    known = set(settings) | _with_prefixes(accepted)
    if unknown:
        raise _no_effect(sorted(unknown), known)
    try:
        configured = method.with_params(**params) if params else method
    except ValueError as exc:
        raise BundleError(f"{what}: {exc}") from exc
    ns.used |= set(originals.values())
    return configured, params, known


def _set_explicit_state(quantizers: dict, params: dict) -> dict:
    """Schedule values given by name (``tau``, ``t``, ``k``; ``weight.t`` for one quantizer) set on the
    quantizers that have them, after ``Method.on_epoch`` (so they win over the epoch's values)."""
    done = {}
    for role, q in quantizers.items():
        if q is None:
            continue
        mine = {}
        for key, v in params.items():
            prefix, dot, rest = key.partition(".")
            if dot and prefix != role:
                continue
            name = rest if dot else key
            if name in q.state():
                mine[name] = v
        if mine:
            try:
                q.set_state(**mine)
            except ValueError as exc:
                raise BundleError(str(exc)) from exc
            done.update({f"{role}_quantizer.{k}": v for k, v in mine.items()})
    return done


def _on_epoch(method: Method, model, ns: _Namespace, conv: Convention) -> dict:
    """``Method.on_epoch`` at the bundle's ``epoch`` of ``epochs``: the schedule's values at the convention's
    clock (and any extra per-epoch hooks); returns the values set."""
    epoch, epochs = ns.take("epoch"), ns.take("epochs")
    if epoch is None or epochs is None:
        missing = "epochs" if epoch is not None else "epoch"
        raise BundleError(f"the bundle lacks {missing!r} (a 0-d integer): epoch (0-based) and epochs go together")
    epoch, epochs = _int("epoch", epoch), _int("epochs", epochs)
    if method.schedule is None and not method.epoch_hooks:
        raise BundleError(f"epoch/epochs: method {method.name} has no per-epoch schedule, so they would have no "
                          f"effect; remove them from the bundle")
    try:
        return method.on_epoch(model, epoch, epochs, conv)
    except ValueError as exc:
        raise BundleError(f"epoch {epoch} of {epochs}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Layouts and geometry
# ---------------------------------------------------------------------------------------------

def _to_nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _to_nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _kernel_to_refbnn(k):
    """HWIO (conv) or (in, out) (dense) -> refbnn's OIHW / (out, in)."""
    return np.ascontiguousarray(k.transpose(3, 2, 0, 1) if k.ndim == 4 else k.T)


def _kernel_from_refbnn(w):
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T)


def _padding4(padding, k, stride, dilation, in_hw):
    """(top, bottom, left, right) from an int, a pair, a 4-tuple, "valid" or "same" (TensorFlow's rule:
    output ceil(in / stride), the odd pixel at the bottom/right; PyTorch's "same" for stride 1)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise BundleError(f"padding: expected an int, a pair, 'same' or 'valid', got {padding!r}")
        out = []
        for i in range(2):
            o = -(-in_hw[i] // stride[i])
            total = max((o - 1) * stride[i] + (k[i] - 1) * dilation[i] + 1 - in_hw[i], 0)
            out += [total // 2, total - total // 2]
        return tuple(out)
    if isinstance(padding, tuple) and len(padding) == 4:
        vals = tuple(_int("padding", p) for p in padding)
        if min(vals) < 0:
            raise BundleError(f"padding: expected values >= 0, got {padding!r}")
        return vals
    ph, pw = _pair("padding", padding, 0)
    return (ph, ph, pw, pw)


def _conv_out(size, k, s, p0, p1, d):
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


_LAYER_SHAPES = {  # how each array is laid out, for messages
    ("conv2d", "nchw"): {"x": "(N, C, H, W)", "w": "(O, C/groups, kh, kw)", "out": "(N, O, Ho, Wo)"},
    ("conv2d", "nhwc"): {"x": "(N, H, W, C)", "w": "(kh, kw, C/groups, O)", "out": "(N, Ho, Wo, O)"},
    ("linear", "nchw"): {"x": "(N, in)", "w": "(out, in)", "out": "(N, out)"},
    ("linear", "nhwc"): {"x": "(N, in)", "w": "(in, out)", "out": "(N, out)"},
}


def _fmt(shape):
    return str(tuple(int(s) for s in shape))


def _need(arrays, name, shape_doc, why=""):
    if name not in arrays:
        raise BundleError(f"the bundle lacks {name!r}{why}: expected an array of shape {shape_doc}")
    return arrays[name]


def _expect_shape(arrays, name, shape, doc=""):
    if name in arrays and tuple(arrays[name].shape) != tuple(shape):
        raise BundleError(f"{name}: expected shape {_fmt(shape)}{' ' + doc if doc else ''}, got "
                          f"{_fmt(arrays[name].shape)} (shapes must agree exactly; nothing is broadcast)")


# ---------------------------------------------------------------------------------------------
# Layer mode (--method, or Larq's --input-quantizer/--kernel-quantizer)
# ---------------------------------------------------------------------------------------------

LAYER_INPUTS = ("x", "weight", "kernel", "bias", "alpha", "grad_out")
LAYER_OUTPUTS = ("out", "grad_x", "grad_weight", "grad_kernel", "grad_bias", "grad_alpha")


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
            layer = factory.binary_conv(geo["in_channels"], geo["out_channels"], geo["kernel"], 1, 0)
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
        layer = BinaryConv2d(geo["in_channels"], geo["out_channels"], geo["kernel"], weight_quantizer=kq,
                             input_quantizer=iq, pad_value=float(pad_value), backend="numpy", dtype=dtype)
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
    if geo["layer"] == "conv2d":
        layer.stride, layer.dilation, layer.groups = geo["stride"], geo["dilation"], geo["groups"]
        top, bottom, left, right = geo["pads"]
        layer.padding = (top, left)
        asymmetric = (top, left) != (bottom, right)
    else:
        asymmetric = False

    # the epoch's schedule values, then explicit ones (they win), then the mode
    quantizers = _layer_quantizers(layer)
    hooked = _on_epoch(method, layer, ns, conv) if method is not None and (ns.has("epoch") or ns.has("epochs")) \
        else {}
    state = _set_explicit_state(quantizers, params)
    training = bool(ns.take("training", True))
    layer.train(training)  # the layer hands ``training`` to its quantizers' forward
    ns.check_all_used(known)

    xin = _to_nchw(x) if layout == "nhwc" and x.ndim == 4 else x
    g = arrays.get("grad_out")
    gin = None if g is None else (_to_nchw(g) if layout == "nhwc" and g.ndim == 4 else g)
    if asymmetric:
        out, dx = _forward_backward_prepadded(layer, xin, gin if want_grads else None, geo["pads"])
    else:
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
    return results, info


def _forward_backward_prepadded(layer, x, g, pads):
    """Asymmetric ("same" with an even kernel or a stride) padding: quantize, pad the quantized input with
    the layer's pad value, run the layer unpadded without its input quantizer, and chain the gradients back."""
    top, bottom, left, right = pads
    iq = getattr(layer, "input_quantizer", None)  # a float Conv2d has none, and pads with zeros
    xq, cx = (x, None) if iq is None else iq.forward(x, training=layer.training)
    xp = np.pad(xq, ((0, 0), (0, 0), (top, bottom), (left, right)),
                constant_values=getattr(layer, "pad_value", 0.0))
    if iq is not None:
        layer.input_quantizer = None
    layer.padding = (0, 0)
    try:
        out, cache = layer.forward(xp)
        if g is None:
            return out, None
        dxp = layer.backward(g, cache)
    finally:
        if iq is not None:
            layer.input_quantizer = iq
    dxq = dxp[:, :, top:top + x.shape[2], left:left + x.shape[3]]
    return out, (dxq if iq is None else iq.backward(dxq, cx))


def _check_input_dtypes(arrays, names):
    present = [(n, arrays[n]) for n in names if n in arrays]
    for n, a in present:
        if a.dtype not in (np.float32, np.float64):
            raise BundleError(f"{n}: expected dtype float32 or float64, got {a.dtype}")
    dtypes = {a.dtype for _, a in present}
    if len(dtypes) > 1:
        raise BundleError("the inputs must share one float dtype (refbnn computes in it): "
                          + ", ".join(f"{n} is {a.dtype}" for n, a in present))
    for n, a in present:
        if not np.isfinite(a).all():
            raise BundleError(f"{n}: contains NaN or Inf")


# ---------------------------------------------------------------------------------------------
# Quantizer mode (--quantizer NAME, or --method with --part weight/input)
# ---------------------------------------------------------------------------------------------

QUANTIZER_INPUTS = ("x", "grad_out")
QUANTIZER_OUTPUTS = ("out", "grad_x")


def _to_refbnn(a, layout, role):
    if layout != "nhwc" or role is None or a.ndim < 2:
        return a
    if role == "weight":
        return _kernel_to_refbnn(a) if a.ndim in (2, 4) else a
    return _to_nchw(a) if a.ndim == 4 else a


def _from_refbnn(a, layout, role):
    if layout != "nhwc" or role is None or a.ndim < 2:
        return a
    if role == "weight":
        return _kernel_from_refbnn(a) if a.ndim in (2, 4) else a
    return _to_nhwc(a) if a.ndim == 4 else a


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
    return quantizers[role], hooked, state, known | settings


def _single_quantizer(req: Request, role, ns: _Namespace):
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
        if req.convention is not None:
            return cls.from_convention(get_convention(req.convention), **params), known
        return get_quantizer(req.quantizer, **params), known
    except ValueError as exc:
        raise BundleError(str(exc)) from exc


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
    return results, info


# ---------------------------------------------------------------------------------------------
# Schedule mode (--schedule NAME)
# ---------------------------------------------------------------------------------------------

def _schedule_parameters(sched) -> tuple:
    """(the names a schedule's parameters may have, their defaults)."""
    if isinstance(sched, QuantizerSchedule):
        defaults = {**sched.params, **{a: sched.params[c] for a, c in sched.aliases.items()}}
        return list(sched.params) + list(sched.aliases), defaults
    params = [p for p in list(inspect.signature(sched).parameters.values())[2:]
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return [p.name for p in params], {p.name: p.default for p in params if p.default is not p.empty}


def _schedule_call_args(sched, name, arrays, ns: _Namespace):
    """The schedule's parameters the bundle (or --param) gives; (kwargs, every accepted name)."""
    names, defaults = _schedule_parameters(sched)
    kwargs = {}
    for n in names:
        if n in arrays:
            a = np.asarray(arrays[n])
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


def _schedule_epochs(arrays, ns: _Namespace):
    epoch = _need(arrays, "epoch", "(E,) or ()", " (the 0-based epoch indices to evaluate)")
    if epoch.dtype.kind not in "iuf" or not np.all(epoch == np.round(epoch)):
        raise BundleError(f"epoch: expected integer epoch indices, got dtype {epoch.dtype}")
    epochs = arrays.get("epochs")
    if epochs is None and not ns.has("epochs"):
        raise BundleError("the bundle lacks 'epochs' (a 0-d integer: the total number of epochs E)")
    return epoch, _int("epochs", _scalar("epochs", epochs) if epochs is not None else ns.take("epochs"))


def _run_schedule(req: Request, arrays, ns: _Namespace):
    sched = get_schedule(req.schedule)
    epoch, epochs = _schedule_epochs(arrays, ns)
    conv = get_convention(req.convention) if req.convention else None
    kwargs, param_names = _schedule_call_args(sched, req.schedule, arrays, ns)
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
        _expect_shape(arrays, n, np.shape(epoch), "(one value per entry of epoch)")
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


# ---------------------------------------------------------------------------------------------
# The public API
# ---------------------------------------------------------------------------------------------

def _split_bundle(data: dict):
    """(arrays, settings, metadata): metadata are the 0-d strings naming how the bundle was made."""
    arrays, settings, meta = {}, {}, {}
    for k, a in data.items():
        a = np.asarray(a)
        if k in META_KEYS:
            if a.dtype.kind != "U" or a.ndim:
                raise BundleError(f"{k}: expected a 0-d string (how the bundle was made), got {a.dtype} shape {a.shape}")
            meta[k] = str(a[()])
        elif k in LAYER_INPUTS or k in LAYER_OUTPUTS:
            arrays[k] = a
        else:
            settings[k] = a
    return arrays, settings, meta


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
    rtol = d_rtol if rtol is None else float(rtol)
    atol = d_atol if atol is None else float(atol)
    rows = [compare(k, results[k], arrays[k], rtol, atol) for k in expected]
    settings_out = {**req.describe(), **info, "params": req.params or None}
    return Report(rows, rtol, atol, settings_out, notes=_other_clock_notes(req, arrays, rows, rtol, atol))


# ---------------------------------------------------------------------------------------------
# Export: bundles computed by refbnn
# ---------------------------------------------------------------------------------------------

def _special_values(rng, shape, dtype, specials):
    """Standard normal values with exact specials (0, +-1, +-clip) sprinkled in: the points where
    conventions differ (sign(0), inclusive/exclusive clip) are exercised in every bundle."""
    a = rng.standard_normal(shape)
    mask = rng.random(shape) < 0.25
    a[mask] = rng.choice(np.array(specials, dtype=np.float64), size=int(mask.sum()))
    return a.astype(dtype)


def _specials(quantizers):
    vals = {0.0, 1.0, -1.0}
    for q in quantizers:
        if q is None:
            continue
        for v in q.config().values():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 10:
                vals |= {float(v), -float(v)}
    return sorted(vals)


def _save(path, arrays: dict):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


def _meta(req: Request):
    return {k: np.array(str(v)) for k, v in req.describe().items()}


def _parse_shape(v, name):
    if v is None or isinstance(v, tuple):
        return v
    if isinstance(v, str):
        try:
            return tuple(int(s) for s in v.replace("x", ",").split(",") if s.strip())
        except ValueError as exc:
            raise BundleError(f"{name}: expected comma-separated integers, got {v!r}") from exc
    return tuple(int(s) for s in v)


def export_bundles(directory, method=None, convention=None, part=None, layer=None, layout=None, params=None,
                   quantizer=None, input_quantizer=None, kernel_quantizer=None, schedule=None, padding=None,
                   seed=0, dtype="float64", x_shape=None, weight_shape=None, bias=True, bundle=None,
                   require_convention=False) -> list:
    """Write bundles computed by refbnn into ``directory``; returns their paths.

    Inputs come from ``bundle`` (a path or mapping holding the inputs; any expected outputs in it are
    replaced) or are drawn from ``seed``, with exact zeros and clip points sprinkled in so that the
    conventions (sign(0), inclusive clip, pad value) are exercised. ``method`` exports the layer and,
    unless ``part`` names one, each quantizer the method has (``-weight``/``-input`` files);
    ``schedule`` exports its values at ``epoch = 0..epochs-1`` (``params["epochs"]``, default 10).
    Each file records how it was made (``method``, ``convention``, ...), so that ``crosscheck`` of an
    exported file needs no options.
    """
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
        return [_export_schedule(directory, req, given)]

    paths = []

    def run_and_save(name, r: Request, inputs):
        arrays, settings, _ = _split_bundle(inputs)
        ns = _Namespace({k: _scalar(k, a) for k, a in settings.items()}, r.params)
        if r.mode == "quantizer" or r.part in ("weight", "input"):
            results, _ = _run_quantizer(r, arrays, ns, want_grads=True)
        else:
            results, _ = _run_layer(r, arrays, ns, want_grads=True)
        out = {**inputs, **{k: np.asarray(v) for k, v in results.items()}}
        if r.padding is not None and "padding" not in out:
            out["padding"] = np.array(r.padding)
        out.update({k: np.array("none" if v is None else v) for k, v in r.params.items()})
        out.update(_meta(r))
        paths.append(_save(os.path.join(directory, name), out))

    x_shape, weight_shape = _parse_shape(x_shape, "x_shape"), _parse_shape(weight_shape, "weight_shape")
    if req.mode == "quantizer":
        role = req.part if req.part in ("weight", "input") else None
        q, _ = _single_quantizer(req, role, _Namespace({}, {k: v for k, v in req.params.items() if k != "training"}))
        inputs = given or _random_part_inputs(req, rng, dtype, _specials([q]), x_shape, weight_shape)
        run_and_save(f"{req.quantizer}{'-' + req.convention if req.convention else ''}.npz", req, inputs)
        return paths
    (wq, iq), scale = _request_quantizers(req)
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
            inputs = given or _random_layer_inputs(r, rng, dtype, specials, x_shape, weight_shape, bias, scale)
            run_and_save(f"{stem}-{kind}-{r.layout}.npz", r, inputs)
        else:
            inputs = given or _random_part_inputs(r, rng, dtype, specials, x_shape if len(parts) == 1 else None,
                                                  weight_shape if p == "weight" else None)
            run_and_save(f"{stem}-{p}-{r.layout}.npz", r, inputs)
    return paths


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
    return _save(os.path.join(directory, f"schedule-{req.schedule}{'-' + req.convention if conv else ''}.npz"), b)


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


def _random_layer_inputs(req, rng, dtype, specials, x_shape, weight_shape, bias, scale=None):
    """Random inputs for a layer export; a shape not given is derived from the other one."""
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


def _random_part_inputs(req, rng, dtype, specials, x_shape, weight_shape):
    role = req.part if req.part in ("weight", "input") else None
    if x_shape is not None:
        shape = x_shape
    elif role == "weight" and weight_shape is not None:
        shape = weight_shape
    elif role == "weight":
        shape = (4, 3, 3, 3) if req.layout == "nchw" else (3, 3, 3, 4)
    else:
        shape = (2, 3, 5, 5) if req.layout == "nchw" or role is None else (2, 5, 5, 3)
    return {"x": _special_values(rng, shape, dtype, specials), "grad_out": rng.standard_normal(shape).astype(dtype)}
