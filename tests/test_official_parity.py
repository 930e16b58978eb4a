"""The "official" convention against the official IR-Net and ReCU code, re-implemented in PyTorch.

The two layers below are written, in our own words (no code is copied), from the formulas of the official
code: htqin/IR-Net @ f63a590 (CIFAR-10/ResNet20/1w1a/modules/ir_1w1a.py, binaryfunction.py) and z-hXu/ReCU
@ 9a73bed7a6452736184795759770ae17ad0308ec (cifar/modules/binarized_modules.py, "L<n>" below):

- ``IRConv2d``: IR-Net's ``ir_1w1a.py`` (L15-27) and, with ``binary_act=False``,
  ``ir_1w32a.py`` (real activations): rows centered, divided by their unbiased std (no epsilon), a detached per-channel
  scale 2^round(log2 mean|.|), ``torch.sign`` (sign(0) = 0) with the EDE backward k t (1 - tanh^2(t x)) on
  the standardized weights and on the raw activations, a zero-padded conv;
- ``RecuConv2d``: ReCU's ``BinarizeConv2d`` (L9-67): per-channel centering and scaling by
  2 sqrt(2) / sqrt(var_unbiased + 1e-5) (not detached), a layer-wide b = mean|w1| (detached), a clamp at
  +-Q, Q = -b ln(2 - 2 tau) as a Python float, in training mode the activations divided by
  sqrt(var_unbiased over (C, H, W) + 1e-5), ``torch.sign`` forward with the identity STE for the weights and
  ApproxSign max(0, 2 - 2|x|) for the activations, a zero-padded conv with the layer's bias *inside* it
  (``F.conv2d(ba, bw, self.bias, ...)``, L35), times a learned alpha (Cout, 1, 1) (L39): out = alpha (conv + b).

torch autograd (float64) differentiates them; refbnn's ``irnet``, ``irnet_1w32a`` and ``recu`` methods
under ``convention="official"`` must give the same outputs and gradients (x, weight, alpha, and the bias
for ReCU) in training and eval mode, directly (layers built by ``LayerFactory``) and through ``refbnn crosscheck`` (Python API
and CLI) on bundles written from the torch layers. The paper convention differs from the code (sign(0),
no gradient through the standardization, ...), and crosscheck says so with exit status 1.

Needs PyTorch: pip install torch==2.13.0 (CI installs it).
"""
import math
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from torch_helpers import ROOT, TOL, F, rel, seeds, torch  # skips the module without torch

from refbnn import crosscheck as xc
from refbnn.conventions import OFFICIAL
from refbnn.methods import LayerFactory, get_method, set_quantizer_state


# --- the official code's sign functions (torch.sign: sign(0) = 0) -----------------------------------------

class EdeSign(torch.autograd.Function):
    """IR-Net's BinaryQuantize (binaryfunction.py): torch.sign forward, k t (1 - tanh^2(t x)) backward."""

    @staticmethod
    def forward(ctx, x, k, t):
        ctx.save_for_backward(x)
        ctx.k, ctx.t = k, t
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ctx.k * ctx.t * (1 - torch.tanh(ctx.t * x) ** 2), None, None


class SignIdentity(torch.autograd.Function):
    """ReCU's weight sign (BinaryQuantize, L43-52): torch.sign forward, identity backward."""

    @staticmethod
    def forward(ctx, x):
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        return g


class SignApprox(torch.autograd.Function):
    """ReCU's activation sign (BinaryQuantize_a, L55-67): torch.sign forward, ApproxSign max(0, 2 - 2|x|)
    backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.clamp(2 - 2 * x.abs(), min=0)


def per_channel(v, o):
    return v.view(o, 1, 1, 1)


class IRConv2d(torch.nn.Module):
    """IR-Net's 1W/1A conv (ir_1w1a.py L15-27); ``binary_act=False``: 1W/32A (ir_1w32a.py).
    k = 10, t = 0.1 before any schedule (ir_1w1a.py L12-13); no bias."""

    def __init__(self, weight, stride=1, padding=1, binary_act=True, k=10.0, t=0.1):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(weight))
        self.stride, self.padding, self.binary_act, self.k, self.t = stride, padding, binary_act, k, t

    def forward(self, x):
        w = self.weight
        o = w.shape[0]
        bw = w - per_channel(w.view(o, -1).mean(-1), o)                        # balance
        bw = bw / per_channel(bw.view(o, -1).std(-1), o)                        # unbiased std, no eps
        sw = per_channel(2.0 ** torch.round(torch.log2(bw.abs().view(o, -1).mean(-1))), o).detach()  # bit shift
        bw = EdeSign.apply(bw, self.k, self.t) * sw                             # sign, scaled
        ba = EdeSign.apply(x, self.k, self.t) if self.binary_act else x         # 1W/32A: real
        return F.conv2d(ba, bw, None, self.stride, self.padding)                # zero padding


class RecuConv2d(torch.nn.Module):
    """ReCU's BinarizeConv2d (binarized_modules.py L9-40); tau = 1 (the registered buffer) until a schedule sets
    it; an optional bias, added as the code adds it: inside the conv, before alpha (L35-39). ``bias_order=
    "after_scale"`` is the other order, out = alpha conv + b: the oracle of refbnn's paper order."""

    def __init__(self, weight, alpha, tau=1.0, stride=1, padding=1, bias=None, bias_order="before_scale"):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(weight))
        self.alpha = torch.nn.Parameter(torch.tensor(alpha).view(-1, 1, 1))   # (Cout, 1, 1)
        self.bias = None if bias is None else torch.nn.Parameter(torch.tensor(bias))
        self.tau, self.stride, self.padding, self.bias_order = tau, stride, padding, bias_order

    def forward(self, x):
        w = self.weight
        o = w.shape[0]
        w1 = w - per_channel(w.view(o, -1).mean(-1), o)                                       # L20: center
        w1 = w1 * (2 * math.sqrt(2)) / torch.sqrt(per_channel(w1.view(o, -1).var(-1), o) + 1e-5)  # L21: b* = 2
        b = w1.abs().mean().detach()                                                            # L22: layer-wide
        q = float(-b * torch.log(torch.tensor(2.0 - 2.0 * self.tau, dtype=b.dtype)))          # L23: a float
        w2 = torch.clamp(w1, -q, q)
        a = x
        if self.training:                                                                       # L26-29
            a = a / torch.sqrt(a.var(dim=(1, 2, 3), keepdim=True) + 1e-5)
        ba, bw = SignApprox.apply(a), SignIdentity.apply(w2)
        if self.bias_order == "before_scale":                                                  # L35-39
            return F.conv2d(ba, bw, self.bias, self.stride, self.padding) * self.alpha
        out = F.conv2d(ba, bw, None, self.stride, self.padding) * self.alpha
        return out if self.bias is None else out + self.bias.view(-1, 1, 1)


def torch_layer(method, w, alpha, state, stride, padding, training, bias=None, bias_order="before_scale"):
    if method == "recu":
        m = RecuConv2d(w, alpha, state.get("tau", 1.0), stride, padding, bias, bias_order)
    else:
        m = IRConv2d(w, stride, padding, binary_act=method == "irnet", **state)
    return m.train(training)


def run_torch(m, x, g):
    """out and the gradients of L = sum(out * g) w.r.t. x and the layer's parameters (as refbnn names them)."""
    tx = torch.tensor(x, requires_grad=True)
    out = m(tx)
    (out * torch.tensor(g)).sum().backward()
    res = {"out": out.detach().numpy(), "grad_x": tx.grad.numpy(), "grad_weight": m.weight.grad.numpy()}
    if isinstance(m, RecuConv2d):
        res["grad_alpha"] = m.alpha.grad.numpy().reshape(-1)
        if m.bias is not None:
            res["grad_bias"] = m.bias.grad.numpy()
    return res


def refbnn_layer(method, w, alpha, state, stride, padding, training, convention="official", bias=None):
    o, c, k, _ = w.shape
    layer = LayerFactory(get_method(method), rng=0, dtype=np.float64, convention=convention,
                         backend="numpy").binary_conv(c, o, k, stride, padding)
    layer.params["weight"] = w.copy()
    if alpha is not None:
        layer.params["alpha"] = alpha.copy()
    if bias is not None:
        layer.params["bias"] = bias.copy()
    if state:
        assert set_quantizer_state(layer, **state) > 0
    layer.zero_grad()
    return layer.train(training)


def run_refbnn(layer, x, rng):
    """out and the gradients of L = sum(out * g), g drawn from ``rng``; returns (results, g)."""
    out, cache = layer.forward(x)
    g = rng.standard_normal(out.shape)
    dx = layer.backward(g, cache)
    res = {"out": out, "grad_x": dx, "grad_weight": layer.grads["weight"]}
    if "alpha" in layer.params:
        res["grad_alpha"] = layer.grads["alpha"]
    if "bias" in layer.params:
        res["grad_bias"] = layer.grads["bias"]
    return res, g


def inputs(rng, method, n=2, cin=3, cout=4, k=3, size=6, zeros=0.2):
    """x with exact zeros (sign(0) = 0 in the code), Laplace-like ReCU weights, alpha ~ U[0, 1) (ReCU's init)."""
    x = rng.standard_normal((n, cin, size, size)) * 0.7
    x[rng.random(x.shape) < zeros] = 0.0
    w = rng.laplace(size=(cout, cin, k, k)) if method == "recu" else rng.standard_normal((cout, cin, k, k))
    alpha = rng.uniform(0.0, 1.0, cout) if method == "recu" else None
    return x, w, alpha


STATES = {  # t, k: the code's initial values, a stage-1 and a stage-2 point of the schedule; tau: no clamp .. strong
    "irnet": [{"t": 0.1, "k": 10.0}, {"t": 0.02, "k": 50.0}, {"t": 1.0, "k": 1.0}, {"t": 4.0, "k": 1.0}],
    "irnet_1w32a": [{"t": 0.1, "k": 10.0}, {"t": 3.0, "k": 1.0}],
    "recu": [{"tau": 1.0}, {"tau": 0.99}, {"tau": 0.85}, {"tau": 0.6}],
}
CASES = [(m, s) for m, states in STATES.items() for s in states]


# --- the torch re-implementations are what the official code computes -----------------------------------------------

def test_torch_functions_follow_the_spec():
    x = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    y = SignApprox.apply(x)
    y.backward(torch.ones_like(y))
    assert y.tolist() == [-1, -1, -1, 0, 1, 1, 1]                       # torch.sign: sign(0) = 0
    assert x.grad.tolist() == [0, 0, 1, 2, 1, 0, 0]                     # max(0, 2 - 2|x|): 2 at 0, 0 at |x| = 1
    x.grad = None
    y = EdeSign.apply(x, 10.0, 0.1)
    y.backward(torch.ones_like(y))
    assert x.grad[3].item() == pytest.approx(1.0)                       # g'(0) = k t
    assert x.grad[0].item() == pytest.approx(10 * 0.1 * (1 - math.tanh(0.15) ** 2))
    rng = np.random.default_rng(0)
    x, w, alpha = inputs(rng, "recu", zeros=0.0)
    ir = IRConv2d(w)
    o = w.shape[0]
    bw = ir.weight - per_channel(ir.weight.view(o, -1).mean(-1), o)
    bw = bw / per_channel(bw.view(o, -1).std(-1), o)
    assert torch.allclose(bw.view(o, -1).std(-1), torch.ones(o, dtype=torch.float64))
    scale = 2.0 ** torch.round(torch.log2(bw.abs().view(o, -1).mean(-1)))
    assert set(scale.tolist()) <= {1.0, 0.5}                            # 3.1 step 4: 1 or 1/2 for these rows
    # ReCU: tau = 1 gives Q = inf (no clamp); the clamp never changes a sign, only the gradient
    g = rng.standard_normal((2, 4, 6, 6))
    no_clamp, clamp = run_torch(RecuConv2d(w, alpha, tau=1.0), x, g), run_torch(RecuConv2d(w, alpha, tau=0.6), x, g)
    assert np.array_equal(no_clamp["out"], clamp["out"]) and not np.allclose(no_clamp["grad_weight"],
                                                                              clamp["grad_weight"])


# --- refbnn's layers against the torch layers ------------------------------------------------------------

@pytest.mark.parametrize("method,state", CASES)
@pytest.mark.parametrize("training", [True, False])
def test_official_layers_match_torch(method, state, training):
    rng = np.random.default_rng(zlib.crc32(repr((method, state, training)).encode()))
    for stride, padding, k, cin in ((1, 1, 3, 3), (2, 1, 3, 3), (1, 0, 1, 3)):  # 1x1, Cin = 3: rows of 3
        x, w, alpha = inputs(rng, method, cin=cin, k=k)
        res, g = run_refbnn(refbnn_layer(method, w, alpha, state, stride, padding, training), x, rng)
        ref = run_torch(torch_layer(method, w, alpha, state, stride, padding, training), x, g)
        assert set(res) == set(ref)
        for name in ref:
            assert rel(res[name], ref[name]) < TOL, (method, state, training, stride, name, rel(res[name], ref[name]))


@given(seeds, st.sampled_from(CASES), st.booleans(), st.integers(1, 3), st.integers(1, 4), st.integers(1, 5),
       st.sampled_from([1, 3]), st.integers(1, 2), st.integers(0, 1))
def test_official_layers_match_torch_on_random_shapes(seed, case, training, n, cin, cout, k, stride, padding):
    method, state = case
    rng = np.random.default_rng(seed)
    if cin * k * k < 3:  # rows of 1 have no unbiased std; rows of 2 sit on the bit-shift tie (test below)
        cin = 3
    x, w, alpha = inputs(rng, method, n=n, cin=cin, cout=cout, k=k, size=5)
    res, g = run_refbnn(refbnn_layer(method, w, alpha, state, stride, padding, training), x, rng)
    ref = run_torch(torch_layer(method, w, alpha, state, stride, padding, training), x, g)
    for name in ref:
        assert rel(res[name], ref[name]) < TOL, (name, rel(res[name], ref[name]))


BIAS_DIFFERS = ("out", "grad_bias", "grad_alpha")  # what the bias order changes (dL/dx, dL/dW: alpha dout either way)


@pytest.mark.parametrize("state", STATES["recu"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("with_bias", [False, True])
def test_recu_bias_in_the_official_order(state, training, stride, with_bias):
    """The ReCU code adds the bias inside F.conv2d and then multiplies by alpha (L35-39): out = alpha (conv + b).
    refbnn's ``recu`` under ``official`` (bias_order="before_scale") matches it with and without a bias, including
    grad_bias = sum alpha dout and grad_alpha = sum dout (conv + b)."""
    rng = np.random.default_rng(zlib.crc32(repr((state, training, stride, with_bias)).encode()))
    x, w, alpha = inputs(rng, "recu")
    bias = rng.standard_normal(w.shape[0]) if with_bias else None
    res, g = run_refbnn(refbnn_layer("recu", w, alpha, state, stride, 1, training, bias=bias), x, rng)
    ref = run_torch(torch_layer("recu", w, alpha, state, stride, 1, training, bias=bias), x, g)
    assert set(res) == set(ref) == {"out", "grad_x", "grad_weight", "grad_alpha"} | ({"grad_bias"} if with_bias
                                                                                      else set())
    for name in ref:
        assert rel(res[name], ref[name]) < TOL, (name, rel(res[name], ref[name]))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
def test_recu_bias_in_the_paper_order_differs_from_the_code(training, stride):
    """The paper order (bias_order="after_scale": out = alpha conv + b), everything else official: refbnn matches
    a torch oracle of that order and differs from the code on out, grad_bias and grad_alpha (alpha != 1);
    dL/dx and dL/dW are the same either way."""
    rng = np.random.default_rng(40 + stride + 2 * training)
    x, w, alpha = inputs(rng, "recu")
    bias = rng.standard_normal(w.shape[0])
    state = {"tau": 0.9}
    layer = refbnn_layer("recu", w, alpha, state, stride, 1, training, OFFICIAL.with_(bias_order="after_scale"), bias)
    res, g = run_refbnn(layer, x, rng)
    oracle = run_torch(torch_layer("recu", w, alpha, state, stride, 1, training, bias, "after_scale"), x, g)
    code = run_torch(torch_layer("recu", w, alpha, state, stride, 1, training, bias), x, g)
    for name in oracle:
        assert rel(res[name], oracle[name]) < TOL, name
        assert (rel(res[name], code[name]) > 1e-3) == (name in BIAS_DIFFERS), (name, rel(res[name], code[name]))


def test_recu_paper_preset_adds_the_bias_after_the_scale():
    """The paper preset (analytic alpha = b (2 tau - 1) inside the weight quantizer, no scale in the layer) puts the
    bias after the scale: out(b) - out(0) = b, not alpha b; the official preset gives alpha_o b_o."""
    rng = np.random.default_rng(12)
    x, w, alpha = inputs(rng, "recu")
    bias = rng.standard_normal(w.shape[0])
    for convention, shift in (("paper", bias), ("official", alpha * bias)):
        a = alpha if convention == "official" else None
        with_b = refbnn_layer("recu", w, a, {"tau": 0.9}, 2, 1, True, convention, bias).forward(x)[0]
        without = refbnn_layer("recu", w, a, {"tau": 0.9}, 2, 1, True, convention).forward(x)[0]
        np.testing.assert_allclose(with_b - without, np.broadcast_to(shift.reshape(1, -1, 1, 1), with_b.shape),
                                   atol=1e-12)
    # and the code's bundle with a bias fails the paper preset on out (the paper's ReCU differs in more than that)
    bundle = torch_bundle("recu", {"tau": 0.9}, True, seed=13, bias=True)
    rep = xc.crosscheck({k: v for k, v in bundle.items() if k != "alpha" and k != "grad_alpha"}, method="recu",
                        convention="paper")
    assert not rep.row("out").passed


def test_rows_of_two_weights_sit_on_the_bit_shift_rounding_tie():
    """Why rows of n = 2 weights are left out above: a centered, standardized row of two is +-1/sqrt(2), so
    log2 mean|w_std| = -1/2 exactly and 2^round(.) is 1 or 1/2 by the last bit of the float arithmetic (numpy's
    and torch's std differ there: log2 of 1/sqrt(2) is a rounding tie). Both sides agree up to that bit."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        w = rng.standard_normal((4, 2, 1, 1))
        layer = refbnn_layer("irnet_1w32a", w, None, {}, 1, 0, True)
        w_std = layer.weight_quantizer.standardized(w)
        assert np.abs(np.log2(np.abs(w_std).mean(axis=(1, 2, 3))) + 0.5).max() < 1e-14
        tw = torch.tensor(w)
        bw = tw - per_channel(tw.view(4, -1).mean(-1), 4)
        bw = bw / per_channel(bw.view(4, -1).std(-1), 4)
        assert (torch.log2(bw.abs().view(4, -1).mean(-1)) + 0.5).abs().max().item() < 1e-14


# --- through refbnn crosscheck ---------------------------------------------------------------------------

def tk_official(epoch, epochs, T_min, T_max=10.0):
    """IR-Net's trainer (CIFAR-10/ResNet20/1w1a/trainer.py L130-143): t = 10^(log10 T_min + (log10 T_max - log10 T_min) e / E),
    k = 1/t if t < 1 else 1."""
    t = 10.0 ** (math.log10(T_min) + (math.log10(T_max) - math.log10(T_min)) * epoch / epochs)
    return {"t": t, "k": 1.0 / t if t < 1 else 1.0}


def tau_official(epoch, epochs, tau_min=0.85, tau_max=0.99):
    """ReCU's cifar/main.py (L160-167): tau = A e^(e/E) + B, A = (tau_max - tau_min)/(e - 1), B = tau_min - A."""
    a = (tau_max - tau_min) / (math.e - 1)
    return {"tau": a * math.exp(epoch / epochs) + tau_min - a}


def torch_bundle(method, state, training, seed, stride=1, padding=1, settings=None, bias=False):
    """A bundle written from the torch layer: inputs, outputs, gradients and the settings (``bias``: ReCU's layer
    with a bias, added as the code adds it)."""
    rng = np.random.default_rng(seed)
    x, w, alpha = inputs(rng, method)
    b = rng.standard_normal(w.shape[0]) if bias else None
    m = torch_layer(method, w, alpha, state, stride, padding, training, b)
    out = m(torch.tensor(x))
    g = rng.standard_normal(tuple(out.shape))
    res = run_torch(torch_layer(method, w, alpha, state, stride, padding, training, b), x, g)
    bundle = {"x": x, "weight": w, "grad_out": g, **res, "stride": np.array(stride), "padding": np.array(padding),
              "training": np.array(training)}
    if alpha is not None:
        bundle["alpha"] = alpha
    if b is not None:
        bundle["bias"] = b
    bundle.update({k: np.array(v) for k, v in (state if settings is None else settings).items()})
    return bundle


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "refbnn", "crosscheck", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("method,state", CASES + [("recu+bias", s) for s in STATES["recu"]])
@pytest.mark.parametrize("training", [True, False])
def test_crosscheck_passes_the_official_code(method, state, training):
    method, bias = method.replace("+bias", ""), method.endswith("+bias")
    bundle = torch_bundle(method, state, training, seed=len(str(state)) + 10 * training, bias=bias,
                          stride=2 if bias else 1)
    assert (bundle["x"] == 0).any()
    report = xc.crosscheck(bundle, method=method, convention="official")
    assert report.passed, report.table()
    want = (["out", "grad_x", "grad_weight"] + (["grad_bias"] if bias else [])
            + (["grad_alpha"] if method == "recu" else []))
    assert [r.name for r in report.rows] == want
    assert report.settings["training"] is training and report.rtol == 1e-10


@pytest.mark.parametrize("method", ["irnet", "irnet_1w32a", "recu"])
def test_crosscheck_sets_the_official_schedule_from_epoch(method, tmp_path):
    """epoch/epochs (and the schedule's parameters) in the bundle: refbnn's Method.on_epoch reproduces the
    official trainers' t, k (T_min = 1e-3, the ResNet-20 1W/1A code) and tau at p = e / E; the CLI too."""
    epoch, epochs = 7, 10
    if method == "recu":
        state, settings = tau_official(epoch, epochs, 0.8, 0.99), {"tau_min": 0.8, "tau_max": 0.99}
    else:
        state, settings = tk_official(epoch, epochs, 1e-3), {"T_min": 1e-3, "T_max": 10.0}
    settings.update(epoch=epoch, epochs=epochs)
    bundle = torch_bundle(method, state, True, seed=3, settings=settings)
    report = xc.crosscheck(bundle, method=method, convention="official")
    assert report.passed, report.table()
    assert report.settings["schedule_values"] == pytest.approx(state)
    # one epoch off (1-based epochs): the gradients differ
    assert not xc.crosscheck(dict(bundle, epoch=np.array(epoch + 1)), method=method, convention="official").passed
    path = tmp_path / f"{method}.npz"
    np.savez(path, **bundle)
    res = run_cli(path, "--method", method, "--convention", "official")
    assert res.returncode == 0 and "PASS" in res.stdout, res.stdout + res.stderr


def test_crosscheck_cli_on_torch_bundles(tmp_path):
    """The CLI on bundles written from the torch layers: the official convention passes (exit 0); the paper
    convention, which differs from the code on purpose, fails (exit 1) and says where."""
    ir = torch_bundle("irnet", {"t": 0.5, "k": 2.0}, True, seed=5)
    np.savez(tmp_path / "irnet.npz", **ir)
    res = run_cli(tmp_path / "irnet.npz", "--method", "irnet", "--convention", "official", "--json",
                  tmp_path / "r.json")
    assert res.returncode == 0 and "PASS" in res.stdout, res.stdout + res.stderr
    # paper: sign(0) = +1 on the activations' exact zeros and no gradient through the standardization
    res = run_cli(tmp_path / "irnet.npz", "--method", "irnet", "--convention", "paper")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL" in res.stdout and "worst at" in res.stdout
    rep = xc.crosscheck(ir, method="irnet", convention="paper")
    assert not rep.row("out").passed and not rep.row("grad_weight").passed
    # ... only sign(0) changed: the forward agrees again, the weight gradient does not (IR-Net Algorithm 1)
    rep = xc.crosscheck(ir, method="irnet", convention="paper", params={"sign_zero": 0.0})
    assert rep.row("out").passed and not rep.row("grad_weight").passed

    w32 = torch_bundle("irnet_1w32a", {"t": 0.1, "k": 10.0}, True, seed=6)
    np.savez(tmp_path / "w32.npz", **w32)
    res = run_cli(tmp_path / "w32.npz", "--method", "irnet_1w32a", "--convention", "paper")
    assert res.returncode == 1 and "grad_weight" in res.stdout, res.stdout + res.stderr
    rep = xc.crosscheck(w32, method="irnet_1w32a", convention="paper")
    assert rep.row("out").passed and rep.row("grad_x").passed and not rep.row("grad_weight").passed

    recu = torch_bundle("recu", {"tau": 0.9}, True, seed=7)
    np.savez(tmp_path / "recu.npz", **recu)
    res = run_cli(tmp_path / "recu.npz", "--method", "recu", "--convention", "official")
    assert res.returncode == 0 and "grad_alpha" in res.stdout, res.stdout + res.stderr
    # without the code's training-mode activation normalization the ApproxSign window differs: grad_x fails
    res = run_cli(tmp_path / "recu.npz", "--method", "recu", "--convention", "official", "--param",
                  "recu_act_norm=false")
    assert res.returncode == 1 and "grad_x" in res.stdout, res.stdout + res.stderr
    rep = xc.crosscheck(torch_bundle("recu", {"tau": 0.9}, False, seed=7), method="recu", convention="official",
                        params={"recu_act_norm": False})
    assert rep.passed  # eval mode: the code does not normalize either
    # the paper's ReCU has no learned alpha (alpha = b (2 tau - 1) in the quantizer): bad input, exit 2
    res = run_cli(tmp_path / "recu.npz", "--method", "recu", "--convention", "paper")
    assert res.returncode == 2 and "no learned scale" in res.stderr, res.stdout + res.stderr


@pytest.mark.parametrize("method", ["irnet", "irnet_1w32a", "recu"])
def test_torch_layers_match_exported_bundles(method, tmp_path):
    """The other direction: refbnn writes official-convention bundles (ReCU's with a bias); the torch layers
    reproduce them."""
    params = {"tau": 0.88} if method == "recu" else {"t": 0.3, "k": 1 / 0.3}
    (path,) = xc.export_bundles(tmp_path, method=method, convention="official", part="layer", params=params,
                                bias=method == "recu", seed=11)
    with np.load(path, allow_pickle=False) as z:
        b = dict(z)
    assert (b["x"] == 0).any() and int(b["padding"]) == 1
    assert ("bias" in b and "grad_bias" in b) == (method == "recu")
    m = torch_layer(method, b["weight"], b.get("alpha"), params, 1, int(b["padding"]), bool(b.get("training", True)),
                    b.get("bias"))
    ref = run_torch(m, b["x"], b["grad_out"])
    for name, a in ref.items():
        assert rel(a, b[name]) < TOL, name
    res = run_cli(path)  # the bundle records method and convention
    assert res.returncode == 0, res.stdout + res.stderr
