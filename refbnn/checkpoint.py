"""Checkpoints: one ``.npz`` of named arrays, written atomically, read without pickle.

Keys: ``model/<parameter or buffer name>``, ``optim/<state name>``, and ``meta``, a 0-d string
holding JSON (format tag, epoch, run configuration, metric history). Writing goes to a temporary
file in the same directory, is flushed to disk, then renamed over the old checkpoint, so a crash
never leaves a half-written file in place of a good one.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "refbnn-checkpoint-v1"


def save_checkpoint(path, model_state: dict, optim_state: dict, meta: dict):
    arrays = {f"model/{k}": np.asarray(v) for k, v in model_state.items()}
    arrays.update({f"optim/{k}": np.asarray(v) for k, v in optim_state.items()})
    arrays["meta"] = np.asarray(json.dumps({"format": FORMAT, **meta}))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path):
    """Returns (model_state, optim_state, meta); a clear ValueError for anything that is not a
    complete refbnn checkpoint."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ValueError(f"{path} is not a valid refbnn checkpoint (corrupt or truncated .npz: {exc})") from exc
    if "meta" not in arrays or arrays["meta"].dtype.kind != "U" or arrays["meta"].shape != ():
        raise ValueError(f"{path} is not a refbnn checkpoint: the 'meta' entry is missing")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: checkpoint metadata is not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    model = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
    optim = {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}
    return model, optim, meta
