"""The comparison: one :class:`TensorResult` per expected tensor, gathered in a :class:`Report`."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import numpy as np

from .bundle import BundleError

# (rtol, atol) per computation dtype: float64 about 1e-10 relative, float32 about 1e-5.
DEFAULT_TOLERANCES = {"float64": (1e-10, 1e-12), "float32": (1e-5, 1e-6)}


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
    readings: list = field(default_factory=list)  # how arrays held as a framework holds them were read
    # ``crosscheck(..., diagnose=True)`` on a failing bundle: a :class:`~refbnn.crosscheck.diagnose.Diagnosis`
    # (which nearby choices make the differing tensors pass); None otherwise
    diagnosis: object = None

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
                "tensors": [r.as_dict() for r in self.rows], "notes": list(self.notes), "readings": list(self.readings),
                "diagnosis": None if self.diagnosis is None else self.diagnosis.as_dict()}

    def to_json(self, indent=2) -> str:
        return json.dumps(self.as_dict(), indent=indent, default=str)

    def table(self) -> str:
        flat = {k: v for k, v in self.settings.items() if not isinstance(v, dict) and v is not None}
        lines = ["refbnn crosscheck: " + ", ".join(f"{k}={v}" for k, v in flat.items())]
        for k in ("quantizers", "schedule_values", "state", "parameters", "params"):
            if self.settings.get(k):
                lines.append(f"  {k}: " + ", ".join(f"{n}={v}" for n, v in self.settings[k].items()))
        lines += [f"  read: {r}" for r in self.readings]
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
        if self.diagnosis is not None:
            lines += self.diagnosis.lines()
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



