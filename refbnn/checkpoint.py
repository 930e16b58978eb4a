"""Checkpoints: one ``.npz`` of named arrays, written atomically, read without pickle or trust.

Keys: ``model/<parameter or buffer name>``, ``optim/<state name>``, and ``meta``, a 0-d string
holding JSON: the format tag, ``epoch`` (the 0-based epoch just finished), ``run`` (the settings a
resumed run must share), ``history`` (one entry per finished epoch for each metric) and ``seconds``.

Writing goes to a temporary file ``.<name>.tmp-*.npz`` in the same directory, held under an
exclusive ``flock`` while it is written, flushed to disk, then renamed over the old checkpoint, so a
crash never leaves a half-written file in place of a good one. The temporary files a killed writer
left behind (no process holds their lock) are removed by the next write.

Layer names: the model keys are the layers' readable names (``model/stage2.block1.conv1.weight``,
:mod:`refbnn.models`). Checkpoints of earlier refbnn versions named the layers by position
(``model/4.weight``); reading one for a refbnn model raises a :class:`CheckpointError` that says so
and lists the expected names. The keys are never remapped: a position does not say which layer it
was once the models changed.

Reading goes through :func:`refbnn.npzio.read_npz`: every member's size and dtype are checked from
the zip entry and the ``.npy`` header before it is decompressed, and, given the layouts of the
model and optimizer being resumed (:func:`model_layout`, :func:`optimizer_layout`), each array must
have exactly the expected name, shape and dtype before it is read, and finite values. ``meta`` is
checked field by field (:func:`check_meta`).
"""
from __future__ import annotations

import glob
import json
import math
import os
import tempfile
import time

import numpy as np

from .npzio import NpzError, read_npz

FORMAT = "refbnn-checkpoint-v1"
HISTORY_KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "schedule", "flips",
                "flip_ratio_mean", "epoch_seconds")
FLIP_KEYS = ("all", "tail", "body", "tail_share")   # a history["flips"] entry: {layer: {key: ratio}}
MAX_ARRAY_BYTES = 4 << 30     # without a layout: at most 4 GiB per array, 16 GiB in all
MAX_TOTAL_BYTES = 16 << 30
MAX_META_BYTES = 1 << 30      # the JSON metadata, stored as UTF-32 (4 bytes a character): the metric history with
                              # the flip records, about 10 kB an epoch for resnet18's 16 binary layers, 1 GB at
                              # MAX_EPOCHS (refbnn.train)
STEPS_KEY = "__steps__"

try:  # POSIX: a writer holds its temporary file locked, so only a dead writer's leftovers are removed
    import fcntl
except ImportError:  # pragma: no cover - Windows: leftovers older than a day are removed instead
    fcntl = None
STALE_SECONDS_WITHOUT_LOCKS = 24 * 3600


class CheckpointError(ValueError):
    """A file that is not a complete, consistent refbnn checkpoint (of this model)."""


# ---- layouts: what a checkpoint of a given model and optimizer holds --------------------------------

def model_layout(model) -> dict:
    """``name -> (shape, dtype)`` of every array in ``model.state_dict()`` (all are required)."""
    return {k: (tuple(np.shape(v)), np.asarray(v).dtype) for k, v in model.state_dict().items()}


def optimizer_layout(optimizer) -> dict:
    """``name -> (shape, dtype)`` of every array ``optimizer.state_dict()`` may hold: one per parameter and
    slot (the slots exist once the parameter was updated) and the step counters ``__steps__`` (required,
    dtype None: any integer dtype). A :class:`refbnn.optim.CaseOptimizer` namespaces by position."""
    if hasattr(optimizer, "optimizers"):
        out = {STEPS_KEY: ((), None)}
        for i, sub in enumerate(optimizer.optimizers):
            out.update({f"{i}/{k}": v for k, v in optimizer_layout(sub).items()})
        return out
    out = {STEPS_KEY: ((), None)}
    for _, name, module, key in optimizer._all():
        p = module.params[key]
        for slot in optimizer.slots:
            out[f"{name}.{slot}"] = (tuple(p.shape), p.dtype)
    return out


def _required_in_optimizer(layout: dict):
    return {k for k in layout if k == STEPS_KEY or k.endswith("/" + STEPS_KEY)}


# ---- writing -----------------------------------------------------------------------------------------

def _temp_pattern(path):
    directory, name = os.path.split(os.path.abspath(path))
    return directory, f".{name}.tmp-"


def remove_stale_temp_files(path) -> list:
    """Remove the temporary files that a killed writer of checkpoint ``path`` left next to it (ours only:
    ``.<name>.tmp-*.npz``, and ``.tmp-*.npz`` of earlier refbnn versions when ``name`` is checkpoint.npz);
    a file another live writer holds locked is kept. Returns the paths removed."""
    directory, prefix = _temp_pattern(path)
    candidates = glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + "*.npz"))
    if os.path.basename(path) == "checkpoint.npz":  # refbnn <= 0.x: mkstemp(prefix=".tmp-", suffix=".npz")
        candidates += [p for p in glob.glob(os.path.join(glob.escape(directory), ".tmp-*.npz"))
                       if len(os.path.basename(p)) == len(".tmp-") + 8 + len(".npz")]
    removed = []
    for candidate in candidates:
        try:
            if not os.path.isfile(candidate) or os.path.islink(candidate):
                continue
            if fcntl is None:
                if os.stat(candidate).st_mtime > time.time() - STALE_SECONDS_WITHOUT_LOCKS:
                    continue
                os.unlink(candidate)
            else:
                fd = os.open(candidate, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a live writer: BlockingIOError
                    os.unlink(candidate)
                finally:
                    os.close(fd)
            removed.append(candidate)
        except OSError:  # locked by a live writer, or gone already
            continue
    return removed


def _locked_temp_file(path):
    directory, prefix = _temp_pattern(path)
    while True:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".npz", dir=directory)
        if fcntl is None:
            return fd, tmp
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:  # not removed as stale between mkstemp and flock
            return fd, tmp
        os.close(fd)


def save_checkpoint(path, model_state: dict, optim_state: dict, meta: dict):
    """Write a checkpoint atomically (see the module docstring); stale temporary files of earlier,
    killed writes of ``path`` are removed first."""
    arrays = {f"model/{k}": np.asarray(v) for k, v in model_state.items()}
    arrays.update({f"optim/{k}": np.asarray(v) for k, v in optim_state.items()})
    arrays["meta"] = np.asarray(json.dumps({"format": FORMAT, **meta}))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = _locked_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # before close: the lock is held until the file has its final name
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---- reading -----------------------------------------------------------------------------------------

def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_meta(meta, path="checkpoint") -> dict:
    """The checkpoint metadata, checked field by field: a JSON object with ``format``, ``epoch`` (an int >= 0),
    ``run`` (an object), ``history`` (for each of :data:`HISTORY_KEYS`, a list of ``epoch + 1`` entries:
    finite numbers, accuracies in [0, 1], epoch seconds >= 0, schedule values as objects of numbers, flip
    records as ``{layer: {"all", "tail", "body", "tail_share"}}`` with ratios in [0, 1] (tail and body may be
    null: an empty set) and the same layers every epoch, ``flip_ratio_mean`` a ratio or null) and ``seconds``
    (finite, >= 0).
    Raises :class:`CheckpointError` naming the field."""
    def bad(what):
        return CheckpointError(f"{path}: checkpoint metadata: {what}")

    if not isinstance(meta, dict):
        raise bad(f"expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise bad(f"format {meta.get('format')!r}, expected {FORMAT!r}")
    missing = [k for k in ("epoch", "run", "history", "seconds") if k not in meta]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    epoch = meta["epoch"]
    if type(epoch) is not int or epoch < 0:
        raise bad(f"epoch: expected an integer >= 0, got {epoch!r}")
    if not isinstance(meta["run"], dict):
        raise bad(f"run: expected a JSON object, got {type(meta['run']).__name__}")
    if not _number(meta["seconds"]) or meta["seconds"] < 0:
        raise bad(f"seconds: expected a finite number >= 0, got {meta['seconds']!r}")
    history = meta["history"]
    if not isinstance(history, dict):
        raise bad(f"history: expected a JSON object, got {type(history).__name__}")
    for key in HISTORY_KEYS:
        values = history.get(key)
        if not isinstance(values, list) or len(values) != epoch + 1:
            got = f"{len(values)} entries" if isinstance(values, list) else repr(type(values).__name__)
            raise bad(f"history.{key}: expected a list of {epoch + 1} entries (one per finished epoch), got {got}")
        for i, v in enumerate(values):
            if key == "schedule":
                ok = isinstance(v, dict) and all(isinstance(k, str) and (_number(x) or x is None)
                                                 for k, x in v.items())
            elif key == "flips":
                ok = _valid_flips(v, values[0])
            elif key == "flip_ratio_mean":
                ok = v is None or _ratio(v)
            else:
                ok = _number(v) and (0 <= v <= 1 if key.endswith("accuracy") else True) \
                    and (v >= 0 if key == "epoch_seconds" else True)
            if not ok:
                hint = (f" (expected {{layer: {{{', '.join(FLIP_KEYS)}: ratio in [0, 1] or null}}}} for the "
                        "layers of history.flips[0])") if key == "flips" else ""
                raise bad(f"history.{key}[{i}] = {_short(v)} is not a valid value{hint}")
    return meta


def _ratio(x) -> bool:
    return _number(x) and 0 <= x <= 1


def _valid_flips(entry, first) -> bool:
    """One epoch's flip record: {layer: {"all": r, "tail": r or None, "body": r or None, "tail_share": r}},
    r in [0, 1], with the same layers as the first epoch's."""
    if not isinstance(entry, dict) or not isinstance(first, dict) or list(entry) != list(first):
        return False
    for layer, v in entry.items():
        if not isinstance(layer, str) or not isinstance(v, dict) or sorted(v) != sorted(FLIP_KEYS):
            return False
        if not (_ratio(v["all"]) and _ratio(v["tail_share"])
                and all(v[k] is None or _ratio(v[k]) for k in ("tail", "body"))):
            return False
    return True


def _short(v, limit=200) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def _positional(key: str) -> bool:
    """A state-dict key whose layer name starts with a position (``4.weight``): refbnn's names before layers
    had readable names."""
    return key.split(".", 1)[0].isdigit()


def _layer_names(keys) -> list:
    """Layer names of state-dict keys, in order: ``hidden1.fc.weight`` -> ``hidden1.fc`` (quantizer state
    ``hidden1.fc.weight_quantizer.tau`` -> ``hidden1.fc`` too)."""
    names = {}
    for k in keys:
        head = k.rsplit(".", 1)[0]
        if head.endswith(("weight_quantizer", "input_quantizer")):
            head = head.rsplit(".", 1)[0]
        names[head] = None
    return list(names)


class PositionalNamesError(CheckpointError):
    """A checkpoint with the positional layer names of an earlier refbnn (``model/4.weight``): the message
    names the file, a positional key found and the layer names this refbnn expects."""

    def __init__(self, path, found: str, expected_layers: list, model_name=None):
        self.found, self.expected_layers, self.model_name = found, list(expected_layers), model_name
        n = len(self.expected_layers)
        shown = ", ".join(self.expected_layers[:12]) + (f", ... ({n} layers)" if n > 12 else "")
        of = f" of model {model_name!r}" if model_name else ""
        super().__init__(
            f"{path} uses the old positional layer names of an earlier refbnn (e.g. model/{found}); this refbnn "
            f"names the layers{of}: expected keys model/<layer>.<parameter> for the layers {shown}. The keys are "
            "not remapped: train the model again with this refbnn (or load the arrays yourself with numpy.load)")

    def at(self, path) -> "PositionalNamesError":
        return PositionalNamesError(path, self.found, self.expected_layers, self.model_name)


def _expect(layouts):
    """The ``check`` for read_npz: each member's name, shape and dtype against the layouts, before reading."""
    model, optim = layouts

    def check(name, shape, dtype):
        if name == "meta":
            if dtype.kind != "U" or shape != () or dtype.itemsize > MAX_META_BYTES:
                raise CheckpointError(f"'meta': expected a 0-d string of at most {MAX_META_BYTES} bytes, got "
                                      f"{dtype} {shape}")
            return
        group, _, key = name.partition("/")
        layout = {"model": model, "optim": optim}.get(group)
        if layout is None:
            raise CheckpointError(f"unexpected entry {name!r} (a checkpoint holds model/..., optim/... and meta)")
        if key not in layout:
            if group == "model" and _positional(key) and not any(_positional(k) for k in layout):
                raise PositionalNamesError("the checkpoint", key, _layer_names(layout))
            raise CheckpointError(f"{name!r} is not an array of this {'model' if group == 'model' else 'optimizer'} "
                                  f"(the checkpoint was written for another model or optimizer)")
        want_shape, want_dtype = layout[key]
        if want_dtype is None:  # a step counter
            if shape != () or dtype.kind not in "iu":
                raise CheckpointError(f"{name!r}: expected a 0-d integer, got {dtype} {shape}")
        elif shape != want_shape or dtype != want_dtype:
            raise CheckpointError(f"{name!r}: expected {want_dtype} {want_shape}, got {dtype} {shape}")
    return check


def _check_layer_names(path, model_state, meta):
    """A checkpoint of a refbnn model (``meta.run.model``) with positional layer names: CheckpointError."""
    run = meta.get("run") if isinstance(meta, dict) else None
    name = run.get("model") if isinstance(run, dict) else None
    found = [k for k in model_state if _positional(k)]
    if not found or not isinstance(name, str):
        return
    from .models import MODELS, layer_names  # noqa: PLC0415 - the models import the layers, not this module

    if name in MODELS and not any(_positional(k) for k in layer_names(name)):
        raise PositionalNamesError(path, found[0], layer_names(name), name)


def load_checkpoint(path, model_layout: dict | None = None, optim_layout: dict | None = None):
    """Returns (model_state, optim_state, meta). ``model_layout``/``optim_layout`` (see :func:`model_layout`,
    :func:`optimizer_layout`): the arrays the checkpoint must hold, checked before any is read. A
    :class:`CheckpointError` (a ``ValueError``) for anything that is not a complete refbnn checkpoint,
    ``FileNotFoundError`` when there is none."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    layouts = None if model_layout is None else (model_layout, optim_layout or {})
    try:
        arrays = read_npz(path, max_member_bytes=MAX_ARRAY_BYTES, max_total_bytes=MAX_TOTAL_BYTES,
                          check=_expect(layouts) if layouts else None)
    except PositionalNamesError as exc:
        raise exc.at(path) from None
    except CheckpointError as exc:
        raise CheckpointError(f"{path} is not a valid refbnn checkpoint of this run: {exc}") from None
    except NpzError as exc:
        raise CheckpointError(f"{path} is not a valid refbnn checkpoint ({exc})") from None
    if "meta" not in arrays or arrays["meta"].dtype.kind != "U" or arrays["meta"].shape != ():
        raise CheckpointError(f"{path} is not a refbnn checkpoint: the 'meta' entry is missing")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON ({type(exc).__name__}: {exc})") from None
    model = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
    _check_layer_names(path, model, meta)
    check_meta(meta, path)
    optim = {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}
    if layouts:
        missing = sorted(set(model_layout) - set(model))
        missing += sorted(f"optim/{k}" for k in _required_in_optimizer(layouts[1]) - set(optim))
        if missing:
            raise CheckpointError(f"{path} is not a complete checkpoint of this run: missing {', '.join(missing[:5])}"
                                  + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        for group, state in (("model", model), ("optim", optim)):
            for k, v in state.items():
                if v.dtype.kind == "f" and not np.isfinite(v).all():
                    raise CheckpointError(f"{path}: {group}/{k} contains NaN or Inf")
                if v.dtype.kind in "iu" and k.endswith(STEPS_KEY) and v < 0:
                    raise CheckpointError(f"{path}: {group}/{k} = {v} is negative")
    return model, optim, meta
