"""Parity with PyTorch autograd (float64, hypothesis-drawn shapes), and `refbnn crosscheck` end to end.

refbnn's hand-written backward passes are compared with what torch.autograd computes for the same
forward: conv2d (stride, padding, dilation, groups, bias), linear, batch norm (training with the
running-statistics update, and eval), hardtanh, ReLU, max/avg pooling, and the binary layers, whose
sign functions are written below as torch.autograd.Functions of our own (sign(0) = +1 or 0; identity
or clipped straight-through estimator, inclusive or exclusive at the clip).

Then a "user's implementation" in PyTorch writes a reference bundle, and `refbnn crosscheck` (the
Python API and the CLI) must pass it, and must fail deliberately wrong variants with exit status 1.

Needs PyTorch: pip install torch==2.13.0 (CI installs it).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from torch_helpers import ROOT, TOL, F, T, rel, seeds, torch  # skips the module without torch

from refbnn import crosscheck as xc
from refbnn import ops
from refbnn.layers import BinaryConv2d, BinaryLinear
from refbnn.quantizers import IdentitySteSign, SteSign


def with_specials(rng, shape, specials=(0.0, 1.0, -1.0), frac=0.25):
    """Normal values with exact 0 and +-1 mixed in (where sign(0) and the clip boundary matter)."""
    a = rng.standard_normal(shape)
    m = rng.random(shape) < frac
    a[m] = rng.choice(np.array(specials), size=int(m.sum()))
    return a


# --- sign functions with straight-through estimators, as a PyTorch user writes them ---------------

class SignSTE(torch.autograd.Function):
    """y = sign(x) with sign(0) = ``zero``; dx = dy * 1[|x| <= clip] (``inclusive``) or 1[|x| < clip];
    ``clip=None``: identity STE (dx = dy)."""

    @staticmethod
    def forward(ctx, x, zero=1.0, clip=1.0, inclusive=True):
        ctx.save_for_backward(x)
        ctx.clip, ctx.inclusive = clip, inclusive
        return torch.where(x == 0, torch.full_like(x, zero), torch.sign(x))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if ctx.clip is None:
            return g, None, None, None
        mask = (x.abs() <= ctx.clip) if ctx.inclusive else (x.abs() < ctx.clip)
        return g * mask.to(g.dtype), None, None, None


class TorchSign(torch.autograd.Function):
    """The official codes' form: torch.sign (sign(0) = 0) forward, clamp-style clipped STE backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


class TorchSignIdentity(torch.autograd.Function):
    """torch.sign forward, identity STE backward (BinaryConnect's weights)."""

    @staticmethod
    def forward(ctx, x):
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        return g


def refbnn_quantizer(kind, zero, inclusive):
    if kind is None:
        return None
    if kind == "identity":
        return IdentitySteSign(sign_zero=zero)
    return SteSign(clip_value=1.0, sign_zero=zero, clip_inclusive=inclusive)


def torch_quantize(t, kind, zero, inclusive):
    if kind is None:
        return t
    return SignSTE.apply(t, zero, None if kind == "identity" else 1.0, inclusive)


def test_sign_functions_are_what_they_claim():
    """The torch Functions themselves: exact values at 0 and at the clip, so the parity below means something."""
    x = T([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    y = SignSTE.apply(x, 0.0, 1.0, False)
    y.backward(torch.ones_like(y))
    assert y.tolist() == [-1, -1, -1, 0, 1, 1, 1] and x.grad.tolist() == [0, 0, 1, 1, 1, 0, 0]
    x.grad = None
    y = SignSTE.apply(x, 1.0, 1.0, True)
    y.backward(torch.ones_like(y))
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1] and x.grad.tolist() == [0, 1, 1, 1, 1, 1, 0]
    q = SteSign(clip_value=1.0, sign_zero=1.0, clip_inclusive=True)
    yr, c = q.forward(x.detach().numpy())
    assert yr.tolist() == y.tolist() and q.backward(np.ones(7), c).tolist() == x.grad.tolist()


# --- full-precision ops ----------------------------------------------------------------------------

@given(seeds, st.integers(1, 3), st.sampled_from([1, 2, 3]), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 3), st.integers(0, 2), st.integers(1, 2), st.integers(1, 3), st.integers(4, 8),
       st.integers(4, 8), st.booleans())
def test_conv2d_matches_torch(seed, n, groups, cin_g, cout_g, stride, padding, dilation, k, h, w, bias):
    rng = np.random.default_rng(seed)
    if h + 2 * padding < dilation * (k - 1) + 1 or w + 2 * padding < dilation * (k - 1) + 1:
        k = 1
    x = rng.standard_normal((n, cin_g * groups, h, w))
    wt = rng.standard_normal((cout_g * groups, cin_g, k, k))
    b = rng.standard_normal(cout_g * groups) if bias else None
    y, cache = ops.conv2d_forward(x, wt, b, stride, padding, dilation, groups)
    g = rng.standard_normal(y.shape)
    dx, grads = ops.conv2d_backward(g, cache)
    tx, tw, tb = T(x), T(wt), (T(b) if bias else None)
    ty = F.conv2d(tx, tw, tb, stride, padding, dilation, groups)
    ty.backward(T(g, False))
    assert rel(y, ty.detach()) < TOL
    assert rel(dx, tx.grad) < TOL and rel(grads["weight"], tw.grad) < TOL
    if bias:
        assert rel(grads["bias"], tb.grad) < TOL


@given(seeds, st.integers(1, 5), st.integers(1, 7), st.integers(1, 6), st.booleans())
def test_linear_matches_torch(seed, n, fin, fout, bias):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((n, fin)), rng.standard_normal((fout, fin))
    b = rng.standard_normal(fout) if bias else None
    y, cache = ops.linear_forward(x, w, b)
    g = rng.standard_normal(y.shape)
    dx, grads = ops.linear_backward(g, cache)
    tx, tw, tb = T(x), T(w), (T(b) if bias else None)
    ty = F.linear(tx, tw, tb)
    ty.backward(T(g, False))
    assert rel(y, ty.detach()) < TOL and rel(dx, tx.grad) < TOL and rel(grads["weight"], tw.grad) < TOL
    if bias:
        assert rel(grads["bias"], tb.grad) < TOL


@given(seeds, st.sampled_from([2, 4]), st.integers(2, 4), st.integers(1, 5), st.booleans(),
       st.sampled_from([0.1, 0.5]))
def test_batchnorm_matches_torch(seed, ndim, n, c, training, momentum):
    rng = np.random.default_rng(seed)
    shape = (n, c) if ndim == 2 else (n, c, 3, 2)
    x = rng.standard_normal(shape) * 2 + 0.5
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    rm_t, rv_t = torch.tensor(rm.copy()), torch.tensor(rv.copy())
    y, cache = ops.batchnorm_forward(x, gamma, beta, rm, rv, training, momentum, 1e-5)  # updates rm, rv
    g = rng.standard_normal(shape)
    dx, grads = ops.batchnorm_backward(g, cache)
    tx, tg, tb = T(x), T(gamma), T(beta)
    ty = F.batch_norm(tx, rm_t, rv_t, tg, tb, training=training, momentum=momentum, eps=1e-5)
    ty.backward(T(g, False))
    assert rel(y, ty.detach()) < TOL and rel(dx, tx.grad) < TOL
    assert rel(grads["gamma"], tg.grad) < TOL and rel(grads["beta"], tb.grad) < TOL
    assert rel(rm, rm_t) < TOL and rel(rv, rv_t) < TOL  # running statistics (unbiased variance) updated alike


@given(seeds, st.integers(1, 3), st.integers(1, 3), st.integers(3, 7))
def test_hardtanh_relu_match_torch_including_the_kinks(seed, n, c, size):
    rng = np.random.default_rng(seed)
    x = with_specials(rng, (n, c, size), specials=(0.0, 1.0, -1.0), frac=0.4)  # exactly at the kinks
    g = rng.standard_normal(x.shape)
    for fwd, bwd, tfn in ((ops.hardtanh_forward, ops.hardtanh_backward, F.hardtanh),
                          (ops.relu_forward, ops.relu_backward, F.relu)):
        y, cache = fwd(x)
        dx, _ = bwd(g, cache)
        tx = T(x)
        ty = tfn(tx)
        ty.backward(T(g, False))
        assert rel(y, ty.detach()) == 0 and rel(dx, tx.grad) == 0, tfn


@given(seeds, st.integers(1, 2), st.integers(1, 3), st.integers(4, 7), st.integers(4, 7),
       st.sampled_from([(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0), (3, 3, 0)]), st.booleans())
def test_pooling_matches_torch(seed, n, c, h, w, ksp, ties):
    rng = np.random.default_rng(seed)
    k, s, p = ksp
    # integer values make ties, where the first maximal tap (row-major) must get the gradient
    x = rng.integers(-2, 3, size=(n, c, h, w)).astype(np.float64) if ties else rng.standard_normal((n, c, h, w))
    for fwd, bwd, tfn in ((ops.maxpool2d_forward, ops.maxpool2d_backward, F.max_pool2d),
                          (ops.avgpool2d_forward, ops.avgpool2d_backward, F.avg_pool2d)):
        y, cache = fwd(x, k, s, p)
        g = rng.standard_normal(y.shape)
        dx, _ = bwd(g, cache)
        tx = T(x)
        ty = tfn(tx, k, s, p)
        ty.backward(T(g, False))
        assert rel(y, ty.detach()) < TOL and rel(dx, tx.grad) < TOL, tfn


# --- binary layers ---------------------------------------------------------------------------------

quant_kinds = st.sampled_from([("clipped", "clipped"), ("identity", "clipped"), ("clipped", None),
                               ("identity", None), ("clipped", "identity")])


@given(seeds, quant_kinds, st.sampled_from([None, "mean_abs", "learned"]), st.sampled_from([1.0, 0.0]),
       st.booleans(), st.sampled_from([0.0, 1.0, -1.0]), st.booleans(), st.integers(1, 2), st.integers(0, 2),
       st.sampled_from([1, 2]), st.booleans())
def test_binary_conv2d_matches_torch(seed, kinds, scale, zero, inclusive, pad_value, bias, stride, padding, groups,
                                     training):
    rng = np.random.default_rng(seed)
    wk, ik = kinds
    n, cin, cout, h, k = 2, 2 * groups, 2 * groups, 5, 3
    x = with_specials(rng, (n, cin, h, h))
    w = with_specials(rng, (cout, cin // groups, k, k))
    layer = BinaryConv2d(cin, cout, k, stride, padding, groups=groups, weight_quantizer=refbnn_quantizer(wk, zero,
                         inclusive), input_quantizer=refbnn_quantizer(ik, zero, inclusive), scale=scale, bias=bias,
                         pad_value=pad_value, backend="numpy", dtype=np.float64)
    layer.params["weight"] = w.copy()
    if bias:
        layer.params["bias"] = rng.standard_normal(cout)
    if scale == "learned":
        layer.params["alpha"] = rng.uniform(0.1, 1.0, cout)
    layer.train(training)
    out, cache = layer.forward(x)
    g = rng.standard_normal(out.shape)
    layer.zero_grad()
    dx = layer.backward(g, cache)

    tx, tw = T(x), T(w)
    xb = torch_quantize(tx, ik, zero, inclusive)
    wb = torch_quantize(tw, wk, zero, inclusive)
    xb = F.pad(xb, (padding,) * 4, value=pad_value)  # binarize, then pad (pad 0: the official codes' zero padding)
    ty = F.conv2d(xb, wb, None, stride, 0, 1, groups)
    if scale == "mean_abs":
        ty = ty * tw.abs().mean(dim=(1, 2, 3)).detach().view(1, -1, 1, 1)
    ta = T(layer.params["alpha"]) if scale == "learned" else None
    if ta is not None:
        ty = ty * ta.view(1, -1, 1, 1)
    tb = T(layer.params["bias"]) if bias else None
    if tb is not None:
        ty = ty + tb.view(1, -1, 1, 1)
    ty.backward(T(g, False))
    assert rel(out, ty.detach()) < TOL
    assert rel(dx, tx.grad) < TOL and rel(layer.grads["weight"], tw.grad) < TOL
    if bias:
        assert rel(layer.grads["bias"], tb.grad) < TOL
    if ta is not None:
        assert rel(layer.grads["alpha"], ta.grad) < TOL


@given(seeds, quant_kinds, st.sampled_from([None, "mean_abs", "learned"]), st.sampled_from([1.0, 0.0]),
       st.booleans(), st.booleans(), st.integers(1, 4), st.integers(1, 6), st.integers(1, 5))
def test_binary_linear_matches_torch(seed, kinds, scale, zero, inclusive, bias, n, fin, fout):
    rng = np.random.default_rng(seed)
    wk, ik = kinds
    x, w = with_specials(rng, (n, fin)), with_specials(rng, (fout, fin))
    layer = BinaryLinear(fin, fout, refbnn_quantizer(wk, zero, inclusive), refbnn_quantizer(ik, zero, inclusive),
                         scale=scale, bias=bias, backend="numpy", dtype=np.float64)
    layer.params["weight"] = w.copy()
    if bias:
        layer.params["bias"] = rng.standard_normal(fout)
    if scale == "learned":
        layer.params["alpha"] = rng.uniform(0.1, 1.0, fout)
    out, cache = layer.forward(x)
    g = rng.standard_normal(out.shape)
    dx = layer.backward(g, cache)
    tx, tw = T(x), T(w)
    ty = F.linear(torch_quantize(tx, ik, zero, inclusive), torch_quantize(tw, wk, zero, inclusive))
    if scale == "mean_abs":
        ty = ty * tw.abs().mean(dim=1).detach()
    ta = T(layer.params["alpha"]) if scale == "learned" else None
    if ta is not None:
        ty = ty * ta
    tb = T(layer.params["bias"]) if bias else None
    if tb is not None:
        ty = ty + tb
    ty.backward(T(g, False))
    assert rel(out, ty.detach()) < TOL and rel(dx, tx.grad) < TOL and rel(layer.grads["weight"], tw.grad) < TOL
    if bias:
        assert rel(layer.grads["bias"], tb.grad) < TOL
    if ta is not None:
        assert rel(layer.grads["alpha"], ta.grad) < TOL


# --- refbnn crosscheck against a PyTorch user's implementation ---------------------------------------

class UserBNNConv(torch.nn.Module):
    """A PyTorch user's BNN conv in the official-code style: torch.sign (sign(0) = 0) on weights (identity
    STE) and activations (clipped STE, inclusive), zero padding after binarization. ``bugs`` breaks it."""

    def __init__(self, weight, stride=1, padding=1, bias=None, bugs=()):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(weight))
        self.bias = None if bias is None else torch.nn.Parameter(torch.tensor(bias))
        self.stride, self.padding, self.bugs = stride, padding, set(bugs)

    def forward(self, x):
        if "sign0_plus1" in self.bugs:
            xb = SignSTE.apply(x, 1.0, 1.0, True)
        elif "no_clip" in self.bugs:
            xb = TorchSignIdentity.apply(x)
        else:
            xb = TorchSign.apply(x)
        wb = TorchSignIdentity.apply(self.weight)
        if "sign0_plus1" in self.bugs:
            wb = SignSTE.apply(self.weight, 1.0, None, True)
        return F.conv2d(xb, wb, self.bias, self.stride, self.padding)


def user_bundle(rng, bugs=(), dtype=np.float64, bias=True, stride=1, padding=1):
    x = with_specials(rng, (2, 3, 6, 6)).astype(dtype)
    w = with_specials(rng, (4, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype) if bias else None
    m = UserBNNConv(w, stride, padding, b, bugs)
    tx = torch.tensor(x, requires_grad=True)
    out = m(tx)
    g = torch.tensor(rng.standard_normal(tuple(out.shape)).astype(dtype))
    (out * g).sum().backward()  # L = sum(out * grad_out)
    bundle = {"x": x, "weight": w, "grad_out": g.numpy(), "out": out.detach().numpy(), "grad_x": tx.grad.numpy(),
              "grad_weight": m.weight.grad.numpy(), "stride": np.array(stride), "padding": np.array(padding)}
    if bias:
        bundle.update(bias=b, grad_bias=m.bias.grad.numpy())
    return bundle


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "refbnn", "crosscheck", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_crosscheck_passes_a_correct_torch_implementation(tmp_path, dtype):
    bundle = user_bundle(np.random.default_rng(1), dtype=dtype)
    assert (bundle["x"] == 0).any() and (np.abs(bundle["x"]) == 1).any()  # the conventions are exercised
    report = xc.crosscheck(bundle, method="bnn", convention="official")
    assert report.passed, report.table()
    assert [r.name for r in report.rows] == ["out", "grad_x", "grad_weight", "grad_bias"]
    assert report.rtol == (1e-10 if dtype == np.float64 else 1e-5)
    path = tmp_path / "mine.npz"
    np.savez(path, **bundle)
    res = run_cli(path, "--method", "bnn", "--convention", "official", "--json", tmp_path / "r.json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS" in res.stdout and "grad_weight" in res.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is True and {t["name"] for t in data["tensors"]} == {"out", "grad_x", "grad_weight",
                                                                               "grad_bias"}


def test_crosscheck_catches_sign_of_zero(tmp_path):
    """sign(0) = +1 where the official code has torch.sign's 0: out and both gradients differ."""
    bundle = user_bundle(np.random.default_rng(2), bugs=("sign0_plus1",))
    report = xc.crosscheck(bundle, method="bnn", convention="official")
    assert not report.passed
    assert not report.row("out").passed and report.row("out").mismatches > 0
    # ... and the same implementation is exactly the paper convention (sign(0) = +1)
    assert xc.crosscheck(bundle, method="bnn", convention="paper").passed
    path = tmp_path / "bug.npz"
    np.savez(path, **bundle)
    res = run_cli(path, "--method", "bnn", "--convention", "official")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL" in res.stdout and "worst at" in res.stdout


def test_crosscheck_catches_a_missing_clip(tmp_path):
    """An identity STE on activations where BNN clips: the forward agrees, grad_x does not."""
    bundle = user_bundle(np.random.default_rng(3), bugs=("no_clip",))
    report = xc.crosscheck(bundle, method="bnn", convention="official")
    assert report.row("out").passed and not report.row("grad_x").passed and not report.passed
    path = tmp_path / "bug.npz"
    np.savez(path, **bundle)
    res = run_cli(path, "--method", "bnn", "--convention", "official")
    assert res.returncode == 1 and "grad_x" in res.stdout


def test_crosscheck_parts_against_torch():
    """--part input / weight: the method's quantizers alone."""
    rng = np.random.default_rng(4)
    x = with_specials(rng, (3, 4, 5))
    g = rng.standard_normal(x.shape)
    for part, fn in (("input", TorchSign), ("weight", TorchSignIdentity)):
        tx = T(x)
        y = fn.apply(tx)
        y.backward(T(g, False))
        bundle = {"x": x, "grad_out": g, "out": y.detach().numpy(), "grad_x": tx.grad.numpy()}
        assert xc.crosscheck(bundle, method="bnn", convention="official", part=part).passed
        assert not xc.crosscheck(bundle, method="bnn", convention="paper", part=part).passed  # sign(0)


def test_export_round_trip_and_torch_against_exported(tmp_path):
    """refbnn writes bundles; they pass crosscheck, and the PyTorch implementation matches them."""
    paths = xc.export_bundles(tmp_path, method="bnn", convention="official", seed=5)
    assert {os.path.basename(p) for p in paths} == {"bnn-official-conv2d-nchw.npz", "bnn-official-weight-nchw.npz",
                                                    "bnn-official-input-nchw.npz"}
    for p in paths:
        assert xc.crosscheck(p).passed  # the bundle records method and convention
        res = run_cli(p)
        assert res.returncode == 0, res.stdout + res.stderr
    with np.load(tmp_path / "bnn-official-conv2d-nchw.npz", allow_pickle=False) as z:
        b = dict(z)
    assert (b["x"] == 0).any()
    m = UserBNNConv(b["weight"], int(b["stride"]) if "stride" in b else 1, int(b["padding"]), b.get("bias"))
    tx = torch.tensor(b["x"], requires_grad=True)
    out = m(tx)
    (out * torch.tensor(b["grad_out"])).sum().backward()
    assert rel(out.detach(), b["out"]) < TOL and rel(tx.grad, b["grad_x"]) < TOL
    assert rel(m.weight.grad, b["grad_weight"]) < TOL and rel(m.bias.grad, b["grad_bias"]) < TOL
    # the CLI export, float32
    res = run_cli("--export", tmp_path / "cli", "--method", "bnn", "--convention", "paper", "--dtype", "float32",
                  "--layer", "linear", "--weight-shape", "5,7")
    assert res.returncode == 0, res.stderr
    exported = sorted(os.listdir(tmp_path / "cli"))
    assert "bnn-paper-linear-nchw.npz" in exported
    for name in exported:
        res = run_cli(tmp_path / "cli" / name)
        assert res.returncode == 0 and "PASS" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("stride,padding,size", [(1, "same", 6), (2, "same", 6), (2, "same", 7), (1, "valid", 6)])
@pytest.mark.parametrize("pad_value", [0.0, 1.0])
def test_larq_layout_bundle_made_with_torch(stride, padding, size, pad_value):
    """A Larq-style QuantConv2D(ste_sign, ste_sign) in NHWC/HWIO, made with torch by permuting;
    TensorFlow's "same" pads the odd pixel at the bottom/right (stride 2)."""
    rng = np.random.default_rng(6)
    x = with_specials(rng, (2, size, size, 3))                       # NHWC
    kernel = with_specials(rng, (3, 3, 3, 4))                        # HWIO
    bias = rng.standard_normal(4)
    tx, tk, tb = T(x), T(kernel), T(bias)
    xb = SignSTE.apply(tx.permute(0, 3, 1, 2), 1.0, 1.0, True)      # Larq: sign(0) = +1, clip inclusive
    wb = SignSTE.apply(tk.permute(3, 2, 0, 1), 1.0, 1.0, True)
    if padding == "same":
        out_size = -(-size // stride)
        total = max((out_size - 1) * stride + 3 - size, 0)
        lo, hi = total // 2, total - total // 2
        xb = F.pad(xb, (lo, hi, lo, hi), value=pad_value)
    y = F.conv2d(xb, wb, tb, stride).permute(0, 2, 3, 1)              # back to NHWC
    g = rng.standard_normal(tuple(y.shape))
    y.backward(T(g, False))
    bundle = {"x": x, "kernel": kernel, "bias": bias, "grad_out": g, "out": y.detach().numpy(),
              "grad_x": tx.grad.numpy(), "grad_kernel": tk.grad.numpy(), "grad_bias": tb.grad.numpy(),
              "stride": np.array(stride), "pad_values": np.array(pad_value)}
    report = xc.crosscheck(bundle, input_quantizer="ste_sign", kernel_quantizer="ste_sign", layout="nhwc",
                           padding=padding)
    assert report.passed, report.table()
    # the same bundle read as NCHW is refused, with a hint
    with pytest.raises(xc.BundleError, match="--layout nhwc"):
        xc.crosscheck(bundle, input_quantizer="ste_sign", kernel_quantizer="ste_sign", layout="nchw", padding=padding)
    if pad_value == 1.0 and padding == "same":  # a wrong pad value shows at the border
        bad = dict(bundle, pad_values=np.array(0.0))
        assert not xc.crosscheck(bad, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                                 padding=padding).passed


def test_larq_dense_bundle_made_with_torch():
    rng = np.random.default_rng(7)
    x, kernel = with_specials(rng, (4, 6)), with_specials(rng, (6, 3))  # Dense kernel (in, out)
    tx, tk = T(x), T(kernel)
    y = SignSTE.apply(tx, 1.0, 1.0, True) @ SignSTE.apply(tk, 1.0, 1.0, True)
    g = rng.standard_normal(tuple(y.shape))
    y.backward(T(g, False))
    bundle = {"x": x, "kernel": kernel, "grad_out": g, "out": y.detach().numpy(), "grad_x": tx.grad.numpy(),
              "grad_kernel": tk.grad.numpy()}
    assert xc.crosscheck(bundle, input_quantizer="ste_sign", kernel_quantizer="ste_sign").passed
    # Larq's clip_value = 1.25 (QuickNet) does not match a clip at 1: the gradients differ
    report = xc.crosscheck(bundle, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                           params={"clip_value": 1.25})
    assert report.row("out").passed and not report.passed


def test_float_method_is_plain_torch_conv():
    rng = np.random.default_rng(8)
    x, w, b = rng.standard_normal((2, 4, 6, 6)), rng.standard_normal((6, 2, 3, 3)), rng.standard_normal(6)
    tx, tw, tb = T(x), T(w), T(b)
    y = F.conv2d(tx, tw, tb, 2, 1, 2, 2)
    g = rng.standard_normal(tuple(y.shape))
    y.backward(T(g, False))
    bundle = {"x": x, "weight": w, "bias": b, "grad_out": g, "out": y.detach().numpy(), "grad_x": tx.grad.numpy(),
              "grad_weight": tw.grad.numpy(), "grad_bias": tb.grad.numpy(), "stride": np.array(2),
              "padding": np.array(1), "dilation": np.array(2), "groups": np.array(2)}
    assert xc.crosscheck(bundle, method="float", convention="paper").passed


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_same_padding_with_an_even_kernel_matches_torch():
    """PyTorch's padding="same" puts the odd pixel at the end, as TensorFlow does: an asymmetric pad."""
    rng = np.random.default_rng(9)
    x, w = rng.standard_normal((2, 3, 7, 7)), rng.standard_normal((4, 3, 4, 4))
    tx, tw = T(x), T(w)
    y = F.conv2d(tx, tw, padding="same")
    g = rng.standard_normal(tuple(y.shape))
    y.backward(T(g, False))
    bundle = {"x": x, "weight": w, "grad_out": g, "out": y.detach().numpy(), "grad_x": tx.grad.numpy(),
              "grad_weight": tw.grad.numpy(), "padding": np.array("same")}
    assert xc.crosscheck(bundle, method="float", convention="paper").passed
    with pytest.raises(xc.BundleError, match=r"out: expected shape \(2, 4, 8, 8\)"):
        xc.crosscheck(dict(bundle, padding=np.array(2)), method="float", convention="paper")
