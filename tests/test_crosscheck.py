"""`refbnn crosscheck` without PyTorch: comparison semantics, bad input, genericity over the registries
(methods, quantizers, schedules added later work unchanged), export, and the CLI."""
import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from refbnn import crosscheck as xc
from refbnn import schedules
from refbnn.cli import main
from refbnn.conventions import Convention
from refbnn.methods import METHODS, Method
from refbnn.crosscheck.layer import _layer_settings_names
from refbnn.params import ParamError, parse_params
from refbnn.quantizers import QUANTIZERS, Quantizer
from refbnn.schedules import QuantizerSchedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def exported(tmp_path, **kw):
    """A layer bundle computed by refbnn (the export path is tested to round-trip below)."""
    kw.setdefault("method", "bnn")
    kw.setdefault("convention", "paper")
    kw.setdefault("part", "layer")
    (path,) = xc.export_bundles(tmp_path, **kw)
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k not in xc.META_KEYS}


# --- comparison ------------------------------------------------------------------------------------

def test_compare_is_relative_to_the_tensor_scale_and_never_broadcasts():
    a = np.array([100.0, 0.0, -50.0])
    r = xc.compare("t", a, a + np.array([0.0, 1e-9, 0.0]), rtol=1e-10, atol=0.0)
    assert r.passed and r.max_abs == pytest.approx(1e-9) and r.max_rel == pytest.approx(1e-11)
    r = xc.compare("t", a, a + np.array([0.0, 1e-7, 0.0]), rtol=1e-10, atol=0.0)
    assert not r.passed and r.mismatches == 1 and r.worst_index == (1,) and r.refbnn == 0.0
    with pytest.raises(xc.BundleError, match=r"expected shape \(3,\), got \(1,\)"):
        xc.compare("t", a, np.array([100.0]), 1e-10, 0.0)
    zeros = np.zeros(4)
    assert xc.compare("z", zeros, zeros, 1e-10, 0.0).passed
    assert not xc.compare("z", zeros, zeros + 1e-3, 1e-10, 1e-6).passed


def test_compare_nonfinite_values_must_match_exactly():
    a = np.array([1.0, np.nan, np.inf])
    assert xc.compare("t", a, a.copy(), 1e-10, 0.0).passed
    r = xc.compare("t", a, np.array([1.0, 0.0, np.inf]), 1e-10, 0.0)
    assert not r.passed and math.isinf(r.max_abs)
    json.loads(xc.Report([r], 1e-10, 0.0).to_json())  # inf is written as a string


def test_default_tolerances_follow_the_dtype(tmp_path):
    b32 = exported(tmp_path / "a", dtype="float32")
    rep = xc.crosscheck(b32, method="bnn", convention="paper")
    assert rep.passed and (rep.rtol, rep.atol) == xc.DEFAULT_TOLERANCES["float32"]
    b64 = exported(tmp_path / "b")
    rep = xc.crosscheck(b64, method="bnn", convention="paper", rtol=1e-3, atol=0.5)
    assert (rep.rtol, rep.atol) == (1e-3, 0.5)
    # a float32-sized error fails at float64's tolerance and passes at float32's
    b64["grad_weight"] = b64["grad_weight"] * (1 + 1e-7)
    assert not xc.crosscheck(b64, method="bnn", convention="paper").passed
    assert xc.crosscheck(b64, method="bnn", convention="paper", rtol=1e-5).passed


# --- bad input -------------------------------------------------------------------------------------

def test_files_that_are_not_bundles(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not an npz")
    with pytest.raises(xc.BundleError, match="not a readable .npz bundle"):
        xc.load_bundle(text)
    single = tmp_path / "x.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(xc.BundleError, match="single array"):
        xc.load_bundle(single)
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros(3))
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(xc.BundleError, match="not a readable"):
        xc.load_bundle(truncated)
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(xc.BundleError, match="without pickle"):
        xc.load_bundle(pickled)
    with pytest.raises(FileNotFoundError):
        xc.load_bundle(tmp_path / "missing.npz")


def test_unknown_names_list_the_known_ones(tmp_path):
    b = exported(tmp_path)
    with pytest.raises(ValueError, match="known methods: float, bc, bnn"):
        xc.crosscheck(b, method="xnor_typo", convention="paper")
    with pytest.raises(ValueError, match="known quantizers: approx_sign, .*ste_sign"):
        xc.crosscheck(b, input_quantizer="approx_sing", kernel_quantizer="ste_sign")
    with pytest.raises(ValueError, match="known schedules: .*cosine"):
        xc.crosscheck({"epoch": np.arange(3), "epochs": np.array(3), "tau": np.zeros(3)}, schedule="recu_tua")
    with pytest.raises(ValueError, match="official"):
        xc.crosscheck(b, method="bnn", convention="offical")
    with pytest.raises(xc.BundleError, match="exactly one of --method"):
        xc.crosscheck(b, method="bnn", quantizer="ste_sign")
    with pytest.raises(xc.BundleError, match="exactly one of --method"):
        xc.crosscheck(b)


def test_missing_arrays_name_the_array_and_shape(tmp_path):
    b = exported(tmp_path)
    for name, pattern in (("x", r"lacks 'x'.*\(N, C, H, W\)"), ("weight", r"lacks 'weight'.*\(O, C/groups, kh, kw\)"),
                          ("grad_out", r"lacks 'grad_out'.*shape \(2, 4, 5, 5\)")):
        bad = {k: v for k, v in b.items() if k != name}
        with pytest.raises(xc.BundleError, match=pattern):
            xc.crosscheck(bad, method="bnn", convention="paper")
    only_inputs = {k: v for k, v in b.items() if k in ("x", "weight", "grad_out", "padding")}
    with pytest.raises(xc.BundleError, match="no expected output"):
        xc.crosscheck(only_inputs, method="bnn", convention="paper")
    # a learned scale needs alpha
    with pytest.raises(xc.BundleError, match=r"lacks 'alpha'.*\(4,\)"):
        xc.crosscheck(b, method="bnn", convention="paper", params={"scale": "learned"})
    with pytest.raises(xc.BundleError, match="no learned scale"):
        xc.crosscheck(dict(b, alpha=np.ones(4)), method="bnn", convention="paper")


def test_shapes_must_agree_exactly(tmp_path):
    b = exported(tmp_path)
    cases = {
        "grad_weight": (np.zeros((4, 3, 3, 1)), r"grad_weight: expected shape \(4, 3, 3, 3\)"),
        "out": (np.zeros((1, 4, 5, 5)), r"out: expected shape \(2, 4, 5, 5\)"),       # broadcastable: still refused
        "bias": (np.zeros(1), r"bias: expected shape \(4,\)"),
        "grad_x": (np.zeros((2, 3, 5)), r"grad_x: expected shape \(2, 3, 5, 5\)"),
        "grad_bias": (np.zeros((4, 2)), r"grad_bias: expected shape \(4,\)"),  # (4, 1) is read as (4,)
    }
    for name, (arr, pattern) in cases.items():
        with pytest.raises(xc.BundleError, match=pattern):
            xc.crosscheck(dict(b, **{name: arr}), method="bnn", convention="paper")
    # the bundle's padding missing: the message says which geometry it assumed
    with pytest.raises(xc.BundleError, match=r"out: expected shape \(2, 4, 3, 3\).*padding=0"):
        xc.crosscheck({k: v for k, v in b.items() if k != "padding"}, method="bnn", convention="paper")
    with pytest.raises(xc.BundleError, match="share one float dtype"):
        xc.crosscheck(dict(b, weight=b["weight"].astype(np.float32)), method="bnn", convention="paper")
    with pytest.raises(xc.BundleError, match="NaN"):
        xc.crosscheck(dict(b, x=np.full_like(b["x"], np.nan)), method="bnn", convention="paper")


def test_layout_mismatches_suggest_layout(tmp_path):
    b = exported(tmp_path)
    nhwc = dict(b, x=b["x"].transpose(0, 2, 3, 1))
    with pytest.raises(xc.BundleError, match=r"x: expected shape \(N, 3, H, W\).*channels-last.*--layout nhwc"):
        xc.crosscheck(nhwc, method="bnn", convention="paper")
    kernel = {("kernel" if k == "weight" else "grad_kernel" if k == "grad_weight" else k): v for k, v in b.items()}
    with pytest.raises(xc.BundleError, match="use --layout nhwc"):
        xc.crosscheck(kernel, method="bnn", convention="paper")
    with pytest.raises(xc.BundleError, match="named 'kernel'"):
        xc.crosscheck(b, method="bnn", convention="paper", layout="nhwc")
    lin = exported(tmp_path / "lin", layer="linear")
    with pytest.raises(xc.BundleError, match=r"looks \(in, out\).*--layout nhwc"):
        xc.crosscheck(dict(lin, weight=lin["weight"].T.copy(), grad_weight=lin["grad_weight"].T.copy()),
                      method="bnn", convention="paper")
    with pytest.raises(xc.BundleError, match="other order: check --layout"):
        xc.crosscheck(dict(b, out=b["out"].transpose(0, 2, 3, 1)), method="bnn", convention="paper")
    with pytest.raises(xc.BundleError, match=r"x: expected a 4-D array \(N, C, H, W\) for --layer conv2d"):
        xc.crosscheck(dict(b, x=b["x"][:, :, 0, 0].copy()), method="bnn", convention="paper", layer="conv2d")
    with pytest.raises(xc.BundleError, match=r"x: expected a 2-D array \(N, in\) for --layer linear"):
        xc.crosscheck(b, method="bnn", convention="paper", layer="linear")


def test_settings_that_would_have_no_effect_are_errors(tmp_path):
    b = exported(tmp_path)
    with pytest.raises(xc.BundleError, match="'clip_valu'.*would have no effect.*clip_value"):
        xc.crosscheck(dict(b, clip_valu=np.array(1.0)), method="bnn", convention="paper")
    with pytest.raises(xc.BundleError, match="grad_wieght: expected a scalar"):
        xc.crosscheck(dict(b, grad_wieght=b["grad_weight"]), method="bnn", convention="paper")
    with pytest.raises(xc.BundleError, match="no per-epoch schedule"):
        xc.crosscheck(dict(b, epoch=np.array(1), epochs=np.array(4)), method="bnn", convention="paper")
    with pytest.raises(xc.BundleError, match="lacks 'epochs'"):
        xc.crosscheck(dict(b, epoch=np.array(1)), method="bnn", convention="paper")
    with pytest.raises(xc.BundleError, match="by the bundle .* and by --param"):
        xc.crosscheck(b, method="bnn", convention="paper", params={"padding": 2})
    with pytest.raises(xc.BundleError, match="no dilation"):
        lin = exported(tmp_path / "lin", layer="linear")
        xc.crosscheck(dict(lin, dilation=np.array(2)), method="bnn", convention="paper")
    with pytest.raises(xc.BundleError, match="has no input quantizer"):
        xc.crosscheck({"x": np.ones(3), "out": np.ones(3)}, method="bc", convention="paper", part="input")


def test_params_override_and_route_by_name(tmp_path):
    b = exported(tmp_path)
    # a wrong sign(0) through a convention field, and a wrong clip through the quantizer constructor
    assert not xc.crosscheck(b, method="bnn", convention="paper", params={"sign_zero": 0.0}).passed
    rep = xc.crosscheck(b, method="bnn", convention="paper", params={"input_quantizer.clip_value": 0.5})
    assert rep.row("out").passed and not rep.row("grad_x").passed
    assert "clip_value=0.5" in rep.settings["quantizers"]["input"]
    assert parse_params(["a=none", "b=true", "c=3", "d=0.5", "e=same"]) == {"a": None, "b": True, "c": 3,
                                                                            "d": 0.5, "e": "same"}
    with pytest.raises(ParamError, match="NAME=VALUE"):
        parse_params(["novalue"])


# --- genericity: quantizers, methods and schedules the catalogue adds later --------------------------

class ToyTanhSign(Quantizer):
    """A stand-in for a catalogue quantizer with schedule state (like IR-Net's EDE): sign forward (sign(0) =
    ``sign_zero``, read from the convention), backward k t (1 - tanh^2(t x)) * 1[|x| <= clip_value]; in eval
    mode the gradient is doubled (a quantizer whose ``training`` argument changes its estimator)."""
    name = "toy_tanh_sign"
    precision = 1

    def __init__(self, clip_value=2.0, sign_zero=1.0, t=1.0, k=1.0):
        self.clip_value, self.sign_zero, self.t, self.k = clip_value, sign_zero, float(t), float(k)

    @classmethod
    def convention_kwargs(cls, c):
        return {"sign_zero": c.sign_zero}

    @property
    def binary(self):
        return self.sign_zero != 0.0

    def state(self):
        return {"t": self.t, "k": self.k}

    def forward(self, x, training=True):
        return np.where(x > 0, 1.0, np.where(x < 0, -1.0, self.sign_zero)).astype(x.dtype), (x, training)

    def backward(self, dy, cache):
        x, training = cache
        g = self.k * self.t * (1 - np.tanh(self.t * x) ** 2) * (np.abs(x) <= self.clip_value)
        return dy * g * (1.0 if training else 2.0)


def toy_state(progress, T_min=0.1, T_max=10.0):
    t = T_min * 10 ** (progress * math.log10(T_max / T_min))
    return {"t": t, "k": max(1 / t, 1.0)}


TOY_SCHEDULE = QuantizerSchedule("toy", toy_state, {"T_min": 0.1, "T_max": 10.0})


def toy_fn(epoch, epochs, T_min=0.1, T_max=10.0):
    """A schedule written as a function of (epoch, epochs), in an upper-case table of refbnn.schedules."""
    return toy_state(epoch / epochs, T_min, T_max)


@pytest.fixture
def catalogue(monkeypatch):
    monkeypatch.setitem(QUANTIZERS, "toy_tanh_sign", ToyTanhSign)
    monkeypatch.setitem(METHODS, "toy", Method("toy", "toy EDE-like method", weight_quantizer="toy_tanh_sign",
                                               input_quantizer="toy_tanh_sign", scale="learned",
                                               schedule=TOY_SCHEDULE))
    monkeypatch.setitem(schedules.QUANTIZER_SCHEDULES, "toy_tk", TOY_SCHEDULE)
    monkeypatch.setattr(schedules, "SCHEDULES", {"toy_fn": toy_fn}, raising=False)


def toy_expected(x, g, t, k, clip=2.0, zero=1.0, training=True):
    out = np.where(x > 0, 1.0, np.where(x < 0, -1.0, zero))
    grad = g * k * t * (1 - np.tanh(t * x) ** 2) * (np.abs(x) <= clip) * (1.0 if training else 2.0)
    return out, grad


def test_a_new_quantizer_with_state_and_parameters(catalogue):
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((3, 4)) * 2, rng.standard_normal((3, 4))
    out, grad = toy_expected(x, g, t=0.5, k=2.0, clip=1.5)
    bundle = {"x": x, "grad_out": g, "out": out, "grad_x": grad, "t": np.array(0.5), "k": np.array(2.0),
              "clip_value": np.array(1.5)}
    assert xc.crosscheck(bundle, quantizer="toy_tanh_sign").passed
    assert not xc.crosscheck(dict(bundle, t=np.array(0.6)), quantizer="toy_tanh_sign").passed
    assert not xc.crosscheck(dict(bundle, clip_value=np.array(2.0)), quantizer="toy_tanh_sign").passed
    # training is the quantizer's forward argument
    _, grad_eval = toy_expected(x, g, t=0.5, k=2.0, clip=1.5, training=False)
    assert xc.crosscheck(dict(bundle, grad_x=grad_eval, training=np.array(False)), quantizer="toy_tanh_sign").passed
    assert not xc.crosscheck(dict(bundle, grad_x=grad_eval), quantizer="toy_tanh_sign").passed
    # the convention reaches the quantizer through its convention_kwargs (from_convention)
    x0 = np.array([[0.0, 1.0]])
    b0 = {"x": x0, "out": np.array([[0.0, 1.0]]), "t": np.array(1.0), "k": np.array(1.0)}
    assert xc.crosscheck(b0, quantizer="toy_tanh_sign", convention="official").passed
    assert not xc.crosscheck(b0, quantizer="toy_tanh_sign", convention="paper").passed
    # Python-side registry changes show up in the known names; unknown parameters list the accepted ones
    with pytest.raises(ValueError, match="toy_tanh_sign"):
        xc.crosscheck(bundle, quantizer="nope")
    with pytest.raises(xc.BundleError, match="'clip_valu'.*no effect.*clip_value"):
        xc.crosscheck(dict(bundle, clip_valu=np.array(1.0)), quantizer="toy_tanh_sign")


def test_a_new_method_with_a_schedule_and_learned_scale(catalogue, tmp_path):
    paths = xc.export_bundles(tmp_path, method="toy", convention="paper", params={"epoch": 3, "epochs": 8})
    assert len(paths) == 3
    for p in paths:
        rep = xc.crosscheck(p)
        assert rep.passed, rep.table()
    layer = dict(np.load(paths[0], allow_pickle=False))
    assert "alpha" in layer and "grad_alpha" in layer and int(layer["epoch"]) == 3
    rep = xc.crosscheck(paths[0])
    v = toy_state(3 / 7)  # the paper convention's clock: p = e / (E - 1)
    assert rep.settings["schedule_values"] == pytest.approx(v)
    # another epoch means other t, k: the gradients differ, the forward does not
    rep = xc.crosscheck(dict(layer, epoch=np.array(6)))
    assert rep.row("out").passed and not rep.row("grad_x").passed
    # explicit t/k win over the epoch's, and reach both quantizers (or one, by prefix)
    assert xc.crosscheck(dict(layer, epoch=np.array(6), t=np.array(v["t"]), k=np.array(v["k"]))).passed
    no_epoch = {k: a for k, a in layer.items() if k not in ("epoch", "epochs")}
    assert xc.crosscheck(dict(no_epoch, t=np.array(v["t"]), k=np.array(v["k"]))).passed
    one = {"input_quantizer.t": np.array(v["t"]), "input_quantizer.k": np.array(v["k"])}
    with pytest.raises(xc.BundleError, match="'t', 'k': schedule values of the weight quantizer"):
        xc.crosscheck(dict(no_epoch, **one))  # the weight quantizer's are said nowhere
    ones = {"weight_quantizer.t": np.array(1.0), "weight_quantizer.k": np.array(1.0)}
    rep = xc.crosscheck(dict(no_epoch, **one, **ones))
    assert not rep.row("grad_weight").passed  # the weight quantizer has t = k = 1
    # the schedule's parameters are method parameters: another T_min changes the epoch's values
    assert not xc.crosscheck(layer, params={"T_min": 0.2}).row("grad_x").passed
    # the weight part against the formula directly
    wpart = dict(np.load(paths[1], allow_pickle=False))
    out, grad = toy_expected(wpart["x"], wpart["grad_out"], v["t"], v["k"])
    np.testing.assert_allclose(wpart["out"], out)
    np.testing.assert_allclose(wpart["grad_x"], grad)


def test_schedules_from_tables_and_functions(catalogue, tmp_path):
    table = xc.schedule_table()
    assert {"toy_tk", "toy_fn", "recu_tau", "irnet_tk", "bnnpp_beta", "pc_mu", "cosine", "step"} <= set(table)
    # one name per schedule: the tables' names only, no helper listed as a schedule
    assert not {"warmup_factor", "ede_state", "schedule_progress", "cosine_lr"} & set(table)
    e = np.arange(5)
    tk = [toy_state(i / 5, 0.001, 10.0) for i in e]  # the official clock: p = e / E
    bundle = {"epoch": e, "epochs": np.array(5), "T_min": np.array(0.001), "T_max": np.array(10.0),
              "t": np.array([v["t"] for v in tk]), "k": np.array([v["k"] for v in tk])}
    assert xc.crosscheck(bundle, schedule="toy_tk", convention="official").passed
    assert xc.crosscheck(bundle, schedule="toy_fn").passed  # the same values as a function of (epoch, epochs)
    rep = xc.crosscheck(bundle, schedule="toy_tk", convention="paper")  # p = e / (E - 1)
    assert not rep.row("t").passed and not rep.passed
    assert any("--convention official" in n for n in rep.notes) and "note: " in rep.table()
    shifted = dict(bundle, t=np.array([toy_state((i + 1) / 5, 0.001, 10.0)["t"] for i in e]))  # 1-based epochs
    rep = xc.crosscheck(shifted, schedule="toy_tk", convention="official")
    assert not rep.row("t").passed and not rep.notes
    # exported and checked back
    (path,) = xc.export_bundles(tmp_path, schedule="recu_tau", convention="official", params={"epochs": 6})
    b = dict(np.load(path, allow_pickle=False))
    assert b["tau"][0] == pytest.approx(0.85) and b["tau"].shape == (6,) and str(b["convention"]) == "official"
    assert xc.crosscheck(path).passed
    with pytest.raises(xc.BundleError, match="not a parameter or a value"):
        xc.crosscheck(dict(bundle, tau=np.zeros(5)), schedule="toy_tk")
    with pytest.raises(xc.BundleError, match=r"tau: expected shape \(5,\)"):
        xc.crosscheck({"epoch": e, "epochs": np.array(5), "tau": np.zeros(4)}, schedule="recu_tau")
    with pytest.raises(xc.BundleError, match="lacks 'epochs'"):
        xc.crosscheck({"epoch": e, "tau": np.zeros(5)}, schedule="recu_tau")
    with pytest.raises(xc.BundleError, match="T_min: expected > 0"):
        xc.crosscheck(dict(bundle, T_min=np.array(0.0)), schedule="irnet_tk")
    with pytest.raises(xc.BundleError, match="no convention changes"):
        xc.crosscheck(bundle, schedule="toy_fn", convention="paper")


def tau_by_hand(e, E, tau_min, tau_max, clock):
    """ReCU Eq. 24 / cifar/main.py L160-167 (docs/methods/recu.md): tau = A exp(p) + B, A = (tau_max - tau_min)/(e - 1),
    B = tau_min - A; p = e / E in the code, e / (E - 1) in the paper convention (the end value is reached)."""
    a = (tau_max - tau_min) / (math.e - 1)
    p = e / E if clock == "official" else e / (E - 1)
    return a * np.exp(p) + tau_min - a


def tk_by_hand(e, E, T_min, T_max, clock):
    """IR-Net Eq. 18 / trainer.py L130-143 (docs/methods/irnet.md): t = 10^(log10 T_min + (log10 T_max - log10 T_min) p),
    k = 1/t if t < 1 else 1."""
    p = e / E if clock == "official" else e / (E - 1)
    t = 10.0 ** (math.log10(T_min) + (math.log10(T_max) - math.log10(T_min)) * p)
    return t, np.where(t < 1, 1 / t, 1.0)


@pytest.mark.parametrize("convention", ["official", "paper"])
def test_recu_tau_and_irnet_tk_schedules_by_hand(convention, tmp_path):
    """--schedule recu_tau / irnet_tk with the catalogue's schedules, at each convention's clock."""
    other = "paper" if convention == "official" else "official"
    e, E = np.arange(600), 600
    tau = tau_by_hand(e, E, 0.85, 0.99, convention)
    bundle = {"epoch": e, "epochs": np.array(E), "tau_min": np.array(0.85), "tau_max": np.array(0.99), "tau": tau}
    assert xc.crosscheck(bundle, schedule="recu_tau", convention=convention).passed
    if convention == "official":  # the code's values (docs/methods/recu.md): tau(599) = 0.98963, never 0.99
        assert tau[[0, 299, 599]] == pytest.approx([0.85, 0.90263, 0.98963], abs=5e-6)
    rep = xc.crosscheck(bundle, schedule="recu_tau", convention=other)
    assert not rep.passed and rep.notes == [n for n in rep.notes if f"--convention {convention}" in n] and rep.notes
    # the catalogue's own parameter names work too, and both names for one parameter are an error
    renamed = {("tau_start" if k == "tau_min" else "tau_end" if k == "tau_max" else k): v for k, v in bundle.items()}
    assert xc.crosscheck(renamed, schedule="recu_tau", convention=convention).passed
    with pytest.raises(xc.BundleError, match="given twice"):
        xc.crosscheck(dict(bundle, tau_start=np.array(0.85)), schedule="recu_tau", convention=convention)
    # defaults (tau 0.85 -> 0.99) and --param
    no_params = {k: v for k, v in bundle.items() if k not in ("tau_min", "tau_max")}
    assert xc.crosscheck(no_params, schedule="recu_tau", convention=convention).passed
    assert not xc.crosscheck(no_params, schedule="recu_tau", convention=convention, params={"tau_min": 0.8}).passed

    for T_min in (1e-3, 0.1):  # the ResNet-20 1W/1A code's and the paper's
        t, k = tk_by_hand(np.arange(400), 400, T_min, 10.0, convention)
        tk = {"epoch": np.arange(400), "epochs": np.array(400), "T_min": np.array(T_min), "T_max": np.array(10.0),
              "t": t, "k": k}
        assert xc.crosscheck(tk, schedule="irnet_tk", convention=convention).passed
        rep = xc.crosscheck(tk, schedule="irnet_tk", convention=other)
        assert not rep.row("t").passed and rep.notes
    # the CLI needs --convention for a quantizer schedule, and exits 1 on the other clock
    path = tmp_path / "tk.npz"
    np.savez(path, **tk)
    assert main(["crosscheck", str(path), "--schedule", "irnet_tk"]) == 2
    assert main(["crosscheck", str(path), "--schedule", "irnet_tk", "--convention", convention]) == 0
    assert main(["crosscheck", str(path), "--schedule", "irnet_tk", "--convention", other]) == 1


def test_method_epoch_uses_the_conventions_clock(tmp_path):
    """epoch/epochs in a layer bundle: Method.on_epoch sets tau (ReCU) or t, k (IR-Net) at the convention's clock,
    the same values as --schedule."""
    for method, names in (("recu", ("tau",)), ("irnet", ("t", "k"))):
        for convention in ("official", "paper"):
            path = xc.export_bundles(tmp_path / method / convention, method=method, convention=convention,
                                     part="layer", params={"epoch": 5, "epochs": 8})[0]
            rep = xc.crosscheck(path)
            assert rep.passed, rep.table()
            sched = xc.schedule_table()["recu_tau" if method == "recu" else "irnet_tk"]
            clock = "epoch" if convention == "official" else "progress"
            assert rep.settings["schedule_values"] == pytest.approx(sched.at(5, 8, clock))
            assert set(names) <= set(rep.settings["schedule_values"])


def test_an_lr_schedule_by_hand():
    e, E = np.arange(10), 10
    lr = 0.05 * (1 + np.cos(np.pi * e / E))
    bundle = {"epoch": e, "epochs": np.array(E), "base_lr": np.array(0.1), "lr": lr}
    assert xc.crosscheck(bundle, schedule="cosine").passed
    bundle["lr"] = 0.05 * (1 + np.cos(np.pi * (e + 1) / E))  # the 1-based epoch bug
    assert not xc.crosscheck(bundle, schedule="cosine").passed
    with pytest.raises(xc.BundleError, match="lacks 'base_lr'"):
        xc.crosscheck({"epoch": e, "epochs": np.array(E), "lr": lr}, schedule="cosine")


# --- export, Larq layout, quantizer mode -------------------------------------------------------------

@pytest.mark.parametrize("padding,stride", [("same", 1), ("same", 2), ("valid", 2)])
def test_larq_export_round_trip(tmp_path, padding, stride):
    (path,) = xc.export_bundles(tmp_path, input_quantizer="ste_sign", kernel_quantizer="ste_sign", padding=padding,
                                params={"stride": stride, "pad_values": 1.0}, x_shape="2,6,6,3")
    b = dict(np.load(path, allow_pickle=False))
    assert b["kernel"].shape[:3] == (3, 3, 3) and b["out"].shape[0] == 2 and b["out"].shape[-1] == 4
    assert str(b["padding"]) == padding
    assert xc.crosscheck(path).passed
    if padding == "same":  # the border sees the pad value: Larq's default pad_values = 0 differs
        rep = xc.crosscheck({k: v for k, v in b.items() if k not in xc.META_KEYS and k != "pad_values"},
                            input_quantizer="ste_sign", kernel_quantizer="ste_sign")
        assert not rep.row("out").passed and rep.settings["pad_value"] == 0.0


def test_export_fills_a_users_inputs(tmp_path):
    rng = np.random.default_rng(1)
    mine = tmp_path / "inputs.npz"
    np.savez(mine, x=rng.standard_normal((2, 5)), weight=rng.standard_normal((3, 5)), grad_out=np.ones((2, 3)),
             out=np.zeros((2, 3)))
    (path,) = xc.export_bundles(tmp_path / "out", method="bc", convention="official", bundle=mine)
    b = dict(np.load(path, allow_pickle=False))
    assert os.path.basename(path) == "bc-official-linear-nchw.npz"
    np.testing.assert_array_equal(b["x"], np.load(mine)["x"])
    np.testing.assert_allclose(b["out"], b["x"] @ np.sign(b["weight"]).T)  # bc: sign weights, real inputs
    assert xc.crosscheck(path).passed


def test_exports_exercise_the_conventions(tmp_path):
    paths = xc.export_bundles(tmp_path, method="bnn", convention="official")
    for p in paths:
        b = dict(np.load(p, allow_pickle=False))
        assert (b["x"] == 0).any() and (np.abs(b["x"]) == 1).any()
    layer = dict(np.load(paths[0], allow_pickle=False))
    assert int(layer["padding"]) == 1
    with pytest.raises(xc.BundleError, match="made with convention='official'"):
        xc.crosscheck(paths[0], convention="paper")


def test_quantizer_mode_layouts(tmp_path):
    rng = np.random.default_rng(2)
    k = rng.standard_normal((3, 3, 2, 4))  # an HWIO kernel
    with pytest.raises(xc.BundleError, match="--part weight"):
        xc.crosscheck({"x": k, "out": np.sign(k)}, quantizer="ste_sign", layout="nhwc")
    assert xc.crosscheck({"x": k, "out": np.sign(k)}, quantizer="ste_sign", layout="nhwc", part="weight").passed
    with pytest.raises(xc.BundleError, match=r"out: expected shape \(3, 3, 2, 4\)"):
        xc.crosscheck({"x": k, "out": np.sign(k)[..., :1]}, quantizer="ste_sign")
    with pytest.raises(xc.BundleError, match="lacks 'grad_out'"):
        xc.crosscheck({"x": k, "grad_x": k}, quantizer="ste_sign")
    with pytest.raises(xc.BundleError, match="not an array of a quantizer check"):
        xc.crosscheck({"x": k, "out": np.sign(k), "bias": k}, quantizer="ste_sign")  # x and weight: two names


# --- CLI -------------------------------------------------------------------------------------------

def test_cli_exit_statuses_and_messages(tmp_path, capsys):
    (path,) = xc.export_bundles(tmp_path, method="bnn", convention="official", part="layer")
    assert main(["crosscheck", path]) == 0
    assert "PASS" in capsys.readouterr().out
    b = dict(np.load(path, allow_pickle=False))
    b["grad_x"] = b["grad_x"] + 1e-3
    bad = tmp_path / "bad.npz"
    np.savez(bad, **b)
    assert main(["crosscheck", str(bad), "--json", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "grad_x" in out
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False
    b.pop("grad_out")
    np.savez(bad, **b)
    assert main(["crosscheck", str(bad)]) == 2
    assert "lacks 'grad_out'" in capsys.readouterr().err
    no_meta = tmp_path / "nometa.npz"
    np.savez(no_meta, **{k: v for k, v in np.load(path).items() if k not in xc.META_KEYS})
    assert main(["crosscheck", str(no_meta), "--method", "bnn"]) == 2
    assert "needs --convention" in capsys.readouterr().err
    assert main(["crosscheck", str(no_meta), "--method", "bnn", "--convention", "official"]) == 0
    assert main(["crosscheck", str(no_meta), "--method", "bnn", "--convention", "official", "--param", "oops"]) == 2
    assert main(["crosscheck", "--list"]) == 0
    assert "ste_sign" in capsys.readouterr().out


def test_cli_runs_as_a_module(tmp_path):
    res = subprocess.run([sys.executable, "-m", "refbnn", "crosscheck", "--export", str(tmp_path), "--quantizer",
                          "ste_sign", "--convention", "official"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-m", "refbnn", "crosscheck", str(tmp_path / "ste_sign-official.npz")],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert res.returncode == 0 and "PASS" in res.stdout, res.stdout + res.stderr


def test_convention_fields_are_settings():
    names = {f.name for f in dataclasses.fields(Convention)} - {"name"}
    known = _layer_settings_names(xc.Request(method="bnn").resolve(), "conv2d")
    assert names <= known


@pytest.mark.parametrize("request_kw,what", [(dict(quantizer="ste_sign"), "a quantizer"),
                                              (dict(method="bnn", part="input"), r"a quantizer \(--part input\)"),
                                              (dict(schedule="irnet_tk", convention="paper"), "a schedule")])
def test_padding_outside_a_layer_check_is_refused(request_kw, what):
    # --padding only means something for a layer; given with a quantizer or a schedule it used to be ignored
    x = np.linspace(-2, 2, 9).astype(np.float32)
    with pytest.raises(xc.BundleError, match=f"--padding 'same'.*checked as {what}, which has no padding"):
        xc.crosscheck({"x": x, "out": np.sign(x)}, padding="same", **request_kw)
