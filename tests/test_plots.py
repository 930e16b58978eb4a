"""refbnn.plots / ``refbnn plot``: every command writes a readable PNG, the drawn curves are the quantizers',
schedules' and runs' own values, and bad input is refused with the known names."""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="refbnn's plots need matplotlib (pip install 'refbnn[plot]')")

from matplotlib.image import imread  # noqa: E402

from refbnn import plots  # noqa: E402
from refbnn.checkpoint import load_checkpoint  # noqa: E402
from refbnn.cli import main  # noqa: E402
from refbnn.models import binary_layers  # noqa: E402
from refbnn.quantizers import QUANTIZERS, get_quantizer  # noqa: E402
from refbnn.quantizers.recu import RecuWeight, laplace_quantile  # noqa: E402
from refbnn.schedules import EDE_SCHEDULE, LR_SCHEDULES, RECU_SCHEDULE  # noqa: E402
from refbnn.train import TrainConfig, train  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_png(path, min_width=400):
    """A non-empty PNG file that decodes to an RGBA image of a plausible size."""
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    img = imread(path)
    h, w = img.shape[:2]
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert w >= min_width and 250 <= h <= 1200, img.shape
    assert img[..., :3].std() > 0.01  # not a blank canvas
    return img.shape


# ---- short real runs ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("recu_run")
    metrics = train(TrainConfig(method="recu", epochs=3, width=0.1, out=str(out),
                                metrics_json=str(out / "metrics.json"), progress=False), log=lambda *a, **k: None)
    return out, metrics


@pytest.fixture(scope="module")
def bnn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bnn_run")
    metrics = train(TrainConfig(method="bnn", epochs=2, width=0.1, out=str(out), progress=False),
                    log=lambda *a, **k: None)
    return out, metrics


# ---- quantizers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_every_catalogue_quantizer_plots(tmp_path, name):
    d = plots.plot_quantizer(name, tmp_path / f"{name}.png")
    check_png(d["out"])
    n = d["x"].size
    assert n > 100 and d["curves"]
    for c in d["curves"]:
        for key in ("forward", "eval_forward", "surrogate", "backward"):
            assert c[key].shape == (n,), key
            assert np.isfinite(c[key]).all(), key


def test_ste_sign_curves_are_its_forward_and_clipped_estimator(tmp_path):
    d = plots.plot_quantizer("ste_sign", tmp_path / "ste.png")
    x, (c,) = d["x"], d["curves"]
    assert x.min() == -3 and x.max() == 3
    inside = np.abs(x) <= 1
    assert (c["backward"][inside] == 1).all() and (c["backward"][~inside] == 0).all()
    assert (c["forward"] == np.where(x >= 0, 1.0, -1.0)).all()  # Larq: sign(0) = +1
    assert np.array_equal(c["surrogate"], np.clip(x, -1, 1))


def test_ede_is_drawn_at_points_of_its_schedule(tmp_path):
    d = plots.plot_quantizer("ede", tmp_path / "ede.png")
    assert [c["state"] for c in d["curves"]] == [EDE_SCHEDULE.values(p) for p in plots.SCHEDULE_POINTS]
    x = d["x"]
    for c in d["curves"]:
        t, k = c["state"]["t"], c["state"]["k"]
        assert c["backward"][np.argmin(np.abs(x))] == pytest.approx(k * t)  # the peak k t at x = 0
    # a schedule parameter reaches the schedule: the ResNet-20 code's T_min = 1e-3
    d = plots.plot_quantizer("ede", tmp_path / "ede3.png", params={"T_min": 1e-3})
    assert d["curves"][0]["state"]["t"] == pytest.approx(1e-3)


def test_recu_weight_clamp_points_bound_its_estimator(tmp_path):
    d = plots.plot_quantizer("recu_weight", tmp_path / "recu.png")
    taus = [c["state"]["tau"] for c in d["curves"]]
    assert taus == [RECU_SCHEDULE.values(p)["tau"] for p in plots.SCHEDULE_POINTS]
    assert taus[0] == pytest.approx(0.85) and taus[-1] == pytest.approx(0.99)
    w = d["x"]
    widths = []
    for c in d["curves"]:
        lo, hi = c["clamp"]
        assert lo < 0 < hi
        outside = (w < lo - 1e-9) | (w > hi + 1e-9)
        inside = (w > lo + 1e-9) & (w < hi - 1e-9)
        assert outside.any() and (c["backward"][outside] == 0).all()
        assert (c["backward"][inside] > 0).all()
        # the share of the sample beyond the clamp is what the quantizer's own threshold gives
        q = RecuWeight(tau=c["state"]["tau"])
        w1 = q.standardized(w[None, :])
        _, big_q = q.threshold(w1)
        assert np.mean(outside) == pytest.approx(np.mean(np.abs(w1) > big_q), abs=2 / w.size)
        widths.append(hi - lo)
    assert widths == sorted(widths)  # tau grows, the window widens


def test_a_given_state_draws_one_curve_and_conflicts_are_refused(tmp_path):
    d = plots.plot_quantizer("recu_weight", tmp_path / "r.png", params={"tau": 0.9})
    assert len(d["curves"]) == 1 and d["curves"][0]["state"] == {"tau": 0.9}
    with pytest.raises(ValueError, match="give one or the other"):
        plots.plot_quantizer("ede", tmp_path / "e.png", params={"t": 1.0, "T_min": 1e-3})
    with pytest.raises(ValueError, match="unknown parameter.*accepted: t, k, sign_zero"):
        plots.plot_quantizer("ede", tmp_path / "e.png", params={"nope": 1})


def test_estimator_diagonal_of_row_statistics_matches_finite_differences():
    # ReCU's weight quantizer with gradients through the per-channel mean and std couples a row in its
    # backward; the plotted curve is the diagonal d y_j / d x_j of its surrogate
    rng = np.random.default_rng(3)
    x = rng.laplace(0, 0.5, (2, 40))
    q = get_quantizer("recu_weight", tau=0.9, standardize_grad="through")
    _, cache = q.forward(x)
    diag = plots.estimator_diagonal(q, x, cache)
    ones = q.backward(np.ones_like(x), cache)
    assert not np.allclose(diag, ones)  # backward(ones) is the gradient of the row sum, not the curve
    w1 = q.standardized(x)
    _, big_q = q.threshold(w1)
    h = 1e-6
    checked = 0
    for i in range(2):
        for j in range(40):
            if abs(abs(w1[i, j]) - big_q) < 0.05:
                continue  # too close to a clamp edge for a central difference
            e = np.zeros_like(x)
            e[i, j] = h
            fd = (q.surrogate(x + e, ref=x) - q.surrogate(x - e, ref=x))[i, j] / (2 * h)
            assert diag[i, j] == pytest.approx(fd, rel=1e-5, abs=1e-7)
            checked += 1
    assert checked > 60
    # with the statistics detached the backward is element-wise, and the diagonal is backward(ones)
    q = get_quantizer("recu_weight", tau=0.9, standardize_grad="detached")
    _, cache = q.forward(x)
    assert np.allclose(plots.estimator_diagonal(q, x, cache), q.backward(np.ones_like(x), cache))


def test_stochastic_sign_forward_is_the_mean_of_its_draws(tmp_path):
    d = plots.plot_quantizer("stochastic_sign", tmp_path / "s.png")
    x, (c,) = d["x"], d["curves"]
    # E[y] = 2 P(+1) - 1 = clip(x, -1, 1); the mean of 1000 draws is within 5 standard errors of it
    assert np.all(np.abs(c["forward"] - np.clip(x, -1, 1)) <= 5 / math.sqrt(plots.STOCHASTIC_DRAWS) + 1e-12)
    assert (c["eval_forward"] == np.where(x >= 0, 1.0, -1.0)).all()


def test_unknown_quantizer_lists_the_catalogue(tmp_path):
    with pytest.raises(ValueError, match="unknown quantizer 'nope'; known quantizers: approx_sign, .*xnor_weight"):
        plots.plot_quantizer("nope", tmp_path / "x.png")


# ---- schedules -------------------------------------------------------------------------------------------
def test_schedule_values_are_the_schedules_own(tmp_path):
    d = plots.plot_schedule("recu_tau", 10, tmp_path / "tau.png")
    check_png(d["out"])
    for clock in ("epoch", "progress"):
        assert d["values"][clock]["tau"] == [RECU_SCHEDULE.at(e, 10, clock)["tau"] for e in range(10)]
    assert d["values"]["progress"]["tau"][-1] == pytest.approx(0.99)
    assert d["values"]["epoch"]["tau"][-1] < 0.99  # the code's clock never reaches the end value
    assert d["clock"] == "progress" and d["lr"] is None


def test_a_methods_schedule_and_learning_rate(tmp_path):
    d = plots.plot_schedule("irnet", 12, tmp_path / "irnet.png", convention="official")
    check_png(d["out"])
    assert d["clock"] == "epoch"
    assert d["values"]["epoch"]["t"] == [EDE_SCHEDULE.at(e, 12, "epoch")["t"] for e in range(12)]
    assert d["lr"] == [LR_SCHEDULES["cosine"](e, 12, 1e-3) for e in range(12)]
    d = plots.plot_schedule("bnn", 5, tmp_path / "bnn.png")  # no quantizer schedule: the learning rate alone
    check_png(d["out"])
    assert d["values"] is None and len(d["lr"]) == 5
    d = plots.plot_schedule("recu", 6, tmp_path / "recu.png", params={"tau_end": 0.95})
    assert d["values"]["progress"]["tau"][-1] == pytest.approx(0.95)


def test_learning_rate_schedules(tmp_path):
    d = plots.plot_schedule("step", 10, tmp_path / "step.png", params={"milestones": "3,7"}, base_lr=0.1)
    check_png(d["out"])
    assert d["lr"] == pytest.approx([0.1] * 3 + [0.01] * 4 + [0.001] * 3)
    with pytest.raises(ValueError, match="unknown parameter.*accepted: milestones, gamma, warmup_epochs"):
        plots.plot_schedule("step", 10, tmp_path / "s.png", params={"nope": 1})


def test_unknown_schedule_lists_every_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown schedule 'nope'; known: methods: float, .*quantizer schedules: "
                                         "irnet_tk, recu_tau, bnnpp_beta, pc_mu; learning rates: cosine"):
        plots.plot_schedule("nope", 5, tmp_path / "x.png")
    with pytest.raises(ValueError, match="epochs: expected a positive integer"):
        plots.plot_schedule("recu", 0, tmp_path / "x.png")


# ---- checkpoints ---------------------------------------------------------------------------------------
def test_weights_of_a_recu_checkpoint(recu_run, tmp_path):
    out, _ = recu_run
    d = plots.plot_weights(out / "checkpoint.npz", tmp_path / "w.png")
    check_png(d["out"])
    assert d["layer"] == d["layers"][0] and len(d["layers"]) == 2
    _, layer = next((n, m) for n, m in binary_layers(plots.load_checkpoint_model(out / "checkpoint.npz")[0])
                    if n == d["layer"])
    (s,) = d["taus"]
    assert s["tau"] == layer.weight_quantizer.tau == pytest.approx(RECU_SCHEDULE.at(2, 3, "progress")["tau"])
    w1 = RecuWeight().standardized(layer.params["weight"].astype(np.float64))  # centered, as the code
    assert np.allclose(np.sort(d["w1"]), np.sort(w1.ravel()))
    b = float(np.abs(w1).mean())
    assert s["b"] == pytest.approx(b) and s["Q"] == pytest.approx(laplace_quantile(s["tau"], b))
    assert s["share"] == pytest.approx(np.mean(np.abs(w1) > s["Q"]))
    # the second layer by name; a run directory stands for its checkpoint; the default out is next to it
    d2 = plots.plot_weights(out, layer=d["layers"][1])
    assert d2["layer"] == d["layers"][1] and d2["out"] == str(out / f"checkpoint_weights_{d['layers'][1]}.png")
    check_png(d2["out"])


def test_weights_of_another_method_use_recus_start_and_end_tau(bnn_run, tmp_path):
    out, _ = bnn_run
    d = plots.plot_weights(out / "checkpoint.npz", tmp_path / "w.png")
    check_png(d["out"])
    assert [s["tau"] for s in d["taus"]] == [0.85, 0.99]
    w1 = RecuWeight().standardized(next(m for n, m in binary_layers(
        plots.load_checkpoint_model(out / "checkpoint.npz")[0]) if n == d["layer"]).params["weight"].astype(float))
    assert np.allclose(np.sort(d["w1"]), np.sort(w1.ravel()))
    assert d["taus"][0]["share"] >= d["taus"][1]["share"]


def test_flip_curves_come_from_the_checkpoint_history(recu_run, tmp_path):
    out, _ = recu_run
    _, _, meta = load_checkpoint(str(out / "checkpoint.npz"))
    d = plots.plot_weights(out / "checkpoint.npz", tmp_path / "w.png")
    flips = meta["history"]["flips"]
    assert d["flips"]["epochs"] == [1, 2, 3]
    for key in ("tail", "body", "all", "tail_share"):
        expected = [np.nan if e[d["layer"]][key] is None else e[d["layer"]][key] for e in flips]
        np.testing.assert_equal(d["flips"][key], expected)  # None (an empty tail) is drawn as a gap
    assert all(v > 0 for v in d["flips"]["all"])


def test_weights_errors(recu_run, tmp_path):
    out, _ = recu_run
    with pytest.raises(ValueError, match="no binary layer 'nope'; its binary layers: "):
        plots.plot_weights(out / "checkpoint.npz", tmp_path / "w.png", layer="nope")
    with pytest.raises(ValueError, match="not a valid refbnn checkpoint"):
        plots.plot_weights(out / "metrics.json", tmp_path / "w.png")
    with pytest.raises(FileNotFoundError, match="without checkpoint.npz"):
        plots.plot_weights(tmp_path, tmp_path / "w.png")


# ---- runs --------------------------------------------------------------------------------------------------
def test_training_from_a_run_directory_a_metrics_file_and_a_checkpoint(recu_run, tmp_path):
    out, metrics = recu_run
    d = plots.plot_training(out)
    assert d["out"] == str(out / "training.png") and d["source"] == str(out / "metrics.json")
    check_png(d["out"])
    assert d["epochs"] == [1, 2, 3]
    assert d["test_accuracy"] == metrics["test_accuracy_per_epoch"] and d["train_loss"] == metrics["train_loss"]
    assert d["flip_ratio"] == metrics["flip_ratio"] and list(d["flip_ratio"]) == metrics["binary_layers"]
    assert d["flip_ratio_mean"] == metrics["flip_ratio_mean"]
    d = plots.plot_training(out / "metrics.json", tmp_path / "m.png")
    check_png(d["out"])
    d_ck = plots.plot_training(out / "checkpoint.npz")
    assert d_ck["out"] == str(out / "checkpoint_training.png")
    check_png(d_ck["out"])
    for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
        assert d_ck[key] == pytest.approx(d[key])
    assert d_ck["flip_ratio"] == metrics["flip_ratio"]  # JSON keeps floats exactly
    assert d_ck["flip_ratio_mean"] == metrics["flip_ratio_mean"]


def test_training_without_metrics_reads_the_checkpoint(bnn_run):
    out, metrics = bnn_run  # --out without --metrics-json
    d = plots.plot_training(out)
    assert d["source"] == str(out / "checkpoint.npz")
    assert d["test_accuracy"] == pytest.approx(metrics["test_accuracy_per_epoch"])


def test_training_refuses_what_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a refbnn metrics file: not JSON"):
        plots.plot_training(tmp_path / "notes.txt")
    (tmp_path / "other.json").write_text(json.dumps({"train_loss": [1.0]}))
    with pytest.raises(ValueError, match="missing train_accuracy, test_loss, test_accuracy_per_epoch"):
        plots.plot_training(tmp_path / "other.json")
    (tmp_path / "bad.json").write_text(json.dumps({"train_loss": [1.0], "train_accuracy": ["x"], "test_loss": [1.0],
                                                   "test_accuracy_per_epoch": [0.5]}))
    with pytest.raises(ValueError, match="'train_accuracy' must be a list of numbers"):
        plots.plot_training(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="no metrics JSON and no checkpoint.npz"):
        plots.plot_training(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        plots.plot_training(tmp_path / "missing.json")


def _run(method, seed, accs, **extra):
    return {"method": method, "seed": seed, "test_accuracy_per_epoch": accs, **extra}


def test_learning_curves_group_by_method(tmp_path):
    runs = [_run("recu", 0, [0.5, 0.7, 0.9]), _run("recu", 1, [0.6, 0.8, 0.8]), _run("recu", 2, [0.4, 0.9, 0.85]),
            _run("bnn", 0, [0.3, 0.5]), _run("bnn", 1, [0.5, 0.6, 0.7]),
            _run("recu", 0, [0.1, 0.2, 0.3], method_params={"tau_end": 0.95})]
    d = plots.plot_learning_curves(runs, tmp_path / "lc.png", "test")
    check_png(d["out"])
    g = d["groups"]
    assert list(g) == ["recu", "bnn", "recu (tau_end=0.95)"]
    assert g["recu"]["runs"] == 3 and np.allclose(g["recu"]["mean"], [0.5, 0.8, 0.85])
    assert np.allclose(g["recu"]["min"], [0.4, 0.7, 0.8]) and np.allclose(g["recu"]["max"], [0.6, 0.9, 0.9])
    # a shorter run counts at the epochs it has
    assert g["bnn"]["epochs"] == [1, 2, 3] and np.allclose(g["bnn"]["mean"], [0.4, 0.55, 0.7])
    assert g["recu (tau_end=0.95)"]["runs"] == 1
    d = plots.plot_learning_curves([_run("x", 0, [0.1, 0.2], label="mine")], tmp_path / "l.png", "t")
    assert list(d["groups"]) == ["mine"]
    with pytest.raises(ValueError, match="at least one run"):
        plots.plot_learning_curves([], tmp_path / "l.png", "t")
    with pytest.raises(ValueError, match="run 0: expected a metrics dict"):
        plots.plot_learning_curves([{"method": "x"}], tmp_path / "l.png", "t")


# ---- the command line ---------------------------------------------------------------------------------------
def test_cli_writes_each_figure(recu_run, tmp_path, capsys, monkeypatch):
    out, _ = recu_run
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "quantizer", "approx_sign"]) == 0
    check_png(tmp_path / "quantizer_approx_sign.png")
    assert main(["plot", "quantizer", "ste_sign", "--param", "clip_value=1.5", "--xlim", "2", "--out", "s.png"]) == 0
    check_png(tmp_path / "s.png")
    assert main(["plot", "schedule", "recu", "--epochs", "20"]) == 0
    check_png(tmp_path / "schedule_recu.png")
    assert main(["plot", "weights", str(out / "checkpoint.npz"), "--out", "w.png"]) == 0
    check_png(tmp_path / "w.png")
    assert main(["plot", "training", str(out), "--out", "t"]) == 0  # no extension: .png
    check_png(tmp_path / "t.png")
    assert capsys.readouterr().out.splitlines()[-1] == "wrote t.png"


@pytest.mark.parametrize("argv, message", [
    (["quantizer", "nope"], "unknown quantizer 'nope'; known quantizers: approx_sign"),
    (["quantizer", "ste_sign", "--param", "nope=1"], "unknown parameter(s) ['nope']"),
    (["schedule", "nope", "--epochs", "3"], "unknown schedule 'nope'; known: methods:"),
    (["weights", "{ckpt}", "--layer", "nope"], "no binary layer 'nope'; its binary layers:"),
    (["weights", "{metrics}"], "is not a valid refbnn checkpoint"),
    (["training", "{notes}"], "not a refbnn metrics file"),
    (["training", "{missing}"], "no such file or directory"),
    (["quantizer", "ste_sign", "--out", "{nodir}/x.png"], "does not exist"),
])
def test_cli_bad_input_is_exit_status_2(recu_run, tmp_path, capsys, argv, message):
    out, _ = recu_run
    (tmp_path / "notes.txt").write_text("hello")
    paths = {"ckpt": out / "checkpoint.npz", "metrics": out / "metrics.json", "notes": tmp_path / "notes.txt",
             "missing": tmp_path / "missing.json", "nodir": tmp_path / "no" / "dir"}
    argv = [a.format(**paths) for a in argv]
    assert main(["plot", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refbnn plot: error: ") and message in err and err.count("\n") == 1


def test_without_matplotlib_the_error_says_what_to_install(monkeypatch, tmp_path, capsys):
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)  # import fails as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'refbnn\[plot\]'"):
        plots.plot_quantizer("ste_sign", tmp_path / "x.png")
    assert main(["plot", "quantizer", "ste_sign", "--out", str(tmp_path / "x.png")]) == 2
    assert "pip install 'refbnn[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_importing_refbnn_and_its_cli_does_not_import_matplotlib():
    import refbnn

    # the refbnn under test (installed, or this checkout), not whatever the working directory holds
    here = os.path.dirname(os.path.dirname(os.path.abspath(refbnn.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    code = ("import sys, refbnn, refbnn.cli, refbnn.plots, refbnn.train; "
            "assert not any(m.startswith('matplotlib') for m in sys.modules), 'matplotlib was imported'")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=tempfile.gettempdir())
    assert res.returncode == 0, res.stderr
