"""``record_torch`` and arrays as frameworks hold them.

The official IR-Net and ReCU layers are written below as their repositories write them: ``nn.Conv2d``
subclasses whose tensors are held exactly as there (``t``, ``k`` plain shape-(1,) tensor attributes, ``tau``
a registered buffer that the trainer replaces by a shape-(1,) tensor, ``alpha`` a parameter of shape
(O, 1, 1)); ``record_torch`` reads them and ``crosscheck(..., convention="official")`` passes with no
reshaping by hand. The code was read, not copied, at:

- IR-Net, github.com/htqin/IR-Net, commit f63a5901d02836e2cf4405da1c68e066353a025f:
  CIFAR-10/ResNet20/1w1a/modules/ir_1w1a.py (``IRConv2d``: ``self.k = torch.tensor([10]).float()``,
  ``self.t = torch.tensor([0.1]).float()``; the weight balanced per output channel, divided by its unbiased
  std, a detached per-channel scale 2^round(log2 mean|.|), ``BinaryQuantize`` on the weights and the
  activations, ``F.conv2d(..., self.bias, ...)``), CIFAR-10/ResNet20/1w32a/modules/ir_1w32a.py (the same with
  real activations), CIFAR-10/ResNet20/1w1a/modules/binaryfunction.py (``BinaryQuantize``: ``torch.sign``
  forward, k t (1 - tanh^2(t x)) backward) and CIFAR-10/ResNet20/1w1a/trainer.py (the trainer assigns t, k);
- ReCU, github.com/z-hXu/ReCU, commit 9a73bed7a6452736184795759770ae17ad0308ec:
  cifar/modules/binarized_modules.py (``BinarizeConv2d``: ``alpha = nn.Parameter(torch.rand(O, 1, 1))``,
  ``register_buffer('tau', torch.tensor(1.))``; per-channel centering and scaling by
  sqrt(var + 1e-5) / 2 / sqrt(2), Q = -mean|w1| log(2 - 2 tau) taken as a Python float, a clamp at +-Q, in
  training the activations divided by their per-sample std, ``BinaryQuantize`` (identity backward) on the
  weights and ``BinaryQuantize_a`` (max(0, 2 - 2|x|) backward) on the activations,
  ``F.conv2d(..., self.bias, ...) * self.alpha``) and cifar/main.py (``cpt_tau`` returns
  ``torch.tensor([...])``, so the trainer leaves tau of shape (1,)).

The sign Functions are tests/test_official_parity.py's.

Needs PyTorch: pip install torch==2.13.0 (CI installs it).
"""
import math
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from torch_helpers import ROOT, F, torch  # skips the module without torch
from test_official_parity import EdeSign, SignApprox, SignIdentity, inputs, run_cli, tau_official

from refbnn import crosscheck as xc

nn = torch.nn
D = torch.float64


# --- the official layers and quantizers, as their repositories hold their tensors ---------------------------

def irnet_standardized(w):
    """ir_1w1a.py: balance, then divide by the unbiased std per output channel (no epsilon)."""
    o = w.size(0)
    bw = w - w.view(o, -1).mean(-1).view(o, 1, 1, 1)
    return bw / bw.view(o, -1).std(-1).view(o, 1, 1, 1)


def irnet_scale(bw):
    """ir_1w1a.py: 2^round(log2 mean|bw|) per output channel, detached."""
    o = bw.size(0)
    e = torch.round(torch.log(bw.abs().view(o, -1).mean(-1)) / math.log(2))
    return torch.pow(torch.full((o,), 2.0, dtype=bw.dtype), e).view(o, 1, 1, 1).detach()


class OfficialIRConv2d(nn.Conv2d):
    """IR-Net's IRConv2d (ir_1w1a.py; ``binary_act=False``: ir_1w32a.py). ``k`` and ``t`` are plain tensor
    attributes of shape (1,), as in the code (float64 here, the dtype of the test)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, binary_act=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias, dtype=D)
        self.k = torch.tensor([10.0], dtype=D)
        self.t = torch.tensor([0.1], dtype=D)
        self.binary_act = binary_act

    def forward(self, input):
        bw = irnet_standardized(self.weight)
        sw = irnet_scale(bw)
        bw = EdeSign.apply(bw, self.k, self.t) * sw
        ba = EdeSign.apply(input, self.k, self.t) if self.binary_act else input
        return F.conv2d(ba, bw, self.bias, self.stride, self.padding, self.dilation, self.groups)


class OfficialBinarizeConv2d(nn.Conv2d):
    """ReCU's BinarizeConv2d (binarized_modules.py): alpha (O, 1, 1), tau a buffer (0-d until the trainer sets
    a shape-(1,) tensor); the bias inside the convolution, then times alpha."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, dtype=D, **kwargs)
        self.alpha = nn.Parameter(torch.rand(self.weight.size(0), 1, 1, dtype=D), requires_grad=True)
        self.register_buffer("tau", torch.tensor(1.0, dtype=D))

    def forward(self, input):
        w = self.weight
        w0 = w - w.mean([1, 2, 3], keepdim=True)
        w1 = w0 / (torch.sqrt(w0.var([1, 2, 3], keepdim=True) + 1e-5) / 2 / math.sqrt(2))
        q = (-torch.mean(torch.abs(w1)) * torch.log(2 - 2 * self.tau)).detach().cpu().item()
        w2 = torch.clamp(w1, -q, q)
        a0 = input / torch.sqrt(input.var([1, 2, 3], keepdim=True) + 1e-5) if self.training else input
        out = F.conv2d(SignApprox.apply(a0), SignIdentity.apply(w2), self.bias, self.stride, self.padding,
                       self.dilation, self.groups)
        return out * self.alpha


class EdeModule(nn.Module):
    """binaryfunction.py's BinaryQuantize alone, with the layer's k and t tensors (shape (1,))."""

    def __init__(self, t, k):
        super().__init__()
        self.k, self.t = torch.tensor([k], dtype=D), torch.tensor([t], dtype=D)

    def forward(self, x):
        return EdeSign.apply(x, self.k, self.t)


class IRWeightQuantizer(EdeModule):
    """IRConv2d's weight path alone (standardize, BinaryQuantize, times the detached scale): on its input."""

    def forward(self, w):
        bw = irnet_standardized(w)
        return EdeSign.apply(bw, self.k, self.t) * irnet_scale(bw)


class RecuActivation(nn.Module):
    """BinarizeConv2d's activation path alone (per-sample std in training, BinaryQuantize_a)."""

    def forward(self, a):
        a0 = a / torch.sqrt(a.var([1, 2, 3], keepdim=True) + 1e-5) if self.training else a
        return SignApprox.apply(a0)


def set_tensor(p, a):
    with torch.no_grad():
        p.copy_(torch.as_tensor(np.asarray(a)).view(p.shape))


def official_irnet(method, t, k, bias, stride, training, rng, cin=3, cout=4):
    x, w, _ = inputs(rng, method, cin=cin, cout=cout)
    m = OfficialIRConv2d(cin, cout, 3, stride, 1, bias=bias, binary_act=method == "irnet")
    set_tensor(m.weight, w)
    if bias:
        set_tensor(m.bias, rng.standard_normal(cout) * 0.3)
    m.k, m.t = torch.tensor([k], dtype=D), torch.tensor([t], dtype=D)  # as trainer.py assigns them
    return m.train(training), x


def official_recu(tau, bias, stride, training, rng, cin=3, cout=4):
    x, w, alpha = inputs(rng, "recu", cin=cin, cout=cout)
    m = OfficialBinarizeConv2d(cin, cout, 3, stride, 1, bias=bias)
    set_tensor(m.weight, w)
    set_tensor(m.alpha, alpha)
    if bias:
        set_tensor(m.bias, rng.standard_normal(cout) * 0.3)
    if tau is not None:
        m.tau = torch.tensor([tau], dtype=D)  # main.py: module.tau = cpt_tau(epoch), shape (1,)
    return m.train(training), x


IRNET_TK = [(0.1, 10.0), (0.02, 50.0), (1.0, 1.0), (4.0, 1.0)]
RECU_TAU = [None, 1.0, 0.99, 0.85, 0.6]


# --- the official layers, recorded and checked -----------------------------------------------------------------

@pytest.mark.parametrize("method", ["irnet", "irnet_1w32a"])
@pytest.mark.parametrize("t,k", IRNET_TK)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("training", [True, False])
def test_official_irnet_recorded_and_checked(method, t, k, bias, stride, training):
    rng = np.random.default_rng(zlib.crc32(repr((method, t, bias, stride, training)).encode()))
    m, x = official_irnet(method, t, k, bias, stride, training, rng)
    b = xc.record_torch(m, x, seed=3)
    assert b["t"].shape == (1,) and b["k"].shape == (1,) and "alpha" not in b and ("bias" in b) == bias
    assert b["training"] == training and tuple(b["stride"]) == (stride, stride)
    rep = xc.crosscheck(b, method=method, convention="official")
    assert rep.passed, rep.table()
    assert [r.name for r in rep.rows] == ["out", "grad_x", "grad_weight"] + (["grad_bias"] if bias else [])
    assert "t (1,) read as a scalar" in rep.readings and "k (1,) read as a scalar" in rep.readings
    assert rep.settings["state"]["weight_quantizer.t"] == t and rep.settings["state"]["weight_quantizer.k"] == k
    # the recorded t is what the check used: another t gives other gradients
    if t != 1.0:
        assert not xc.crosscheck(dict(b, t=np.array([1.0])), method=method, convention="official").passed


@pytest.mark.parametrize("tau", RECU_TAU)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("training", [True, False])
def test_official_recu_recorded_and_checked(tau, stride, training):
    rng = np.random.default_rng(zlib.crc32(repr((tau, stride, training)).encode()))
    m, x = official_recu(tau, False, stride, training, rng)
    b = xc.record_torch(m, x)
    assert b["alpha"].shape == (4, 1, 1) and b["grad_alpha"].shape == (4, 1, 1)
    assert b["tau"].shape == (() if tau is None else (1,))
    rep = xc.crosscheck(b, method="recu", convention="official")
    assert rep.passed, rep.table()
    assert [r.name for r in rep.rows] == ["out", "grad_x", "grad_weight", "grad_alpha"]
    assert rep.row("grad_alpha").shape == (4, 1, 1)  # compared in the bundle's own shape
    assert "alpha (4, 1, 1) read as (4,)" in rep.readings and "grad_alpha (4, 1, 1) read as (4,)" in rep.readings
    assert ("tau (1,) read as a scalar" in rep.readings) == (tau is not None)
    if tau is not None and tau < 1:  # the clamp is what tau changes: another tau, another weight gradient
        assert not xc.crosscheck(dict(b, tau=np.array([0.999])), method="recu", convention="official").passed


@pytest.mark.parametrize("training", [True, False])
def test_official_recu_with_bias_recorded_and_checked(training):
    """ReCU's code adds the bias inside the convolution and multiplies the sum by alpha."""
    m, x = official_recu(0.9, True, 2, training, np.random.default_rng(8))
    b = xc.record_torch(m, x)
    assert b["bias"].shape == (4,) and b["grad_bias"].shape == (4,)
    rep = xc.crosscheck(b, method="recu", convention="official")
    assert rep.passed, rep.table()


def official_arrays(m, x, g):
    """The arrays saved straight from the module's tensors, as a user would with numpy.savez."""
    tx = torch.tensor(x, requires_grad=True)
    out = m(tx)
    (out * torch.tensor(g)).sum().backward()
    arrays = {"x": x, "grad_out": g, "out": out.detach().numpy(), "grad_x": tx.grad.numpy(),
              "stride": np.array(m.stride), "padding": np.array(m.padding), "training": np.array(m.training)}
    for name, p in m.named_parameters():
        arrays[name] = p.detach().numpy()
        arrays["grad_" + name] = p.grad.numpy()
    for name in ("tau", "t", "k"):
        if hasattr(m, name):
            arrays[name] = getattr(m, name).numpy()
    return arrays


def test_bundles_saved_straight_from_the_official_tensors_pass_the_cli(tmp_path):
    rng = np.random.default_rng(21)
    m, x = official_recu(0.85, False, 1, True, rng)
    arrays = official_arrays(m, x, rng.standard_normal((2, 4, 6, 6)))
    assert arrays["alpha"].shape == (4, 1, 1) and arrays["tau"].shape == (1,)
    np.savez(tmp_path / "recu.npz", **arrays)
    res = run_cli(tmp_path / "recu.npz", "--method", "recu", "--convention", "official")
    assert res.returncode == 0 and "PASS" in res.stdout, res.stdout + res.stderr
    for line in ("read: alpha (4, 1, 1) read as (4,)", "read: grad_alpha (4, 1, 1) read as (4,)",
                 "read: tau (1,) read as a scalar"):
        assert line in res.stdout, res.stdout

    m, x = official_irnet("irnet", 0.3, 1 / 0.3, True, 2, True, rng)
    arrays = official_arrays(m, x, rng.standard_normal((2, 4, 3, 3)))
    assert arrays["t"].shape == (1,) and arrays["k"].shape == (1,)
    np.savez(tmp_path / "irnet.npz", **arrays)
    res = run_cli(tmp_path / "irnet.npz", "--method", "irnet", "--convention", "official")
    assert res.returncode == 0 and "read: t (1,) read as a scalar" in res.stdout, res.stdout + res.stderr
    xc.save_bundle(tmp_path / "recorded.npz", xc.record_torch(m, x))  # what record_torch writes, the same way
    res = run_cli(tmp_path / "recorded.npz", "--method", "irnet", "--convention", "official")
    assert res.returncode == 0 and "PASS" in res.stdout, res.stdout + res.stderr


# --- bare quantizers ---------------------------------------------------------------------------------------------

def test_wrapped_quantizer_functions_recorded_and_checked():
    rng = np.random.default_rng(5)
    x, w, _ = inputs(rng, "irnet")
    b = xc.record_torch(EdeModule(0.3, 1 / 0.3), x)
    assert set(b) == {"x", "t", "k", "out", "grad_out", "grad_x", "training"}
    rep = xc.crosscheck(b, quantizer="ede", convention="official")
    assert rep.passed, rep.table()
    assert "t=0.3" in rep.settings["quantizer"] and "t (1,) read as a scalar" in rep.readings
    assert (x == 0).any() and not xc.crosscheck(b, quantizer="ede", params={"sign_zero": 1.0}).passed  # torch.sign

    for training in (True, False):
        b = xc.record_torch(RecuActivation().train(training), x)
        rep = xc.crosscheck(b, quantizer="recu_act", convention="official")
        assert rep.passed and rep.settings["part"] == "input", rep.table()
        assert "part input: quantizer recu_act quantizes inputs only" in rep.readings

    # IR-Net's weight path on a weight: libra_pb is a weight quantizer, so --part weight is its default
    b = xc.record_torch(IRWeightQuantizer(0.5, 2.0), w)
    rep = xc.crosscheck(b, quantizer="libra_pb", convention="official")
    assert rep.passed and rep.settings["part"] == "weight", rep.table()
    # ... and under the layer check's names, for the quantizer and for the method's weight part
    named = {"weight": b["x"], "grad_weight": b["grad_x"], **{k: b[k] for k in ("out", "grad_out", "t", "k")}}
    for kw in ({"quantizer": "libra_pb"}, {"method": "irnet", "part": "weight"}):
        rep = xc.crosscheck(named, convention="official", **kw)
        assert rep.passed, rep.table()
        assert [r.name for r in rep.rows] == ["out", "grad_weight"]
        assert "weight read as the quantizer's x" in rep.readings
        assert "grad_weight read as the quantizer's grad_x" in rep.readings


def test_kernel_quantizers_default_to_the_weight_part():
    """magnitude_aware_sign on an HWIO kernel with --layout nhwc: no --part needed, and the scale is taken per
    output channel (the last axis), which a reading as an activation would not do."""
    rng = np.random.default_rng(3)
    k = rng.standard_normal((3, 3, 2, 4))
    out = np.abs(k).mean(axis=(0, 1, 2)) * np.sign(k)
    rep = xc.crosscheck({"x": k, "out": out}, quantizer="magnitude_aware_sign", layout="nhwc")
    assert rep.passed and rep.settings["part"] == "weight", rep.table()
    assert "part weight: quantizer magnitude_aware_sign quantizes weights only" in rep.readings
    rep = xc.crosscheck({"kernel": k, "out": out}, quantizer="magnitude_aware_sign", layout="nhwc")
    assert rep.passed and "kernel read as the quantizer's x" in rep.readings
    assert not xc.crosscheck({"x": k, "out": np.abs(k).mean(axis=(1, 2, 3), keepdims=True) * np.sign(k)},
                             quantizer="magnitude_aware_sign", layout="nhwc").passed
    with pytest.raises(xc.BundleError, match="recu_act quantizes inputs only"):
        xc.crosscheck({"x": k, "out": np.sign(k)}, quantizer="recu_act", part="weight")
    with pytest.raises(xc.BundleError, match="--part input"):
        xc.crosscheck({"weight": k, "out": np.sign(k)}, quantizer="recu_act")
    with pytest.raises(xc.BundleError, match="use --layout nhwc"):
        xc.crosscheck({"kernel": k, "out": out}, quantizer="magnitude_aware_sign")
    with pytest.raises(xc.BundleError, match="named 'kernel'"):
        xc.crosscheck({"weight": k, "out": out}, quantizer="magnitude_aware_sign", layout="nhwc")


# --- readings: what is read, and what stays an error ---------------------------------------------------------------

def exported_layer(tmp_path, method="recu", **kw):
    (path,) = xc.export_bundles(tmp_path, method=method, convention="official", part="layer", bias=False, seed=2,
                                **kw)
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k not in xc.META_KEYS}


@pytest.mark.parametrize("shape", [(4, 1, 1), (1, 4, 1, 1), (4, 1, 1, 1), (4, 1)])
def test_per_channel_arrays_with_singleton_axes(tmp_path, shape):
    b = exported_layer(tmp_path, params={"tau": 0.9})
    held = dict(b, alpha=b["alpha"].reshape(shape), grad_alpha=b["grad_alpha"].reshape(shape),
                tau=np.array([0.9]))
    rep = xc.crosscheck(held, method="recu", convention="official")
    assert rep.passed, rep.table()
    assert rep.row("grad_alpha").shape == shape
    assert rep.readings == ["tau (1,) read as a scalar", f"alpha {shape} read as (4,)",
                            f"grad_alpha {shape} read as (4,)"]
    assert f"read: alpha {shape} read as (4,)" in rep.table() and rep.as_dict()["readings"] == rep.readings
    # a wrong grad_alpha is still found, at the user's index
    bad = dict(held, grad_alpha=held["grad_alpha"] + np.where(np.arange(4) == 2, 1e-3, 0).reshape(shape))
    row = xc.crosscheck(bad, method="recu", convention="official").row("grad_alpha")
    assert not row.passed and row.worst_index[[i for i, d in enumerate(shape) if d == 4][0]] == 2
    # bias (and its gradient) the same way, on a layer with a bias
    (path,) = xc.export_bundles(tmp_path / "fb", method="bnn", convention="official", part="layer", seed=2)
    with np.load(path, allow_pickle=False) as z:
        bb = {k: z[k] for k in z.files if k not in xc.META_KEYS}
    rep = xc.crosscheck(dict(bb, bias=bb["bias"].reshape(shape), grad_bias=bb["grad_bias"].reshape(shape)),
                        method="bnn", convention="official")
    assert rep.passed and rep.row("grad_bias").shape == shape and f"bias {shape} read as (4,)" in rep.readings


def test_shapes_that_really_differ_stay_errors(tmp_path):
    b = exported_layer(tmp_path)
    cases = [("alpha", np.ones((4, 2)), r"alpha: expected shape \(4,\)"),
             ("alpha", np.ones(1), r"alpha: expected shape \(4,\)"),            # (1,) for O = 4: not broadcast
             ("grad_alpha", np.ones((2, 2, 1)), r"grad_alpha: expected shape \(4,\)"),
             ("tau", np.array([0.9, 0.9]), r"tau: expected a scalar"),
             ("stride", np.array([1, 1, 1]), r"stride: expected a scalar")]
    for name, a, pattern in cases:
        with pytest.raises(xc.BundleError, match=pattern):
            xc.crosscheck(dict(b, **{name: a}), method="recu", convention="official")


def test_schedule_values_held_with_singleton_axes():
    """ReCU's cpt_tau returns a shape-(1,) tensor; its value at epoch 3 of 10 (main.py's clock p = e / E)."""
    tau = tau_official(3, 10, 0.8, 0.99)["tau"]
    rep = xc.crosscheck({"epoch": np.array(3), "epochs": np.array([10]), "tau": np.array([tau]),
                         "tau_min": np.array([0.8])}, schedule="recu_tau", convention="official")
    assert rep.passed and rep.row("tau").shape == (1,), rep.table()
    assert sorted(rep.readings) == ["epochs (1,) read as a scalar", "tau (1,) read as a scalar",
                                    "tau_min (1,) read as a scalar"]
    assert not xc.crosscheck({"epoch": np.array(3), "epochs": np.array([10]), "tau": np.array([tau])},
                             schedule="recu_tau", convention="official").passed  # tau_min was read, not dropped
    rep = xc.crosscheck({"epoch": np.arange(4), "epochs": np.array(4), "lr": np.array([[0.1], [0.1], [0.01], [0.01]]),
                         "base_lr": np.array([0.1]), "milestones": np.array([2])}, schedule="step")
    assert rep.passed and rep.row("lr").shape == (4, 1) and "lr (4, 1) read as (4,)" in rep.readings, rep.table()
    assert rep.settings["parameters"]["milestones"] == (2,)  # a tuple parameter stays a tuple
    assert "milestones (1,) read as a scalar" not in rep.readings


def test_two_names_for_one_array_are_refused(tmp_path):
    b = exported_layer(tmp_path / "a", method="bnn")
    with pytest.raises(xc.BundleError, match="both 'weight' and 'kernel'"):
        xc.crosscheck(dict(b, kernel=b["weight"]), method="bnn", convention="official")
    with pytest.raises(xc.BundleError, match="both 'grad_weight' and 'grad_kernel'"):
        xc.crosscheck(dict(b, grad_kernel=b["grad_weight"]), method="bnn", convention="official")
    q = {"x": np.ones(3), "out": np.ones(3)}
    with pytest.raises(xc.BundleError, match="both 'x' and 'weight'"):
        xc.crosscheck(dict(q, weight=np.ones(3)), quantizer="ste_sign")
    with pytest.raises(xc.BundleError, match="both 'weight' and 'kernel'"):
        xc.crosscheck({"weight": np.ones(3), "kernel": np.ones(3), "out": np.ones(3)}, quantizer="ste_sign")
    with pytest.raises(xc.BundleError, match="both 'grad_x' and 'grad_weight'"):
        xc.crosscheck(dict(q, grad_out=np.ones(3), grad_x=np.ones(3), grad_weight=np.ones(3)), quantizer="ste_sign")
    with pytest.raises(xc.BundleError, match="so the gradient of it is 'grad_weight'"):
        xc.crosscheck({"weight": np.ones(3), "grad_out": np.ones(3), "grad_x": np.ones(3)}, quantizer="ste_sign")
    with pytest.raises(xc.BundleError, match="both 'pad_value' and 'pad_values'"):
        xc.crosscheck(dict(b, pad_value=np.array(0.0), pad_values=np.array(0.0)), method="bnn",
                      convention="official")


def test_unknown_array_names_get_the_nearest_known_name(tmp_path):
    b = exported_layer(tmp_path, method="bnn")
    for given, meant in (("grad_input", "grad_x"), ("grad_wieght", "grad_weight"), ("output", "out"),
                         ("alhpa", "alpha")):
        renamed = {(given if k == meant else k): v for k, v in b.items()}
        renamed.setdefault(given, np.ones((4, 2)))
        with pytest.raises(xc.BundleError, match=f"{given}: .*did you mean '{meant}'"):
            xc.crosscheck(renamed, method="bnn", convention="official")
    with pytest.raises(xc.BundleError, match="'strid'.*did you mean 'stride'"):
        xc.crosscheck(dict(b, strid=np.array(1)), method="bnn", convention="official")


# --- record_torch itself ---------------------------------------------------------------------------------------

def test_record_torch_leaves_the_module_as_it_was():
    class Counting(nn.Linear):
        def __init__(self):
            super().__init__(5, 3, dtype=D)
            self.register_buffer("calls", torch.zeros((), dtype=D))

        def forward(self, x):
            self.calls += 1  # a forward that changes its own state, as running statistics do
            return super().forward(x)

    m = Counting().eval()
    m.weight.grad = torch.full_like(m.weight, 7.0)
    before = {n: t.detach().clone() for n, t in list(m.named_parameters()) + list(m.named_buffers())}
    x = np.random.default_rng(0).standard_normal((2, 5))
    b = xc.record_torch(m, x)
    assert not m.training and b["training"] == False  # noqa: E712 - a 0-d numpy bool
    assert torch.equal(m.weight.grad, torch.full_like(m.weight, 7.0)) and m.bias.grad is None
    for n, t in list(m.named_parameters()) + list(m.named_buffers()):
        assert torch.equal(t, before[n]), n
    assert b["calls"] == 0  # recorded as it was before the forward
    rep = xc.crosscheck({k: v for k, v in b.items() if k != "calls"}, method="float")
    assert rep.passed and [r.name for r in rep.rows] == ["out", "grad_x", "grad_weight", "grad_bias"]
    # the gradients are those of L = sum(out * grad_out)
    tx = torch.tensor(x, requires_grad=True)
    (m(tx) * torch.tensor(b["grad_out"])).sum().backward()
    assert np.array_equal(tx.grad.numpy(), b["grad_x"])


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch on an even kernel: a padded copy, as wanted
def test_record_torch_grad_out_and_geometry():
    m = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2, dtype=torch.float32)
    m.bias.requires_grad_(False)  # a frozen parameter gets no gradient, so none is recorded
    x = np.random.default_rng(1).standard_normal((2, 4, 9, 9)).astype(np.float32)
    b = xc.record_torch(m, x, seed=4)
    assert "grad_bias" not in b and "grad_weight" in b
    assert b["grad_out"].dtype == np.float32 and b["grad_out"].shape == b["out"].shape
    assert np.array_equal(b["grad_out"], xc.record_torch(m, torch.tensor(x), seed=4)["grad_out"])
    assert not np.array_equal(b["grad_out"], xc.record_torch(m, x, seed=5)["grad_out"])
    assert [tuple(b[g]) for g in ("stride", "padding", "dilation")] == [(2, 2), (1, 1), (2, 2)] and b["groups"] == 2
    rep = xc.crosscheck(b, method="float")
    assert rep.passed and rep.rtol == xc.DEFAULT_TOLERANCES["float32"][0], rep.table()
    g = np.zeros(b["out"].shape, np.float32)
    g[0, 1] = 1.0  # dL/dout on one output channel of one sample: the weight gradient of that channel only
    given = xc.record_torch(m, x, g)
    assert np.array_equal(given["grad_out"], g) and np.abs(given["grad_weight"][1]).sum() > 0
    assert not np.delete(given["grad_weight"], 1, axis=0).any() and not given["grad_x"][1].any()
    same = nn.Conv2d(3, 2, 4, padding="same", dtype=D)
    b = xc.record_torch(same, np.random.default_rng(2).standard_normal((1, 3, 7, 7)))
    assert str(b["padding"]) == "same" and xc.crosscheck(b, method="float").passed


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, dtype=D)
        self.fc = nn.Linear(4, 2, dtype=D)


class NoWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3, dtype=D))

    def forward(self, x):
        return x * self.scale


def test_record_torch_bad_input():
    x = np.zeros((1, 3, 5, 5))
    bad = [
        (lambda: xc.record_torch(nn.Sequential(nn.Conv2d(3, 4, 3, dtype=D)), x), ValueError, "container"),
        (lambda: xc.record_torch(Two(), x), ValueError, r"child modules .*\(conv, fc\).*one layer"),
        (lambda: xc.record_torch(NoWeight(), x), ValueError, r"parameters \(scale\) but no 'weight'"),
        (lambda: xc.record_torch(nn.Conv2d(3, 4, 3, dtype=D), x.tolist()), TypeError,
         "x: expected a NumPy array or a torch tensor"),
        (lambda: xc.record_torch(nn.Conv2d(3, 4, 3, dtype=D), x.astype(np.int64)), TypeError, "float"),
        (lambda: xc.record_torch(nn.Conv2d(3, 4, 3, dtype=D), x.astype(np.float32)), TypeError,
         "module's dtype"),
        (lambda: xc.record_torch(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", dtype=D), x), ValueError,
         "padding_mode='reflect'"),
        (lambda: xc.record_torch(nn.Conv1d(3, 4, 3, dtype=D), x[:, :, 0]), ValueError, "Conv1d"),
        (lambda: xc.record_torch(nn.Conv2d(3, 4, 3, dtype=D), x, np.zeros((1, 4, 2, 2))), ValueError,
         r"grad_out: expected out's shape \(1, 4, 3, 3\)"),
        (lambda: xc.record_torch("conv", x), TypeError, "expected a torch.nn.Module"),
        (lambda: xc.crosscheck(nn.Conv2d(3, 4, 3), method="bnn"), TypeError, "record it first with record_torch"),
        (lambda: xc.crosscheck([("x", x)], method="bnn"), TypeError, "bundle: expected a path"),
        (lambda: xc.crosscheck({"x": torch.ones(3, requires_grad=True), "out": np.ones(3)}, quantizer="ste_sign"),
         xc.BundleError, r"x: cannot be read as a NumPy array.*record_torch"),
    ]
    for call, exc, pattern in bad:
        with pytest.raises(exc, match=pattern):
            call()


def test_refbnn_imports_without_torch_and_record_torch_says_what_it_needs():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import refbnn, refbnn.crosscheck as xc\n"
            "try:\n    xc.record_torch(None, None)\nexcept ImportError as e:\n    print('IMPORT-ERROR', e)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert res.returncode == 0, res.stderr
    assert "IMPORT-ERROR record_torch needs PyTorch" in res.stdout and "pip install torch" in res.stdout
