"""The quantizer interface.

A quantizer is a forward/backward pair on one array:

    y, cache = q.forward(x, training=True)   # the quantized values used by the network
    dx = q.backward(dy, cache)               # the gradient estimator (the "pseudo-gradient")

and ``q.surrogate(x, ref=None, training=True)`` is the differentiable function whose derivative
the backward applies: identity for the identity straight-through estimator, clip(x, -1, 1) for the
clipped one, ApproxSign's polynomial, k tanh(t x) for IR-Net's EDE, ... Quantities that the
estimator holds constant (a stop-gradient: a detached scale, ReCU's clamp threshold) are evaluated
at ``ref`` (default: ``x`` itself), so that d surrogate(x, ref) / dx at x = ref is exactly what
``backward`` computes at ``ref``. The tests check every backward against finite differences of its
surrogate, element-wise and inside whole networks (tests/helpers.py: StraightThroughProbe).

``training`` selects a quantizer's training-time form where it has one (ReCU's code divides
activations by their per-sample std only in training mode; stochastic BinaryConnect samples only
in training mode); the binary layers pass their own ``training`` flag.

Attributes:
- ``name``: the registry name (``refbnn.quantizers.QUANTIZERS``);
- ``binary``: every output value is exactly -1 or +1 (then the packed kernels may compute a
  layer's product); scaled outputs (alpha * sign), {0, 1} outputs or sign(0) = 0 are not binary;
- ``precision``: the bit width Larq would report (used by Bop's routing: precision 1 = binary);
- ``part``: the one part of a layer the quantizer is for, where it is for one only: ``"weight"`` (a
  kernel quantizer with per-output-channel or layer-wide statistics: ``magnitude_aware_sign``,
  ``xnor_weight``, ``dorefa_sign``, ``libra_pb``, ``recu_weight``), ``"input"`` (per-sample statistics:
  ``xnor_act``, ``recu_act``), ``None`` for any (element-wise quantizers); ``refbnn crosscheck
  --quantizer`` defaults ``--part`` to it;
- ``needs_rng``: the quantizer draws random numbers (stochastic BinaryConnect); the training loop
  hands it a per-epoch generator through ``set_rng`` so that a resumed run is bit-exact.

Input: every ``forward`` (the subclass's own, wrapped once by ``Quantizer.__init_subclass__``) first
checks its input: a float32/float64 array in native byte order (else ``TypeError``) with no NaN
(else ``ValueError`` "<name>: x contains NaN at index (...)"), and no +-Inf unless the quantizer's
formulas are defined there (``accepts_inf``: sign-type outputs with estimators that vanish at
+-Inf). A non-contiguous input is quantized as its C-contiguous copy, so that the reductions
(per-channel means, stds) add in the same order and the result is bit-identical. The check costs
one ``x.sum()`` pass for finite input (refbnn.checks.first_nonfinite).

Quantizers hold no learnable parameters. Values that schedules change once per epoch (ReCU's tau,
IR-Net's t and k, ...) are plain attributes listed by ``state()`` and set by ``set_state()``
(validated), so checkpoints save and restore them. ``config()`` returns the full constructor
arguments: ``type(q)(**q.config())`` rebuilds an equal quantizer.

Conventions (``refbnn.conventions``): ``convention_kwargs(convention)`` maps a convention to the
constructor arguments it decides; ``from_convention(convention, **params)`` builds the quantizer
with explicit ``params`` overriding the convention.

Axes: quantizers with per-output-channel statistics treat axis 0 as the output channel (weights
are OIHW or (out, in)); activation quantizers with per-sample statistics treat axis 0 as the batch.
"""
from __future__ import annotations

import functools
import inspect
import math

from ..checks import FLOAT_DTYPES, array_module, check_all_finite, first_nonfinite, named_errors


class Quantizer:
    name = "quantizer"
    precision = 32
    binary = False
    part = None
    needs_rng = False
    accepts_inf = False  # True where sign-type formulas are defined at +-Inf (see the module docstring)

    def __init_subclass__(cls, **kwargs):
        """Wrap the subclass's own ``forward`` with ``check_input``: one check for every quantizer."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("forward")
        if own is None or getattr(own, "checks_input", False):
            return

        @functools.wraps(own)
        def forward(self, x, training=True):
            x = self.check_input(x)
            with named_errors(self.name):  # name the quantizer in errors of shared helpers (also deferred ones)
                return own(self, x, training)

        forward.checks_input = True
        cls.forward = forward

    def check_input(self, x, name="x"):
        """``x`` as the forward pass reads it: a native float32/float64 array without NaN (and without
        +-Inf unless ``accepts_inf``), C-contiguous (a copy if it was not). Errors name the quantizer."""
        if not hasattr(x, "dtype") or not hasattr(x, "shape"):
            raise TypeError(f"{self.name}: {name}: expected a NumPy or CuPy array, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{self.name}: {name}: expected dtype float32 or float64 (native byte order), got "
                            f"{x.dtype.str} ({x.dtype})")
        def fail():
            found = first_nonfinite(x)
            if found is None:
                return
            kind, idx = found
            if kind != "NaN" and self.accepts_inf:
                xp = array_module(x)
                nan = xp.isnan(x)
                if not bool(nan.any()):
                    return
                kind = "NaN"
                idx = tuple(int(i) for i in xp.unravel_index(int(xp.argmax(nan.reshape(-1))), x.shape))
            allowed = "no NaN" if self.accepts_inf else "finite values"
            raise ValueError(f"{self.name}: {name} contains {kind} at index {idx}; expected {allowed}")

        check_all_finite(x, fail)
        if not x.flags.c_contiguous:
            x = array_module(x).ascontiguousarray(x)
        return x

    def forward(self, x, training=True):
        raise NotImplementedError

    def backward(self, dy, cache):
        raise NotImplementedError

    def surrogate(self, x, ref=None, training=True):
        raise NotImplementedError

    # -- schedule-controlled values ------------------------------------------------------------
    def state(self) -> dict:
        """Schedule-controlled values, saved in checkpoints."""
        return {}

    def check_state(self, name: str, value) -> float:
        """Validate one state value; subclasses raise ValueError naming the expectation."""
        return float(value)

    def set_state(self, **values):
        unknown = set(values) - set(self.state())
        if unknown:
            raise ValueError(f"{self.name}: unknown state {sorted(unknown)}; expected {sorted(self.state())}")
        checked = {k: self.check_state(k, v) for k, v in values.items()}
        for k, v in checked.items():
            setattr(self, k, v)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def parameter_names(cls) -> list[str]:
        """The constructor's keyword arguments."""
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def config(self) -> dict:
        """The full constructor arguments (current values of schedule-controlled ones)."""
        return {p: getattr(self, p) for p in self.parameter_names()}

    @classmethod
    def convention_kwargs(cls, convention) -> dict:
        """The constructor arguments a convention decides (none by default)."""
        return {}

    @classmethod
    def from_convention(cls, convention, **params):
        accepted = cls.parameter_names()
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ValueError(f"{cls.name}: unknown parameter(s) {unknown}; accepted: {', '.join(accepted)}")
        return cls(**{**cls.convention_kwargs(convention), **params})

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


# -- parameter validation shared by the quantizers ---------------------------------------------
def check_sign_zero(v):
    if v not in (1.0, 0.0, -1.0):
        raise ValueError(f"sign_zero: expected 1.0, 0.0 or -1.0, got {v!r}")
    return float(v)


def check_positive(name, v, allow_none=False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > 0:
        raise ValueError(f"{name}: expected a positive finite number{' or None' if allow_none else ''}, got {v!r}")
    return float(v)


def check_nonnegative(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
    return float(v)


def check_choice(name, v, choices):
    if v not in choices:
        hint = ""
        if v is None and "none" in choices:  # --param NAME=none and a bundle's "none" read as None
            hint = (f" (the string 'none' is written in quotes: --param {name}=\"'none'\", or the 0-d string "
                    f"\"'none'\" in a bundle; unquoted none means None)")
        raise ValueError(f"{name}: expected one of {list(choices)}, got {v!r}{hint}")
    return v


def check_bool(name, v):
    if not isinstance(v, bool):
        raise ValueError(f"{name}: expected True or False, got {v!r}")
    return v


def check_ddof(v):
    if v not in (0, 1) or isinstance(v, bool):
        raise ValueError(f"std_ddof: expected 0 or 1, got {v!r}")
    return int(v)
