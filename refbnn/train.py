"""The training loop: data, model, optimizer, per-epoch schedules, checkpoints and metrics.

Randomness is explicit: the model is initialised from ``seed``, and epoch e draws its shuffling
and augmentation from ``default_rng([seed, e])`` and hands the quantizers that sample (stochastic
BinaryConnect) ``default_rng([seed, e, 1])``. Before each epoch the method's schedule sets the
quantizers' state (IR-Net's t and k, ReCU's tau, ...; ``Method.on_epoch``). A checkpoint written
after epoch e therefore holds everything a resumed run needs to continue bit-exactly: parameters,
buffers, quantizer schedule values, optimizer state, and the metric history.

Per-epoch records (the metrics dict, and the checkpoint's ``history``): losses, accuracies, the
learning rate, the schedule values, ``epoch_seconds`` (the epoch's wall time: schedule, training
steps, test evaluation; the checkpoint write excluded) and the flip ratios of the binary layers
(:mod:`refbnn.flips`: ``flip_ratio`` per layer, ``flip_ratio_mean``, ``tail_flips``). The flip
tracker's state lives within one epoch only, so a resumed run records the same flips.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import ops
from .checks import array_module, check_value, deferred_checks, read_scalars, to_host
from .device import DEVICES, device_module, device_name, move
from .checkpoint import HISTORY_KEYS, CheckpointError, load_checkpoint, model_layout, optimizer_layout, save_checkpoint
from .conventions import get_convention
from .data import DATASETS, load_dataset
from .flips import FlipTracker, flip_metrics
from .methods import LayerFactory, get_method
from .models import MODELS, build_model
from .optim import OPTIMIZER_NAMES, OPTIMIZERS, WeightClip, build_bop_optimizer, no_decay_bn_and_bias, param_groups
from .schedules import LR_SCHEDULES

DEFAULT_MODEL = {"digits": "mlp", "mnist1d": "mlp", "mnist": "mlp", "cifar10": "resnet20"}
DEFAULT_EPOCHS = {"digits": 30, "mnist1d": 60, "mnist": 10, "cifar10": 100}
CHECKPOINT_NAME = "checkpoint.npz"
MAX_WIDTH = 4.0            # resnet18 at width 4: 2048-channel 3x3 convolutions, about 1.8e8 weights
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1 << 20
MAX_SEED = 2 ** 63 - 1     # kept as an int64 in every JSON/NumPy tool


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: ``kind`` (int or float; floats must be finite), ``low`` and
    ``high`` (None: unbounded), ``low_open`` (``low`` itself excluded)."""
    kind: type
    low: float
    high: float | None = None
    low_open: bool = False

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a finite number"
        fmt = "d" if self.kind is int else "g"
        if self.kind is int and self.low == 1 and not self.low_open:
            noun, lower = "a positive integer", ""
        else:
            lower = f" {'>' if self.low_open else '>='} {self.low:{fmt}}"
        upper = f"{' and' if lower else ''} <= {self.high:{fmt}}" if self.high is not None else ""
        return f"{noun}{lower}{upper}"

    def check(self, name: str, value):
        """``value`` if it is in range; TypeError/ValueError naming ``name`` and the range otherwise."""
        ok_type = (isinstance(value, (int, np.integer)) if self.kind is int
                   else isinstance(value, (int, float, np.integer, np.floating)))
        if not ok_type or isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name}: expected {self.describe()}, got {type(value).__name__} {value!r}")
        ok = (math.isfinite(value) and (value > self.low if self.low_open else value >= self.low)
              and (self.high is None or value <= self.high))
        if not ok:
            raise ValueError(f"{name}: expected {self.describe()}, got {value!r}")
        return value


# every numeric setting of a run, checked by TrainConfig.resolved and by `refbnn train`'s option parser
RANGES = {
    "width": Range(float, 0.0, MAX_WIDTH, low_open=True),
    "epochs": Range(int, 1, MAX_EPOCHS),
    "batch_size": Range(int, 1, MAX_BATCH_SIZE),
    "lr": Range(float, 0.0, low_open=True),
    "weight_decay": Range(float, 0.0),
    "bop_threshold": Range(float, 0.0),
    "bop_gamma": Range(float, 0.0, 1.0, low_open=True),
    "warmup_epochs": Range(int, 0, MAX_EPOCHS),
    "seed": Range(int, 0, MAX_SEED),
}


@dataclass
class TrainConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    model: str | None = None          # None: the data set's default
    width: float = 1.0
    method: str = "recu"
    method_params: dict | None = None  # Method.with_params overrides, e.g. {"T_min": 1e-3}
    convention: str = "paper"
    epochs: int | None = None         # None: the data set's default
    batch_size: int = 64
    lr: float | None = None           # None: the method's default
    optimizer: str | None = None      # None: the method's default; "bop": Bop for binary weights, Adam else
    weight_decay: float | None = None
    bop_threshold: float = 1e-8       # Larq's Bop defaults
    bop_gamma: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_epochs: int = 0
    seed: int = 0
    backend: str = "auto"             # the layers' kernel backend (refbnn.kernels): auto, cython or numpy
    device: str = "cpu"               # "cpu" (NumPy) or "gpu" (CuPy): where the model and the data live
    out: str | None = None            # directory for checkpoint.npz
    resume: bool = False              # continue from out/checkpoint.npz
    overwrite: bool = False           # replace out/checkpoint.npz of an earlier run (else an error)
    metrics_json: str | None = None
    progress: bool = True

    def resolved(self) -> "TrainConfig":
        """Fill the defaults that depend on the data set and method; validate names, ranges and paths
        (the paths' file system state is checked by :func:`check_outputs`)."""
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known data sets: {', '.join(DATASETS)}")
        if self.model is not None and self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known models: {', '.join(MODELS)}")
        method = get_method(self.method).with_params(**(self.method_params or {}))
        get_convention(self.convention)
        if self.device not in DEVICES:
            raise ValueError(f"device: expected one of {list(DEVICES)}, got {self.device!r}")
        if self.backend not in ("auto", "cython", "numpy"):
            raise ValueError(f"backend: expected 'auto', 'cython' or 'numpy', got {self.backend!r}")
        if self.device == "gpu" and self.backend == "cython":
            raise ValueError("backend 'cython' runs on the CPU; with device 'gpu' use 'auto' (the CUDA kernels) or "
                             "'numpy' (the reference, computed by CuPy)")
        for name in ("out", "metrics_json", "data_dir"):
            value = getattr(self, name)
            if value is None:
                continue
            text = os.fsdecode(value) if isinstance(value, (str, bytes, os.PathLike)) else None
            if not text or "\0" in text:
                raise ValueError(f"{name}: expected a non-empty path, got {value!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: --resume continues the checkpoint, "
                             "--overwrite replaces it")
        c = TrainConfig(**asdict(self))
        c.model = c.model or DEFAULT_MODEL.get(c.dataset, "mlp")
        c.epochs = c.epochs if c.epochs is not None else DEFAULT_EPOCHS.get(c.dataset, 30)
        c.lr = c.lr if c.lr is not None else method.lr
        c.optimizer = c.optimizer or method.optimizer
        c.weight_decay = c.weight_decay if c.weight_decay is not None else method.weight_decay
        if c.optimizer not in OPTIMIZER_NAMES:
            raise ValueError(f"unknown optimizer {c.optimizer!r}; known: {', '.join(OPTIMIZER_NAMES)}")
        if c.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {c.lr_schedule!r}; known: {', '.join(LR_SCHEDULES)}")
        for name, allowed in RANGES.items():
            allowed.check(name, getattr(c, name))
        if c.warmup_epochs > c.epochs:
            raise ValueError(f"warmup_epochs: expected at most epochs ({c.epochs}), got {c.warmup_epochs}")
        return c

    # settings a resumed run must share with the run that wrote the checkpoint
    RUN_KEYS = ("dataset", "model", "width", "method", "method_params", "convention", "epochs", "batch_size", "lr",
                "optimizer", "weight_decay", "bop_threshold", "bop_gamma", "lr_schedule", "warmup_epochs", "seed")


def _path_error(name, path, what):
    return ValueError(f"{name}: {path}: {what}")


def check_outputs(c: TrainConfig, create: bool = False):
    """Check that the run can write what it must, before any work: ``out`` is (or can be made) a
    writable directory whose checkpoint is resumed (``resume``), replaced (``overwrite``) or absent;
    ``metrics_json`` is (or can be) a file in a writable directory, not the checkpoint. With
    ``create``, make the directories and try a write in each (a temporary file, removed)."""
    ckpt = os.path.join(c.out, CHECKPOINT_NAME) if c.out else None
    if c.out:
        if os.path.exists(c.out) and not os.path.isdir(c.out):
            raise _path_error("out", c.out, "exists and is not a directory (out names the directory for "
                              f"{CHECKPOINT_NAME})")
        if os.path.isdir(ckpt) or (os.path.lexists(ckpt) and not os.path.isfile(ckpt)):
            raise _path_error("out", ckpt, "exists and is not a regular file")
        if c.resume and not os.path.exists(ckpt):
            raise FileNotFoundError(f"no checkpoint at {ckpt!r} to resume (--resume continues a run written "
                                    f"with --out {c.out})")
        if not c.resume and not c.overwrite and os.path.exists(ckpt):
            raise _path_error("out", ckpt, "holds the checkpoint of an earlier run; pass --resume to continue "
                              "it or --overwrite to replace it (or choose another --out)")
    elif c.resume:
        raise ValueError("--resume needs --out DIR (the directory holding checkpoint.npz)")
    if c.metrics_json:
        m = c.metrics_json
        if os.path.isdir(m):
            raise _path_error("metrics_json", m, "is a directory; expected a file name")
        if os.path.lexists(m) and not os.path.isfile(m):
            raise _path_error("metrics_json", m, "exists and is not a regular file")
        if ckpt and os.path.abspath(m) == os.path.abspath(ckpt):
            raise _path_error("metrics_json", m, "is the checkpoint file; choose another name")
        parent = os.path.dirname(os.path.abspath(m))
        probe = parent
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe):
            raise _path_error("metrics_json", m, f"{probe} is not a directory")
    if not create:
        return
    for name, directory in (("out", c.out), ("metrics_json", c.metrics_json and os.path.dirname(
            os.path.abspath(c.metrics_json)))):
        if not directory:
            continue
        try:
            os.makedirs(directory, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".refbnn-write-test-", dir=directory)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise _path_error(name, directory, f"cannot write there ({exc.strerror or exc})") from None


def write_json_atomic(path, obj):
    """Write ``obj`` as JSON to ``path`` through a temporary file renamed over it (removed on failure)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build(config: TrainConfig, input_shape, num_classes):
    method = get_method(config.method).with_params(**(config.method_params or {}))
    factory = LayerFactory(method, rng=np.random.default_rng(config.seed), convention=config.convention,
                           backend=config.backend)
    model = build_model(config.model, factory, input_shape, num_classes, config.width)
    groups = param_groups(model, config.weight_decay, no_decay_bn_and_bias)
    if config.optimizer == "bop":
        optimizer = build_bop_optimizer(groups, config.lr, config.bop_threshold, config.bop_gamma)
    else:
        opt_cls = OPTIMIZERS[config.optimizer]
        kwargs = {"momentum": 0.9} if config.optimizer == "sgd" else {}
        optimizer = opt_cls(groups, lr=config.lr, **kwargs)
    return method, model, optimizer


def random_crop_flip(x, rng, pad=4):
    """CIFAR augmentation: zero-pad by ``pad``, random crop back to size, random horizontal flip.
    The offsets and flips are drawn on the host from ``rng`` (the same draws for a NumPy and a CuPy
    batch); the crop itself is one gather in ``x``'s module."""
    xp = array_module(x)
    n, c, h, w = x.shape
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    flip = rng.random(n) < 0.5
    rows = dy[:, None] + np.arange(h)                                      # (n, h) rows of the padded image
    cols = dx[:, None] + np.where(flip[:, None], np.arange(w)[::-1], np.arange(w))  # (n, w), reversed if flipped
    padded = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    index = (xp.asarray(np.arange(n)[:, None, None, None]), xp.asarray(np.arange(c)[None, :, None, None]),
             xp.asarray(rows[:, None, :, None]), xp.asarray(cols[:, None, None, :]))
    return padded[index]


def _float64(loss):
    """The loss as the host sums it: a Python float there, a float64 0-d array on a device (the same
    bits, without waiting for the device)."""
    return loss if isinstance(loss, float) else loss.astype(np.float64)


def evaluate(model, x, y, batch_size=500):
    """(mean loss, accuracy) in eval mode, as Python floats. On a device the sums stay there until
    the end, and the value checks are answered once (refbnn.checks.deferred_checks)."""
    model.eval()
    correct, loss_sum = 0, 0.0
    with deferred_checks():
        for i in range(0, len(x), batch_size):
            logits, _ = model.forward(x[i:i + batch_size])
            loss, _ = ops.softmax_cross_entropy_forward(logits, y[i:i + batch_size])
            loss_sum = loss_sum + _float64(loss) * len(logits)
            correct = correct + (logits.argmax(axis=1) == y[i:i + batch_size]).sum()
    model.train()
    loss_sum, correct = read_scalars((loss_sum, correct))
    return loss_sum / len(x), int(correct) / len(x)


@contextlib.contextmanager
def _buffers_restored_on_error(model):
    """Put the buffers (batch norm's running statistics, which the forward pass updates in place) back
    as they were if the block raises: a failed step leaves the model unchanged, on the host (where a
    check fails at once, midway through the forward pass) and on a device (where the forward and
    backward passes run to the end before the deferred checks fail) alike."""
    saved = [(m.buffers, k, v.copy()) for _, m in model.modules() for k, v in m.buffers.items()]
    try:
        yield
    except BaseException:
        for store, k, v in saved:
            store[k][...] = v
        raise


def train_step(model, optimizer, constraint, x, y):
    """One step on the batch (x, y): zero_grad, forward, softmax cross-entropy, backward, optimizer
    step, then ``constraint`` (a weight clip, or None). Returns (loss, logits), the loss a float (a 0-d
    array on a device); FloatingPointError when the loss is not finite.

    Forward and backward run in a :func:`refbnn.checks.deferred_checks` block: on a device their value
    checks and the loss check are answered together, in one synchronisation, before the optimizer
    changes any weight (on the host each is answered at once, as always). A step that fails changes
    no parameter and no buffer."""
    model.zero_grad()
    with _buffers_restored_on_error(model), deferred_checks():
        logits, cache = model.forward(x)
        loss, lcache = ops.softmax_cross_entropy_forward(logits, y)

        def diverged():
            raise FloatingPointError(f"training diverged: loss is {float(loss)}; lower --lr")

        check_value(array_module(loss).isfinite(loss), diverged)
        model.backward(ops.softmax_cross_entropy_backward(lcache), cache)
    optimizer.step()
    if constraint is not None:
        constraint.apply(model)
    return loss, logits


def train_epoch(model, optimizer, constraint, data, batch_size, rng, progress=None, flips=None):
    """One pass over the shuffled training set; returns (mean loss, accuracy). ``flips``: a
    :class:`refbnn.flips.FlipTracker` whose ``after_step`` runs after each step (and weight clip)."""
    n = len(data.x_train)
    xp = array_module(data.x_train)
    perm = move(rng.permutation(n), xp)  # drawn on the host: the same order on every device
    stop = n - (n % batch_size) if n % batch_size == 1 else n  # a batch of 1 cannot be batch-normalised
    loss_sum, correct, seen = 0.0, 0, 0
    shown = time.monotonic()
    for i in range(0, stop, batch_size):
        idx = perm[i:i + batch_size]
        x, y = data.x_train[idx], data.y_train[idx]
        if data.augment:
            x = random_crop_flip(x, rng)
        loss, logits = train_step(model, optimizer, constraint, x, y)
        if flips is not None:
            flips.after_step()
        loss_sum = loss_sum + _float64(loss) * len(idx)  # on a device these sums stay there
        correct = correct + (logits.argmax(axis=1) == y).sum()
        seen += len(idx)
        if progress is not None:
            progress.update(1)
            # reading the sums waits for a device: there, at most once a second
            if xp is np or time.monotonic() - shown >= 1.0:
                shown_loss, shown_correct = read_scalars((loss_sum, correct))
                progress.set_postfix(loss=f"{shown_loss / seen:.3f}", acc=f"{shown_correct / seen:.3f}", refresh=False)
                shown = time.monotonic()
    loss_sum, correct = read_scalars((loss_sum, correct))
    return loss_sum / seen, int(correct) / seen


def _binary_parameter_count(model):
    return sum(m.params["weight"].size for _, m in model.modules()
               if getattr(m, "weight_quantizer", None) is not None)


def train(config: TrainConfig, log=print) -> dict:
    """Run a training job; returns the metrics dict (also written to ``metrics_json``)."""
    c = config.resolved()
    check_outputs(c)
    xp = device_module(c.device)  # before any work: says why a GPU cannot be used
    data = load_dataset(c.dataset, c.data_dir)
    method, model, optimizer = build(c, data.input_shape, data.num_classes)
    convention = get_convention(c.convention)
    constraint = WeightClip(method.latent_clip) if method.latent_clip else None
    check_outputs(c, create=True)
    ckpt_path = os.path.join(c.out, CHECKPOINT_NAME) if c.out else None
    run = {k: getattr(c, k) for k in TrainConfig.RUN_KEYS}
    history = {k: [] for k in HISTORY_KEYS}
    tracker = FlipTracker(model)
    start_epoch, seconds_before = 0, 0.0

    if c.resume:
        mstate, ostate, meta = load_checkpoint(ckpt_path, model_layout(model), optimizer_layout(optimizer))
        diff = {k: (meta["run"].get(k), v) for k, v in run.items() if meta["run"].get(k) != v}
        if diff:
            raise ValueError("cannot resume: the checkpoint was written with other settings "
                             + ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in diff.items()))
        if meta["epoch"] >= c.epochs:
            raise CheckpointError(f"{ckpt_path}: the checkpoint says epoch {meta['epoch'] + 1} is done, but the run "
                                  f"has {c.epochs} epochs; it is not a checkpoint of this run")
        model.load_state_dict(mstate)
        optimizer.load_state_dict(ostate)
        start_epoch, history, seconds_before = meta["epoch"] + 1, meta["history"], meta["seconds"]
        log(f"resuming from {ckpt_path} after epoch {start_epoch} of {c.epochs}"
            + (" (the run is complete; nothing left to train)" if start_epoch == c.epochs else ""))
    if xp is not np:  # the model and the whole data set move once; each step then stays on the device
        model.to(xp)
        optimizer.to(xp)
        data = dataclasses.replace(data, **{k: move(getattr(data, k), xp)
                                            for k in ("x_train", "y_train", "x_test", "y_test")})
        log(f"training on the GPU: model and data are {device_name(xp)} arrays")

    steps = -(-len(data.x_train) // c.batch_size)
    bar = None
    if c.progress:
        from tqdm import tqdm  # noqa: PLC0415 - only needed for interactive runs

        bar = tqdm(total=c.epochs * steps, initial=start_epoch * steps, desc=f"{c.method}/{c.model}/{c.dataset}",
                   unit="step", dynamic_ncols=True,
                   mininterval=0.2 if sys.stderr.isatty() else 10.0)  # a log file gets a line every 10 s
    t0 = time.perf_counter()
    for epoch in range(start_epoch, c.epochs):
        t_epoch = time.perf_counter()
        optimizer.lr = LR_SCHEDULES[c.lr_schedule](epoch, c.epochs, c.lr, warmup_epochs=c.warmup_epochs)
        values = method.on_epoch(model, epoch, c.epochs, convention, rng=np.random.default_rng([c.seed, epoch, 1]))
        rng = np.random.default_rng([c.seed, epoch])
        tracker.start_epoch()
        try:
            tr_loss, tr_acc = train_epoch(model, optimizer, constraint, data, c.batch_size, rng, bar, tracker)
        except ValueError as exc:  # a layer refusing non-finite weights: the optimizer diverged
            bad = [k for k, v in model.host_state_dict().items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
            if bad:
                raise FloatingPointError(f"training diverged in epoch {epoch + 1}: {bad[0]} is no longer finite "
                                         f"({exc}); lower --lr") from exc
            raise
        flips = tracker.end_epoch()
        te_loss, te_acc = evaluate(model, data.x_test, data.y_test)
        for k, v in (("train_loss", tr_loss), ("train_accuracy", tr_acc), ("test_loss", te_loss),
                     ("test_accuracy", te_acc), ("lr", optimizer.lr), ("schedule", values), ("flips", flips),
                     ("flip_ratio_mean", tracker.mean), ("epoch_seconds", time.perf_counter() - t_epoch)):
            history[k].append(v)
        if bar is not None:
            bar.set_description(f"{c.method}/{c.model}/{c.dataset} epoch {epoch + 1}/{c.epochs} test {te_acc:.3f}")
        if ckpt_path:
            meta = {"epoch": epoch, "run": run, "history": history,
                    "seconds": seconds_before + time.perf_counter() - t0}
            save_checkpoint(ckpt_path, model.host_state_dict(),
                            {k: to_host(v) for k, v in optimizer.state_dict().items()}, meta)
    if bar is not None:
        bar.close()
    seconds = seconds_before + time.perf_counter() - t0
    metrics = {
        "test_accuracy": history["test_accuracy"][-1] if history["test_accuracy"] else None,
        "train_loss": history["train_loss"], "train_accuracy": history["train_accuracy"],
        "test_loss": history["test_loss"], "test_accuracy_per_epoch": history["test_accuracy"],
        "lr": history["lr"], "schedule": history["schedule"],
        "epochs": c.epochs, "seconds": seconds, "method": c.method, "model": c.model, "dataset": c.dataset,
        "convention": c.convention, "method_params": c.method_params or {}, "seed": c.seed, "batch_size": c.batch_size, "base_lr": c.lr,
        "optimizer": c.optimizer, "parameters": model.num_parameters(),
        "binary_parameters": _binary_parameter_count(model),
        **flip_metrics(tracker.names, history["flips"], history["flip_ratio_mean"]),
        "epoch_seconds": history["epoch_seconds"],
    }
    if c.metrics_json:
        write_json_atomic(c.metrics_json, metrics)
    return metrics
