"""Schedules: pure functions of (epoch, epochs, parameters).

``epoch`` is the 0-based index of the epoch about to be trained and ``epochs`` the total E.

Learning rates: ``cosine_lr``, ``linear_lr``, ``step_lr``, ``constant_lr`` (below).

Quantizer schedules are functions of a progress value p in [0, 1] that return the quantizer state
they set (``{"t": .., "k": ..}``, ``{"tau": ..}``, ...); the training loop evaluates them once per
epoch, before the epoch, and p comes from the convention's clock (``schedule_progress``):

- ``"epoch"`` (the official IR-Net and ReCU code): p = i / E for the 0-based epoch i, so p runs over
  0, 1/E, ..., (E-1)/E and the end value is never reached (ReCU, E = 600: tau(599) = 0.98963, not 0.99);
- ``"progress"`` (the papers' formulas, tau_I = tau_e): p = i / (E - 1), reaching 1 at the last epoch
  (p = 0 when E = 1).

Each quantizer schedule has one name, its key in ``QUANTIZER_SCHEDULES`` (also its ``.name``); the
Python object and the formula's function are spelled after it:

| name          | object / formula function       | formula                                                     | defaults               |
|---------------|---------------------------------|-------------------------------------------------------------|------------------------|
| ``irnet_tk``  | ``EDE_SCHEDULE`` / ``ede_state``  | t = T_min 10^(p log10(T_max / T_min)), k = max(1/t, 1)      | T_min 0.1, T_max 10    |
|               |                                 | (IR-Net Eq. 18; htqin/IR-Net trainer.py L130-143)           | (code R-20 1w1a: 1e-3) |
| ``recu_tau``  | ``RECU_SCHEDULE`` / ``recu_state`` | tau = A exp(p) + B, A = (tau_e - tau_s)/(exp(1) - 1),     | tau_s 0.85, tau_e 0.99 |
|               |                                 | B = tau_s - A (ReCU Eq. 24; z-hXu/ReCU cifar/main.py L160-167) |                     |
| ``bnnpp_beta``| ``BETA_SCHEDULE`` / ``beta_state`` | beta = beta_s (beta_e / beta_s)^p  [reconstructed, BNN++] | refbnn's choice        |
| ``pc_mu``     | ``MU_SCHEDULE`` / ``mu_state``    | mu = mu_s + (mu_e - mu_s) p  [reconstructed, ProxConnect]   | refbnn's choice        |
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping


def _check(epoch, epochs):
    if epochs < 1:
        raise ValueError(f"epochs: expected a positive count, got {epochs}")
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch: expected a 0-based index in [0, {epochs}), got {epoch}")


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """Linear warm-up multiplier (e + 1) / W for e < W, else 1 (ReCU's code: lr * (e + 1) / 5)."""
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs: expected >= 0, got {warmup_epochs}")
    return (epoch + 1) / warmup_epochs if epoch < warmup_epochs else 1.0


def cosine_lr(epoch, epochs, base_lr, min_lr=0.0, warmup_epochs=0):
    """Cosine annealing after warm-up: min + (base - min)(1 + cos(pi (e - W) / (E - W))) / 2."""
    _check(epoch, epochs)
    if epoch < warmup_epochs:
        return base_lr * warmup_factor(epoch, warmup_epochs)
    span = max(epochs - warmup_epochs, 1)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))


def linear_lr(epoch, epochs, base_lr, min_lr=0.0, warmup_epochs=0):
    """Linear decay after warm-up: base - (base - min)(e - W) / (E - W)."""
    _check(epoch, epochs)
    if epoch < warmup_epochs:
        return base_lr * warmup_factor(epoch, warmup_epochs)
    span = max(epochs - warmup_epochs, 1)
    return base_lr - (base_lr - min_lr) * (epoch - warmup_epochs) / span


def step_lr(epoch, epochs, base_lr, milestones=(), gamma=0.1, warmup_epochs=0):
    """base * gamma^(number of milestones <= e), after warm-up."""
    _check(epoch, epochs)
    if epoch < warmup_epochs:
        return base_lr * warmup_factor(epoch, warmup_epochs)
    return base_lr * gamma ** sum(1 for m in milestones if epoch >= m)


def constant_lr(epoch, epochs, base_lr, warmup_epochs=0):
    _check(epoch, epochs)
    return base_lr * warmup_factor(epoch, warmup_epochs)


LR_SCHEDULES = {"cosine": cosine_lr, "linear": linear_lr, "step": step_lr, "constant": constant_lr}


# -- quantizer schedules -------------------------------------------------------------------------------
CLOCKS = ("epoch", "progress")


def schedule_progress(epoch: int, epochs: int, clock: str = "epoch") -> float:
    """The progress p in [0, 1] of epoch ``epoch`` (0-based) of ``epochs``: e / E ("epoch") or
    e / (E - 1) ("progress"; 0 when E = 1)."""
    _check(epoch, epochs)
    if clock == "epoch":
        return epoch / epochs
    if clock == "progress":
        return epoch / (epochs - 1) if epochs > 1 else 0.0
    raise ValueError(f"schedule clock: expected one of {CLOCKS}, got {clock!r}")


def _check_progress(p):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"progress: expected a value in [0, 1], got {p}")


def ede_state(progress: float, T_min: float = 0.1, T_max: float = 10.0) -> dict:
    """IR-Net's EDE schedule (Eq. 18): t = T_min 10^(p log10(T_max / T_min)), k = max(1/t, 1).

    Stage 1 (t < 1, k = 1/t): the slope at 0 is k t = 1 and the saturation 1/t shrinks to 1; stage 2
    (t >= 1, k = 1): the slope t grows to T_max. The switch (t = 1) is at p = log(1/T_min)/log(T_max/T_min):
    0.5 for the paper's T_min = 0.1, 0.75 for the ResNet-20 1W/1A code's T_min = 1e-3."""
    _check_progress(progress)
    if not T_min > 0:
        raise ValueError(f"T_min: expected > 0, got {T_min}")
    if not T_max >= T_min:
        raise ValueError(f"T_max: expected >= T_min = {T_min}, got {T_max}")
    t = 10.0 ** (math.log10(T_min) + (math.log10(T_max) - math.log10(T_min)) * progress)
    return {"t": t, "k": 1.0 / t if t < 1.0 else 1.0}


def recu_state(progress: float, tau_start: float = 0.85, tau_end: float = 0.99) -> dict:
    """ReCU's adaptive exponential scheduler (Eq. 24): tau = A e^p + B, A = (tau_e - tau_s)/(e - 1),
    B = tau_s - A; tau(0) = tau_s, tau(1) = tau_e, increasing and convex for tau_e > tau_s."""
    _check_progress(progress)
    for name, v in (("tau_start", tau_start), ("tau_end", tau_end)):
        if not 0.5 < v <= 1.0:
            raise ValueError(f"{name}: expected a value in (0.5, 1], got {v}")
    a = (tau_end - tau_start) / (math.e - 1.0)
    return {"tau": min(a * math.exp(progress) + (tau_start - a), 1.0)}


def beta_state(progress: float, beta_start: float = 5.0, beta_end: float = 100.0) -> dict:
    """[reconstructed] The sign-Swish beta of BNN++ grown geometrically: beta = beta_s (beta_e / beta_s)^p.
    The PC++ paper's beta/mu schedule was not available (docs/methods/proxconnect.md); the parameters are explicit."""
    _check_progress(progress)
    if not (beta_start > 0 and beta_end > 0):
        raise ValueError(f"beta_start, beta_end: expected positive values, got {beta_start}, {beta_end}")
    return {"beta": beta_start * (beta_end / beta_start) ** progress}


def mu_state(progress: float, mu_start: float = 0.0, mu_end: float = 1.0) -> dict:
    """[reconstructed] The ProxConnect prox strength grown linearly: mu = mu_s + (mu_e - mu_s) p (PARQ's
    AProx grows it with the aggregate step size; Dockhorn et al.'s schedule was not available)."""
    _check_progress(progress)
    if not (mu_start >= 0 and mu_end >= 0):
        raise ValueError(f"mu_start, mu_end: expected values >= 0, got {mu_start}, {mu_end}")
    return {"mu": mu_start + (mu_end - mu_start) * progress}


@dataclass(frozen=True)
class QuantizerSchedule:
    """A quantizer schedule with its parameters: ``values(progress, **params) -> {state: value}``.

    ``aliases`` maps other names of a parameter to the schedule's own (the official code's option
    names: ReCU's ``--tau_min``/``--tau_max`` are ``tau_start``/``tau_end``); ``with_params`` accepts both."""

    name: str
    values: Callable[..., dict]
    params: Mapping = field(default_factory=dict)
    aliases: Mapping = field(default_factory=dict)

    def canonical(self, params: Mapping) -> dict:
        """``params`` with aliases replaced by the schedule's own names (both for one parameter is an error)."""
        out = {}
        for k, v in params.items():
            name = self.aliases.get(k, k)
            if name in out:
                raise ValueError(f"schedule {self.name}: {name} is given twice (as {name} and as its alias)")
            out[name] = v
        return out

    def accepts(self, name: str) -> bool:
        return name in self.params or name in self.aliases

    def with_params(self, **params) -> "QuantizerSchedule":
        params = self.canonical(params)
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ValueError(f"schedule {self.name}: unknown parameter(s) {unknown}; accepted: "
                             f"{sorted(self.params) + sorted(self.aliases)}")
        new = {**self.params, **params}
        self.values(0.0, **new)  # validate now, not at the first epoch
        return QuantizerSchedule(self.name, self.values, new, self.aliases)

    def at(self, epoch: int, epochs: int, clock: str = "epoch") -> dict:
        """The state values for epoch ``epoch`` of ``epochs`` under ``clock``."""
        return self.values(schedule_progress(epoch, epochs, clock), **self.params)


EDE_SCHEDULE = QuantizerSchedule("irnet_tk", ede_state, {"T_min": 0.1, "T_max": 10.0})
RECU_SCHEDULE = QuantizerSchedule("recu_tau", recu_state, {"tau_start": 0.85, "tau_end": 0.99},
                                  aliases={"tau_min": "tau_start", "tau_max": "tau_end"})  # cifar/utils/options.py
BETA_SCHEDULE = QuantizerSchedule("bnnpp_beta", beta_state, {"beta_start": 5.0, "beta_end": 100.0})
MU_SCHEDULE = QuantizerSchedule("pc_mu", mu_state, {"mu_start": 0.0, "mu_end": 1.0})

# The quantizer schedules by name (``refbnn crosscheck --schedule NAME``; the methods use them).
QUANTIZER_SCHEDULES = {"irnet_tk": EDE_SCHEDULE, "recu_tau": RECU_SCHEDULE, "bnnpp_beta": BETA_SCHEDULE,
                       "pc_mu": MU_SCHEDULE}
