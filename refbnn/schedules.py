"""Schedules: pure functions of (epoch, epochs, parameters).

``epoch`` is the 0-based index of the epoch about to be trained and ``epochs`` the total E; the
official codes evaluate schedules once per epoch this way, so progress ``epoch / epochs`` runs over
0, 1/E, ..., (E-1)/E and never reaches 1.
"""
from __future__ import annotations

import math


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
