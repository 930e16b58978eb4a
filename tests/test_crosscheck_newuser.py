"""What a new user of `refbnn crosscheck` runs into: asymmetric ("same") padding as a plain constructor
argument of the conv op and layers, refbnn's own exports checking with no options, the report saying
which convention boundaries the inputs exercise, missing schedule values, the spelling of None and of
the string "none", and the common variants of the methods by name (against torch autograd)."""
import numpy as np
import pytest
from helpers import REL_TOL, check_module, check_op, probe_quantizers
from hypothesis import given
from hypothesis import strategies as st

from refbnn import crosscheck as xc
from refbnn import kernels, ops
from refbnn.cli import main
from refbnn.crosscheck import layer as xc_layer
from refbnn.layers import BinaryConv2d, Conv2d
from refbnn.methods import METHODS, LayerFactory, get_method
from refbnn.params import parse_params, parse_value

seeds = st.integers(0, 2**32 - 1)


# --- 1. four-sided padding ---------------------------------------------------------------------------

@given(seeds, st.integers(1, 2), st.sampled_from([1, 2]), st.tuples(*[st.integers(0, 2)] * 4), st.integers(1, 2),
       st.integers(1, 3), st.sampled_from([0.0, 1.0, -1.0]), st.booleans())
def test_conv2d_four_sided_padding_gradients(seed, n, groups, pads, stride, k, pad_value, bias):
    """conv2d with (top, bottom, left, right): the forward is the convolution of the explicitly padded input,
    the backward its gradient (central differences)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2 * groups, 4, 5))
    w = rng.standard_normal((2 * groups, 2, k, k))
    b = rng.standard_normal(2 * groups) if bias else None
    top, bottom, left, right = pads
    out, _ = ops.conv2d_forward(x, w, b, stride, pads, 1, groups, pad_value)
    xpad = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=pad_value)
    ref, _ = ops.conv2d_forward(xpad, w, b, stride, 0, 1, groups)
    assert np.array_equal(out, ref)
    inputs, names = {"x": x, "w": w}, {"x": "dx", "w": "weight"}
    if bias:
        inputs["b"], names["b"] = b, "bias"

    def fwd(x, w, b=None):
        return ops.conv2d_forward(x, w, b, stride, pads, 1, groups, pad_value)

    errs = check_op(fwd, ops.conv2d_backward, inputs, names, rng)
    assert max(errs.values()) < REL_TOL, errs


def test_padding_forms_and_bad_padding():
    assert BinaryConv2d(2, 2, 3, padding=1).padding == (1, 1)
    assert BinaryConv2d(2, 2, 3, padding=(1, 2)).padding == (1, 2)
    assert BinaryConv2d(2, 2, 3, padding=(1, 1, 2, 2)).padding == (1, 2)  # symmetric: the short form
    assert BinaryConv2d(2, 2, 3, padding=(0, 1, 0, 1)).padding == (0, 1, 0, 1)
    assert Conv2d(2, 2, 2, padding=(0, 1, 1, 0)).padding == (0, 1, 1, 0)
    for bad in ((1, 2, 3), (1, -1, 0, 0), "same", (1.0, 1.0), True):
        with pytest.raises(ValueError, match="padding: expected"):
            BinaryConv2d(2, 2, 3, padding=bad)


@given(seeds, st.tuples(*[st.integers(0, 2)] * 4), st.sampled_from([1, 2]), st.sampled_from([0.0, 1.0, -1.0]))
def test_binary_conv_asymmetric_padding_against_surrogate(seed, pads, stride, pad_value):
    rng = np.random.default_rng(seed)
    layer = BinaryConv2d(4, 3, 2, stride=stride, padding=pads, weight_quantizer="ste_sign",
                         input_quantizer="ste_sign", scale="learned", bias=True, pad_value=pad_value, rng=rng,
                         dtype=np.float64, backend="numpy")
    errs = check_module(probe_quantizers(layer), rng.standard_normal((2, 4, 5, 5)), rng)
    assert max(errs.values()) < REL_TOL, errs


@pytest.mark.parametrize("pad_value", [0.0, 1.0, -1.0])
@pytest.mark.parametrize("pads,stride,groups", [((0, 1, 0, 1), 2, 1), ((1, 2, 0, 1), 1, 2), ((2, 0, 1, 0), 2, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_kernel_and_numpy_agree_for_asymmetric_padding(pad_value, pads, stride, groups, dtype):
    """The packed kernels pad symmetrically: asymmetric padding must give the reference's values bit for bit
    (the kernel interface and a binary layer, forward in both modes and the training backward; in float32
    the backward runs the compiled float ops on the "cython" backend: within float tolerance)."""
    pytest.importorskip("refbnn.kernels._bitpack", reason="the bit-packed kernels are not built "
                        "(python setup.py build_ext --inplace)")
    rng = np.random.default_rng(3)
    x = np.where(rng.random((2, 4, 7, 6)) < 0.5, -1.0, 1.0).astype(dtype)
    w = np.where(rng.random((6, 4 // groups, 3, 2)) < 0.5, -1.0, 1.0).astype(dtype)
    ref = kernels.binary_conv2d(x, w, stride, pads, 1, groups, pad_value, backend="numpy")
    assert np.array_equal(kernels.binary_conv2d(x, w, stride, pads, 1, groups, pad_value, backend="cython"), ref)
    xpad = np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:]), constant_values=pad_value)
    assert np.array_equal(ops.conv2d_forward(xpad, w, None, stride, 0, 1, groups)[0], ref)
    xr = rng.standard_normal((2, 4, 7, 6)).astype(dtype)
    results = {}
    for backend in ("numpy", "cython"):
        layer = BinaryConv2d(4, 6, (3, 2), stride, pads, 1, groups, scale="mean_abs", bias=True,
                             pad_value=pad_value, backend=backend, rng=np.random.default_rng(0), dtype=dtype)
        layer.eval()
        out_eval, _ = layer.forward(xr)
        layer.train()
        out, cache = layer.forward(xr)
        dx = layer.backward(np.ones_like(out), cache)
        results[backend] = (out_eval, out, dx, layer.grads["weight"], layer.grads["bias"])
    for i, (a, b) in enumerate(zip(results["numpy"], results["cython"])):
        if i < 2 or dtype == np.float64:
            assert np.array_equal(a, b)
        else:
            assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def test_the_layer_check_builds_the_layer_with_the_bundles_geometry(tmp_path, monkeypatch):
    """No layer is built and then changed: the check's layer is built once, through the method's LayerFactory
    (or BinaryConv2d for a Larq layer), with stride, padding (four-sided for TensorFlow's same), dilation and
    groups as constructor arguments."""
    assert not hasattr(xc_layer, "_forward_backward_prepadded")
    built = []
    original = BinaryConv2d.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)
        snapshot = dict(vars(self))
        snapshot.pop("params"), snapshot.pop("grads", None)
        self._snapshot = snapshot

    monkeypatch.setattr(BinaryConv2d, "__init__", record)
    (path,) = xc.export_bundles(tmp_path, input_quantizer="ste_sign", kernel_quantizer="ste_sign", padding="same",
                                params={"stride": 2, "dilation": 1, "pad_values": 1.0}, x_shape="2,6,6,3",
                                weight_shape="3,3,3,4")
    built.clear()
    rep = xc.crosscheck(path)
    assert rep.passed, rep.table()
    (layer,) = built
    assert layer.padding == (0, 1, 0, 1) and layer.stride == (2, 2)  # TF same: the odd pixel bottom/right
    now = {k: v for k, v in vars(layer).items() if k not in ("params", "grads", "_snapshot")}
    assert now.keys() == layer._snapshot.keys()
    assert all(now[k] is layer._snapshot[k] for k in now)  # no attribute replaced (quantizers included)


def test_asymmetric_same_padding_against_torch():
    """A Larq-style layer with padding same, stride 2 (top/left 0, bottom/right 1) and ReCU's official layer
    (non-binary input quantizer) against torch: quantize, F.pad with the pad value, conv2d."""
    from torch_helpers import F, T, torch
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 6, 3))
    kernel = rng.standard_normal((2, 2, 3, 4))
    g = rng.standard_normal((2, 3, 3, 4))
    xt, kt = T(x.transpose(0, 3, 1, 2)), T(kernel.transpose(3, 2, 0, 1))

    def ste(a):  # sign forward (sign(0) = 1), clipped straight-through gradient
        clipped = torch.clamp(a, -1, 1)
        return clipped + (torch.where(a >= 0, 1.0, -1.0).double() - clipped).detach()

    out = F.conv2d(F.pad(ste(xt), (0, 1, 0, 1), value=1.0), ste(kt), stride=2)
    (out * T(g.transpose(0, 3, 1, 2), False)).sum().backward()
    bundle = {"x": x, "kernel": kernel, "grad_out": g, "padding": np.array("same"), "stride": np.array(2),
              "pad_values": np.array(1.0), "out": out.detach().numpy().transpose(0, 2, 3, 1),
              "grad_x": xt.grad.numpy().transpose(0, 2, 3, 1), "grad_kernel": kt.grad.numpy().transpose(2, 3, 1, 0)}
    rep = xc.crosscheck(bundle, input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    assert rep.passed, rep.table()
    assert not xc.crosscheck(dict(bundle, padding=np.array([[0, 1], [0, 1]]).reshape(-1)[[1, 0, 1, 0]]),
                             input_quantizer="ste_sign", kernel_quantizer="ste_sign").passed  # odd pixel top/left


# --- 2. every export checks with no options ------------------------------------------------------------

def _a_quantizer_parameter(method):
    """One float constructor parameter of the method's quantizers that is neither a convention field nor a
    schedule value, scaled by 1.25 (prefixed with its quantizer)."""
    from refbnn.quantizers import QUANTIZERS
    for role in ("weight_quantizer", "input_quantizer"):
        name = getattr(method, role)
        if name is None:
            continue
        q = QUANTIZERS[name]()
        for k, v in q.config().items():
            if isinstance(v, float) and k not in q.state() and k != "sign_zero":
                return {f"{role}.{k}": v * 1.25}
    return {}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("convention", ["paper", "official"])
def test_every_export_checks_with_no_options(method, convention, tmp_path):
    m = METHODS[method]
    params = {"stride": 2, **_a_quantizer_parameter(m)}
    if m.schedule is not None:
        params.update(epoch=2, epochs=5)
    parts = 1 + (m.weight_quantizer is not None) + (m.input_quantizer is not None)
    for i, (padding, extra) in enumerate(((1, {}), (None, {"padding": 1}), (None, {}))):
        paths = xc.export_bundles(tmp_path / str(i), method=method, convention=convention, padding=padding,
                                  params={**params, **extra} if i < 2 else {})
        assert len(paths) == parts
        for path in paths:
            rep = xc.crosscheck(path)
            assert rep.passed, (path, rep.table())
            b = np.load(path, allow_pickle=False)
            is_layer = str(b["part"]) == "layer"
            assert ("padding" in b.files) == is_layer and ("stride" in b.files) == (is_layer and i < 2)
            if m.schedule is not None and i == 2:  # no epoch: the values used are written
                assert set(m.schedule.at(0, 2, "epoch")) <= set(b.files), b.files


def test_the_cli_export_of_issue_7_checks(tmp_path, capsys):
    assert main(["crosscheck", "--export", str(tmp_path), "--method", "bireal", "--convention", "official",
                 "--padding", "1"]) == 0
    files = sorted(tmp_path.iterdir())
    assert len(files) == 3
    for f in files:
        assert main(["crosscheck", str(f)]) == 0, capsys.readouterr()


@pytest.mark.parametrize("convention", [None, "paper", "official"])
def test_quantizer_schedule_and_larq_exports_check(convention, tmp_path):
    from refbnn.quantizers import QUANTIZERS
    for name, cls in sorted(QUANTIZERS.items()):
        own = getattr(cls, "part", None)  # a quantizer for one part only refuses the other (test_record_torch)
        for part in ((None, own) if own else (None, "weight", "input")):
            (path,) = xc.export_bundles(tmp_path / name / str(part), quantizer=name, convention=convention, part=part)
            rep = xc.crosscheck(path)
            assert rep.passed, (name, rep.table())
            b = np.load(path, allow_pickle=False)
            assert set(cls().state()) <= set(b.files)
    (path,) = xc.export_bundles(tmp_path / "clip", quantizer="ste_sign", convention=convention,
                                params={"clip_value": 1.25})
    assert xc.crosscheck(path).passed and float(np.load(path)["clip_value"]) == 1.25
    for sched in ("irnet_tk", "recu_tau", "bnnpp_beta", "pc_mu"):
        (path,) = xc.export_bundles(tmp_path / sched, schedule=sched, convention=convention or "paper",
                                    params={"epochs": 4})
        assert xc.crosscheck(path).passed
    (path,) = xc.export_bundles(tmp_path / "larq", input_quantizer="ste_sign", kernel_quantizer="ede",
                                convention=convention, padding="same", params={"stride": 2})
    assert xc.crosscheck(path).passed and {"t", "k"} <= set(np.load(path).files)


def test_a_stochastic_quantizer_exports_its_seed(tmp_path):
    (path,) = xc.export_bundles(tmp_path, quantizer="stochastic_sign", seed=5)
    assert int(np.load(path)["seed"]) == 5 and xc.crosscheck(path).passed
    paths = xc.export_bundles(tmp_path / "bc", method="bc", convention="paper",
                              params={"weight_quantizer": "stochastic_sign"})
    assert all(xc.crosscheck(p).passed for p in paths)


# --- 4. schedule values are never a silent default -------------------------------------------------------

def test_missing_schedule_values_are_an_error(tmp_path):
    paths = xc.export_bundles(tmp_path, method="irnet", convention="official", params={"epoch": 3, "epochs": 8})
    layer = {k: v for k, v in np.load(paths[0], allow_pickle=False).items() if k not in ("epoch", "epochs")}
    with pytest.raises(xc.BundleError, match=r"'t', 'k': schedule values of the input and weight quantizer of "
                       r"method irnet not given.*--param t=VALUE --param k=VALUE.*epoch and epochs"):
        xc.crosscheck(layer)
    rep = xc.crosscheck(layer, params={"epoch": 3, "epochs": 8})
    assert rep.passed
    weight = {k: v for k, v in np.load(paths[1], allow_pickle=False).items() if k not in ("epoch", "epochs")}
    with pytest.raises(xc.BundleError, match="'t', 'k': schedule values of the weight quantizer"):
        xc.crosscheck(weight)
    assert xc.crosscheck(weight, params={"t": rep.settings["schedule_values"]["t"],
                                         "k": rep.settings["schedule_values"]["k"]}).passed
    recu = xc.export_bundles(tmp_path / "recu", method="recu", convention="paper", part="weight",
                             params={"epoch": 1, "epochs": 3})[0]
    with pytest.raises(xc.BundleError, match="'tau': schedule value of the weight quantizer of method recu"):
        xc.crosscheck({k: v for k, v in np.load(recu).items() if k not in ("epoch", "epochs")})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    with pytest.raises(xc.BundleError, match="'t', 'k': schedule values of --quantizer ede not given"):
        xc.crosscheck({"x": x, "out": np.sign(x)}, quantizer="ede")
    assert xc.crosscheck({"x": x, "out": np.sign(x), "t": np.array(0.5), "k": np.array(2.0)}, quantizer="ede").passed
    # a method with no schedule: the one way is by name
    with pytest.raises(xc.BundleError, match=r"give t, k in the bundle \(0-d arrays\) or as --param t=VALUE "
                       r"--param k=VALUE$"):
        xc.crosscheck({"x": x, "out": np.sign(x)}, method="bnn", part="weight", params={"weight_quantizer": "ede"})


# --- 5. None and the string "none" -------------------------------------------------------------------------

def test_none_and_the_string_none(tmp_path, capsys):
    assert parse_value("none") is None and parse_value("None") is None
    assert parse_value("'none'") == "none" and parse_value('"none"') == "none" and parse_value("'1'") == "1"
    assert parse_params(["scale='none'", "clip_value=none"]) == {"scale": "none", "clip_value": None}
    from refbnn.params import format_setting, read_setting
    for v in (None, "none", "None", "'quoted'", "same", "per_sample", "''"):
        text = format_setting(v)
        assert isinstance(text, str) and read_setting(text) == v
    # the CLI: xnor's input quantizer without its per-sample scale, exported and checked back
    assert main(["crosscheck", "--export", str(tmp_path), "--method", "xnor", "--convention", "paper", "--part",
                 "input", "--param", "input_quantizer.scale='none'"]) == 0
    (path,) = tmp_path.iterdir()
    b = dict(np.load(path, allow_pickle=False))
    assert str(b["input_quantizer.scale"]) == "'none'"
    np.testing.assert_array_equal(np.abs(b["out"]), 1.0)  # K = 1: +-1 outputs
    rep = xc.crosscheck(path)
    assert rep.passed and "scale='none'" in rep.settings["quantizer"]
    assert main(["crosscheck", str(path)]) == 0
    # in a bundle: "none" is None (refused by the quantizer, naming the two spellings' values)
    with pytest.raises(xc.BundleError, match=r"expected one of \['per_sample', 'none'\], got None"):
        xc.crosscheck(dict(b, **{"input_quantizer.scale": np.array("none")}))


# --- 6. the common variants of the methods, by name, against torch autograd ------------------------------

def _torch_variant(method, x, w, b, zero, seed=None):
    """The variant written as PyTorch code writes it (autograd does every gradient): returns the forward of a
    linear layer x (N, in), w (out, in) as a function of torch tensors."""
    from torch_helpers import torch

    def sign(a):
        return torch.where(a > 0, 1.0, torch.where(a < 0, -1.0, zero)).double()

    def ste(a):  # sign forward, clipped STE (torch.clamp passes the gradient at +-1)
        c = torch.clamp(a, -1, 1)
        return c + (sign(a) - c).detach()

    def approx(a):  # Bi-Real's ApproxSign: the piecewise polynomial's gradient
        p = torch.where(a < -1, -1.0, torch.where(a < 0, a * a + 2 * a, torch.where(a < 1, -a * a + 2 * a, 1.0)))
        return p + (sign(a) - p).detach()

    mean_abs = w.abs().mean(dim=1, keepdim=True)
    if method == "xnor_common":  # autograd through the scale; no activation scale
        wq, xq = mean_abs * ste(w), ste(x)
    elif method == "bnn_ste":
        wq, xq = ste(w), ste(x)
    elif method == "bireal_scaled":  # Larq's magnitude_aware_sign: the detached scale multiplies the gradient
        wq, xq = mean_abs.detach() * ste(w), approx(x)
    elif method == "bireal_unscaled":  # the Bi-Real code: scaled sign forward, clip(W)'s gradient
        c = torch.clamp(w, -1, 1)
        wq, xq = c + (mean_abs.detach() * sign(w) - c).detach(), approx(x)
    elif method == "bc_stochastic":  # +1 iff u < hard_sigmoid(w), identity STE, real activations
        u = torch.tensor(np.random.default_rng(seed).random(tuple(w.shape), dtype=np.float64))
        p = torch.clamp((w + 1) / 2, 0, 1)
        wq, xq = w + (torch.where(u < p, 1.0, -1.0).double() - w).detach(), x
    else:
        raise ValueError(method)
    return xq @ wq.T + b


VARIANTS = sorted(m for m in METHODS if getattr(METHODS[m], "variant_of", None) is not None)


def test_the_variants_are_listed():
    assert set(VARIANTS) == {"bc_stochastic", "bnn_ste", "xnor_common", "bireal_scaled", "bireal_unscaled"}
    assert all(METHODS[m].variant_of in METHODS and METHODS[METHODS[m].variant_of].variant_of is None
               for m in VARIANTS)
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "refbnn", "crosscheck", "--list"], cwd=root, capture_output=True, check=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": root}).stdout
    assert all(f"{m} (of {METHODS[m].variant_of})" in out for m in VARIANTS), out
    with open(os.path.join(root, "docs", "usage.md")) as f:
        usage = f.read()
    assert all(f"| `{m}` |" in usage for m in VARIANTS)


@pytest.mark.parametrize("method", VARIANTS)
@pytest.mark.parametrize("convention", ["paper", "official"])
def test_each_variant_against_torch_autograd(method, convention):
    from torch_helpers import T
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 9)) * 1.2
    w = rng.standard_normal((5, 9)) * 1.2
    x[0, :3], w[1, :2] = 0.0, 0.0   # sign(0)
    x[1, 0], w[2, 0] = 1.0, -1.0    # the clip points
    b = rng.standard_normal(5)
    g = rng.standard_normal((4, 5))
    zero = 1.0 if convention == "paper" else 0.0
    xt, wt, bt = T(x), T(w), T(b)
    out = _torch_variant(method, xt, wt, bt, zero, seed=3)
    (out * T(g, False)).sum().backward()
    bundle = {"x": x, "weight": w, "bias": b, "grad_out": g, "out": out.detach().numpy(), "grad_x": xt.grad.numpy(),
              "grad_weight": wt.grad.numpy(), "grad_bias": bt.grad.numpy()}
    if method == "bc_stochastic":
        bundle["seed"] = np.array(3)
    rep = xc.crosscheck(bundle, method=method, convention=convention)
    assert rep.passed, rep.table()
    # the variant is not its base method: the base fails the same bundle (Bi-Real's base agrees under the
    # convention whose gradient the variant pins)
    base = METHODS[method].variant_of
    same_as_base = (method, convention) in (("bireal_scaled", "paper"), ("bireal_unscaled", "official"))
    base_bundle = {k: v for k, v in bundle.items() if k != "seed"}
    assert xc.crosscheck(base_bundle, method=base, convention=convention).passed == same_as_base


def test_variants_train_with_the_layer_factory():
    """A variant is a plain method: LayerFactory builds its layers, with the variant's quantizer parameters."""
    layer = LayerFactory(get_method("xnor_common"), rng=0).binary_conv(3, 4, 3, 1, 1)
    assert layer.weight_quantizer.gradient == "exact" and layer.input_quantizer.name == "ste_sign"
    assert LayerFactory(get_method("bireal_unscaled"), convention="paper").binary_linear(3, 2).weight_quantizer \
        .scale_gradient is False
    assert LayerFactory(get_method("bireal_scaled"), convention="official").binary_linear(3, 2).weight_quantizer \
        .scale_gradient is True


# --- 3. which convention boundaries the inputs exercise ----------------------------------------------------

def test_the_report_says_which_boundaries_the_inputs_exercise():
    rng = np.random.default_rng(4)
    x = rng.uniform(0.1, 0.9, (3, 4)) * np.where(rng.random((3, 4)) < 0.5, -1, 1)  # no 0, nothing at +-1
    g = rng.standard_normal(x.shape)
    bundle = {"x": x, "grad_out": g, "out": np.sign(x), "grad_x": g}
    for convention in ("paper", "official"):  # both "pass": the inputs cannot tell them apart
        rep = xc.crosscheck(bundle, quantizer="ste_sign", convention=convention)
        assert rep.passed
        ex = rep.settings["exercised"]["quantizer"]
        assert ex["sign_zero"] == {"value": 1.0 if convention == "paper" else 0.0, "exercised": False, "zeros": 0}
        assert ex["clip_inclusive"] == {"value": True, "exercised": False, "clip_value": 1.0, "at_clip": 0}
        assert "sign(0): the x hold no exact 0, so sign_zero was not tested" in rep.notes
        assert any(n.startswith("clip: no x value lies exactly at +-1") for n in rep.notes)
        assert "note: sign(0)" in rep.table() and '"exercised"' in rep.to_json()
    # with a 0 and a value at the clip point: exercised, no note, and only one convention passes
    x2 = x.copy()
    x2[0, 0], x2[1, 1] = 0.0, 1.0
    b2 = {"x": x2, "grad_out": g, "out": np.where(x2 >= 0, 1.0, -1.0), "grad_x": g}
    rep = xc.crosscheck(b2, quantizer="ste_sign", convention="paper")
    assert rep.passed and not rep.notes
    assert rep.settings["exercised"]["quantizer"]["sign_zero"]["zeros"] == 1
    assert rep.settings["exercised"]["quantizer"]["clip_inclusive"]["at_clip"] == 1
    assert not xc.crosscheck(b2, quantizer="ste_sign", convention="official").passed


def test_layer_boundaries_pad_value_and_standardized_zeros(tmp_path):
    # no padding: the pad value is not tested
    (path,) = xc.export_bundles(tmp_path, method="bnn", convention="paper", part="layer", params={"padding": 0})
    rep = xc.crosscheck(path)
    assert rep.settings["exercised"]["layer"]["pad_value"]["exercised"] is False
    assert "pad value: the layer pads nothing, so pad_value was not tested" in rep.notes
    (path,) = xc.export_bundles(tmp_path / "p", method="bnn", convention="paper", part="layer", padding="same")
    assert xc.crosscheck(path).settings["exercised"]["layer"]["pad_value"]["exercised"] is True
    # IR-Net's weights are standardized before the sign: an exact 0 in W is not a 0 there, unless the row's
    # mean is exactly 0 (as the export makes it), so both conventions' sign(0) shows in the weights
    paths = xc.export_bundles(tmp_path / "ir", method="irnet", convention="official", params={"epoch": 1, "epochs": 3})
    for p in paths:
        rep = xc.crosscheck(p)
        assert rep.passed and not rep.notes, rep.notes
        for role, fields in rep.settings["exercised"].items():
            assert all(info["exercised"] for info in fields.values()), (role, fields)
    layer = dict(np.load(paths[0], allow_pickle=False))
    w = layer["weight"]
    layer["weight"] = np.where(w == 0, 0.3, w) + 0.01  # no 0, and no row with a mean of exactly 0
    rep = xc.crosscheck({k: v for k, v in layer.items() if k not in ("out", "grad_x", "grad_weight", "grad_bias")
                         } | {"out": np.zeros_like(layer["out"])})
    assert rep.settings["exercised"]["weight"]["sign_zero"]["exercised"] is False
    assert any(n.startswith("sign(0): the weights") for n in rep.notes)
