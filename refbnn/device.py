"""Where arrays live: the host (NumPy) or a GPU (CuPy), named by the caller, never a global switch.

A model, its gradients, caches and optimizer state live where their arrays live; every op computes
with the module of its input (``refbnn.checks.array_module``). Moving a model is one call,
``model.to("gpu")`` / ``model.to("cpu")`` (or an array module: ``numpy``, ``cupy``, any module
with ``asarray``), and ``optimizer.to(...)`` moves an optimizer's state.

CuPy is optional (``pip install 'refbnn[gpu]'``): importing refbnn never imports it, and
:func:`device_module` says why the GPU cannot be used when it cannot (CuPy missing, no CUDA device
or driver).
"""
from __future__ import annotations

import types

import numpy as np

from .checks import array_module, on_host

DEVICES = ("cpu", "gpu")
_NAMES = {"cpu": "cpu", "numpy": "cpu", "gpu": "gpu", "cuda": "gpu", "cupy": "gpu"}


def gpu_unavailable() -> str | None:
    """Why the GPU path cannot run here (CuPy not installed, no usable CUDA device), or None."""
    from . import kernels  # noqa: PLC0415 - loads the optional CuPy backend only when asked

    if kernels._load("cupy") is None:
        return kernels.backend_errors().get("cupy", "the CuPy backend did not load")
    return None


def device_module(device):
    """The array module for ``device``: ``"cpu"``/``"numpy"`` -> NumPy, ``"gpu"``/``"cuda"``/``"cupy"``
    -> CuPy (ImportError saying why when the GPU cannot be used), or an array module itself (a
    module with ``asarray``), returned as it is."""
    if isinstance(device, types.ModuleType):
        if not callable(getattr(device, "asarray", None)):
            raise TypeError(f"device: expected an array module with asarray (numpy, cupy), got {device.__name__}")
        return device
    name = _NAMES.get(device) if isinstance(device, str) else None
    if name is None:
        raise ValueError(f"device: expected one of {list(_NAMES)} or an array module, got {device!r}")
    if name == "cpu":
        return np
    why = gpu_unavailable()
    if why is not None:
        raise ImportError(f"device {device!r}: the GPU path is unavailable: {why}")
    import cupy  # noqa: PLC0415 - optional

    return cupy


def move(x, xp):
    """``x`` as an array of module ``xp`` (a copy across the host/device boundary, ``x`` itself when
    it is already there); None stays None."""
    if x is None or array_module(x) is xp:
        return x
    host = x if on_host(x) else x.get()
    return xp.asarray(host)


def device_name(xp) -> str:
    """The array module's name for messages: "NumPy", "CuPy", or the module's own name."""
    return {"numpy": "NumPy", "cupy": "CuPy"}.get(xp.__name__, xp.__name__)
