"""Figures: quantizers and their estimators, schedules, latent weights, training curves (``refbnn plot``).

Every function draws one row of panels into a file (PNG by default; the extension picks the format)
and returns the data it drew as plain NumPy arrays and lists, so that tests and callers can check
the curves without reading pixels. Nothing here computes a quantizer or a schedule itself: the
curves come from the quantizers' own ``forward``/``backward``/``surrogate`` (refbnn.quantizers) and
the schedules' own functions (refbnn.schedules), the latent-weight statistics from
``RecuWeight.standardized``/``threshold`` (refbnn.quantizers.recu).

matplotlib is imported inside the functions, never when refbnn is imported, and only its
object-oriented API is used (``matplotlib.figure.Figure`` drawn by the Agg canvas): no pyplot, no
global backend switch, no display. Without matplotlib every function raises ImportError saying
``pip install 'refbnn[plot]'``.

- :func:`plot_quantizer`: forward (with the surrogate the estimator differentiates) and estimator
  curves of one catalogue quantizer, at several points of its schedule when it has one;
- :func:`plot_schedule`: a method's or a schedule's values per epoch (and the learning rate);
- :func:`plot_weights`: the histogram of a binary layer's standardized latent weights from a
  checkpoint, with ReCU's clamp points, and the sign-flip rates of the tail and the rest over training;
- :func:`plot_training`: loss, accuracy and flip-ratio curves of a run (metrics JSON or checkpoint);
- :func:`plot_learning_curves`: test accuracy per epoch of several runs, grouped by method (mean and
  min/max band over seeds).

docs/plots.md shows each figure and says how to read it.
"""
from __future__ import annotations

import copy
import json
import math
import os

import numpy as np

INSTALL_HINT = "pip install 'refbnn[plot]'"
DPI = 100
PANEL_SIZE = (5.2, 4.0)      # inches per panel at DPI: 520 x 400 pixels
X_RANGE = (-3.0, 3.0)        # the element-wise quantizers' grid
GRID_POINTS = 1201
SAMPLE_SIZE = 2000           # the weight quantizers' sample: one output channel of Laplace weights
SAMPLE_SCALE = 0.5           # its Laplace scale (|w| < 1, the clip window of the clipped estimators, holds 86 %)
SCHEDULE_POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)   # the progress values p drawn for a scheduled quantizer
STOCHASTIC_DRAWS = 1000
NON_RECU_TAUS = (0.85, 0.99)  # plot_weights: ReCU's start and end tau for methods without a tau of their own
TAIL_TAU = 0.99              # the tail of the flip metrics (refbnn train's metrics: ReCU's end value)


# ---- matplotlib, lazily ------------------------------------------------------------------------------
def _matplotlib():
    """(Figure, FigureCanvasAgg); ImportError naming the extra to install when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"refbnn's plots need matplotlib >= 3.7, which is not installed: {INSTALL_HINT}") from exc
    return Figure, FigureCanvasAgg


def _figure(ncols, title, min_width=7.5):
    """A Figure of one row of ``ncols`` panels on the Agg canvas, with ``title`` wrapped to its width."""
    import textwrap

    Figure, Canvas = _matplotlib()
    width = max(PANEL_SIZE[0] * ncols, min_width)
    fig = Figure(figsize=(width, PANEL_SIZE[1]), dpi=DPI, layout="constrained")
    Canvas(fig)
    axes = list(fig.subplots(1, ncols, squeeze=False)[0])
    fig.suptitle("\n".join(textwrap.wrap(title, int(width * 13))), fontsize=11)
    return fig, axes


def _epoch_axis(ax, label="epoch"):
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)


def _out_path(out):
    """``out`` as a path string; ``.png`` appended when it has no extension; its directory must exist."""
    if out is None:
        raise ValueError("out: expected a file name for the figure, got None")
    out = os.fspath(out)
    if not out or "\0" in out:
        raise ValueError(f"out: expected a non-empty path, got {out!r}")
    if os.path.isdir(out):
        raise IsADirectoryError(f"out: {out} is a directory; expected a file name such as {out}/figure.png")
    if not os.path.splitext(out)[1]:
        out += ".png"
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"out: {out}: the directory {parent} does not exist")
    return out


def _save(fig, out):
    fig.savefig(out, dpi=DPI)
    return out


def _log_if_wide(ax, values, ratio=20.0):
    """A log y axis when every value is positive and they span more than ``ratio``."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size and (v > 0).all() and v.max() / v.min() > ratio:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # labels at 1, 2, 5 x 10^k, plain numbers
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def _floats(values):
    """A per-epoch list as floats, None (a ratio over an empty set) as NaN: a gap in the line."""
    return [float("nan") if v is None else float(v) for v in values]


def _fmt(v):
    return f"{v:.3g}"


def _colors(n):
    from matplotlib import colormaps

    cmap = colormaps["tab10"] if n <= 10 else colormaps["viridis"]
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


# ---- quantizers ---------------------------------------------------------------------------------------
def _quantizer_schedule(q):
    """The quantizer schedule (refbnn.schedules.QUANTIZER_SCHEDULES) that sets exactly this quantizer's state."""
    from .schedules import QUANTIZER_SCHEDULES

    keys = set(q.state())
    if not keys:
        return None
    for schedule in QUANTIZER_SCHEDULES.values():
        if set(schedule.values(0.0, **schedule.params)) == keys:
            return schedule
    return None


def estimator_diagonal(q, x, cache):
    """d y_j / d x_j as the quantizer's estimator says, for every element of ``x``.

    Element-wise quantizers (``part`` None): ``q.backward(ones, cache)``. Quantizers with statistics
    over a row (``part`` "weight" or "input": per output channel or per sample) may couple the
    elements of a row in their backward (gradients through a mean and a std), so ``backward(ones)``
    is the gradient of the row's sum, not a per-element curve; their diagonal is read column by
    column, ``q.backward(dy, cache)[:, j]`` with dy one at column j of every row (the rows are
    independent in every backward of the catalogue).
    """
    if q.part is None or x.ndim < 2:
        return np.asarray(q.backward(np.ones_like(x), cache), dtype=float)
    diag = np.empty(x.shape, dtype=float)
    dy = np.zeros_like(x)
    for j in range(x.shape[1]):
        dy[:, j] = 1.0
        diag[:, j] = q.backward(dy, cache)[:, j]
        dy[:, j] = 0.0
    return diag


def _quantizer_input(q, x_range):
    """(x, how it is laid out, axis label). Element-wise: a 1-D grid. Per-sample statistics: the grid as
    one sample (a (1, n) array). Per-output-channel statistics: one output channel of SAMPLE_SIZE
    Laplace(0, SAMPLE_SCALE) weights, sorted (sorting a row changes none of its statistics)."""
    lo, hi = x_range
    if q.part == "weight":
        rng = np.random.default_rng(0)
        w = np.sort(rng.laplace(0.0, SAMPLE_SCALE, SAMPLE_SIZE))[None, :]
        return w, (f"latent weight w (one output channel of {SAMPLE_SIZE} Laplace(0, {SAMPLE_SCALE:g}) "
                   "weights)")
    grid = np.linspace(lo, hi, GRID_POINTS)
    if q.part == "input":
        return grid[None, :], "x (the grid as one sample: its statistics are the sample's)"
    return grid, "x"


def _forward(q, x, training=True):
    """(y, cache); for a quantizer that samples, y is the mean of STOCHASTIC_DRAWS training draws
    (its expectation, what the curve can show) and the cache that of the last draw."""
    if q.needs_rng and training:
        q.set_rng(np.random.default_rng(0))
        total = np.zeros_like(x)
        for _ in range(STOCHASTIC_DRAWS):
            y, cache = q.forward(x, training=True)
            total += y
        return total / STOCHASTIC_DRAWS, cache
    return q.forward(x, training=training)


def _state_label(state):
    return ", ".join(f"{k} = {_fmt(v)}" for k, v in state.items())


def plot_quantizer(name, out, params=None, x_range=X_RANGE) -> dict:
    """Forward and estimator curves of the catalogue quantizer ``name`` (refbnn.quantizers.QUANTIZERS).

    Left panel: the training-mode forward y = q(x) (solid), the eval-mode forward where it differs
    (dotted), and the surrogate, the function whose derivative the backward applies, where it
    differs from the forward (dashed). Right panel: the estimator d y_j / d x_j (:func:`estimator_diagonal`).
    A quantizer whose state a schedule sets (IR-Net's t and k, ReCU's tau, sign-Swish's beta,
    ProxConnect's mu) is drawn at the schedule's progress p in SCHEDULE_POINTS, one color per point;
    ReCU's weight quantizer also marks its clamp points +-Q(tau), mapped back to latent units.
    ``params``: the quantizer's constructor parameters, and the schedule's (e.g. ``T_min``); giving a
    state value (e.g. ``tau``) draws that one state instead of the schedule. ``x_range``: the grid of
    the element-wise and per-sample quantizers (weight quantizers are drawn on their Laplace sample).

    Returns {"name", "out", "x", "x_label", "curves": [{"label", "state", "forward", "eval_forward",
    "surrogate", "backward", "clamp"}]} with 1-D arrays over the points of x (``clamp``: the latent
    (lo, hi) of ReCU's clamp, else None).
    """
    from .quantizers import QUANTIZERS
    from .quantizers.recu import RecuWeight

    if name not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {name!r}; known quantizers: {', '.join(sorted(QUANTIZERS))}")
    out = _out_path(out)
    lo, hi = (float(v) for v in x_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"x_range: expected two finite numbers lo < hi, got {x_range!r}")
    cls = QUANTIZERS[name]
    params = dict(params or {})
    accepted = cls.parameter_names()
    q = cls(**{k: v for k, v in params.items() if k in accepted})
    rest = {k: v for k, v in params.items() if k not in accepted}
    schedule = _quantizer_schedule(q)
    state_given = sorted(set(params) & set(q.state()))
    if rest:
        if schedule is None or not all(schedule.accepts(k) for k in rest):
            known = accepted + ([] if schedule is None else sorted(schedule.params) + sorted(schedule.aliases))
            raise ValueError(f"{name}: unknown parameter(s) {sorted(rest)}; accepted: {', '.join(known)}")
        if state_given:
            raise ValueError(f"{name}: {', '.join(state_given)} given, so the schedule is not drawn and its "
                             f"parameter(s) {sorted(rest)} have no effect; give one or the other")
        schedule = schedule.with_params(**rest)
    if schedule is not None and not state_given:
        states = [(f"p = {p:g}: {_state_label(schedule.values(p, **schedule.params))}",
                   schedule.values(p, **schedule.params)) for p in SCHEDULE_POINTS]
    else:
        states = [(_state_label(q.state()) if q.state() else name, q.state())]

    x, x_label = _quantizer_input(q, (lo, hi))
    curves = []
    for label, state in states:
        qi = copy.deepcopy(q)
        if state:
            qi.set_state(**state)
        y, cache = _forward(qi, x, training=True)
        g = estimator_diagonal(qi, x, cache)
        y_eval = qi.forward(x, training=False)[0]
        s = np.asarray(qi.surrogate(x, training=True), dtype=float)
        clamp = None
        if isinstance(qi, RecuWeight):
            w1 = qi.standardized(x)
            _, qq = qi.threshold(w1)
            if math.isfinite(qq):  # w1 is increasing in w on the sorted row: invert it by interpolation
                clamp = (float(np.interp(-qq, w1[0], x[0])), float(np.interp(qq, w1[0], x[0])))
        curves.append({"label": label, "state": dict(state), "forward": np.asarray(y, float).ravel(),
                       "eval_forward": np.asarray(y_eval, float).ravel(), "surrogate": s.ravel(),
                       "backward": g.ravel(), "clamp": clamp})
    xs = x.ravel()

    title = f"quantizer {name}"
    if schedule is not None and not state_given:
        title += f" at points of its schedule {schedule.name}"
    fig, (ax_f, ax_b) = _figure(2, title)
    multi = len(curves) > 1
    colors = _colors(len(curves)) if multi else ["black"]

    def same(key):
        return all(np.array_equal(c[key], curves[0][key]) for c in curves)

    same_forward, same_eval, same_surrogate = same("forward"), same("eval_forward"), same("surrogate")
    draws = f", mean of {STOCHASTIC_DRAWS} draws" if q.needs_rng else ""
    labelled = set()

    def once(key, text):
        if key in labelled:
            return None
        labelled.add(key)
        return text

    for i, c in enumerate(curves):
        color = colors[i] if multi else "black"
        if not (same_forward and i > 0):
            ax_f.plot(xs, c["forward"], color="black" if same_forward else color, lw=1.8,
                      label=None if multi and not same_forward else
                      once("f", f"forward (training{draws})" if not multi else "forward (every point)"))
        if not np.array_equal(c["eval_forward"], c["forward"]) and not (same_eval and "e" in labelled):
            ax_f.plot(xs, c["eval_forward"], color="black" if same_eval else color, lw=1.2, ls=":",
                      label=once("e", "forward (eval)"))
        if not np.allclose(c["surrogate"], c["forward"]) and not (same_surrogate and "s" in labelled):
            ax_f.plot(xs, c["surrogate"], color="tab:blue" if same_surrogate or not multi else color, lw=1.2,
                      ls="--", label=once("s", "surrogate" + (" (colors: the points on the right)"
                                                              if multi and not same_surrogate else "")))
        ax_b.plot(xs, c["backward"], color=color if multi else "tab:red", lw=1.6, label=c["label"] if multi else None)
        if c["clamp"] is not None:
            for ax in (ax_f, ax_b):
                for v in c["clamp"]:
                    ax.axvline(v, color=color, lw=0.9, ls=":", alpha=0.9)
    if multi and not same_forward:  # the forward changes along the schedule: say so once in the legend
        ax_f.plot([], [], color="0.4", lw=1.8, label="forward at each point (colors as on the right)")
    xlabel = x_label.replace(" (", "\n(", 1)
    ax_f.set_title("forward y = q(x) and surrogate", fontsize=10)
    ax_f.set_xlabel(xlabel)
    ax_f.set_ylabel("y")
    ax_f.legend(fontsize=8, loc="lower right")
    ax_b.set_title("estimator dy/dx (the backward)", fontsize=10)
    ax_b.set_xlabel(xlabel)
    ax_b.set_ylabel("dy/dx")
    g_all = np.concatenate([c["backward"] for c in curves])
    top = float(g_all.max()) if g_all.size else 1.0
    bottom = min(0.0, float(g_all.min()))
    span = max(top - bottom, 1e-12)
    ax_b.set_ylim(bottom - 0.05 * span if bottom < 0 else -0.05 * span, top + 0.08 * span)
    if multi:
        legend_title = schedule.name if schedule else None
        if any(c["clamp"] is not None for c in curves):
            legend_title += " (dotted: clamp points +-Q(tau))"
        ax_b.legend(fontsize=8, loc="best", title=legend_title, title_fontsize=8)
    for ax in (ax_f, ax_b):
        ax.grid(alpha=0.3)
    _save(fig, out)
    return {"name": name, "out": out, "x": xs, "x_label": x_label, "curves": curves}


# ---- schedules ----------------------------------------------------------------------------------------
def schedule_names() -> dict:
    """The names ``plot_schedule`` accepts: {"methods": [...], "quantizer schedules": [...],
    "learning rates": [...]}."""
    from .methods import METHODS
    from .schedules import LR_SCHEDULES, QUANTIZER_SCHEDULES

    return {"methods": list(METHODS), "quantizer schedules": list(QUANTIZER_SCHEDULES),
            "learning rates": list(LR_SCHEDULES)}


def _lr_kwargs(fn, params):
    """``params`` for an lr schedule function; ``milestones`` may be one int or a comma list "30,60"."""
    import inspect

    accepted = [p for p in inspect.signature(fn).parameters if p not in ("epoch", "epochs", "base_lr")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"learning-rate schedule {fn.__name__}: unknown parameter(s) {unknown}; accepted: "
                         f"{', '.join(accepted)}")
    out = dict(params)
    if "milestones" in out:
        m = out["milestones"]
        try:
            out["milestones"] = (int(m),) if isinstance(m, (int, float)) else tuple(int(v) for v in str(m).split(","))
        except ValueError:
            raise ValueError(f"milestones: expected epochs as a comma-separated list of ints, got {m!r}") from None
    return out


def plot_schedule(name, epochs, out, convention="paper", params=None, lr_schedule="cosine", base_lr=None) -> dict:
    """A schedule's values per epoch. ``name``: a method (refbnn.methods.METHODS: its quantizer schedule
    and its learning rate under ``lr_schedule``, as ``refbnn train`` runs it), a quantizer schedule
    (refbnn.schedules.QUANTIZER_SCHEDULES) or a learning-rate schedule (refbnn.schedules.LR_SCHEDULES,
    base rate ``base_lr``, default 1). Quantizer schedules are drawn under both clocks, the
    convention's solid (``refbnn train`` uses it) and the other dashed. ``params``: the schedule's
    parameters (a method's: any key ``refbnn train --param`` takes).

    Returns {"name", "out", "epochs": [0..E-1], "clock", "values": {clock: {state: [per epoch]}}, "lr":
    [per epoch] or None}.
    """
    from .conventions import get_convention
    from .methods import METHODS
    from .schedules import CLOCKS, LR_SCHEDULES, QUANTIZER_SCHEDULES

    names = schedule_names()
    if name not in METHODS and name not in QUANTIZER_SCHEDULES and name not in LR_SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: " + "; ".join(f"{k}: {', '.join(v)}"
                                                                         for k, v in names.items()))
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or not epochs >= 1:
        raise ValueError(f"epochs: expected a positive integer, got {epochs!r}")
    epochs = int(epochs)
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {lr_schedule!r}; known: {', '.join(LR_SCHEDULES)}")
    out = _out_path(out)
    c = get_convention(convention)
    params = dict(params or {})
    schedule, lr_fn, lr_params, lr0, what = None, None, {}, base_lr, name
    if name in METHODS:
        method = METHODS[name].with_params(**params)
        schedule, lr_fn = method.schedule, LR_SCHEDULES[lr_schedule]
        lr0 = method.lr if base_lr is None else base_lr
        what = f"method {name}"
    elif name in QUANTIZER_SCHEDULES:
        schedule = QUANTIZER_SCHEDULES[name].with_params(**params) if params else QUANTIZER_SCHEDULES[name]
        what = f"quantizer schedule {name}"
    else:
        lr_fn, lr_params = LR_SCHEDULES[name], _lr_kwargs(LR_SCHEDULES[name], params)
        lr0 = 1.0 if base_lr is None else base_lr
        what = f"learning-rate schedule {name}"
    if lr0 is not None and not (isinstance(lr0, (int, float)) and math.isfinite(lr0) and lr0 > 0):
        raise ValueError(f"base_lr: expected a positive finite number, got {lr0!r}")
    ep = list(range(epochs))
    values = None
    if schedule is not None:
        values = {clock: {} for clock in CLOCKS}
        for clock in CLOCKS:
            for e in ep:
                for k, v in schedule.at(e, epochs, clock).items():
                    values[clock].setdefault(k, []).append(float(v))
    lr = [float(lr_fn(e, epochs, lr0, **lr_params)) for e in ep] if lr_fn is not None else None

    panels = (values is not None) + (lr is not None)
    title = f"{what} over {epochs} epochs"
    if values is not None:
        title += f" (convention {c.name}: clock {c.schedule_clock})"
    elif name in METHODS:
        title += " (no quantizer schedule)"
    fig, axes = _figure(panels, title)
    axes = iter(axes)
    if values is not None:
        ax = next(axes)
        keys = list(values[c.schedule_clock])
        colors = _colors(len(keys))
        other = [k for k in CLOCKS if k != c.schedule_clock][0]
        clock_text = {"epoch": "p = i/E", "progress": "p = i/(E-1)"}
        for color, k in zip(colors, keys):
            ax.plot(ep, values[c.schedule_clock][k], color=color, marker="o", ms=3, lw=1.6,
                    label=f"{k} (clock {c.schedule_clock}: {clock_text[c.schedule_clock]})")
            ax.plot(ep, values[other][k], color=color, ls="--", lw=1.0, alpha=0.8,
                    label=f"{k} (clock {other}: {clock_text[other]})")
        _log_if_wide(ax, [v for clock in values.values() for vs in clock.values() for v in vs])
        ax.set_title(f"quantizer state per epoch ({schedule.name})", fontsize=10)
        _epoch_axis(ax, "epoch i (0-based; the value is set before the epoch)")
        ax.set_ylabel(", ".join(keys))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    if lr is not None:
        ax = next(axes)
        ax.plot(ep, lr, color="tab:green", marker="o", ms=3, lw=1.6, drawstyle="steps-post",
                label="held for the epoch")
        ax.legend(fontsize=8)
        fn_name = lr_schedule if name in METHODS else name
        ax.set_title(f"learning rate ({fn_name}, base {_fmt(lr0)})", fontsize=10)
        _epoch_axis(ax, "epoch i (0-based)")
        ax.set_ylabel("learning rate")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    _save(fig, out)
    return {"name": name, "out": out, "epochs": ep, "clock": c.schedule_clock, "values": values, "lr": lr}


# ---- checkpoints: latent weights and flips -------------------------------------------------------------
def resolve_checkpoint(path) -> str:
    """``path``, or ``path/checkpoint.npz`` for a run directory (``refbnn train --out DIR``)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        inside = os.path.join(path, "checkpoint.npz")
        if not os.path.isfile(inside):
            raise FileNotFoundError(f"{path} is a directory without checkpoint.npz; expected a checkpoint (refbnn "
                                    f"train --out DIR writes DIR/checkpoint.npz)")
        return inside
    return path


def load_checkpoint_model(path):
    """(model in eval mode, checkpoint meta) from a ``refbnn train`` checkpoint (refbnn.inference.export's loader)."""
    from .checkpoint import load_checkpoint
    from .inference.export import build_from_checkpoint

    path = resolve_checkpoint(path)
    model, run, _, _ = build_from_checkpoint(path)
    _, _, meta = load_checkpoint(path)
    return model, meta


def default_weights_out(checkpoint, layer):
    stem = os.path.splitext(os.path.basename(os.fspath(checkpoint)))[0]
    return os.path.join(os.path.dirname(os.fspath(checkpoint)), f"{stem}_weights_{layer}.png")


def plot_weights(checkpoint, out=None, layer=None, bins=80) -> dict:
    """Latent weights of one binary layer of a checkpoint, and how often its tail flipped sign.

    Left: the histogram of w1 = RecuWeight().standardized(w) (per output channel, (w - mean_o w)/std_o
    times sqrt(2) b*, the official ReCU code's standardization whatever the method or convention, as the
    tail of the flip metrics), ReCU's clamp points +-Q(tau), Q = -b ln(2 - 2 tau) with b = mean |w1| over the layer
    (``RecuWeight.threshold``), at the checkpoint's tau for ReCU and at tau = 0.85 and 0.99 otherwise,
    with the share of weights beyond each, and the Laplace density La(0, b) that ReCU's quantile
    assumes (ReCU, arXiv 2103.12369, Eq. 9-11). Right: per epoch, the sign-flip ratio of the tail
    (|w1| > Q(0.99), fixed at the epoch's start) and of the other weights, from the checkpoint's
    history "flips" (refbnn.flips, recorded by refbnn train).
    ``checkpoint``: the file or its run directory; ``layer``: a binary layer's name (default: the first).

    Returns {"out", "layer", "layers", "w1", "taus": [{"tau", "b", "Q", "share"}], "flips": {"epochs",
    "tail", "body", "all", "tail_share"}} (flip ratios per epoch; NaN where the tail or the body was empty).
    """
    from .models import binary_layers
    from .quantizers.recu import RecuWeight, clamped_fraction

    checkpoint = resolve_checkpoint(checkpoint)
    model, meta = load_checkpoint_model(checkpoint)
    run = meta["run"]
    layers = binary_layers(model)
    names = [n for n, _ in layers]
    if not layers:
        raise ValueError(f"{checkpoint}: the model (method {run.get('method')!r}) has no binary layers")
    if layer is None:
        chosen, module = layers[0]
    elif layer in names:
        chosen, module = layers[names.index(layer)]
    else:
        raise ValueError(f"{checkpoint}: no binary layer {layer!r}; its binary layers: {', '.join(names)}")
    out = _out_path(out if out is not None else default_weights_out(checkpoint, chosen))

    w = np.asarray(module.params["weight"], dtype=np.float64)
    wq = module.weight_quantizer
    q = RecuWeight()  # the official code's standardization (centered), the one the flip metrics' tail uses
    if isinstance(wq, RecuWeight):
        taus, source = [wq.tau], "tau from the checkpoint"
    else:
        taus, source = list(NON_RECU_TAUS), "ReCU's start and end tau"
    w1 = q.standardized(w)
    stats = []
    for tau in taus:
        q.set_state(tau=tau)
        b, qq = q.threshold(w1)
        share = float(np.mean(np.abs(w1) > qq)) if math.isfinite(qq) else 0.0
        stats.append({"tau": float(tau), "b": b, "Q": qq, "share": share})

    # the checkpoint's flip records (refbnn.checkpoint.check_meta: one per epoch, every binary layer)
    entries = meta["history"]["flips"]
    flips = {"epochs": list(range(1, len(entries) + 1)),
             **{key: _floats(e[chosen][key] for e in entries) for key in ("tail", "body", "all", "tail_share")}}

    default_note = " (the first binary layer)" if layer is None else ""
    title = (f"{os.path.basename(os.fspath(checkpoint))}: layer {chosen}{default_note}, method {run.get('method')}, "
             f"after epoch {meta['epoch'] + 1}")
    fig, (ax_h, ax_f) = _figure(2, title)
    flat = w1.ravel()
    lim = float(np.quantile(np.abs(flat), 0.999)) * 1.15
    for s in stats:
        if math.isfinite(s["Q"]):
            lim = max(lim, s["Q"] * 1.15)
    ax_h.hist(flat, bins=bins, range=(-lim, lim), density=True, color="0.6", edgecolor="0.45", lw=0.3,
              label=f"w1, {flat.size} weights")
    b0 = stats[0]["b"]
    xs = np.linspace(-lim, lim, 400)
    ax_h.plot(xs, np.exp(-np.abs(xs) / b0) / (2 * b0), color="black", lw=1.0, ls="--",
              label=f"Laplace(0, b), b = mean|w1| = {_fmt(b0)}")
    colors = ["tab:red", "tab:blue", "tab:green", "tab:purple"]
    for color, s in zip(colors, stats):
        if not math.isfinite(s["Q"]):
            continue
        for v in (-s["Q"], s["Q"]):
            ax_h.axvline(v, color=color, lw=1.4)
        ax_h.plot([], [], color=color, lw=1.4,
                  label=f"tau = {s['tau']:.3f}: +-Q = {_fmt(s['Q'])}, beyond: {100 * s['share']:.2f} % "
                        f"(Laplace: {100 * clamped_fraction(s['tau']):.1f} %)")
    ax_h.set_title(f"standardized latent weights w1 ({source})", fontsize=10)
    ax_h.set_xlabel("w1 = standardized latent weight (per output channel)")
    ax_h.set_ylabel("density")
    ax_h.legend(fontsize=7.5, loc="upper left")
    ax_h.grid(alpha=0.3)
    ax_f.set_title(f"sign flips per step, tail (|w1| > Q({TAIL_TAU})) vs the rest", fontsize=10)
    _epoch_axis(ax_f)
    ax_f.set_ylabel("flip ratio (share of weights per step)")
    e = flips["epochs"]
    if all(math.isnan(v) for v in flips["tail"]):
        ax_f.text(0.5, 0.55, f"the tail is empty in every epoch:\nno weight beyond Q({TAIL_TAU})",
                  transform=ax_f.transAxes, ha="center", va="center", fontsize=9, color="tab:red")
    ax_f.plot(e, flips["tail"], color="tab:red", marker="o", ms=3, lw=1.6, label="tail")
    ax_f.plot(e, flips["body"], color="tab:blue", marker="o", ms=3, lw=1.6, label="rest (body)")
    ax_f.plot(e, flips["all"], color="0.3", lw=1.0, ls="--", label="all weights")
    _log_if_wide(ax_f, flips["tail"] + flips["body"] + flips["all"])
    last_share = flips["tail_share"][-1]
    ax_f.legend(fontsize=8, title=f"tail share, last epoch: {100 * last_share:.2f} %", title_fontsize=8)
    ax_f.grid(alpha=0.3, which="both")
    _save(fig, out)
    return {"out": out, "layer": chosen, "layers": names, "w1": flat, "taus": stats, "flips": flips}


# ---- metrics: one run's curves, several runs' learning curves ---------------------------------------
METRICS_HINT = ("a refbnn metrics JSON (refbnn train --metrics-json FILE), a refbnn checkpoint "
                "(refbnn train --out DIR writes DIR/checkpoint.npz) or a run directory holding one")


def _check_series(path, metrics, key, required):
    v = metrics.get(key)
    if v is None and not required:
        return
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise ValueError(f"{path}: not a refbnn metrics file: {key!r} must be a list of numbers per epoch "
                         f"(expected {METRICS_HINT})")


def check_metrics(metrics, path="metrics") -> dict:
    """``metrics`` if it is a refbnn metrics dict (``refbnn.train.train``'s result): a JSON object whose
    per-epoch lists train_loss, train_accuracy, test_loss, test_accuracy_per_epoch are numbers of one
    length; ValueError naming what is wrong otherwise."""
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: not a refbnn metrics file: expected a JSON object, got "
                         f"{type(metrics).__name__} (expected {METRICS_HINT})")
    keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy_per_epoch")
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise ValueError(f"{path}: not a refbnn metrics file: missing {', '.join(missing)} (expected {METRICS_HINT})")
    for k in keys:
        _check_series(path, metrics, k, True)
    lengths = {k: len(metrics[k]) for k in keys}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{path}: the per-epoch lists differ in length: {lengths}")
    def ratios(v):
        return isinstance(v, list) and all(x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))
                                           for x in v)

    fr = metrics.get("flip_ratio")
    if fr is not None and not (isinstance(fr, dict) and all(ratios(v) for v in fr.values())):
        raise ValueError(f"{path}: flip_ratio: expected an object of per-epoch lists of ratios per layer")
    if metrics.get("flip_ratio_mean") is not None and not ratios(metrics["flip_ratio_mean"]):
        raise ValueError(f"{path}: flip_ratio_mean: expected a per-epoch list of ratios")
    return metrics


def _metrics_from_checkpoint(path) -> dict:
    """The metrics dict a run would have written, from a checkpoint's history (refbnn.checkpoint meta)."""
    from .checkpoint import load_checkpoint

    _, _, meta = load_checkpoint(path)
    h, run = meta["history"], meta["run"]
    m = {"train_loss": h["train_loss"], "train_accuracy": h["train_accuracy"], "test_loss": h["test_loss"],
         "test_accuracy_per_epoch": h["test_accuracy"], "lr": h["lr"], "schedule": h["schedule"],
         "test_accuracy": h["test_accuracy"][-1], "epochs": run.get("epochs"), "seconds": meta["seconds"],
         **{k: run.get(k) for k in ("method", "model", "dataset", "convention", "seed")}}
    if h.get("flips"):  # the metrics-JSON view of the flip records, as refbnn train writes it
        from .flips import flip_metrics

        m.update(flip_metrics(list(h["flips"][0]), h["flips"], h["flip_ratio_mean"]))
    m["epoch_seconds"] = h.get("epoch_seconds")
    return m


def load_metrics(path) -> tuple[dict, str]:
    """(metrics dict, the file it came from) from a metrics JSON, a checkpoint, or a run directory (its
    ``metrics.json``, else its only metrics JSON, else its ``checkpoint.npz``)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory (expected {METRICS_HINT})")
    if os.path.isdir(path):
        candidates = [os.path.join(path, "metrics.json")]
        others = sorted(f for f in os.listdir(path) if f.endswith(".json") and f != "metrics.json")
        candidates += [os.path.join(path, f) for f in others]
        found = []
        for f in candidates:
            if os.path.isfile(f):
                try:
                    with open(f) as fh:
                        check_metrics(json.load(fh), f)
                    found.append(f)
                except (ValueError, UnicodeDecodeError):
                    continue
        if found and (found[0].endswith(os.sep + "metrics.json") or len(found) == 1):
            return load_metrics(found[0])
        if len(found) > 1:
            raise ValueError(f"{path}: several metrics files ({', '.join(os.path.basename(f) for f in found)}); "
                             f"name one")
        ckpt = os.path.join(path, "checkpoint.npz")
        if os.path.isfile(ckpt):
            return load_metrics(ckpt)
        raise FileNotFoundError(f"{path}: no metrics JSON and no checkpoint.npz in this directory "
                                f"(expected {METRICS_HINT})")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):  # a zip: a .npz checkpoint
        return check_metrics(_metrics_from_checkpoint(path), path), path
    try:
        with open(path, encoding="utf-8") as fh:
            metrics = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: not a refbnn metrics file: not JSON ({type(exc).__name__}) "
                         f"(expected {METRICS_HINT})") from None
    return check_metrics(metrics, path), path


def default_training_out(path):
    path = os.fspath(path)
    if os.path.isdir(path):
        return os.path.join(path, "training.png")
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(os.path.dirname(path), f"{stem}_training.png")


def plot_training(path, out=None) -> dict:
    """Loss, accuracy and flip-ratio curves of one run, from its metrics JSON, its checkpoint or its
    run directory (:func:`load_metrics`). Panels: train and test loss; train and test accuracy; the
    flip ratio per binary layer (thin) and their mean weighted by weight count (thick), when the
    metrics have them. ``out`` defaults to the input's directory (``training.png`` in a run directory,
    ``<name>_training.png`` next to a file).

    Returns {"out", "source", "epochs": [1..E], "train_loss", "test_loss", "train_accuracy",
    "test_accuracy", "flip_ratio": {layer: [...]} or None, "flip_ratio_mean": [...] or None}."""
    metrics, source = load_metrics(path)
    out = _out_path(out if out is not None else default_training_out(path))
    n = len(metrics["train_loss"])
    if n == 0:
        raise ValueError(f"{source}: the run has no finished epoch to plot")
    ep = list(range(1, n + 1))
    flip = metrics.get("flip_ratio") or None
    flip_mean = metrics.get("flip_ratio_mean")
    panels = 3 if flip else 2
    acc = metrics.get("test_accuracy")
    title = " / ".join(str(metrics.get(k)) for k in ("method", "model", "dataset") if metrics.get(k)) or "run"
    title += f", {n} epochs"
    if isinstance(acc, (int, float)):
        title += f": test accuracy {100 * acc:.2f} %"
    fig, axes = _figure(panels, title)
    ax = axes[0]
    ax.plot(ep, metrics["train_loss"], color="tab:blue", marker="o", ms=3, label="train")
    ax.plot(ep, metrics["test_loss"], color="tab:orange", marker="o", ms=3, label="test")
    _log_if_wide(ax, metrics["train_loss"] + metrics["test_loss"], ratio=30)
    ax.set_title("loss (cross-entropy)", fontsize=10)
    _epoch_axis(ax)
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(ep, [100 * a for a in metrics["train_accuracy"]], color="tab:blue", marker="o", ms=3,
            label="train (training mode, during the epoch)")
    ax.plot(ep, [100 * a for a in metrics["test_accuracy_per_epoch"]], color="tab:orange", marker="o", ms=3,
            label="test (eval mode, after the epoch)")
    ax.set_title("accuracy", fontsize=10)
    _epoch_axis(ax)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8, loc="lower right")
    if flip:
        ax = axes[2]
        for layer, values in flip.items():
            ax.plot(ep[:len(values)], _floats(values), lw=0.9, alpha=0.75, label=layer)
        if flip_mean:
            ax.plot(ep[:len(flip_mean)], _floats(flip_mean), color="black", lw=2.2,
                    label="mean (weighted by weight count)")
        allv = [v for vs in flip.values() for v in _floats(vs)] + _floats(flip_mean or [])
        _log_if_wide(ax, allv)
        ax.set_title("sign-flip ratio per step (binary layers)", fontsize=10)
        _epoch_axis(ax)
        ax.set_ylabel("share of weights flipping per step")
        ncol = 1 if len(flip) <= 8 else 2
        ax.legend(fontsize=7 if len(flip) <= 8 else 6, ncol=ncol)
    for a in axes:
        a.grid(alpha=0.3, which="both")
    _save(fig, out)
    return {"out": out, "source": source, "epochs": ep, "train_loss": metrics["train_loss"],
            "test_loss": metrics["test_loss"], "train_accuracy": metrics["train_accuracy"],
            "test_accuracy": metrics["test_accuracy_per_epoch"], "flip_ratio": flip, "flip_ratio_mean": flip_mean}


def run_label(metrics) -> str:
    """The group a run belongs to in :func:`plot_learning_curves`: its ``label`` if it has one, else its
    method with its non-default parameters (``recu (tau_end=0.95)``)."""
    if metrics.get("label"):
        return str(metrics["label"])
    label = str(metrics.get("method", "?"))
    params = metrics.get("method_params") or {}
    if params:
        label += " (" + ", ".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"
    return label


def plot_learning_curves(runs, out, title) -> dict:
    """Test accuracy per epoch of several runs, grouped by method (:func:`run_label`): per group the mean
    over its runs (seeds) as a line and the min-max range as a band, one color per group.

    ``runs``: metrics dicts as ``refbnn.train.train`` returns them (``test_accuracy_per_epoch``;
    ``method``, ``method_params``, optional ``label``). Runs of one group with fewer epochs count at
    the epochs they have. Returns {"out", "groups": {label: {"epochs", "mean", "min", "max", "runs"}}},
    accuracies as fractions."""
    runs = list(runs)
    if not runs:
        raise ValueError("plot_learning_curves: expected at least one run")
    out = _out_path(out)
    groups: dict[str, list] = {}
    for i, r in enumerate(runs):
        if not isinstance(r, dict) or not isinstance(r.get("test_accuracy_per_epoch"), list):
            raise ValueError(f"plot_learning_curves: run {i}: expected a metrics dict with test_accuracy_per_epoch")
        acc = r["test_accuracy_per_epoch"]
        if not acc:
            raise ValueError(f"plot_learning_curves: run {i} ({run_label(r)}) has no epochs")
        groups.setdefault(run_label(r), []).append(np.asarray(acc, dtype=float))
    data = {}
    for label, curves in groups.items():
        n = max(len(c) for c in curves)
        m = np.full((len(curves), n), np.nan)
        for j, c in enumerate(curves):
            m[j, :len(c)] = c
        data[label] = {"epochs": list(range(1, n + 1)), "mean": np.nanmean(m, 0), "min": np.nanmin(m, 0),
                       "max": np.nanmax(m, 0), "runs": len(curves)}
    fig, (ax,) = _figure(1, title)
    for color, (label, d) in zip(_colors(len(data)), data.items()):
        ax.plot(d["epochs"], 100 * d["mean"], color=color, lw=1.8,
                label=f"{label} ({d['runs']} run{'s' if d['runs'] > 1 else ''})")
        if d["runs"] > 1:
            ax.fill_between(d["epochs"], 100 * d["min"], 100 * d["max"], color=color, alpha=0.2, lw=0)
    _epoch_axis(ax)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("test accuracy per epoch: mean over runs, band = min to max", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, out)
    return {"out": out, "groups": data}


__all__ = ["plot_quantizer", "plot_schedule", "plot_weights", "plot_training", "plot_learning_curves",
           "estimator_diagonal", "load_metrics", "check_metrics", "schedule_names", "run_label", "INSTALL_HINT"]
