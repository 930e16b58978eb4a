"""``record_torch``: a bundle from one PyTorch layer (or quantizer) as its author wrote it.

The module runs forward and backward once and every array the check needs is read from it under its own
name, as PyTorch holds it: ``weight``, ``bias``, a learned ``alpha`` of shape (O, 1, 1), ``tau``, ``t``,
``k`` as shape-(1,) tensors (:class:`~refbnn.crosscheck.bundle.Readings` reads them for the check). Then
``crosscheck(bundle, method=..., convention=...)`` checks it and ``save_bundle(path, bundle)`` writes it.

PyTorch is imported here only (refbnn runs without it).
"""
from __future__ import annotations

import numpy as np

from .bundle import GEOMETRY, LAYER_OUTPUTS, META_KEYS

# names the recorder writes itself; a module's tensor of one of these names would be ambiguous
_RECORDED = ("x", "out", "grad_out", "grad_x", "training") + GEOMETRY
_CONTAINERS = ("Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict")


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise ImportError("record_torch needs PyTorch, which is not installed: pip install torch (refbnn itself "
                          "does not need it; without it, write the bundle with numpy.savez)") from exc
    return torch


def _module_tensors(torch, module):
    """name -> tensor: the parameters, the buffers and the plain tensor attributes of ``vars(module)``
    (IR-Net's ``k`` and ``t`` are plain attributes, ReCU's ``tau`` a buffer)."""
    found = {}
    for name, p in module.named_parameters(recurse=False):
        found[name] = p
    for name, b in module.named_buffers(recurse=False):
        found[name] = b
    for name, v in vars(module).items():
        if isinstance(v, torch.Tensor) and not name.startswith("_"):
            found[name] = v
    return found


def _check_module(torch, module):
    name = type(module).__name__
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module (one layer, or a quantizer function wrapped in one), "
                        f"got {name}")
    if name in _CONTAINERS or isinstance(module, (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)):
        raise ValueError(f"module: a {name} is a container of several layers; record_torch records one layer "
                         f"(an nn.Conv2d / nn.Linear subclass) or one quantizer: record each layer by itself")
    holders = [c for c, m in module.named_children()
               if any(True for _ in m.parameters()) or any(True for _ in m.buffers())]
    if holders:
        raise ValueError(f"module: {name} holds child modules with parameters or buffers ({', '.join(holders)}), "
                         f"so it is a model of several layers; record_torch records one layer (an nn.Conv2d / "
                         f"nn.Linear subclass with its own weight) or one quantizer: record each layer by itself")
    conv_nd = [t for t in ("Conv1d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")
               if isinstance(module, getattr(torch.nn, t))]
    if conv_nd:
        raise ValueError(f"module: {name} is an nn.{conv_nd[0]}; record_torch reads 2-D convolutions (nn.Conv2d) "
                         f"and linear layers (nn.Linear)")


def _geometry(module, w):
    """stride, padding, dilation, groups of a conv module, from its attributes (as nn.Conv2d holds them)."""
    name = type(module).__name__
    mode = getattr(module, "padding_mode", "zeros")
    if mode != "zeros":
        raise ValueError(f"module: {name} has padding_mode={mode!r}; refbnn's layers pad with zeros (the pad value "
                         f"of the convention) only: use padding_mode='zeros'")
    missing = [g for g in ("stride", "padding") if not hasattr(module, g)]
    if missing:
        raise ValueError(f"module: {name} has a 4-D weight {tuple(w.shape)} but no {' or '.join(missing)} "
                         f"attribute; record_torch reads a conv's stride, padding, dilation and groups from the "
                         f"module's attributes, as nn.Conv2d holds them (subclass nn.Conv2d)")
    geo = {}
    for g in GEOMETRY:
        v = getattr(module, g, 1)  # a module without dilation/groups attributes convolves with 1, as F.conv2d
        if isinstance(v, str) and g == "padding" and v in ("same", "valid"):
            geo[g] = np.array(v)
            continue
        vals = tuple(v) if isinstance(v, (tuple, list)) else (v,)
        if not vals or not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in vals):
            raise ValueError(f"module: {name}.{g} = {v!r}; expected an int or a tuple of ints"
                             + (" or 'same'/'valid'" if g == "padding" else ""))
        geo[g] = np.array(vals[0] if len(vals) == 1 else vals, dtype=np.int64)
    return geo


def _numpy(t):
    return t.detach().cpu().numpy().copy()


def record_torch(module, x, grad_out=None, *, seed=0) -> dict:
    """Run a PyTorch layer or quantizer forward and backward; return a bundle (name -> NumPy array).

    ``module``: one layer, an ``nn.Conv2d`` / ``nn.Linear`` subclass (or any module with its own 4-D or 2-D
    ``weight``; a conv's ``stride``, ``padding``, ``dilation``, ``groups`` read from its attributes,
    ``padding_mode`` 'zeros' only), or one quantizer (a module without parameters, e.g. an autograd
    ``Function`` wrapped in an ``nn.Module``). ``x``: the input, a NumPy array or a tensor of the module's
    float dtype. ``grad_out``: dL/dout; default a standard normal draw (``numpy.random.default_rng(seed)``)
    of out's shape and dtype.

    The bundle holds ``x``; every parameter, buffer and plain tensor attribute of the module under its own
    name and in its own shape (``weight``, ``bias``, ``alpha``, ``tau``, ``t``, ``k``, ...); ``out``,
    ``grad_out``, and the gradients of L = sum(out * grad_out): ``grad_x`` and ``grad_<name>`` for each
    parameter that gets one; a conv's ``stride``, ``padding``, ``dilation``, ``groups``; ``training``
    (``module.training``: the mode it ran in). The gradients come from ``torch.autograd.grad``, so the
    module's ``.grad`` fields, its mode and its tensors are as they were (tensors the forward changes in
    place, such as running statistics, are restored).
    """
    torch = _torch()
    _check_module(torch, module)
    name = type(module).__name__
    tensors = _module_tensors(torch, module)
    clash = sorted(set(tensors) & (set(_RECORDED) | set(META_KEYS) | {n for n in LAYER_OUTPUTS if n != "grad_x"}))
    if clash:
        raise ValueError(f"module: {name} holds tensors named {', '.join(clash)}, names the bundle uses for what "
                         f"the recorder writes itself; rename them")
    params = {n: p for n, p in module.named_parameters(recurse=False)}
    if "kernel" in tensors:
        raise ValueError(f"module: {name} holds a tensor named 'kernel'; a PyTorch layer's weight is 'weight' "
                         f"(O, C/groups, kh, kw) or (out, in)")
    w = tensors.get("weight")
    if params and w is None:
        raise ValueError(f"module: {name} has parameters ({', '.join(params)}) but no 'weight'; record_torch reads "
                         f"one layer with its weight as module.weight (an nn.Conv2d / nn.Linear subclass), or a "
                         f"quantizer without parameters")
    if w is not None and w.ndim not in (2, 4):
        raise ValueError(f"module: {name}.weight has shape {tuple(w.shape)}; expected (O, C/groups, kh, kw) for a "
                         f"2-D convolution or (out, in) for a linear layer")
    geometry = _geometry(module, w) if w is not None and w.ndim == 4 else {}

    floats = {t.dtype for t in tensors.values() if t.is_floating_point()}
    device = next((t.device for t in tensors.values()), None)
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(f"x: expected a float tensor, got dtype {x.dtype}")
        tx = x.detach().clone()
    elif isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(f"x: expected a float array, got dtype {x.dtype}")
        tx = torch.from_numpy(np.array(x, dtype=x.dtype.newbyteorder("=")))
    else:
        raise TypeError(f"x: expected a NumPy array or a torch tensor (the layer's input), got {type(x).__name__}")
    if floats and tx.dtype not in floats:
        raise TypeError(f"x: dtype {tx.dtype}, but {name}'s tensors are {', '.join(sorted(map(str, floats)))}; "
                        f"give x in the module's dtype")
    if device is not None:
        tx = tx.to(device)
    tx.requires_grad_(True)

    bundle = {"x": _numpy(tx)}
    bundle.update({n: _numpy(t) for n, t in tensors.items()})
    saved = {n: t.detach().clone() for n, t in tensors.items()}
    modes = [(m, m.training) for m in module.modules()]
    wanted = [(n, p) for n, p in params.items() if p.requires_grad]
    try:
        out = module(tx)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"module: {name}'s forward returned {type(out).__name__}; record_torch needs one tensor")
        if grad_out is None:
            g = torch.from_numpy(np.random.default_rng(seed).standard_normal(tuple(out.shape))).to(out.dtype)
        else:
            g = grad_out.detach().clone() if isinstance(grad_out, torch.Tensor) else torch.from_numpy(
                np.array(grad_out))
            if tuple(g.shape) != tuple(out.shape):
                raise ValueError(f"grad_out: expected out's shape {tuple(out.shape)}, got {tuple(g.shape)}")
            if g.dtype != out.dtype:
                raise TypeError(f"grad_out: expected out's dtype {out.dtype}, got {g.dtype}")
        g = g.to(out.device)
        if not out.requires_grad:
            raise ValueError(f"module: {name}'s output does not depend differentiably on x or its parameters; "
                             f"nothing to record a gradient of")
        grads = torch.autograd.grad((out * g).sum(), [tx] + [p for _, p in wanted], allow_unused=True)
    finally:
        with torch.no_grad():
            for n, t in tensors.items():
                if t.shape == saved[n].shape and not torch.equal(t, saved[n]):
                    t.copy_(saved[n])
        for m, mode in modes:
            m.training = mode
    bundle.update(out=_numpy(out), grad_out=_numpy(g))
    for n, gr in zip(["x"] + [n for n, _ in wanted], grads):
        if gr is not None:
            bundle["grad_" + n] = _numpy(gr)
    bundle.update(geometry)
    bundle["training"] = np.array(bool(modes[0][1]))
    return bundle

