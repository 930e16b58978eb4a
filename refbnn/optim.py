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
Bop (Larq):            m <- m + gamma (g - m);  w <- lsign(-tsign(w m - threshold) w)
                       (flip w when w m > threshold; latent-free: w stays +-1)

``CaseOptimizer`` routes each parameter to the optimizer whose predicate claims it (Larq's
CaseOptimizer): ``build_bop_optimizer`` sends the weights of binary layers (weight quantizer of
precision 1, Larq's ``Bop.is_binary_variable``) to Bop and everything else to Adam.
"""
from __future__ import annotations

import numpy as np

from .checks import array_module
from .device import device_module, move


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
        params = {f"{name}.{slot}": module.params[key] for _, name, module, key in self._all() for slot in self.slots}
        self.state = {k: move(v, array_module(params[k])).copy() for k, v in state.items()}

    def to(self, device):
        """Move the optimizer's state (momenta, moments) to ``device`` (as ``Module.to``); returns self."""
        xp = device_module(device)
        self.state = {k: move(v, xp) for k, v in self.state.items()}
        return self

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


class Bop(Optimizer):
    """Bop, the latent-free binary optimizer (Helwegen et al., NeurIPS 2019), as Larq defines it
    (larq/optimizers.py ``Bop._resource_apply_dense``):

        m <- m + gamma (g - m)                              (an exponential moving average of gradients)
        w <- lsign(-tsign(w m - threshold) w)               tsign = tf.sign (tsign(0) = 0),
                                                            lsign = larq.math.sign (lsign(0) = +1)

    i.e. w becomes -sign(w) (a flip) where w m > threshold and sign(w) where w m < threshold; Larq's two
    signs make w = +1 where w m == threshold exactly, and w = +1 for w = 0. The weights are +-1 after the
    first step whatever their initial values. There is no learning rate (``lr`` is ignored) and no
    weight decay. Parameters: threshold=1e-8, gamma=1e-4 (Larq's defaults; gamma in (0, 1], threshold >= 0).
    """

    slots = ("m",)

    def __init__(self, params, threshold=1e-8, gamma=1e-4):
        super().__init__(params, lr=0.0)
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma: expected a value in (0, 1], got {gamma}")
        if not threshold >= 0:
            raise ValueError(f"threshold: expected >= 0, got {threshold}")
        self.threshold, self.gamma = threshold, gamma

    def _update(self, g, name, p, grad, lr):
        xp = array_module(p)
        m = self.state.setdefault(f"{name}.m", xp.zeros_like(p))
        m += self.gamma * (grad - m)
        inner = xp.sign(p * m - self.threshold)
        p[...] = xp.where(-inner * p >= 0, 1.0, -1.0)


def is_binary_weight(name, module, key) -> bool:
    """The weight of a binary layer whose weight quantizer has precision 1 (Larq's Bop.is_binary_variable)."""
    q = getattr(module, "weight_quantizer", None)
    return key == "weight" and q is not None and getattr(q, "precision", 32) == 1


class CaseOptimizer:
    """Routes each parameter to the optimizer whose predicate claims it (Larq's ``CaseOptimizer``).

    ``pairs``: ``(predicate, make)`` with ``predicate(name, module, key) -> bool`` and ``make(groups) ->
    Optimizer``; ``default``: ``make`` for the unclaimed parameters. Parameter groups keep their settings
    (weight decay, ...). As in Larq: a parameter claimed by more than one predicate, or a predicate that
    claims nothing, raises ValueError; without a default, unclaimed parameters are not trained (a warning).
    ``lr`` is forwarded to every optimizer (Bop ignores it); state dicts are namespaced by position.
    """

    def __init__(self, params, *pairs, default=None):
        if hasattr(params, "named_parameters"):
            params = [{"params": list(params.named_parameters())}]
        buckets = [[] for _ in range(len(pairs) + 1)]
        for group in params:
            split = [[] for _ in buckets]
            for triple in group["params"]:
                claims = [i for i, (pred, _) in enumerate(pairs) if pred(*triple)]
                if len(claims) > 1:
                    raise ValueError(f"parameter {triple[0]!r} is claimed by more than one optimizer")
                split[claims[0] if claims else len(pairs)].append(triple)
            for i, triples in enumerate(split):
                if triples:
                    buckets[i].append({**group, "params": triples})
        for i, (pred, _) in enumerate(pairs):
            if not buckets[i]:
                raise ValueError(f"optimizer {i} (predicate {getattr(pred, '__name__', pred)}) claimed no parameters")
        self.optimizers = [make(buckets[i]) for i, (_, make) in enumerate(pairs)]
        if buckets[-1]:
            if default is None:
                import warnings  # noqa: PLC0415

                names = [n for g in buckets[-1] for n, _, _ in g["params"]]
                warnings.warn(f"CaseOptimizer: no default optimizer; not training {names[:5]}", stacklevel=2)
            else:
                self.optimizers.append(default(buckets[-1]))
        self.steps = 0

    @property
    def lr(self):
        return next((o.lr for o in self.optimizers if not isinstance(o, Bop)), 0.0)

    @lr.setter
    def lr(self, value):
        for o in self.optimizers:
            if not isinstance(o, Bop):
                o.lr = value

    def step(self):
        self.steps += 1
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict:
        out = {f"{i}/{k}": v for i, o in enumerate(self.optimizers) for k, v in o.state_dict().items()}
        out["__steps__"] = np.asarray(self.steps)
        return out

    def load_state_dict(self, state: dict):
        state = dict(state)
        self.steps = int(state.pop("__steps__"))
        for i, o in enumerate(self.optimizers):
            prefix = f"{i}/"
            o.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        unknown = [k for k in state if k.split("/", 1)[0] not in {str(i) for i in range(len(self.optimizers))}]
        if unknown:
            raise ValueError(f"optimizer state does not match the parameters: unexpected {sorted(unknown)[:5]}")

    def to(self, device):
        for o in self.optimizers:
            o.to(device)
        return self


def build_bop_optimizer(groups, lr, threshold=1e-8, gamma=1e-4, default="adam", **default_kwargs):
    """Larq's recipe: Bop for the binary layers' weights (``is_binary_weight``), ``default`` (Adam) for the rest."""
    opt_cls = OPTIMIZERS[default]
    return CaseOptimizer(groups, (is_binary_weight, lambda g: Bop(g, threshold=threshold, gamma=gamma)),
                         default=lambda g: opt_cls(g, lr=lr, **default_kwargs))


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
# names accepted by the training loop: the plain optimizers plus Bop routed with CaseOptimizer
OPTIMIZER_NAMES = (*OPTIMIZERS, "bop")


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
