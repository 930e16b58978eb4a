"""The request (what a bundle is checked against) and the routing of named values to the layer's
settings, the convention's fields, the method's fields and its quantizers' parameters and state."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..conventions import PRESETS, Convention, get_convention
from ..methods import METHOD_FIELDS, Method, get_method
from ..quantizers import QUANTIZERS, get_quantizer
from ..schedules import QuantizerSchedule
from .bundle import BundleError, _int, _Namespace, _no_effect
from .schedule import get_schedule

LAYERS = ("conv2d", "linear")
LAYOUTS = ("nchw", "nhwc")
PARTS = ("layer", "weight", "input")


QUANTIZER_PREFIXES = {"weight_quantizer": "weight", "kernel_quantizer": "weight", "input_quantizer": "input",
                      "weight": "weight", "input": "input"}
CONVENTION_FIELDS = tuple(f.name for f in dataclasses.fields(Convention) if f.name != "name")
# Method.with_params fields that do not change one layer's forward/backward (so a bundle may not set them):
# the alpha comes from the bundle, the activation and the latent clip are outside the layer.
_METHOD_FIELDS_NOT_LAYER = ("scale_init", "activation", "latent_clip")


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
        if r.mode == "quantizer":  # a quantizer for one part only (its class's ``part``) is checked as that part
            own = getattr(QUANTIZERS[r.quantizer], "part", None)
            if r.part is None:
                r.part = own
            elif own is not None and r.part != own:
                raise BundleError(f"--part {r.part}: quantizer {r.quantizer} quantizes {own}s only "
                                  f"(--part {own}, the default for it)")
        if self.padding is not None and (r.mode in ("schedule", "quantizer") or r.part in ("weight", "input")):
            what = "a schedule" if r.mode == "schedule" else "a quantizer" + (f" (--part {r.part})" if r.part else "")
            raise BundleError(f"--padding {self.padding!r}: padding is a setting of a layer check (--part layer with "
                              f"--method or --input-quantizer/--kernel-quantizer); this bundle is checked as {what}, "
                              f"which has no padding; remove --padding")
        return r

    def describe(self) -> dict:
        d = {k: getattr(self, k) for k in ("method", "quantizer", "input_quantizer", "kernel_quantizer", "schedule",
                                           "convention", "part", "layer", "layout")}
        return {k: v for k, v in d.items() if v is not None}


def _check_quantizer_name(name):
    """The catalogue's check (an unknown name lists the known ones)."""
    get_quantizer(name)



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



def _check_schedule_values(quantizers: dict, hooked: dict, state: dict, method: Method | None, what: str):
    """Every schedule value of the quantizers (their ``state()``: IR-Net's t and k, ReCU's tau, ...) must have
    been given: set by the epoch (``hooked``), by name (``state``: ``t`` or ``weight_quantizer.t``), or by the
    method's own constructor parameters. A quantizer's initial state equals one method's starting values
    (IR-Net's t = 0.1, k = 10), so a default used silently could hide a mismatch."""
    missing = []
    for role, q in quantizers.items():
        if q is None:
            continue
        given = set(hooked) | {k.partition(".")[2] for k in state if k.startswith(f"{role}_quantizer.")}
        if method is not None:
            given |= set(getattr(method, f"{role}_params"))
        missing += [(role, n) for n in q.state() if n not in given]
    if not missing:
        return
    names = list(dict.fromkeys(n for _, n in missing))
    roles = sorted({r for r, _ in missing if r in ("weight", "input")})
    who = f"the {' and '.join(roles)} quantizer of {what}" if roles else what
    example = " ".join(f"--param {n}=VALUE" for n in names)
    ways = f"give {', '.join(names)} in the bundle (0-d arrays) or as {example}"
    if method is not None and method.schedule is not None:
        ways += (f", or give epoch and epochs (the 0-based epoch of how many) so that method {method.name}'s "
                 f"schedule sets {'it' if len(names) == 1 else 'them'} at the convention's clock")
    raise BundleError(f"{', '.join(repr(n) for n in names)}: schedule value{'s' if len(names) > 1 else ''} of "
                      f"{who} not given, and refbnn uses no default for "
                      f"{'it' if len(names) == 1 else 'them'} (the quantizer's initial value could hide a mismatch); "
                      f"{ways}")


def _schedule_defaults(quantizers: dict, given) -> dict:
    """The schedule values (``state()``) of the quantizers that ``given`` (names, plain or prefixed) lacks, at
    the quantizers' current values: plain names where every quantizer holding one agrees, else
    ``weight_quantizer.NAME``/``input_quantizer.NAME``. An export writes them, so that its bundle says them."""
    said = {(None, n) for n in given} | {(QUANTIZER_PREFIXES[k.partition(".")[0]], k.partition(".")[2])
                                          for k in given if k.partition(".")[0] in QUANTIZER_PREFIXES}
    values: dict = {}
    for role, q in quantizers.items():
        if q is None:
            continue
        for n, v in q.state().items():
            if (None, n) not in said and (role, n) not in said:
                values.setdefault(n, {})[role] = v
    out = {}
    for n, per_role in values.items():
        if len(set(per_role.values())) == 1:
            out[n] = next(iter(per_role.values()))
        else:
            out.update({f"{role}_quantizer.{n}": v for role, v in per_role.items()})
    return out
