"""Layer objects: parameters, their gradients and buffers, thin over the ops.

A layer follows the CS231n API: ``out, cache = layer.forward(x)`` and
``dx = layer.backward(dout, cache)``; ``backward`` adds the parameter gradients into
``layer.grads`` (summed over calls until ``zero_grad``, as in PyTorch). Nothing is stored between
forward and backward except in the cache you hold. ``training`` selects batch norm's mode and
whether quantizers use their training-time form; set it with ``train()`` / ``eval()``.
"""
from __future__ import annotations

import numpy as np

from ..checks import array_module, check_bool_arg, check_float_array, check_same_device, to_host
from ..device import device_module, device_name, move


class Module:
    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}
        self.children: dict[str, Module] = {}
        self.training = True

    # -- composition -------------------------------------------------------------------------
    def add(self, name: str, module: "Module") -> "Module":
        if not isinstance(module, Module):
            raise TypeError(f"{name}: expected a refbnn Module, got {type(module).__name__}")
        self.children[name] = module
        return module

    def modules(self, prefix: str = ""):
        """(qualified name, module) for this module and every descendant, depth first."""
        yield prefix, self
        for name, child in self.children.items():
            yield from child.modules(f"{prefix}{name}.")

    def named_parameters(self):
        """(qualified name, module, key) for every parameter."""
        for prefix, m in self.modules():
            for k in m.params:
                yield f"{prefix}{k}", m, k

    def num_parameters(self) -> int:
        return sum(m.params[k].size for _, m, k in self.named_parameters())

    # -- the two passes ------------------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dout, cache):
        raise NotImplementedError

    def __call__(self, x):
        """Validate a user-supplied input (dtype, NaN/Inf, and that it lives where the parameters
        live), then ``forward``."""
        check_float_array(x, "input")
        first = next((m.params[k] for _, m, k in self.named_parameters()), None)
        if first is not None:
            here, there = array_module(x), array_module(first)
            if here is not there:
                raise TypeError(f"input: a {device_name(here)} array, but the model's parameters are "
                                f"{device_name(there)} arrays; move one of them (model.to(...), or the input with "
                                "numpy/cupy asarray)")
            check_same_device(("input", x), ("the model's parameters", first))  # one CUDA device
        return self.forward(x)

    def accumulate(self, grads: dict):
        for k, g in grads.items():
            if k not in self.params:
                raise KeyError(f"{type(self).__name__} has no parameter {k!r}")
            if self.grads.get(k) is None:
                self.grads[k] = g.astype(self.params[k].dtype, copy=True)
            else:
                self.grads[k] += g

    def zero_grad(self):
        for _, m in self.modules():
            m.grads = {k: None for k in m.params}

    def train(self, mode: bool = True):
        mode = check_bool_arg("mode", mode)
        for _, m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    # -- state ----------------------------------------------------------------------------------
    def quantizer_state(self) -> dict:
        """Schedule-controlled quantizer values of this module (name -> scalar)."""
        return {}

    def load_quantizer_state(self, values: dict):
        if values:
            raise KeyError(f"{type(self).__name__} has no quantizer state {sorted(values)}")

    def state_dict(self) -> dict:
        """Parameters, buffers and quantizer state as a flat name -> array dict."""
        out = {}
        for prefix, m in self.modules():
            for k, v in m.params.items():
                out[prefix + k] = v
            for k, v in m.buffers.items():
                out[prefix + k] = v
            for k, v in m.quantizer_state().items():
                out[prefix + k] = np.asarray(v)
        return out

    def host_state_dict(self) -> dict:
        """:meth:`state_dict` with every array copied to the host (NumPy), for saving."""
        return {k: to_host(v) for k, v in self.state_dict().items()}

    def load_state_dict(self, state: dict):
        """Copy arrays into the existing parameters/buffers; names, shapes and dtypes must match."""
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise ValueError(f"state dict does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        for prefix, m in self.modules():
            for store in (m.params, m.buffers):
                for k in store:
                    v = state[prefix + k]
                    if v.shape != store[k].shape:
                        raise ValueError(f"{prefix + k}: expected shape {store[k].shape}, got {v.shape}")
                    if v.dtype != store[k].dtype:
                        raise ValueError(f"{prefix + k}: expected dtype {store[k].dtype}, got {v.dtype}")
                    store[k][...] = move(v, array_module(store[k]))
            q = {k: to_host(state[prefix + k])[()] for k in m.quantizer_state()}
            m.load_quantizer_state({k: float(v) for k, v in q.items()})

    def to(self, device):
        """Move every parameter, buffer and gradient to ``device`` (``"cpu"``/``"numpy"``,
        ``"gpu"``/``"cupy"``, or an array module; see :mod:`refbnn.device`) and return the module.
        Its inputs must then live there too: a layer computes with its input's array module."""
        xp = device_module(device)
        for _, m in self.modules():
            for store in (m.params, m.buffers, m.grads):
                for k in store:
                    store[k] = move(store[k], xp)
        return self

    def device(self):
        """The array module the parameters live in (NumPy when there are none); ValueError when they
        are split between modules."""
        found = {array_module(v) for _, m in self.modules() for store in (m.params, m.buffers) for v in store.values()}
        if len(found) > 1:
            raise ValueError(f"{type(self).__name__}: parameters are split between "
                             f"{sorted(x.__name__ for x in found)}; move the model with .to(...)")
        return found.pop() if found else np

    def astype(self, dtype):
        """Convert every parameter and buffer (e.g. to float64 for gradient checks)."""
        for _, m in self.modules():
            for store in (m.params, m.buffers):
                for k in store:
                    store[k] = store[k].astype(dtype)
            m.grads = {k: None for k in m.params}
        return self

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        head = f"{type(self).__name__}({self.extra_repr()})"
        if not self.children:
            return head
        body = "\n".join(f"  ({n}): " + repr(c).replace("\n", "\n  ") for n, c in self.children.items())
        return f"{type(self).__name__}(\n{body}\n)"


class Sequential(Module):
    """Children applied in order; the cache is the list of the children's caches.

    ``Sequential(*items)``: each item is a Module (named by its position, ``"0"``, ``"1"``, ...) or a
    ``(name, Module)`` pair. Names are non-empty, unique, and may contain dots to group layers
    (``"stage1.block1"``, ``"input.fc"``); the state-dict keys are ``<name>.<parameter>``.
    """

    def __init__(self, *items):
        super().__init__()
        for i, item in enumerate(items):
            if isinstance(item, tuple):
                if len(item) != 2:
                    raise TypeError(f"Sequential item {i}: expected a Module or a (name, Module) pair, got a "
                                    f"tuple of {len(item)}")
                name, module = item
                if not isinstance(name, str) or not name or any(not part for part in name.split(".")):
                    raise ValueError(f"Sequential item {i}: expected a non-empty name whose dot-separated parts "
                                     f"are non-empty, got {name!r}")
            else:
                name, module = str(i), item
            if name in self.children:
                raise ValueError(f"Sequential item {i}: the name {name!r} is used twice")
            self.add(name, module)

    def forward(self, x):
        caches = []
        for m in self.children.values():
            x, c = m.forward(x)
            caches.append(c)
        return x, caches

    def backward(self, dout, cache):
        for m, c in zip(reversed(list(self.children.values())), reversed(cache)):
            dout = m.backward(dout, c)
        return dout
