"""Methods: every method trains on digits through the real training loop; the LayerFactory path the
crosscheck tool uses; parameter overrides; per-epoch schedules and random generators; the CLI."""
import json
import zlib

import numpy as np
import pytest

from helpers import REL_TOL, check_module, probe_quantizers, stopped_after
from refbnn import cli
from refbnn.checkpoint import load_checkpoint
from refbnn.conventions import OFFICIAL, PAPER
from refbnn.layers import BinaryConv2d, BinaryLinear, Conv2d, Sequential
from refbnn.methods import METHODS, LayerFactory, get_method, model_quantizers
from refbnn.models import build_model
from refbnn.quantizers import StochasticSign
from refbnn.train import TrainConfig, train

ISSUE_METHODS = ["float", "bc", "bnn", "xnor", "xnorpp", "dorefa", "bireal", "bnnplus", "irnet", "irnet_1w32a",
                 "recu", "pc", "bnnpp"]


def test_every_method_of_the_issue_is_registered():
    assert [m for m in METHODS if METHODS[m].variant_of is None] == ISSUE_METHODS
    assert all(METHODS[m].variant_of in ISSUE_METHODS for m in METHODS if m not in ISSUE_METHODS)
    with pytest.raises(ValueError, match="known methods: float, bc, bnn"):
        get_method("reCU")


def test_recu_is_the_default_method():
    assert TrainConfig().method == "recu"
    args = cli.main.__globals__["argparse"].ArgumentParser()
    sub = args.add_subparsers(dest="command")
    cli._add_train(sub)
    assert args.parse_args(["train"]).method == "recu"


@pytest.mark.parametrize("method", ISSUE_METHODS)
def test_method_trains_on_digits(method):
    """Three epochs of the real training loop (the method's defaults, paper convention): far above chance."""
    m = train(TrainConfig(method=method, epochs=3, progress=False), log=lambda *a: None)
    assert m["test_accuracy"] > 0.8, m["test_accuracy_per_epoch"]


@pytest.mark.parametrize("method", ["recu", "irnet", "irnet_1w32a", "bireal"])
def test_seed_methods_train_under_the_official_convention(method):
    m = train(TrainConfig(method=method, convention="official", epochs=3, progress=False), log=lambda *a: None)
    assert m["test_accuracy"] > 0.8, m["test_accuracy_per_epoch"]


def test_stochastic_binaryconnect_trains():
    m = train(TrainConfig(method="bc", method_params={"weight_quantizer": "stochastic_sign"}, lr=3e-2, epochs=3,
                          progress=False), log=lambda *a: None)
    assert m["test_accuracy"] > 0.8, m["test_accuracy_per_epoch"]


def test_bop_trains_binary_weights(tmp_path):
    m = train(TrainConfig(method="bnn", optimizer="bop", epochs=3, bop_threshold=1e-6, bop_gamma=1e-3,
                          progress=False, out=str(tmp_path)), log=lambda *a: None)
    assert m["test_accuracy"] > 0.5
    state, _, _ = load_checkpoint(tmp_path / "checkpoint.npz")
    for name in ("hidden1.fc.weight", "hidden2.fc.weight"):  # the MLP's binary layers: latent-free +-1 weights
        assert set(np.unique(state[name])) <= {-1.0, 1.0}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("convention", ["paper", "official"])
def test_layer_factory_path_for_crosscheck(method, convention):
    """LayerFactory(get_method(name), convention=...).binary_conv/.binary_linear, set the quantizer state through
    the layer's quantizers, load weight/alpha into layer.params, run forward and backward."""
    f = LayerFactory(get_method(method), rng=0, convention=convention)
    conv, lin = f.binary_conv(4, 6, 3, 1, 1), f.binary_linear(8, 5)
    binary = get_method(method).is_binary
    assert isinstance(conv, BinaryConv2d if binary else Conv2d)
    for layer, x, out in ((conv, np.ones((2, 4, 5, 5), np.float32), 6), (lin, np.ones((3, 8), np.float32), 5)):
        if not binary:
            continue
        for q in layer.quantizers().values():
            if q is not None and q.state():
                q.set_state(**{k: 0.9 if k == "tau" else 2.0 for k in q.state()})
        rng = np.random.default_rng(1)
        layer.params["weight"][...] = rng.standard_normal(layer.params["weight"].shape)
        if "alpha" in layer.params:
            assert layer.params["alpha"].shape == (out,)
            layer.params["alpha"][...] = np.linspace(0.5, 1.5, out)
        x = x * rng.standard_normal(x.shape).astype(np.float32)
        y, cache = layer.forward(x)
        dx = layer.backward(np.ones_like(y), cache)
        assert y.dtype == np.float32 and dx.shape == x.shape and np.all(np.isfinite(y))
        state = layer.quantizer_state()
        layer.load_quantizer_state(state)
        assert layer.quantizer_state() == state


@pytest.mark.parametrize("method", sorted(m for m in METHODS if METHODS[m].is_binary))
@pytest.mark.parametrize("model", ["mlp", "vgg_small"])
def test_models_end_to_end_official(method, model):
    """As test_layer_gradients.test_models_end_to_end, under the official convention (ReCU's learned alpha,
    per-sample activation normalization, gradients through the statistics, torch.sign)."""
    rng = np.random.default_rng(zlib.crc32(f"{method}/{model}/official".encode()))
    params = {"beta": 1.0} if method == "bnnplus" else None
    factory = LayerFactory(METHODS[method], rng=rng, dtype=np.float64, convention="official", params=params)
    width = {"mlp": 0.02, "vgg_small": 0.03}[model]
    net = build_model(model, factory, (2, 8, 8), 3, width)
    for q in model_quantizers(net):  # a mid-training schedule state
        q.set_state(**{k: {"tau": 0.9, "t": 1.5, "k": 1.0, "beta": 3.0, "mu": 0.3}[k] for k in q.state()})
    net = probe_quantizers(net, jitter=0.05)
    for _, m in net.modules():
        if "gamma" in m.params:
            m.params["gamma"][:] = rng.uniform(0.5, 1.5, m.params["gamma"].shape)
            m.params["beta"][:] = rng.normal(0.0, 0.3, m.params["beta"].shape)
    errs = check_module(net, rng.standard_normal((3, 2, 8, 8)), rng, k=6)
    assert max(errs.values()) < REL_TOL, {k: v for k, v in errs.items() if v >= REL_TOL}


def test_with_params_routing():
    irnet = get_method("irnet").with_params(T_min=1e-3)
    assert irnet.schedule.params == {"T_min": 1e-3, "T_max": 10.0}
    bnn = get_method("bnn").with_params(clip_value=1.2)  # only ste_sign (the input quantizer) accepts it
    wq, iq = bnn.build_quantizers(PAPER)
    assert iq.clip_value == 1.2 and wq.clip_value is None
    xnor = get_method("xnor").with_params(clip_value=1.25, **{"weight.gradient": "exact"})
    wq, iq = xnor.build_quantizers(OFFICIAL)
    assert wq.clip_value == iq.clip_value == 1.25 and wq.gradient == "exact" and wq.sign_zero == 0.0
    bc = get_method("bc").with_params(weight_quantizer="stochastic_sign", eval_forward="real")
    assert isinstance(bc.build_quantizers()[0], StochasticSign) and bc.build_quantizers()[0].eval_forward == "real"
    recu = get_method("recu").with_params(tau_start=0.9, scale=None, alpha="analytic")
    f = LayerFactory(recu, rng=0, convention=OFFICIAL)
    layer = f.binary_linear(4, 3)
    assert "alpha" not in layer.params and layer.weight_quantizer.alpha == "analytic"
    with pytest.raises(ValueError, match="unknown parameter 'Tmin'; accepted: .*T_min"):
        get_method("irnet").with_params(Tmin=1e-3)
    with pytest.raises(ValueError, match="T_min: expected > 0"):
        get_method("irnet").with_params(T_min=0.0)
    with pytest.raises(ValueError, match=r"tau: expected a value in \(0.5, 1\]"):
        get_method("recu").with_params(tau=0.3)
    with pytest.raises(ValueError, match="clip_value: expected a positive"):
        LayerFactory(get_method("bnn"), params={"clip_value": -1.0})
    with pytest.raises(ValueError, match="unknown weight_quantizer 'sign'"):
        get_method("bc").with_params(weight_quantizer="sign")


def test_on_epoch_sets_schedule_values_and_generators():
    m = get_method("irnet")
    f = LayerFactory(m, rng=0, convention=PAPER)
    model = Sequential(f.binary_linear(4, 4), f.binary_linear(4, 2))
    values = m.on_epoch(model, 0, 10, PAPER)
    assert values == {"t": pytest.approx(0.1), "k": pytest.approx(10.0)}
    values = m.on_epoch(model, 9, 10, PAPER)
    assert values["t"] == pytest.approx(10.0) and values["k"] == 1.0
    for q in model_quantizers(model):
        assert q.t == pytest.approx(10.0) and q.k == 1.0
    bc = get_method("bc").with_params(weight_quantizer="stochastic_sign")
    model = Sequential(LayerFactory(bc, rng=0).binary_linear(4, 4))
    gen = np.random.default_rng([1, 2, 1])
    bc.on_epoch(model, 2, 5, PAPER, rng=gen)
    assert model.children["0"].weight_quantizer.rng is gen


def test_stochastic_binaryconnect_resumes_bit_exactly(tmp_path):
    """The stochastic quantizer draws from the per-epoch generator default_rng([seed, epoch, 1]): a run
    interrupted after its first epoch and resumed ends with the same weights as an uninterrupted one."""
    kw = dict(method="bc", method_params={"weight_quantizer": "stochastic_sign"}, epochs=2, progress=False)
    full = train(TrainConfig(out=str(tmp_path / "a"), **kw), log=lambda *a: None)
    with stopped_after(1):
        train(TrainConfig(out=str(tmp_path / "b"), **kw), log=lambda *a: None)
    resumed = train(TrainConfig(out=str(tmp_path / "b"), resume=True, **kw), log=lambda *a: None)
    a = load_checkpoint(tmp_path / "a" / "checkpoint.npz")[0]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.npz")[0]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert resumed["test_accuracy_per_epoch"] == full["test_accuracy_per_epoch"]


def test_schedule_values_are_logged_and_checkpointed(tmp_path):
    m = train(TrainConfig(method="recu", epochs=2, progress=False, out=str(tmp_path),
                          metrics_json=str(tmp_path / "m.json")), log=lambda *a: None)
    assert [v["tau"] for v in m["schedule"]] == [pytest.approx(0.85), pytest.approx(0.99)]  # paper clock
    state, _, meta = load_checkpoint(tmp_path / "checkpoint.npz")
    taus = [float(v) for k, v in state.items() if k.endswith("weight_quantizer.tau")]
    assert taus and all(t == pytest.approx(0.99) for t in taus)
    assert json.load(open(tmp_path / "m.json"))["method"] == "recu"


def test_cli_param_and_errors(tmp_path, capsys):
    assert cli.parse_param("T_min=1e-3") == ("T_min", 1e-3)
    assert cli.parse_param("scale=none") == ("scale", None)
    assert cli.parse_param("center=false") == ("center", False)
    assert cli.parse_param("weight_quantizer=stochastic_sign") == ("weight_quantizer", "stochastic_sign")
    out = tmp_path / "m.json"
    rc = cli.main(["train", "--method", "irnet", "--epochs", "1", "--param", "T_min=1e-3", "--no-progress",
                   "--metrics-json", str(out)])
    assert rc == 0
    assert json.load(open(out))["method_params"] == {"T_min": 1e-3}
    rc = cli.main(["train", "--method", "irnet", "--epochs", "1", "--param", "Tmin=1", "--no-progress"])
    assert rc == 2 and "unknown parameter 'Tmin'" in capsys.readouterr().err


def test_binary_layers_know_their_mode():
    """ReCU's per-sample activation normalization is training-only: the layer passes its mode on."""
    f = LayerFactory(get_method("recu"), rng=0, dtype=np.float64, convention=OFFICIAL)
    layer = f.binary_linear(6, 3)
    x = np.random.default_rng(0).standard_normal((4, 6)) * 3
    _, c_train = layer.forward(x)
    layer.eval()
    _, c_eval = layer.forward(x)
    assert c_train[2][1] is not None and c_eval[2][1] is None  # the activation quantizer's normalization cache
    assert isinstance(layer, BinaryLinear)
