"""Optimizers and the latent-weight clip constraint, explicit about their state.

An optimizer holds a list of parameter groups; each group is a dict with ``params``, a list of
(name, module, key) triples as given by ``Module.named_parameters()``, and per-group settings
(``weight_decay``; ``lr_scale``). ``step()`` reads ``module.grads[key]`` and updates
``module.params[key]`` in place; ``lr`` is a plain attribute that the training loop sets once per
epoch from a schedule.

SGD (PyTorch's form):  g <- g + wd p;  v <- mu v + g;  step = g + mu v (Nesterov) or v;  p <- p - lr step
Adam:                  g <- g + wd p (L2; AdamW instead decays p <- p (1 - lr wd));
                       m <- b1 m + (1 - b1) g;  s <- b2 s + (1 - b2) g^2;
                       p <- p - lr (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)
"""
from __future__ import annotations

import numpy as np

from .checks import array_module


def param_groups(model, weight_decay=0.0, no_decay=lambda name, module, key: False):
    """Split a model's parameters into a decayed group and a group without weight decay."""
    decay, plain = [], []
    for triple in model.named_parameters():
        (plain if no_decay(*triple) else decay).append(triple)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return groups


def no_decay_bn_and_bias(name, module, key):
    """The usual exclusion: biases and batch-norm/PReLU-type per-channel parameters."""
    return key in ("bias", "gamma", "beta", "zeta") or type(module).__name__ in ("PReLU", "RPReLU")


class Optimizer:
    def __init__(self, params, lr, weight_decay=0.0):
        if lr < 0:
            raise ValueError(f"lr: expected >= 0, got {lr}")
        if hasattr(params, "named_parameters"):
            params = [{"params": list(params.named_parameters())}]
        self.groups = []
        for g in params:
            if "params" not in g:
                raise ValueError("each parameter group needs a 'params' list of (name, module, key)")
            group = {"weight_decay": weight_decay, "lr_scale": 1.0, **g}
            if group["weight_decay"] < 0:
                raise ValueError(f"weight_decay: expected >= 0, got {group['weight_decay']}")
            self.groups.append(group)
        names = [n for g in self.groups for n, _, _ in g["params"]]
        if len(names) != len(set(names)):
            raise ValueError("a parameter appears in more than one group")
        self.lr = lr
        self.state: dict[str, np.ndarray] = {}
        self.steps = 0

    def _each(self):
        for g in self.groups:
            for name, module, key in g["params"]:
                grad = module.grads.get(key)
                if grad is not None:
                    yield g, name, module.params[key], grad

    def step(self):
        self.steps += 1
        for g, name, p, grad in self._each():
            self._update(g, name, p, grad, self.lr * g["lr_scale"])

    def state_dict(self) -> dict:
        out = {f"{k}": v for k, v in self.state.items()}
        out["__steps__"] = np.asarray(self.steps)
        return out

    def load_state_dict(self, state: dict):
        state = dict(state)
        self.steps = int(state.pop("__steps__"))
        known = {f"{name}.{slot}" for _, name, _, _ in self._all() for slot in self.slots}
        unknown = set(state) - known
        if unknown:
            raise ValueError(f"optimizer state does not match the parameters: unexpected {sorted(unknown)[:5]}")
        self.state = {k: v.copy() for k, v in state.items()}

    def _all(self):
        for g in self.groups:
            for name, module, key in g["params"]:
                yield g, name, module, key


class SGD(Optimizer):
    slots = ("momentum",)

    def __init__(self, params, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = momentum, nesterov

    def _update(self, g, name, p, grad, lr):
        if g["weight_decay"]:
            grad = grad + g["weight_decay"] * p
        if self.momentum:
            key = f"{name}.momentum"
            buf = self.state.get(key)
            if buf is None:
                buf = self.state[key] = grad.copy()
            else:
                buf *= self.momentum
                buf += grad
            grad = grad + self.momentum * buf if self.nesterov else buf
        p -= lr * grad


class Adam(Optimizer):
    slots = ("m", "v")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
        super().__init__(params, lr, weight_decay)
        self.betas, self.eps, self.decoupled = betas, eps, decoupled

    def step(self):
        self.steps += 1
        b1, b2 = self.betas
        self._c1, self._c2 = 1 - b1 ** self.steps, 1 - b2 ** self.steps
        for g, name, p, grad in self._each():
            self._update(g, name, p, grad, self.lr * g["lr_scale"])

    def _update(self, g, name, p, grad, lr):
        xp = array_module(p)
        b1, b2 = self.betas
        wd = g["weight_decay"]
        if wd and self.decoupled:
            p *= 1 - lr * wd
        elif wd:
            grad = grad + wd * p
        m = self.state.setdefault(f"{name}.m", xp.zeros_like(p))
        v = self.state.setdefault(f"{name}.v", xp.zeros_like(p))
        m *= b1
        m += (1 - b1) * grad
        v *= b2
        v += (1 - b2) * grad * grad
        p -= (lr * (m / self._c1) / (xp.sqrt(v / self._c2) + self.eps)).astype(p.dtype, copy=False)


class AdamW(Adam):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled=True)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


class WeightClip:
    """BinaryConnect's constraint: after every step clip the latent weights of binary layers to
    [-clip_value, clip_value] (Larq's ``weight_clip``)."""

    def __init__(self, clip_value=1.0):
        if not clip_value > 0:
            raise ValueError(f"clip_value: expected a positive number, got {clip_value}")
        self.clip_value = clip_value

    def apply(self, model):
        for _, m in model.modules():
            if hasattr(m, "weight_quantizer") and m.weight_quantizer is not None:
                w = m.params["weight"]
                array_module(w).clip(w, -self.clip_value, self.clip_value, out=w)
