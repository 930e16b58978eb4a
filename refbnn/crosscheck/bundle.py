"""Bundles: ``.npz`` files of named arrays, read and written; their settings read as Python values.

A bundle holds a layer's or a quantizer's inputs and expected outputs (:data:`LAYER_INPUTS`,
:data:`LAYER_OUTPUTS`, :data:`QUANTIZER_INPUTS`, :data:`QUANTIZER_OUTPUTS`); every other entry is a
setting (a 0-d array, read with :func:`_scalar`), or metadata naming how it was made (0-d strings,
:data:`META_KEYS`). :class:`_Namespace` holds the settings and ``--param`` values by name and makes sure
each one is used by something.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import tempfile

import numpy as np

from ..conventions import Convention
from ..npzio import NpzError, read_npz
from ..params import read_setting

META_KEYS = ("method", "convention", "quantizer", "input_quantizer", "kernel_quantizer", "schedule", "part", "layer",
             "layout")
GEOMETRY = ("stride", "padding", "dilation", "groups")


class BundleError(ValueError):
    """A bundle or a request that cannot be checked; the message names the array and what was expected."""



MAX_ARRAY_BYTES = 256 << 20   # a bundle holds test tensors: at most 256 MiB per array, 1 GiB in all
MAX_BUNDLE_BYTES = 1 << 30
MAX_ARRAYS = 1000


def load_bundle(path) -> dict:
    """The arrays of an ``.npz`` file, read by :func:`refbnn.npzio.read_npz` (every size checked from the zip
    entry and the ``.npy`` header before anything is decompressed: at most :data:`MAX_ARRAY_BYTES` per array
    and :data:`MAX_BUNDLE_BYTES` in all; plain numbers and strings only, never pickle); clear errors otherwise."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such bundle file")
    if os.path.isdir(path):
        raise BundleError(f"{path}: is a directory; expected an .npz bundle file")
    try:
        with open(path, "rb") as f:
            single = f.read(6) == b"\x93NUMPY"
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if single:
        raise BundleError(f"{path}: holds a single array (.npy), not a bundle of named arrays; write one with "
                          f"numpy.savez(path, x=..., out=..., ...)")
    try:
        data = read_npz(path, max_member_bytes=MAX_ARRAY_BYTES, max_total_bytes=MAX_BUNDLE_BYTES,
                        max_members=MAX_ARRAYS)
    except NpzError as exc:
        why = str(exc)[len(path) + 2:] if str(exc).startswith(path + ": ") else str(exc)
        raise BundleError(f"{path}: not a readable .npz bundle ({why}); write one with numpy.savez(path, x=..., "
                          f"out=..., ...)") from None
    if not data:
        raise BundleError(f"{path}: the bundle holds no arrays")
    return data


def _scalar(name, a):
    """A bundle setting (0-d array, or a short 1-d int vector for pairs) as a Python value."""
    a = np.asarray(a)
    if a.dtype.kind in "US":
        if a.ndim:
            raise BundleError(f"{name}: expected a 0-d string, got shape {a.shape}")
        return read_setting(str(a[()]))  # npz has no None: "none" stands for it, "'none'" for the string
    if a.dtype.kind not in "biuf":
        raise BundleError(f"{name}: expected a number, got dtype {a.dtype}")
    if a.ndim == 0:
        return a.item()
    if a.ndim == 1 and a.size in (2, 4) and name in GEOMETRY:
        return tuple(v.item() for v in a)
    raise BundleError(f"{name}: expected a scalar (0-d array), got shape {a.shape}")


def _int(name, v):
    if (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating))
            or not np.isfinite(v) or v != int(v)):
        raise BundleError(f"{name}: expected an integer, got {v!r}")
    return int(v)


# settings that are booleans (the layer's mode, the convention's flags): read strictly, never with bool()
FLAGS = ("training",) + tuple(f.name for f in dataclasses.fields(Convention) if f.type in ("bool", bool))


def _flag(name, v, source="the bundle"):
    """A boolean setting: True/False, the integers 0/1 or the strings true/false (any case); anything else
    (``"no"``, ``"0"``, NaN, 2, ...) is an error, where ``bool()`` would read it as True."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise BundleError(f"{name} (from {source}): expected true or false (a bool, 0 or 1, or the string true/false), "
                      f"got {v!r}")


def _pair(name, v, minimum):
    vals = (v, v) if not isinstance(v, tuple) else v
    if len(vals) != 2:
        raise BundleError(f"{name}: expected an int or a pair of ints, got {v!r}")
    vals = tuple(_int(name, e) for e in vals)
    if min(vals) < minimum:
        raise BundleError(f"{name}: expected values >= {minimum}, got {v!r}")
    return vals


def _same_value(a, b):
    try:
        return bool(np.all(np.asarray(a) == np.asarray(b)))
    except Exception:  # noqa: BLE001
        return False



LAYER_INPUTS = ("x", "weight", "kernel", "bias", "alpha", "grad_out")
LAYER_OUTPUTS = ("out", "grad_x", "grad_weight", "grad_kernel", "grad_bias", "grad_alpha")


QUANTIZER_INPUTS = ("x", "grad_out")
QUANTIZER_OUTPUTS = ("out", "grad_x")


def _split_bundle(data: dict):
    """(arrays, settings, metadata): metadata are the 0-d strings naming how the bundle was made."""
    arrays, settings, meta = {}, {}, {}
    for k, a in data.items():
        a = np.asarray(a)
        if k in META_KEYS:
            if a.dtype.kind != "U" or a.ndim:
                raise BundleError(f"{k}: expected a 0-d string (how the bundle was made), got {a.dtype} shape {a.shape}")
            meta[k] = str(a[()])
        elif k in LAYER_INPUTS or k in LAYER_OUTPUTS:
            arrays[k] = a
        else:
            settings[k] = a
    return arrays, settings, meta



def _fmt(shape):
    return str(tuple(int(s) for s in shape))


def _need(arrays, name, shape_doc, why=""):
    if name not in arrays:
        raise BundleError(f"the bundle lacks {name!r}{why}: expected an array of shape {shape_doc}")
    return arrays[name]


def _expect_shape(arrays, name, shape, doc=""):
    if name in arrays and tuple(arrays[name].shape) != tuple(shape):
        raise BundleError(f"{name}: expected shape {_fmt(shape)}{' ' + doc if doc else ''}, got "
                          f"{_fmt(arrays[name].shape)} (shapes must agree exactly; nothing is broadcast)")



def _check_input_dtypes(arrays, names):
    present = [(n, arrays[n]) for n in names if n in arrays]
    for n, a in present:
        if a.dtype not in (np.float32, np.float64):
            raise BundleError(f"{n}: expected dtype float32 or float64, got {a.dtype}")
    dtypes = {a.dtype for _, a in present}
    if len(dtypes) > 1:
        raise BundleError("the inputs must share one float dtype (refbnn computes in it): "
                          + ", ".join(f"{n} is {a.dtype}" for n, a in present))
    for n, a in present:
        if not np.isfinite(a).all():
            raise BundleError(f"{n}: contains NaN or Inf")



class _Namespace:
    """Named values: the bundle's settings and ``--param``, one value per name (a different value in both
    is an error). ``take`` marks a name used; every name must end up used by someone (see
    :func:`_check_all_used`)."""

    def __init__(self, bundle_values: dict, params: dict):
        for source, given in (("the bundle", bundle_values), ("--param", params)):
            if "pad_value" in given and "pad_values" in given:
                raise BundleError(f"{source} holds both 'pad_value' and 'pad_values' (Larq's name), two names for one "
                                  f"setting; keep one")
        values = {("pad_value" if k == "pad_values" else k): (_flag(k, v) if k in FLAGS else v)
                  for k, v in bundle_values.items()}
        for k, v in params.items():
            k = "pad_value" if k == "pad_values" else k
            if k in FLAGS:
                v = _flag(k, v, "--param")
            if k in values and not _same_value(values[k], v):
                raise BundleError(f"{k} is given by the bundle ({values[k]!r}) and by --param ({v!r}); remove one")
            values[k] = v
        self.values = values
        self.used: set = set()

    def take(self, name, default=None):
        if name in self.values:
            self.used.add(name)
            return self.values[name]
        return default

    def has(self, name):
        return name in self.values

    def rest(self, exclude=()) -> dict:
        """The names not used yet and not excluded: name -> value."""
        return {k: v for k, v in self.values.items() if k not in self.used and k not in exclude}

    def check_all_used(self, known):
        unused = sorted(set(self.values) - self.used)
        if unused:
            raise _no_effect(unused, known)


def _no_effect(names, known):
    hints = [f"{u!r}: did you mean {m!r}?" for u in names for m in [_nearest(u, known)] if m]
    return BundleError(f"{', '.join(repr(u) for u in names)}: not a setting of this check, so "
                       f"{'it' if len(names) == 1 else 'they'} would have no effect; settings known here: "
                       f"{', '.join(sorted(known))}" + (f" ({'; '.join(hints)})" if hints else ""))


# Other frameworks' names for the bundle's arrays (PyTorch's hooks call dL/dx grad_input).
SYNONYMS = {"input": "x", "inputs": "x", "grad_input": "grad_x", "output": "out", "outputs": "out",
            "grad_output": "grad_out", "kernel_grad": "grad_kernel", "weight_grad": "grad_weight"}


def _nearest(name, known):
    """The known name ``name`` most likely stands for: a framework synonym, else the closest spelling
    (difflib.get_close_matches); None when nothing is close."""
    known = sorted(known)
    if SYNONYMS.get(name) in known:
        return SYNONYMS[name]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None



def save_bundle(path, bundle: dict, overwrite: bool = True):
    """Write ``bundle`` (name -> array or number or string) as an ``.npz`` at ``path``, atomically (a temporary
    file in the same directory, renamed over ``path``; removed if anything fails); returns the path. With
    ``overwrite=False`` an existing file is an error."""
    path = os.fspath(path)
    arrays = {k: np.asarray(v) for k, v in bundle.items()}
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{path}: exists; pass --overwrite (overwrite=True) to replace it")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        if not overwrite and os.path.lexists(path):
            raise FileExistsError(f"{path}: exists; pass --overwrite (overwrite=True) to replace it")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


_save = save_bundle




# --- readings: arrays held as other frameworks hold them -----------------------------------------------

PER_CHANNEL = ("bias", "alpha", "grad_bias", "grad_alpha")
QUANTIZER_ALIASES = ("weight", "kernel")  # a weight quantizer's input under the layer check's names


def _unknown_array(name, a, known_arrays):
    """A bundle entry that is neither a known array nor a scalar setting: suggest the nearest known name."""
    hint = _nearest(name, known_arrays)
    return BundleError(f"{name}: expected a scalar (0-d array) for a setting, got shape {_fmt(a.shape)}; {name!r} is "
                       f"not an array this check reads" + (f": did you mean {hint!r}?" if hint else "")
                       + f" (arrays the bundle may hold here: {', '.join(known_arrays)})")


class Readings:
    """How a bundle's arrays are read where they are held as a framework holds them: a size-1 array as a
    scalar (PyTorch's ``torch.tensor([0.1])``), a per-output-channel array with singleton axes ((O, 1, 1),
    (1, O, 1, 1), (O, 1, 1, 1)) as (O,), a weight quantizer's input named ``weight``/``kernel`` as its
    ``x``. Only a reading with one possible meaning is made: the shapes must hold the same numbers in the
    same order, nothing is broadcast. Each reading is a line of the report (:attr:`lines`); outputs are
    compared in the bundle's own shape (:meth:`restore`) and under the bundle's own name (:meth:`name`)."""

    def __init__(self):
        self.lines: list = []
        self.shapes: dict = {}  # refbnn's name -> the bundle's shape, where they differ
        self.names: dict = {}   # refbnn's name -> the bundle's name, where they differ

    def scalar(self, name, a):
        """A size-1 array with axes as a 0-d one (one reading line)."""
        a = np.asarray(a)
        if a.ndim and a.size == 1:
            self.lines.append(f"{name} {_fmt(a.shape)} read as a scalar")
            return a.reshape(())
        return a

    def scalars(self, settings: dict) -> dict:
        return {k: self.scalar(k, a) for k, a in settings.items()}

    def as_shape(self, name, a, shape):
        """``a`` read in ``shape`` when it holds the same numbers with only singleton axes added or removed;
        otherwise unchanged (the shape check that follows names the mismatch)."""
        shape = tuple(shape)
        if a.shape == shape or a.size != int(np.prod(shape, dtype=np.int64)) or \
                [d for d in a.shape if d != 1] != [d for d in shape if d != 1]:
            return a
        self.shapes[name] = a.shape
        self.lines.append(f"{name} {_fmt(a.shape)} read as " + ("a scalar" if shape == () else _fmt(shape)))
        return a.reshape(shape)

    def restore(self, name, result):
        """refbnn's result in the bundle's own shape, for the comparison."""
        return np.reshape(result, self.shapes[name]) if name in self.shapes else result

    def name(self, name):
        """The bundle's name for refbnn's array ``name``."""
        return self.names.get(name, name)

    def layer_arrays(self, arrays: dict, layout) -> dict:
        """The layer check's arrays: two names for the weight refused; per-channel arrays read as (O,)."""
        for a, b in (("weight", "kernel"), ("grad_weight", "grad_kernel")):
            if a in arrays and b in arrays:
                raise BundleError(f"the bundle holds both {a!r} and {b!r}, two names for one array; keep one "
                                  f"({a!r}: PyTorch's layout, --layout nchw; {b!r}: Larq's, --layout nhwc)")
        wname = "kernel" if layout == "nhwc" else "weight"
        w = arrays.get(wname)
        if w is None or w.ndim not in (2, 4):
            return arrays  # the layer check names what is missing
        o = w.shape[-1] if layout == "nhwc" else w.shape[0]
        out = dict(arrays)
        for k in PER_CHANNEL:
            if k in out and out[k].ndim >= 2:
                out[k] = self.as_shape(k, out[k], (o,))
        return out

    def quantizer_arrays(self, arrays: dict, part, layout):
        """The quantizer check's arrays: a weight quantizer's input may be named ``weight``/``kernel`` (and its
        gradient ``grad_weight``/``grad_kernel``) as the layer check names them; returns (arrays with ``x`` and
        ``grad_x``, the part: ``weight`` for a weight's names)."""
        inputs = [n for n in ("x",) + QUANTIZER_ALIASES if n in arrays]
        grads = [n for n in ("grad_x",) + tuple("grad_" + a for a in QUANTIZER_ALIASES) if n in arrays]
        for names, what in ((inputs, "the quantizer's input"), (grads, "the gradient of its input")):
            if len(names) > 1:
                raise BundleError(f"the bundle holds both {names[0]!r} and {names[1]!r}, two names for one array "
                                  f"({what}); keep one")
        name = inputs[0] if inputs else grads[0][len("grad_"):] if grads else "x"
        if grads and grads[0] != "grad_" + name:
            raise BundleError(f"{grads[0]}: the quantizer's input is named {name!r}, so the gradient of it is "
                              f"'grad_{name}'; name both alike")
        if name == "x":
            return arrays, part
        if part == "input":
            raise BundleError(f"{name}: a weight's name, but this check is of an input quantizer (--part input); "
                              f"name the input 'x'")
        if name == "kernel" and layout != "nhwc":
            raise BundleError("'kernel' is the Larq/TensorFlow name (HWIO or (in, out)): use --layout nhwc, or name "
                              "the input 'x'")
        if name == "weight" and layout == "nhwc":
            raise BundleError("in --layout nhwc a weight is named 'kernel' and laid out HWIO (conv) or (in, out) "
                              "(dense); for PyTorch's (O, I, kh, kw) / (out, in) 'weight' use --layout nchw")
        renamed = {"x" if k == name else "grad_x" if k == "grad_" + name else k: v for k, v in arrays.items()}
        self.names.update(x=name, grad_x="grad_" + name)
        self.lines.append(f"{name} read as the quantizer's x" + ("" if part == "weight" else " (--part weight)"))
        if grads:
            self.lines.append(f"grad_{name} read as the quantizer's grad_x")
        return renamed, "weight"
