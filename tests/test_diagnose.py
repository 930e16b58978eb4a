"""`refbnn crosscheck --diagnose`: bundles made wrong on purpose (one choice made differently from refbnn's)
must be diagnosed with that choice; a correct bundle gets no diagnosis. The bundles are refbnn's own exports
(checked to pass first), altered as another implementation would differ, or computed independently with
PyTorch autograd where refbnn cannot produce the altered value itself."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from refbnn import crosscheck as xc
from refbnn.conventions import OFFICIAL, PAPER, Convention
from refbnn.crosscheck.diagnose import MAX_RUNS, field_values, method_variants
from refbnn.methods import get_method

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def exported(tmp_path, name="b", **kw):
    """One bundle computed by refbnn, without its metadata (as another framework would write it)."""
    (path,) = xc.export_bundles(tmp_path / name, **kw)
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k not in xc.META_KEYS}


def texts(fixes):
    return [f.text() for f in fixes]


def single_fix_kinds(report, tensor):
    td = report.diagnosis.tensors[tensor]
    assert td.by == "single", report.table()
    return [(c.kind, c.detail) for f in td.fixes for c in f.changes]


def names_field(report, tensor, field, value):
    """The tensor's single fixes include convention field ``field`` = ``value``."""
    return any(k == "convention" and d["field"] == field and d["value"] == value and type(d["value"]) is type(value)
               for k, d in single_fix_kinds(report, tensor))


# --- the convention's fields ------------------------------------------------------------------------

def test_field_values_are_derived_for_every_field():
    for f in dataclasses.fields(Convention):
        if f.name == "name":
            continue
        values = field_values(f.name)
        assert getattr(PAPER, f.name) in values and getattr(OFFICIAL, f.name) in values
        assert len(values) >= 2, f.name  # every field has an alternative to try
    assert set(field_values("sign_zero")) == {1.0, 0.0, -1.0}   # read from Convention's own validation
    assert set(field_values("std_ddof")) == {0, 1}
    assert set(field_values("schedule_clock")) == {"epoch", "progress"}
    assert field_values("clip_inclusive") == (True, False)
    with pytest.raises(ValueError, match="not a field of Convention"):
        field_values("sign_zeroo")


def test_fields_added_later_are_covered(monkeypatch):
    """A Convention with two more fields (a 3-way Literal and a validated str, as a later refbnn may add): their
    values are derived without a table entry."""
    from refbnn.crosscheck import diagnose

    @dataclasses.dataclass(frozen=True)
    class Wider(Convention):
        weight_grad: "Literal['autograd', 'detached', 'identity']" = "autograd"  # noqa: F821 - a string here
        bias_order: str = "after_scale"
        eps_value: float = 1e-5  # no validation lists its values: only FIELD_VALUES can

        def __post_init__(self):
            super().__post_init__()
            if self.bias_order not in ("after_scale", "before_scale"):
                raise ValueError(f"bias_order: expected 'after_scale' or 'before_scale', got {self.bias_order!r}")

    monkeypatch.setattr(diagnose, "Convention", Wider)
    assert set(field_values("weight_grad")) == {"autograd", "detached", "identity"}
    assert set(field_values("bias_order")) == {"after_scale", "before_scale"}
    assert set(field_values("sign_zero")) == {1.0, 0.0, -1.0}
    assert field_values("eps_value") == (1e-5,)
    monkeypatch.setitem(diagnose.FIELD_VALUES, "eps_value", (1e-5, 1e-8))
    assert set(field_values("eps_value")) == {1e-5, 1e-8}
    monkeypatch.setitem(diagnose.FIELD_VALUES, "bias_order", ("after_bn",))  # a table entry Convention refuses
    assert "after_bn" not in field_values("bias_order")                      # is not tried


@pytest.mark.parametrize("convention,computed_with", [("official", 1.0), ("paper", 0.0)])
def test_sign_of_zero(tmp_path, convention, computed_with):
    """The other implementation's sign(0) is +1 where the convention says 0, and the reverse."""
    b = exported(tmp_path, method="bnn", convention=convention, part="layer", params={"sign_zero": computed_with})
    b.pop("sign_zero")  # what the other implementation does, not what refbnn is told
    rep = xc.crosscheck(b, method="bnn", convention=convention, diagnose=True)
    assert not rep.passed and rep.diagnosis is not None
    for t in ("out", "grad_x", "grad_weight"):
        assert names_field(rep, t, "sign_zero", computed_with), rep.table()
    best = rep.diagnosis.every_tensor[0]
    assert [(c.detail["field"], c.detail["value"]) for c in best.changes] == [("sign_zero", computed_with)]
    # the change named is one a user can make: with it the check passes
    assert xc.crosscheck(b, method="bnn", convention=convention, params={"sign_zero": computed_with}).passed
    table = rep.table()
    assert f"sign_zero={computed_with}" in table and "every tensor passes with" in table


def test_sign_of_zero_in_one_quantizer_only(tmp_path):
    """torch.sign for the weights, +1 for the activations: the field changed in the input quantizer only; the
    change of the whole convention fixes grad_weight but breaks grad_x."""
    b = exported(tmp_path, method="bnn", convention="official", part="layer",
                 params={"input_quantizer.sign_zero": 1.0})
    b.pop("input_quantizer.sign_zero")
    rep = xc.crosscheck(b, method="bnn", convention="official", diagnose=True)
    best = rep.diagnosis.every_tensor[0]
    assert [(c.slot, c.detail["value"]) for c in best.changes] == [("convention.sign_zero.input", 1.0)], rep.table()
    assert "sign_zero=1.0 in the input quantizer only (as input_quantizer.sign_zero=1.0 instead of 0.0)" in rep.table()
    whole = [f for f in rep.diagnosis.tensors["grad_weight"].fixes if f.changes[0].slot == "convention.sign_zero"]
    assert whole and whole[0].breaks == ["grad_x"]
    assert "fixes grad_weight but breaks grad_x" in rep.table()


def test_a_correct_bundle_gets_no_diagnosis(tmp_path):
    b = exported(tmp_path, method="bnn", convention="official", part="layer")
    rep = xc.crosscheck(b, method="bnn", convention="official", diagnose=True)
    assert rep.passed and rep.diagnosis is None and "diagnosis" not in rep.table()
    assert rep.as_dict()["diagnosis"] is None


def test_schedule_clock(tmp_path):
    """epoch/epochs in the bundle, the schedule's values computed at the other clock."""
    b = exported(tmp_path, method="irnet", convention="paper", part="layer",
                 params={"epoch": 3, "epochs": 8, "schedule_clock": "epoch"})
    b.pop("schedule_clock")
    rep = xc.crosscheck(b, method="irnet", convention="paper", diagnose=True)
    assert rep.row("out").passed  # t and k change the estimator only
    for t in ("grad_x", "grad_weight"):
        assert names_field(rep, t, "schedule_clock", "epoch"), rep.table()
    # the schedule alone (--schedule): the same diagnosis
    e = np.arange(12)
    sched = xc.get_schedule("recu_tau")
    bundle = {"epoch": e, "epochs": np.array(12), "tau": np.array([sched.at(i, 12, "epoch")["tau"] for i in e])}
    rep = xc.crosscheck(bundle, schedule="recu_tau", convention="paper", diagnose=True)
    assert names_field(rep, "tau", "schedule_clock", "epoch"), rep.table()


def test_an_exclusive_clip_is_a_convention_field(tmp_path):
    """Hardtanh's gradient (0 at |x| == 1) where the convention passes it (torch.clamp): clip_inclusive."""
    b = exported(tmp_path, quantizer="ste_sign", convention="paper")
    x = b["x"]
    assert (np.abs(x) == 1).any()
    b["grad_x"] = b["grad_out"] * (np.abs(x) < 1)
    rep = xc.crosscheck(b, quantizer="ste_sign", convention="paper", diagnose=True)
    assert names_field(rep, "grad_x", "clip_inclusive", False), rep.table()


# --- the estimator -------------------------------------------------------------------------------------

def test_identity_gradient_where_refbnn_clips(tmp_path):
    """A missing STE clip: the other implementation passes the gradient everywhere."""
    b = exported(tmp_path, quantizer="ste_sign", convention="paper")
    assert (np.abs(b["x"]) > 1).any()
    b["grad_x"] = b["grad_out"].copy()
    rep = xc.crosscheck(b, quantizer="ste_sign", convention="paper", diagnose=True)
    td = rep.diagnosis.tensors["grad_x"]
    assert td.by == "single" and "out" not in rep.diagnosis.tensors
    named = [c.detail["quantizer"] for f in td.fixes for c in f.changes if c.kind == "estimator"]
    assert "identity_ste_sign" in named, rep.table()
    # only estimators of the same forward were tried: never one that changes `out`
    assert all(not f.breaks for f in td.fixes)
    assert td.before.max_abs > 0 and td.fixes[0].after.passed
    assert "quantizer identity_ste_sign instead of ste_sign" in rep.table()


def test_clipped_gradient_where_refbnn_passes_it(tmp_path):
    """The reverse, in a layer: bnn's weights have the identity STE; the other implementation clips at 1."""
    b = exported(tmp_path, method="bnn", convention="paper", part="layer", params={"weight_quantizer": "ste_sign"})
    b.pop("weight_quantizer")
    rep = xc.crosscheck(b, method="bnn", convention="paper", diagnose=True)
    assert rep.row("out").passed and rep.row("grad_x").passed and not rep.row("grad_weight").passed
    fixes = rep.diagnosis.tensors["grad_weight"].fixes
    assert any(c.kind == "estimator" and c.detail == {"role": "weight", "quantizer": "ste_sign",
                                                     "was": "identity_ste_sign"} for f in fixes for c in f.changes)
    assert "weight_quantizer=ste_sign instead of identity_ste_sign [SteSign(clip_value=1.0" in rep.table()


def test_a_swapped_estimator_keeps_the_values_it_accepts(tmp_path):
    """--quantizer ede with the bundle's t and k, the other implementation's gradient ApproxSign's: the swap
    drops t and k (ApproxSign takes neither) instead of failing on them."""
    b = exported(tmp_path, quantizer="approx_sign", convention="paper")
    b.update(t=np.array(0.7), k=np.array(1.5))
    rep = xc.crosscheck(b, quantizer="ede", convention="paper", diagnose=True)
    assert rep.row("out").passed and not rep.row("grad_x").passed
    fixes = rep.diagnosis.tensors["grad_x"].fixes
    named = [c.detail for f in fixes for c in f.changes]
    assert named[0] == {"role": "quantizer", "quantizer": "approx_sign", "was": "ede"}, rep.table()
    # (ReCU's activation quantizer without its normalization is ApproxSign too)
    assert {d["quantizer"] for d in named} <= {"approx_sign", "recu_act"}
    # in a layer: IR-Net's activations with the clipped STE instead of the EDE at the epoch's t, k
    b = exported(tmp_path, name="irnet", method="irnet", convention="paper", part="layer",
                 params={"epoch": 2, "epochs": 6, "input_quantizer": "ste_sign"})
    assert "input_quantizer" not in b  # (that name is also a metadata key, which exported() leaves out)
    rep = xc.crosscheck(b, method="irnet", convention="paper", diagnose=True)
    assert any(c.detail == {"role": "input", "quantizer": "ste_sign", "was": "ede"}
               for f in rep.diagnosis.tensors["grad_x"].fixes for c in f.changes), rep.table()


# --- layout ----------------------------------------------------------------------------------------------

def test_nhwc_activations_saved_as_nchw(tmp_path):
    """The other implementation computes in NHWC and saves its activations unchanged under NCHW names (the
    kernel is converted to OIHW): shapes agree because C = H = W = O = 4."""
    b = exported(tmp_path, method="bnn", convention="paper", part="layer", layout="nhwc", x_shape="2,4,4,4",
                 weight_shape="3,3,4,4")
    assert b["out"].shape == (2, 4, 4, 4)
    mine = {k: v for k, v in b.items() if k not in ("kernel", "grad_kernel")}
    mine["weight"] = np.ascontiguousarray(b["kernel"].transpose(3, 2, 0, 1))
    mine["grad_weight"] = np.ascontiguousarray(b["grad_kernel"].transpose(3, 2, 0, 1))
    rep = xc.crosscheck(mine, method="bnn", convention="paper", diagnose=True)
    assert not rep.passed
    best = rep.diagnosis.every_tensor[0]
    assert [(c.kind, c.slot) for c in best.changes] == [("layout", "layout.activations")], rep.table()
    assert best.changes[0].detail["stored"] == "NHWC"
    assert "x, grad_out, out, grad_x stored NHWC, not NCHW" in rep.table()


@pytest.mark.parametrize("layer", ["conv2d", "linear"])
def test_kernel_in_the_other_layout(tmp_path, layer):
    """The weight (and its gradient) saved HWIO / (in, out) under the name 'weight', where shapes allow it."""
    shapes = {"conv2d": ("2,3,5,5", "3,3,3,3"), "linear": ("4,5", "5,5")}[layer]
    b = exported(tmp_path, method="bnn", convention="paper", part="layer", x_shape=shapes[0], weight_shape=shapes[1])
    axes = (2, 3, 1, 0) if layer == "conv2d" else (1, 0)
    b["weight"], b["grad_weight"] = (np.ascontiguousarray(b[k].transpose(axes)) for k in ("weight", "grad_weight"))
    rep = xc.crosscheck(b, method="bnn", convention="paper", diagnose=True)
    assert not rep.passed
    best = rep.diagnosis.every_tensor[0]
    assert [c.slot for c in best.changes] == ["layout.weight"], rep.table()
    assert best.changes[0].detail["stored"] == ("HWIO" if layer == "conv2d" else "(in, out)")


# --- statistics: gradients through the standardization or not --------------------------------------------

torch = pytest.importorskip("torch")


def libra_pb_by_autograd(w, g, t, k, stats):
    """IR-Net's Libra-PB with the EDE, by torch autograd (ir_1w1a.py L18-23): w_std = (w - mean) / std (unbiased,
    per output channel), out = sign(w_std) * 2^round(log2(mean |w_std|)) (scale detached), gradient of
    scale * k tanh(t w_std). ``stats``: "autograd" (the code: mean and std differentiated), "identity" (IR-Net
    Algorithm 1: the standardization passes the gradient unchanged), "detached" (mean and std held constant)."""
    wt = torch.tensor(w, requires_grad=True)
    dims = tuple(range(1, w.ndim))
    mean, std = wt.mean(dim=dims, keepdim=True), wt.std(dim=dims, keepdim=True)
    w_std = (wt - mean) / std
    scale = (2.0 ** torch.round(torch.log2(w_std.abs().mean(dim=dims, keepdim=True)))).detach()
    out = torch.sign(w_std) * scale
    z = {"autograd": w_std, "identity": wt + (w_std - wt).detach(),
         "detached": (wt - mean.detach()) / std.detach()}[stats]
    surrogate = scale * k * torch.tanh(t * z)
    (grad,) = torch.autograd.grad((surrogate * torch.tensor(g)).sum(), wt)
    return out.detach().numpy(), grad.numpy()


def stats_fields():
    """The convention fields about gradients through statistics, found by name (``standardize_grad``: through
    the statistics, statistics detached, or identity)."""
    return [f.name for f in dataclasses.fields(Convention) if "stat" in f.name or "grad" in f.name]


def test_statistics_held_out_of_the_gradient():
    rng = np.random.default_rng(3)
    w, g = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((4, 3, 3, 3))
    t, k = 0.6, 1.7
    bundle = {"x": w, "grad_out": g, "t": np.array(t), "k": np.array(k)}
    out, grad = libra_pb_by_autograd(w, g, t, k, "autograd")
    ok = dict(bundle, out=out, grad_x=grad)
    rep = xc.crosscheck(ok, quantizer="libra_pb", convention="official", diagnose=True)
    assert rep.passed and rep.diagnosis is None  # the autograd reference agrees with refbnn's official convention

    _, grad_identity = libra_pb_by_autograd(w, g, t, k, "identity")
    rep = xc.crosscheck(dict(ok, grad_x=grad_identity), quantizer="libra_pb", convention="official", diagnose=True)
    assert rep.row("out").passed and not rep.row("grad_x").passed
    named = [(c.detail["field"], c.detail["value"]) for f in rep.diagnosis.tensors["grad_x"].fixes
             for c in f.changes if c.kind == "convention"]
    assert named and all(f in stats_fields() for f, _ in named), rep.table()
    for f, v in named:  # what the diagnosis names makes the check pass
        assert xc.crosscheck(dict(ok, grad_x=grad_identity), quantizer="libra_pb",
                             convention=dataclasses.replace(OFFICIAL, **{f: v})).passed

    _, grad_detached = libra_pb_by_autograd(w, g, t, k, "detached")
    bad = dict(ok, grad_x=grad_detached)
    offered = [(f, v) for f in stats_fields() for v in field_values(f)
               if xc.crosscheck(bad, quantizer="libra_pb", convention=dataclasses.replace(OFFICIAL, **{f: v})).passed]
    rep = xc.crosscheck(bad, quantizer="libra_pb", convention="official", diagnose=True)
    named = [(c.detail["field"], c.detail["value"]) for f in rep.diagnosis.tensors["grad_x"].fixes
             for c in f.changes if c.kind == "convention"]
    if not offered:
        assert rep.diagnosis.tensors["grad_x"].by is None  # nothing refbnn knows reproduces it: said so
        pytest.skip("no convention field of this refbnn holds the statistics constant while keeping the division "
                    "by std in the gradient")
    assert set(offered) <= set(named), rep.table()


# --- the search: breaks, pairs, the bound ---------------------------------------------------------------

def test_a_fix_that_breaks_a_passing_tensor_is_reported_as_such(tmp_path):
    """out computed with sign(0) = 0, the gradients with +1 (an implementation that binarizes twice): the change
    of sign(0) fixes out but breaks the gradients."""
    zero = exported(tmp_path, name="zero", method="bnn", convention="official", part="layer")
    one = exported(tmp_path, name="one", method="bnn", convention="official", part="layer",
                   bundle={k: v for k, v in zero.items() if k in ("x", "weight", "bias", "grad_out", "padding")},
                   params={"sign_zero": 1.0})
    mixed = dict(zero, out=one["out"])
    rep = xc.crosscheck(mixed, method="bnn", convention="official", diagnose=True)
    assert not rep.row("out").passed and rep.row("grad_x").passed
    fx = [f for f in rep.diagnosis.tensors["out"].fixes
          if [(c.detail.get("field"), c.detail.get("value")) for c in f.changes] == [("sign_zero", 1.0)]]
    assert fx and {"grad_x", "grad_weight"} <= set(fx[0].breaks), rep.table()
    assert "fixes out but breaks grad_x, grad_weight" in rep.table()
    assert not rep.diagnosis.every_tensor


def test_pairs_when_no_single_change_fixes_a_tensor(tmp_path):
    """sign(0) = 0 and a clipped weight STE where refbnn has sign(0) = +1 and the identity: grad_weight needs
    both; out and grad_x need the first only."""
    b = exported(tmp_path, method="bnn", convention="paper", part="layer",
                 params={"sign_zero": 0.0, "weight_quantizer": "ste_sign"})
    b.pop("sign_zero"), b.pop("weight_quantizer")
    rep = xc.crosscheck(b, method="bnn", convention="paper", diagnose=True)
    d = rep.diagnosis
    assert d.tensors["out"].by == "single" and d.tensors["grad_weight"].by == "pair", rep.table()
    pair = d.tensors["grad_weight"].fixes[0]
    assert {c.slot for c in pair.changes} == {"convention.sign_zero", "estimator.weight"}
    assert d.every_tensor and len(d.every_tensor[0].changes) == 2
    assert "a pair of changes" in rep.table() and " + " in rep.table()
    # the JSON report holds the same
    j = json.loads(rep.to_json())["diagnosis"]
    assert j["tensors"]["grad_weight"]["by"] == "pair" and j["runs"] <= MAX_RUNS
    assert {c["slot"] for c in j["tensors"]["grad_weight"]["fixes"][0]["changes"]} == {"convention.sign_zero",
                                                                                       "estimator.weight"}
    # a bound on the re-runs is kept and reported
    rep = xc.crosscheck(b, method="bnn", convention="paper", diagnose=5)
    assert rep.diagnosis.runs == 5 and rep.diagnosis.cap_hit and rep.diagnosis.not_tried > 0
    assert "bound of 5 re-runs was reached" in rep.table()
    with pytest.raises(ValueError, match="diagnose"):
        xc.crosscheck(b, method="bnn", convention="paper", diagnose=0)


def test_without_a_convention_the_quantizer_parameters_change(tmp_path):
    """--quantizer and Larq layers without --convention: a field reaches the quantizers' own parameters."""
    b = exported(tmp_path, quantizer="ste_sign")
    b["out"] = np.sign(b["x"])  # torch.sign: sign(0) = 0, Larq's default is +1
    rep = xc.crosscheck(b, quantizer="ste_sign", diagnose=True)
    assert names_field(rep, "out", "sign_zero", 0.0) and "as sign_zero=0.0 instead of 1.0" in rep.table()
    lq = exported(tmp_path, name="larq", input_quantizer="ste_sign", kernel_quantizer="ste_sign", padding="same",
                  params={"input_quantizer.sign_zero": 0.0, "kernel_quantizer.sign_zero": 0.0})
    lq.pop("input_quantizer.sign_zero"), lq.pop("kernel_quantizer.sign_zero")
    rep = xc.crosscheck(lq, input_quantizer="ste_sign", kernel_quantizer="ste_sign", diagnose=True)
    assert names_field(rep, "out", "sign_zero", 0.0), rep.table()
    assert "kernel_quantizer.sign_zero=0.0 instead of 1.0, input_quantizer.sign_zero=0.0" in rep.table()
    # a Larq conv's pad value is its own setting
    lp = exported(tmp_path, name="pad", input_quantizer="ste_sign", kernel_quantizer="ste_sign", padding="same",
                  params={"pad_values": 1.0})
    lp.pop("pad_values")
    rep = xc.crosscheck(lp, input_quantizer="ste_sign", kernel_quantizer="ste_sign", diagnose=True)
    assert names_field(rep, "out", "pad_value", 1.0), rep.table()


def test_method_variants_are_read_from_the_method_table():
    assert ("gradient", "exact") in method_variants(get_method("xnor"))
    assert ("gradient", "detached") in method_variants(get_method("xnor"))
    assert ("weight_quantizer", "ste_sign") in method_variants(get_method("bnn"))
    assert ("gradient", "exact") in method_variants(get_method("xnor"))  # also xnor_common's (variant_of="xnor")
    assert ("input_quantizer", "ste_sign") in method_variants(get_method("xnor"))
    nothing = dataclasses.replace(get_method("bnn"), name="bnn_without_variants", description="no params named here")
    assert method_variants(nothing) == []


def test_xnor_gradient_variant(tmp_path):
    """A documented method variant (xnor's --param gradient=...) is tried and named."""
    b = exported(tmp_path, method="xnor", convention="paper", part="layer", params={"gradient": "exact"})
    b.pop("gradient")
    rep = xc.crosscheck(b, method="xnor", convention="paper", diagnose=True)
    assert any(c.kind == "variant" and c.detail["param"] == "gradient" and c.detail["value"] == "exact"
               for f in rep.diagnosis.tensors["grad_weight"].fixes for c in f.changes), rep.table()


# --- the CLI ---------------------------------------------------------------------------------------------

def test_cli_diagnose(tmp_path):
    b = exported(tmp_path, quantizer="ste_sign", convention="official")
    b["grad_x"] = b["grad_out"].copy()
    path = tmp_path / "mine.npz"
    np.savez(path, **b)
    env = {**os.environ, "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "refbnn", "crosscheck", str(path), "--quantizer", "ste_sign", "--convention",
           "official"]
    res = subprocess.run(cmd + ["--diagnose", "--json", str(tmp_path / "r.json")], cwd=ROOT, capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr  # tensors differ: still exit status 1
    assert "diagnosis:" in res.stdout and "grad_x (max_abs" in res.stdout and "passes with one change" in res.stdout
    assert "quantizer identity_ste_sign instead of ste_sign" in res.stdout
    j = json.loads((tmp_path / "r.json").read_text())
    assert any(c["quantizer"] == "identity_ste_sign" for f in j["diagnosis"]["tensors"]["grad_x"]["fixes"]
               for c in f["changes"])
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1 and "diagnosis" not in res.stdout  # only when asked
