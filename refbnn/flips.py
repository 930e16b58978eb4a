"""Flip ratios of the binary weights: how many weight signs an optimizer step changes, per layer.

Definition (the idea of Larq's ``larq.metrics.FlipRatio``, larq/larq, larq/metrics.py: keep the
previous quantized kernel, as int8 by default, and average the share of changed values over the
updates): at each optimizer step, the flip ratio of a layer is the share of its binary weights whose
sign differs from the previous step's,

    r_step = #{i : s_i(after the step) != s_i(before the step)} / n,

and a layer's flip ratio of an epoch is the mean of r_step over the epoch's steps (the first step
compares with the weights as the epoch starts; Larq's metric has no previous kernel at its first
update and skips it). The sign s_i is the sign of the weight quantizer's eval-mode output (the
weights the network uses at inference: ReCU's clamped and standardized weights, IR-Net's Libra-PB
weights, ...; sign(0) = 0 counts as a sign of its own), stored as int8. A flip ratio near 0 means
the binary network has stopped changing, a large one that the weights oscillate.

Tail and body. ReCU (Xu et al. 2021, arXiv 2103.12369, Sec. 4.1) argues that the latent weights in
the tails of their distribution, far from zero, rarely change sign and so stop taking part in
training ("dead weights"); its rectified clamp unit pulls them back to the clamp point. To measure
this for every method alike, the tail of a layer is fixed at the start of each epoch from the
latent weights W (axis 0: output channel):

    w1    = (W - mean_o W) / std_o W            (per output channel o, population std; 0 where std_o = 0)
    b     = mean |w1|                            (over the layer: the maximum-likelihood Laplace scale)
    Q     = -b ln(2 - 2 tau), tau = 0.99         (the tau-quantile of La(0, b), ReCU Eq. 10-11, at ReCU's
                                                  end value tau = 0.99; refbnn.quantizers.recu.laplace_quantile)
    tail  = {i : |w1_i| > Q}

(for Laplace-distributed weights the tail holds 2 - 2 tau = 2 % of them, ReCU Eq. 12). The tail and
body flip ratios are the flip ratios above restricted to the tail and to the other weights, and
``tail_share`` is the tail's share of the layer. A flip ratio of an empty set is ``None``.

Cost: one eval-mode weight-quantizer forward per binary layer and step (weights only, no
activations), an int8 sign array per layer, and the tail as an index array.
"""
from __future__ import annotations

import numpy as np

from .checks import array_module, deferred_checks, read_scalars, to_host
from .device import move
from .models import binary_layers
from .quantizers.recu import laplace_quantile

TAIL_TAU = 0.99  # ReCU's end value of tau (refbnn.schedules.RECU_SCHEDULE: 0.85 -> 0.99), the same for every method


def weight_signs(layer) -> np.ndarray:
    """sign of the layer's weight quantizer output in eval mode, as int8 (-1, 0, +1)."""
    wq, _ = layer.weight_quantizer.forward(layer.params["weight"], training=False)
    return (wq > 0).view(np.int8) - (wq < 0).view(np.int8)  # np.sign(wq).astype(int8) in one int8 pass


def tail_mask(weight, tau: float = TAIL_TAU) -> np.ndarray:
    """The tail of a latent weight array (see the module docstring): ``|w1| > Q_tau`` with w1 the
    per-output-channel standardized weights and Q_tau the tau-quantile of La(0, mean |w1|)."""
    w = to_host(weight)
    a = w.reshape(w.shape[0], -1).astype(np.float64)   # rows = output channels; float64, updated in place
    a -= a.mean(axis=1, keepdims=True)
    std = np.sqrt(np.einsum("ij,ij->i", a, a) / a.shape[1])[:, None]
    np.divide(a, std, out=a, where=std > 0)
    a[(std == 0)[:, 0]] = 0.0
    np.abs(a, out=a)
    return (a > laplace_quantile(tau, a.mean())).reshape(w.shape)


class FlipTracker:
    """Flip ratios of ``model``'s binary layers (``refbnn.models.binary_layers``) per epoch.

    Call ``start_epoch()`` before an epoch's first step (after the schedule set the quantizers' state),
    ``after_step()`` after each optimizer step (and after any weight constraint), and ``end_epoch()``
    at the end: it returns ``{layer: {"all", "tail", "body", "tail_share"}}`` for the epoch and sets
    ``mean``, the flip ratio of all binary weights together (the layers' ratios weighted by their weight
    counts; ``None`` without binary layers)."""

    def __init__(self, model, tau: float = TAIL_TAU):
        self.layers = binary_layers(model)
        self.names = [n for n, _ in self.layers]
        self.sizes = [m.params["weight"].size for _, m in self.layers]
        self.tau = tau
        self.mean = None
        self._prev = None

    def start_epoch(self):
        """Record the signs at the start of the epoch; the tail masks are computed on the host (one copy
        of each binary weight per epoch)."""
        with deferred_checks():
            self._prev = [weight_signs(m) for _, m in self.layers]
        self._tail = [move(np.flatnonzero(tail_mask(m.params["weight"], self.tau)), array_module(m.params["weight"]))
                      for _, m in self.layers]
        self._flips = [0] * len(self.layers)
        self._tail_flips = [0] * len(self.layers)
        self._steps = 0

    def after_step(self):
        """Count this step's sign changes; on a device the counts stay there until ``end_epoch``, and
        the quantizers' value checks are answered in one synchronisation (checks.deferred_checks)."""
        if self._prev is None:
            raise RuntimeError("FlipTracker.after_step: call start_epoch() first")
        with deferred_checks():
            signs = [weight_signs(m) for _, m in self.layers]
        for i, s in enumerate(signs):
            changed = s != self._prev[i]
            xp = array_module(changed)
            self._flips[i] = self._flips[i] + xp.count_nonzero(changed)
            self._tail_flips[i] = self._tail_flips[i] + xp.count_nonzero(changed.reshape(-1)[self._tail[i]])
            self._prev[i] = s
        self._steps += 1

    def end_epoch(self) -> dict:
        if self._prev is None:
            raise RuntimeError("FlipTracker.end_epoch: call start_epoch() first")
        steps, out = self._steps, {}
        counts = [int(c) for c in read_scalars(self._flips + self._tail_flips)]  # device counts: one copy
        self._flips, self._tail_flips = counts[:len(self.layers)], counts[len(self.layers):]

        def ratio(flips, n):
            return flips / (n * steps) if n and steps else None

        for i, name in enumerate(self.names):
            n, nt = self.sizes[i], len(self._tail[i])
            f, ft = self._flips[i], self._tail_flips[i]
            out[name] = {"all": ratio(f, n), "tail": ratio(ft, nt), "body": ratio(f - ft, n - nt),
                         "tail_share": nt / n}
        self.mean = ratio(sum(self._flips), sum(self.sizes))
        self._prev = None
        return out


def flip_metrics(names: list, flips: list, means: list) -> dict:
    """The metrics-JSON view of per-epoch tracker results (``flips``: one ``end_epoch()`` dict per
    epoch, ``means``: the epochs' ``mean``): ``binary_layers``, ``flip_ratio`` ({layer: [per epoch]}),
    ``flip_ratio_mean`` and ``tail_flips`` ({layer: {"tail_share", "tail", "body": [per epoch]}})."""
    return {
        "binary_layers": list(names),
        "flip_ratio": {n: [e[n]["all"] for e in flips] for n in names},
        "flip_ratio_mean": list(means),
        "tail_flips": {n: {k: [e[n][k] for e in flips] for k in ("tail_share", "tail", "body")} for n in names},
    }


__all__ = ["FlipTracker", "TAIL_TAU", "flip_metrics", "tail_mask", "weight_signs"]
