"""The training engine on device arrays, checked against the NumPy reference.

Without a GPU the device is tests/simdevice.py, NumPy underneath with CuPy's rules on top: its
arrays refuse to become NumPy arrays implicitly or to mix with them, and it counts every
device -> host synchronisation. On it the engine must give the host's numbers bit for bit (the
same NumPy operations in the same order), keep every array on the device, and read values back
once per training step (refbnn.checks.deferred_checks). The equality tests also run on CuPy where
a GPU is usable (marked ``gpu``), within float tolerance there: CuPy's reductions add in another
order.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import threading

import numpy as np
import pytest
import simdevice as sd
from helpers import stopped_after

import refbnn.train as T
from refbnn import checks, ops
from refbnn.checkpoint import load_checkpoint
from refbnn.checks import array_module, check_finite, check_finite_statistic, deferred_checks, to_host
from refbnn.cli import info, main
from refbnn.data import load_dataset
from refbnn.device import device_module, gpu_unavailable, move
from refbnn import layers as L
from refbnn.flips import FlipTracker
from refbnn.methods import METHODS, LayerFactory, get_method
from refbnn.models import binary_layers, build_model
from refbnn.optim import SGD, Adam, CaseOptimizer, WeightClip, build_bop_optimizer, no_decay_bn_and_bias, param_groups
from refbnn.quantizers import QUANTIZERS, get_quantizer
from refbnn.train import TrainConfig, evaluate, random_crop_flip, train, train_step

INPUT = {"mlp": (64,), "resnet20": (3, 8, 8), "vgg_small": (3, 8, 8)}
BATCH = 4


@pytest.fixture(autouse=True)
def _clean():
    sd.reset()
    yield
    sd.reset()


def _cupy():
    why = gpu_unavailable()
    if why is not None:
        pytest.skip(f"no usable GPU: {why}")
    import cupy  # noqa: PLC0415 - only where a GPU is usable

    return cupy


@pytest.fixture(params=["simdevice", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The device's array module: the simulated device always, CuPy where a GPU is usable."""
    return sd if request.param == "simdevice" else _cupy()


# -- helpers ----------------------------------------------------------------------------------------

def _batches(model_name, n=2, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((BATCH, *INPUT[model_name])).astype(dtype), rng.integers(0, 10, BATCH))
            for _ in range(n)]


def _setup(model_name, method_name, optimizer="adam", convention="paper", dtype=np.float32):
    """A small model, its optimizer (weight decay on, to run that path too) and the method's clip, with
    the epoch-0 schedule values and a fixed generator for the quantizers that draw random numbers."""
    method = get_method(method_name)
    model = build_model(model_name, LayerFactory(method, rng=0, convention=convention, backend="numpy", dtype=dtype),
                        INPUT[model_name], 10, 0.25)
    method.on_epoch(model, 0, 10, convention, rng=np.random.default_rng(7))
    groups = param_groups(model, 5e-4, no_decay_bn_and_bias)
    if optimizer == "adam":
        opt = Adam(groups, lr=1e-2)
    elif optimizer == "sgd":
        opt = SGD(groups, lr=0.1, momentum=0.9)
    else:
        opt = build_bop_optimizer(groups, lr=1e-2, threshold=1e-7, gamma=1e-2)
    clip = WeightClip(method.latent_clip) if method.latent_clip else None
    return model, opt, clip


def _steps(model, opt, clip, batches, xp):
    """train_step on each batch with the model, optimizer and data on ``xp``; the losses as returned
    (0-d device arrays on a device: not read here, so that the syncs can be counted) and the last logits."""
    if xp is not np:
        model.to(xp)
        opt.to(xp)
    losses, logits = [], None
    for x, y in batches:
        loss, logits = train_step(model, opt, clip, move(x, xp), move(y, xp))
        losses.append(loss)
    return losses, logits


def _snapshot(model, opt):
    """Every array of a run on the host: parameters, buffers, quantizer state, gradients, optimizer state."""
    out = {f"state/{k}": v for k, v in model.host_state_dict().items()}
    for prefix, m in model.modules():
        for k, g in m.grads.items():
            out[f"grad/{prefix}{k}"] = None if g is None else to_host(g)
    out.update({f"optim/{k}": to_host(v) for k, v in opt.state_dict().items()})
    return out


def _assert_bit_identical(want: dict, got: dict):
    assert want.keys() == got.keys()
    for k in want:
        a, b = want[k], got[k]
        if a is None or b is None:
            assert a is None and b is None, k
            continue
        assert type(b) is np.ndarray or np.isscalar(b), (k, type(b))
        assert (a.dtype, a.shape) == (b.dtype, b.shape), k
        assert a.tobytes() == b.tobytes(), f"{k} differs: max |diff| {np.max(np.abs(a.astype(float) - b)):.3g}"


def _on_device(model, opt, xp):
    """Names of the arrays of the model and optimizer that are not arrays of ``xp`` (nothing fell back)."""
    off = [f"{p}{k}" for p, m in model.modules() for store in (m.params, m.buffers, m.grads)
           for k, v in store.items() if v is not None and array_module(v) is not xp]
    optimizers = opt.optimizers if isinstance(opt, CaseOptimizer) else [opt]
    return off + [k for o in optimizers for k, v in o.state.items() if array_module(v) is not xp]


def _assert_close(want, got, rtol, atol=0.0):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64),
                               rtol=rtol, atol=atol)


# -- 1. two training steps: the device gives the host's numbers --------------------------------------

CASES = ([(model, method, "adam", "paper") for model in INPUT for method in METHODS]
         + [("resnet20", method, "adam", "official") for method in METHODS if method != "float"]
         + [(model, method, opt, "paper") for model in ("mlp", "resnet20")
            for method in ("bnn", "recu", "xnor", "bc_stochastic") for opt in ("sgd", "bop")])


@pytest.mark.parametrize("model_name,method_name,optimizer,convention", CASES,
                         ids=["-".join(c) for c in CASES])
def test_two_steps_match_the_host(xp, model_name, method_name, optimizer, convention):
    """Two train_steps on the device against the same steps on NumPy (backend "numpy"): on the simulated
    device every parameter, buffer, quantizer value, gradient, optimizer slot, loss and logit is the
    same bit for bit, everything stays on the device, and each step reads the device once; on CuPy
    the losses agree to 1e-4. Then the eval-mode forward pass of the trained models."""
    batches = _batches(model_name)
    host_model, host_opt, host_clip = _setup(model_name, method_name, optimizer, convention)
    host_losses, host_logits = _steps(host_model, host_opt, host_clip, batches, np)
    model, opt, clip = _setup(model_name, method_name, optimizer, convention)
    sd.reset()
    losses, logits = _steps(model, opt, clip, batches, xp)
    if xp is sd:
        assert len(sd.syncs) == len(batches), sd.syncs  # one per step: the deferred checks' answers
    assert _on_device(model, opt, xp) == []
    assert all(array_module(v) is xp for v in (*losses, logits))
    assert all(v.shape == () for v in losses)  # 0-d: the host's Python float, not read back
    assert [float(v) for v in losses] == pytest.approx([float(v) for v in host_losses], rel=1e-4)
    assert all(np.isfinite(float(v)) for v in host_losses)
    x_eval = np.random.default_rng(5).standard_normal((6, *INPUT[model_name])).astype(np.float32)
    host_eval = host_model.eval()(x_eval)[0]
    dev_eval = to_host(model.eval()(move(x_eval, xp))[0])
    if xp is sd:
        _assert_bit_identical(_snapshot(host_model, host_opt), _snapshot(model, opt))
        assert [float(v) for v in losses] == [float(v) for v in host_losses]  # exactly
        _assert_bit_identical({"logits": host_logits, "eval": host_eval}, {"logits": to_host(logits), "eval": dev_eval})
    else:
        _assert_close(host_logits, to_host(logits), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("model_name", ["mlp", "resnet20"])
@pytest.mark.parametrize("method_name", ["recu", "xnor", "dorefa", "bireal"])
def test_two_float64_steps_match_the_host(xp, model_name, method_name):
    """The same in float64 (the gradient checks' dtype): the statistics' float64 paths on the device."""
    batches = _batches(model_name, dtype=np.float64)
    host_model, host_opt, host_clip = _setup(model_name, method_name, dtype=np.float64)
    host_losses, _ = _steps(host_model, host_opt, host_clip, batches, np)
    model, opt, clip = _setup(model_name, method_name, dtype=np.float64)
    losses, _ = _steps(model, opt, clip, batches, xp)
    assert _on_device(model, opt, xp) == []
    assert all(v.dtype == np.float64 for v in model.host_state_dict().values() if v.dtype.kind == "f" and v.ndim)
    if xp is sd:
        assert [float(v) for v in losses] == host_losses
        _assert_bit_identical(_snapshot(host_model, host_opt), _snapshot(model, opt))
    else:
        assert [float(v) for v in losses] == pytest.approx(host_losses, rel=1e-8)


def test_a_fresh_model_forward_matches_the_host(xp):
    """Eval and train-mode forward of an untrained model (every method, resnet20), before any step."""
    x = np.random.default_rng(3).standard_normal((BATCH, *INPUT["resnet20"])).astype(np.float32)
    for name in METHODS:
        host, _, _ = _setup("resnet20", name)
        dev, _, _ = _setup("resnet20", name)
        dev.to(xp)
        for mode in ("eval", "train"):
            getattr(host, mode)()
            getattr(dev, mode)()
            want, got = host(x)[0], to_host(dev(move(x, xp))[0])
            if xp is sd:
                assert want.tobytes() == got.tobytes(), (name, mode)
            else:
                _assert_close(want, got, rtol=1e-3, atol=1e-4)


# every quantizer of the registry (the methods use only some), with the options that take other code paths
QUANTIZER_CASES = [(name, {}) for name in QUANTIZERS] + [
    ("ste_tern", {"ternary_weight_networks": True}), ("dorefa_quantizer", {"mode": "weights"}),
    ("dorefa_quantizer", {"k_bit": 1, "mode": "activations"}), ("recu_weight", {"tau": 0.85, "alpha": "analytic"}),
    ("recu_weight", {"tau": 0.99, "standardize_grad": "detached"}), ("xnor_weight", {"gradient": "exact"}),
    ("xnor_weight", {"gradient": "detached"}), ("xnor_act", {"scale": "none"}),
    ("magnitude_aware_sign", {"scale_gradient": False}), ("libra_pb", {"bit_shift": False}),
    ("pc_pair", {"forward_map": "swish", "backward_map": "swish", "mu": 0.5}), ("prox_sign", {"mu": 0.5}),
    ("stochastic_sign", {"eval_forward": "real"}), ("recu_act", {"normalize": False}),
]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # a zero std, before the check
@pytest.mark.parametrize("name,params", QUANTIZER_CASES,
                         ids=[n + "".join(f"-{k}={v}" for k, v in p.items()) for n, p in QUANTIZER_CASES])
@pytest.mark.parametrize("data", ["normal", "zeros"])
def test_every_quantizer_matches_the_host(monkeypatch, xp, name, params, data):
    """Forward (training and eval) and backward of each quantizer on the device against the host; on
    the simulated device bit for bit, with the value checks read once, at the end of the block. The
    all-zero input takes the special cases (DoReFa's max |tanh| = 0, sign(0), zero std)."""
    shape = (4, 3, 3, 3)
    x = np.zeros(shape, np.float32) if data == "zeros" else \
        np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal(shape).astype(np.float32)

    def run(module):
        q = get_quantizer(name, **params)
        if q.needs_rng:
            q.set_rng(np.random.default_rng(3))
        with deferred_checks():
            y, cache = q.forward(move(x, module), True)
            dx = q.backward(move(dy, module), cache)
            y_eval, _ = q.forward(move(x, module), False)
        return y, dx, y_eval

    try:
        want = run(np)
    except ValueError as exc:  # refused on the host (a constant row to standardize): the same error there
        with pytest.raises(ValueError) as dev:
            run(xp)
        assert str(dev.value) == str(exc)
        return
    if xp is sd:
        with _only_the_flush_may_sync(monkeypatch) as answered:
            got = run(xp)
        assert len(answered) == 1
    else:
        got = run(xp)
    for what, a, b in zip(("forward", "backward", "eval forward"), want, got):
        assert array_module(b) is xp, what
        b = to_host(b)
        if xp is sd:
            assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes()), what
        else:
            _assert_close(a, b, rtol=1e-5, atol=1e-6)


# every layer type, with the options that take other code paths: (name, make(rng), input shape)
LAYER_CASES = [
    ("linear", lambda r: L.Linear(8, 5, rng=r), (4, 8)),
    ("conv-stride-pad", lambda r: L.Conv2d(3, 4, 3, stride=2, padding=1, rng=r, backend="numpy"), (2, 3, 7, 7)),
    ("conv-dilated-grouped", lambda r: L.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2, rng=r, backend="numpy"),
     (2, 4, 6, 6)),
    ("batchnorm1d", lambda r: L.BatchNorm1d(5, backend="numpy"), (4, 5)),
    ("batchnorm2d", lambda r: L.BatchNorm2d(3, backend="numpy", gamma_init=0.5), (2, 3, 4, 4)),
    ("hardtanh", lambda r: L.Hardtanh(-0.5, 1.5, backend="numpy"), (2, 3, 4, 4)),
    ("relu", lambda r: L.ReLU(), (2, 3, 4, 4)),
    ("prelu", lambda r: L.PReLU(3), (2, 3, 4, 4)),
    ("rprelu", lambda r: L.RPReLU(3, init=0.1), (2, 3, 4, 4)),
    ("learnable-bias", lambda r: L.LearnableBias(3), (2, 3, 4, 4)),
    ("maxpool", lambda r: L.MaxPool2d(3, 2, 1), (2, 3, 7, 7)),
    ("avgpool", lambda r: L.AvgPool2d(2), (2, 3, 6, 6)),
    ("global-avgpool", lambda r: L.GlobalAvgPool(), (2, 3, 4, 4)),
    ("flatten", lambda r: L.Flatten(), (2, 3, 4, 4)),
    ("shortcut-a", lambda r: L.ShortcutA(3, 6, 2), (2, 3, 6, 6)),
    ("shortcut-a-avgpool", lambda r: L.ShortcutA(3, 6, 2, mode="avgpool"), (2, 3, 6, 6)),
    ("binary-linear-learned-bias", lambda r: L.BinaryLinear(8, 5, scale="learned", scale_init="uniform", bias=True,
                                                            backend="numpy", rng=r, bias_order="before_scale"), (4, 8)),
    ("binary-conv-mean-abs-pad-minus1", lambda r: L.BinaryConv2d(3, 4, 3, padding=1, scale="mean_abs",
                                                                 pad_value=-1.0, backend="numpy", rng=r), (2, 3, 5, 5)),
    ("binary-conv-asymmetric-pad", lambda r: L.BinaryConv2d(4, 4, 2, stride=2, padding=(0, 1, 0, 1), groups=2,
                                                            weight_quantizer="xnor_weight", input_quantizer="xnor_act",
                                                            pad_value=1.0, backend="numpy", rng=r), (2, 4, 5, 5)),
]


@pytest.mark.parametrize("name,make,shape", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_every_layer_matches_the_host(monkeypatch, xp, name, make, shape):
    """Forward (training and eval mode) and backward of each layer type on the device against the host:
    the outputs, input gradients, parameter gradients and running statistics; one read per block."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    def run(module):
        layer = make(np.random.default_rng(2)).to(module)
        with deferred_checks():
            out, cache = layer.forward(move(x, module))
            dout = move(np.random.default_rng(1).standard_normal(out.shape).astype(np.float32), module)
            dx = layer.backward(dout, cache)
        layer.eval()
        with deferred_checks():
            out_eval, _ = layer.forward(move(x, module))
        return {"out": out, "dx": dx, "eval": out_eval, **{f"grad/{k}": g for k, g in layer.grads.items()},
                **{f"state/{k}": v for k, v in layer.state_dict().items()}}

    want = run(np)
    if xp is sd:
        with _only_the_flush_may_sync(monkeypatch) as answered:
            got = run(xp)
        assert len(answered) <= 2  # a block without a device check has nothing to answer
    else:
        got = run(xp)
    assert all(array_module(v) is xp for k, v in got.items() if not k.startswith("state/") or v.ndim)
    got = {k: to_host(v) for k, v in got.items()}
    if xp is sd:
        _assert_bit_identical(want, got)
    else:
        assert want.keys() == got.keys()
        for k in want:
            _assert_close(want[k], got[k], rtol=1e-4, atol=1e-5)


# -- 2. synchronisations ------------------------------------------------------------------------------

@contextlib.contextmanager
def _only_the_flush_may_sync(monkeypatch):
    """Forbid every device -> host read except the answer of the deferred checks (checks._answer);
    yields the number of checks answered per flush."""
    answered = []
    real = checks._answer

    def flush(queue):
        answered.append(len(queue))
        with sd.allow_syncs():
            real(queue)

    monkeypatch.setattr(checks, "_answer", flush)
    with sd.forbid_syncs():
        yield answered


@pytest.mark.parametrize("method_name", ["recu", "xnor", "dorefa", "irnet", "bnn"])
def test_a_step_reads_the_device_once_at_the_end_of_its_checks(monkeypatch, method_name):
    model, opt, clip = _setup("resnet20", method_name)
    (x, y), = _batches("resnet20", 1)
    model.to(sd)
    opt.to(sd)
    x, y = sd.asarray(x), sd.asarray(y)
    sd.reset()
    loss, _ = train_step(model, opt, clip, x, y)
    assert len(sd.syncs) == 1 and sd.syncs[0].startswith("get() at ") and "checks.py" in sd.syncs[0], sd.syncs
    assert sd.uploads == []
    # everything but the flush runs with syncs forbidden; the flush answers many checks at once
    with _only_the_flush_may_sync(monkeypatch) as answered:
        train_step(model, opt, clip, x, y)
    assert len(answered) == 1 and answered[0] > len(binary_layers(model)), answered
    # and without the exemption the flush is the one read there is
    monkeypatch.undo()
    with sd.forbid_syncs(), pytest.raises(sd.HostSync, match=r"get\(\) at .*checks\.py"):
        train_step(model, opt, clip, x, y)


def test_flip_tracker_reads_the_device_once_per_step():
    model, opt, clip = _setup("resnet20", "recu")
    tracker = FlipTracker(model)
    model.to(sd)
    opt.to(sd)
    host_model, host_opt, host_clip = _setup("resnet20", "recu")
    host_tracker = FlipTracker(host_model)
    tracker.start_epoch()
    host_tracker.start_epoch()
    for x, y in _batches("resnet20", 3):
        train_step(host_model, host_opt, host_clip, x, y)
        host_tracker.after_step()
        train_step(model, opt, clip, sd.asarray(x), sd.asarray(y))
        sd.reset()
        tracker.after_step()
        assert len(sd.syncs) == 1 and "checks.py" in sd.syncs[0], sd.syncs
        assert sd.uploads == []
    assert tracker.end_epoch() == host_tracker.end_epoch()
    assert host_tracker.mean > 0  # some weights flipped: the counts compared are not all zero


def test_flip_tracker_without_binary_layers_reads_nothing():
    model, _, _ = _setup("mlp", "float")
    tracker = FlipTracker(model)
    model.to(sd)
    tracker.start_epoch()
    sd.reset()
    tracker.after_step()
    assert sd.syncs == []


@pytest.fixture
def on_simdevice(monkeypatch):
    """``train(device="gpu")`` on the simulated device; records the syncs and uploads of each
    train_step and FlipTracker.after_step call."""
    real_module = T.device_module
    monkeypatch.setattr(T, "device_module", lambda d: sd if d == "gpu" else real_module(d))
    per_call = {"train_step": [], "after_step": []}
    real_step, real_after = T.train_step, FlipTracker.after_step

    def counted(name, fn):
        def run(*a, **k):
            s, u = len(sd.syncs), len(sd.uploads)
            out = fn(*a, **k)
            per_call[name].append((len(sd.syncs) - s, len(sd.uploads) - u))
            return out
        return run

    monkeypatch.setattr(T, "train_step", counted("train_step", real_step))
    monkeypatch.setattr(FlipTracker, "after_step", counted("after_step", real_after))
    return per_call


TRAIN = dict(epochs=2, width=0.1, batch_size=64, progress=False, backend="numpy", seed=4)


@pytest.mark.parametrize("method_name,optimizer", [("recu", "adam"), ("bnn", "bop")])
def test_train_on_the_device_equals_the_host_run(on_simdevice, method_name, optimizer):
    """``train`` with device "gpu" (the simulated device) against the CPU run: the same metrics, every
    per-epoch record but the wall times, exactly; 1 sync per step and per flip count, no upload inside
    a step, and a bounded number per epoch."""
    host = train(TrainConfig(method=method_name, optimizer=optimizer, **TRAIN), log=lambda *a: None)
    per_call = on_simdevice
    per_call["train_step"].clear()
    per_call["after_step"].clear()
    sd.reset()
    logged = []
    dev = train(TrainConfig(method=method_name, optimizer=optimizer, device="gpu", **TRAIN), log=logged.append)
    assert logged == ["training on the GPU: model and data are simdevice arrays"]
    for key in host:
        if key not in ("seconds", "epoch_seconds"):
            assert dev[key] == host[key], key
    assert all(isinstance(v, float) for v in dev["train_loss"] + dev["test_loss"])
    assert host["test_accuracy"] > 0.5 and host["flip_ratio_mean"][-1] > 0
    n = len(load_dataset("digits").x_train)
    steps = TRAIN["epochs"] * -(-n // TRAIN["batch_size"])
    assert per_call["train_step"] == [(1, 0)] * steps
    assert per_call["after_step"] == [(1, 0)] * steps
    layers = len(host["binary_layers"])
    # per epoch: the flip tracker's start (a sign and a tail per layer) and end (two counts per layer),
    # the epoch's loss and accuracy, evaluation (one flush, its loss and accuracy)
    assert len(sd.syncs) <= 2 * steps + TRAIN["epochs"] * (6 * layers + 8), sd.syncs
    # uploads: the model and the data once, per epoch the shuffled order and the flip tracker's tails;
    # nothing per step (one per step anywhere in the epoch would make this many)
    assert len(sd.uploads) < steps, sd.uploads


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("method_name", ["bnn", "recu"])
def test_a_diverging_device_run_fails_as_the_host_run_does(on_simdevice, method_name):
    """lr 1e200: the step after the first sees infinite weights; the device run's error is the host's."""
    errors = []
    for device in ("cpu", "gpu"):
        with pytest.raises(FloatingPointError) as exc:
            train(TrainConfig(method=method_name, device=device, epochs=1, width=0.1, lr=1e200, progress=False,
                              backend="numpy"), log=lambda *a: None)
        errors.append(str(exc.value))
    assert errors[0] == errors[1]
    assert errors[0].startswith("training diverged in epoch 1: input.fc.weight is no longer finite (")


# -- 3. deferred checks ---------------------------------------------------------------------------------

def _failing_step(xp, spoil, model_name="resnet20", method_name="bnn"):
    """train_step with ``spoil(model, x, y)`` applied first; returns (error, state before, state after,
    optimizer steps)."""
    model, opt, clip = _setup(model_name, method_name)
    (x, y), = _batches(model_name, 1)
    spoil(model, x, y)
    if xp is not np:
        model.to(xp)
        opt.to(xp)
    before = _snapshot(model, opt)
    with pytest.raises(ValueError) as info_:
        train_step(model, opt, clip, move(x, xp), move(y, xp))
    return str(info_.value), before, _snapshot(model, opt), opt.steps


def _nan_input(model, x, y):
    x[1, 0, 2, 3] = np.nan


def _nan_weight(model, x, y):  # the weight of a binary layer in the middle of the network
    _, layer = binary_layers(model)[4]
    layer.params["weight"][2, 1, 0, 1] = np.nan


def _module(model, name):
    return dict(model.modules())[name + "."]


def _overflowing_stem(model, x, y):  # finite weights whose products overflow: Inf in the middle of the net
    _module(model, "stem.conv").params["weight"][...] = 3e38


def _label_out_of_range(model, x, y):
    y[2] = 12


def _constant_weight_row(model, x, y):  # IR-Net's standardization of a constant output channel
    _, layer = binary_layers(model)[3]
    layer.params["weight"][1] = 0.25


SPOILERS = {"nan-input": (_nan_input, "bnn"), "nan-weight": (_nan_weight, "bnn"),
            "nan-weight-recu": (_nan_weight, "recu"), "inf-mid-network": (_overflowing_stem, "bnn"),
            "labels": (_label_out_of_range, "xnor"), "zero-std": (_constant_weight_row, "irnet")}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN and overflow on their way through
@pytest.mark.parametrize("case", SPOILERS)
def test_a_bad_value_raises_the_hosts_error_and_changes_nothing(xp, case):
    """On the device the error is raised when the step's checks are answered, after the forward and
    backward passes ran on: it must be the error the host raises at once (the same message), and as
    on the host the step must leave the model as it was (no weight, buffer or optimizer slot changed)."""
    spoil, method_name = SPOILERS[case]
    host_error, host_before, host_after, host_steps = _failing_step(np, spoil, method_name=method_name)
    error, before, after, steps = _failing_step(xp, spoil, method_name=method_name)
    assert error == host_error
    assert steps == host_steps == 0
    for k in before:
        if k.startswith("state/"):
            assert before[k].tobytes() == after[k].tobytes(), k
            assert host_before[k].tobytes() == host_after[k].tobytes(), k


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_the_overflow_case_overflows():
    """The inf-mid-network case above is what it says: finite weights, a non-finite activation."""
    error, *_ = _failing_step(np, _overflowing_stem)
    assert "Inf" in error or "overflow" in error, error


def _nan_device_array():
    a = np.ones((2, 3), np.float32)
    a[1, 2] = np.nan
    return sd.asarray(a)


def test_checks_on_device_arrays_wait_for_the_end_of_the_block():
    bad = _nan_device_array()
    with pytest.raises(ValueError, match=r"a contains NaN at index \(1, 2\)"):
        with deferred_checks():
            check_finite(bad, "a")
            reached = True  # not raised at once
    assert reached
    with pytest.raises(ValueError, match=r"b contains NaN at index \(1, 2\)"):
        check_finite(bad, "b")  # outside a block: at once
    with pytest.raises(ValueError, match=r"c contains NaN"):  # NumPy arrays: at once, also inside a block
        with deferred_checks():
            check_finite(np.array([1.0, np.nan]), "c")
            raise AssertionError("not reached")


def test_the_first_failed_check_in_program_order_is_raised():
    ok = sd.asarray(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="second"):
        with deferred_checks():
            check_finite(ok, "first")
            check_finite(_nan_device_array(), "second")
            check_finite_statistic(sd.asarray(np.float32(np.inf)), "third", np.float32)
    with pytest.raises(ValueError, match="third overflows float32"):
        with deferred_checks():
            check_finite(ok, "first")
            check_finite_statistic(sd.asarray(np.float32(np.inf)), "third", np.float32)


def test_nested_blocks_join_the_outer_queue():
    bad = _nan_device_array()
    sd.reset()
    with pytest.raises(ValueError, match="inner"):
        with deferred_checks():
            with deferred_checks():
                check_finite(bad, "inner")
            assert sd.syncs == []  # the inner block's end answers nothing
            check_finite(sd.asarray(np.zeros(2, np.float32)), "outer")
    assert len([s for s in sd.syncs if s.startswith("get()")]) == 1  # one answer for both blocks


def test_an_exception_after_a_failed_check_reports_the_check():
    """As eager checking would have: the failed check happened first, so its error is the one raised
    (the later exception is its context)."""
    with pytest.raises(ValueError, match="a contains NaN") as exc:
        with deferred_checks():
            check_finite(_nan_device_array(), "a")
            raise KeyError("later")
    assert isinstance(exc.value.__context__, KeyError)
    # with the checks passing, the block's own exception goes through
    with pytest.raises(KeyError, match="later"):
        with deferred_checks():
            check_finite(sd.asarray(np.ones(2, np.float32)), "a")
            raise KeyError("later")


def test_a_block_leaves_no_queue_behind():
    with pytest.raises(ValueError):
        with deferred_checks():
            check_finite(_nan_device_array(), "a")
    assert checks._queue() is None
    with deferred_checks():  # a new block starts empty: the old failure is not raised again
        check_finite(sd.asarray(np.ones(2, np.float32)), "a")


def test_the_queue_belongs_to_its_thread():
    errors = []

    def other():
        try:
            check_finite(_nan_device_array(), "other thread")
        except ValueError as exc:
            errors.append(str(exc))

    with deferred_checks():
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert errors and "other thread contains NaN" in errors[0]  # at once: no block open in that thread


def test_labels_on_the_device_are_checked_in_the_flush_with_the_hosts_message(monkeypatch):
    logits = sd.asarray(np.zeros((3, 4), np.float32))
    sd.reset()
    with sd.forbid_syncs(), pytest.raises(sd.HostSync):
        ops.softmax_cross_entropy_forward(logits, sd.asarray(np.array([0, 1, 3])))  # checked at once: a read
    with _only_the_flush_may_sync(monkeypatch):
        with deferred_checks():
            loss, _ = ops.softmax_cross_entropy_forward(logits, sd.asarray(np.array([0, 1, 3])))
    assert array_module(loss) is sd and loss.shape == ()  # the host's float, not read back
    host = pytest.raises(ValueError, ops.softmax_cross_entropy_forward, np.zeros((3, 4), np.float32),
                         np.array([0, -1, 3]))
    with pytest.raises(ValueError) as dev:
        with deferred_checks():
            ops.softmax_cross_entropy_forward(logits, sd.asarray(np.array([0, -1, 3])))
    assert str(dev.value) == str(host.value) == "labels: expected values in [0, 4), got [-1, 3]"


# -- 4. moving models, optimizers and checkpoints -------------------------------------------------------

def _trained(model_name="resnet20", method_name="recu", optimizer="adam"):
    model, opt, clip = _setup(model_name, method_name, optimizer)
    _steps(model, opt, clip, _batches(model_name, 1), np)  # gradients, moments, running statistics set
    return model, opt


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "bop"])
def test_to_device_and_back_keeps_every_bit(xp, optimizer):
    model, opt = _trained(optimizer=optimizer)
    before = _snapshot(model, opt)
    assert sum(v is not None for k, v in before.items() if k.startswith("grad/")) > 10
    assert model.device() is np
    assert model.to(xp) is model and opt.to(xp) is opt
    assert model.device() is xp and _on_device(model, opt, xp) == []
    _assert_bit_identical(before, _snapshot(model, opt))
    model.to("cpu")
    opt.to("numpy")
    assert model.device() is np and _on_device(model, opt, np) == []
    _assert_bit_identical(before, _snapshot(model, opt))


def test_moving_copies_across_the_boundary_only():
    model, opt = _trained()
    weight = _module(model, "stem.conv").params["weight"]
    model.to("cpu")  # already there: the same arrays
    assert _module(model, "stem.conv").params["weight"] is weight
    model.to(sd)
    weight[...] = 0.0  # the device holds a copy
    assert to_host(_module(model, "stem.conv").params["weight"]).any()


def test_device_of_a_split_model_is_an_error():
    model, _ = _trained()
    model.to(sd)
    stem = _module(model, "stem.conv")
    stem.params["weight"] = to_host(stem.params["weight"])
    with pytest.raises(ValueError, match=r"parameters are split between \['numpy', 'simdevice'\]; move the model"):
        model.device()


def test_an_input_on_the_other_side_is_a_type_error():
    model, _ = _trained()
    x = np.zeros((2, *INPUT["resnet20"]), np.float32)
    model.to(sd)
    with pytest.raises(TypeError, match="input: a NumPy array, but the model's parameters are simdevice arrays"):
        model(x)
    model.to("cpu")
    with pytest.raises(TypeError, match="input: a simdevice array, but the model's parameters are NumPy arrays"):
        model(sd.asarray(x))


def test_device_names():
    assert device_module("cpu") is np and device_module("numpy") is np and device_module(sd) is sd
    with pytest.raises(ValueError, match=r"device: expected one of \['cpu', 'numpy', 'gpu', 'cuda', 'cupy'\]"):
        device_module("tpu")
    with pytest.raises(TypeError, match="expected an array module with asarray"):
        device_module(os)


def test_optimizer_state_loads_onto_the_parameters_device():
    model, opt = _trained()
    state = {k: v.copy() for k, v in opt.state_dict().items()}
    model.to(sd)
    fresh = Adam(param_groups(model, 5e-4, no_decay_bn_and_bias), lr=1e-2)
    fresh.load_state_dict(state)  # host arrays in, device arrays where the parameters are
    assert fresh.state and all(array_module(v) is sd for v in fresh.state.values())
    assert all(to_host(fresh.state[k]).tobytes() == state[k].tobytes() for k in fresh.state)
    model.load_state_dict(_trained()[0].host_state_dict())  # host arrays into a device model
    assert model.device() is sd


def test_a_device_checkpoint_resumes_on_the_cpu_bit_exactly(on_simdevice, tmp_path):
    """A device run interrupted after epoch 1 of 2 writes a host checkpoint; resumed on the CPU it ends
    exactly where an uninterrupted CPU run does."""
    common = dict(method="recu", epochs=2, width=0.1, batch_size=128, progress=False, backend="numpy", seed=2)
    full = train(TrainConfig(out=str(tmp_path / "full"), **common), log=lambda *a: None)
    with stopped_after(1):
        train(TrainConfig(out=str(tmp_path / "part"), device="gpu", **common), log=lambda *a: None)
    mstate, ostate, meta = load_checkpoint(str(tmp_path / "part" / "checkpoint.npz"))
    assert meta["epoch"] == 0 and all(type(v) is np.ndarray for v in (*mstate.values(), *ostate.values()))
    resumed = train(TrainConfig(out=str(tmp_path / "part"), resume=True, **common), log=lambda *a: None)
    for key in full:
        if key not in ("seconds", "epoch_seconds"):
            assert resumed[key] == full[key], key
    want, _, _ = load_checkpoint(str(tmp_path / "full" / "checkpoint.npz"))
    got, _, _ = load_checkpoint(str(tmp_path / "part" / "checkpoint.npz"))
    _assert_bit_identical(want, got)


# -- 5. the pieces of an epoch ------------------------------------------------------------------------

def _crop_flip_loop(x, rng, pad=4):
    """The augmentation written out per image (the form it replaced): the spec of random_crop_flip."""
    n, c, h, w = x.shape
    padded = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    flip = rng.random(n) < 0.5
    out = np.empty_like(x)
    for i in range(n):
        img = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = img[:, :, ::-1] if flip[i] else img
    return out


def test_random_crop_flip_on_the_device_equals_the_per_image_loop(xp):
    x = np.random.default_rng(0).standard_normal((9, 3, 6, 5)).astype(np.float32)
    want = _crop_flip_loop(x, np.random.default_rng(11))
    assert want.tobytes() == random_crop_flip(x, np.random.default_rng(11)).tobytes()
    sd.reset()
    got = random_crop_flip(move(x, xp), np.random.default_rng(11))
    assert array_module(got) is xp and sd.syncs == []
    assert to_host(got).tobytes() == want.tobytes()


def test_evaluate_on_the_device_equals_the_host_and_reads_the_device_twice(xp):
    model, opt = _trained()
    x = np.random.default_rng(8).standard_normal((13, *INPUT["resnet20"])).astype(np.float32)
    y = np.random.default_rng(9).integers(0, 10, 13)
    want = evaluate(model, x, y, batch_size=5)
    model.to(xp)
    sd.reset()
    got = evaluate(model, move(x, xp), move(y, xp), batch_size=5)
    assert all(type(v) is float for v in got)
    if xp is sd:
        assert got == want
        assert len(sd.syncs) == 2, sd.syncs  # the checks of all three batches at once, then loss and accuracy together
    else:
        assert got[0] == pytest.approx(want[0], rel=1e-4)
    assert model.training  # back in training mode


# -- 6. configuration, CLI, info ------------------------------------------------------------------------

def test_config_refuses_unknown_devices_and_cython_on_the_gpu():
    with pytest.raises(ValueError, match=r"device: expected one of \['cpu', 'gpu'\], got 'tpu'"):
        TrainConfig(device="tpu").resolved()
    with pytest.raises(ValueError, match="backend 'cython' runs on the CPU; with device 'gpu' use 'auto'"):
        TrainConfig(device="gpu", backend="cython").resolved()
    assert TrainConfig(device="gpu", backend="numpy").resolved().device == "gpu"


def test_cli_train_on_an_unusable_gpu_is_one_line_and_status_2(capsys):
    why = gpu_unavailable()
    if why is None:
        pytest.skip("a GPU is usable here: `refbnn train --device gpu` would train")
    assert main(["train", "--device", "gpu", "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refbnn train: error: device 'gpu': the GPU path is unavailable: ")
    assert " ".join(why.split()) in lines[0]
    with pytest.raises(ImportError, match="the GPU path is unavailable"):
        device_module("gpu")


def test_cli_compare_on_an_unusable_gpu_stops_before_any_run(capsys, tmp_path):
    if gpu_unavailable() is None:
        pytest.skip("a GPU is usable here: `refbnn compare --device gpu` would train")
    out_dir = tmp_path / "report"
    assert main(["compare", "--methods", "bnn", "--seeds", "1", "--epochs", "1", "--device", "gpu",
                 "--out", str(out_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("refbnn compare: error: device 'gpu': the GPU path is unavailable: ")
    assert not out_dir.exists()  # no report with a failed row per run


def test_info_reports_the_gpu_path():
    gpu = info()["gpu"]
    why = gpu_unavailable()
    if why is None:
        assert gpu.startswith("available: CuPy ")
    else:
        assert gpu == f"unavailable: {why}"


# -- 7. CuPy with its own kernels ------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("method_name", ["bnn", "recu", "xnor"])
def test_cupy_with_the_cuda_kernels_matches_the_host(method_name):
    """backend "auto" on CuPy arrays runs the CUDA kernels: two steps within float tolerance of the host."""
    cupy = _cupy()
    batches = _batches("resnet20")
    host_model, host_opt, host_clip = _setup("resnet20", method_name)
    host_losses, _ = _steps(host_model, host_opt, host_clip, batches, np)
    method = get_method(method_name)
    model = build_model("resnet20", LayerFactory(method, rng=0, backend="auto"), INPUT["resnet20"], 10, 0.25)
    method.on_epoch(model, 0, 10, "paper", rng=np.random.default_rng(7))
    opt = Adam(param_groups(model, 5e-4, no_decay_bn_and_bias), lr=1e-2)
    losses, _ = _steps(model, opt, WeightClip(method.latent_clip) if method.latent_clip else None, batches, cupy)
    assert [float(v) for v in losses] == pytest.approx([float(v) for v in host_losses], rel=1e-4)


# -- everything the engine calls on a device exists in CuPy ------------------------------------------

def _cupy_module_or_skip():
    try:
        import cupy  # noqa: PLC0415 - importable without a GPU; only its namespace is read here
    except ImportError as exc:
        pytest.skip(f"CuPy is not installed ({exc}): pip install 'cupy-cuda13x>=14,<15'")
    return cupy


def _cupy_lacks(cupy, kind, name, keywords):
    """Why CuPy cannot serve this call (a missing function, ufunc method or array method, or a keyword
    its Python-level signature does not take), or None."""
    if kind == "method":
        target = getattr(cupy.ndarray, name, None)
    elif kind == "ufunc":
        base, _, method = name.partition(".")
        target = getattr(cupy, base, None)
        if target is not None and method:
            target = getattr(target, method, None)
    else:
        target = getattr(cupy, name, None)
    if target is None:
        return f"cupy{'.ndarray' if kind == 'method' else ''}.{name} does not exist"
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # compiled (Cython) callables: no signature to read
        return None
    params = sig.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    missing = set(keywords) - {p.name for p in params}
    return f"cupy.{name} takes no keyword {sorted(missing)}" if missing else None


def test_cupy_has_every_function_and_method_the_engine_calls_on_a_device(on_simdevice):
    """The simulated device runs NumPy, so a NumPy function CuPy lacks would pass every other test here
    and fail on the first GPU run. Record what a broad workload calls on device arrays (every method's
    training steps on the three models, eval, the flip tracker, augmentation, a train() run) and look
    each name up in CuPy's namespace, which CuPy provides without a GPU."""
    cupy = _cupy_module_or_skip()
    sd.used.clear()
    for model_name in INPUT:
        for method_name in METHODS:
            model, opt, clip = _setup(model_name, method_name)
            _steps(model, opt, clip, _batches(model_name, n=1), sd)
            model.eval()
            model.forward(move(_batches(model_name, n=1)[0][0], sd))
    for optimizer in ("sgd", "bop"):
        model, opt, clip = _setup("resnet20", "bnn", optimizer)
        _steps(model, opt, clip, _batches("resnet20", n=1), sd)
    tracker = FlipTracker(model)
    tracker.start_epoch()
    tracker.after_step()
    tracker.end_epoch()
    evaluate(model, move(_batches("resnet20", n=1)[0][0], sd), move(np.arange(BATCH), sd))
    random_crop_flip(move(np.zeros((2, 3, 8, 8), np.float32), sd), np.random.default_rng(0))
    train(TrainConfig(epochs=1, progress=False, device="gpu", backend="numpy", width=0.1), log=lambda *a: None)
    assert len(sd.used) > 40, sorted(sd.used)  # the recording itself works
    lacking = [why for (kind, name), kw in sorted(sd.used.items()) if (why := _cupy_lacks(cupy, kind, name, kw))]
    assert not lacking, lacking


def test_the_cupy_lookup_finds_what_cupy_lacks():
    cupy = _cupy_module_or_skip()
    assert _cupy_lacks(cupy, "function", "clip", {"out"}) is None
    assert _cupy_lacks(cupy, "function", "no_such_function", set()) is not None
    assert _cupy_lacks(cupy, "method", "no_such_method", set()) is not None
    assert _cupy_lacks(cupy, "ufunc", "add.no_such_method", set()) is not None


# -- arrays from two places in one call ------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda h, d: ops.conv2d_forward(h(np.zeros((1, 2, 4, 4), np.float32)), d(np.zeros((3, 2, 3, 3), np.float32)), None),
    lambda h, d: ops.linear_forward(d(np.zeros((2, 4), np.float32)), h(np.zeros((3, 4), np.float32)), None),
    lambda h, d: ops.batchnorm_forward(h(np.ones((4, 3), np.float32)), d(np.ones(3, np.float32)),
                                       d(np.zeros(3, np.float32)), d(np.zeros(3, np.float32)),
                                       d(np.ones(3, np.float32)), training=True),
], ids=["conv", "linear", "batchnorm"])
def test_an_op_refuses_host_and_device_arrays_together_naming_each(call):
    with pytest.raises(TypeError, match=r"arrays on different devices: .*numpy array.*simdevice array|"
                                        r"arrays on different devices: .*simdevice array.*numpy array"):
        call(lambda a: a, lambda a: sd.asarray(a))


def test_arrays_on_two_cuda_devices_are_refused_naming_each():
    class OnDevice:  # what check_same_device reads of a CuPy array: .device.id
        def __init__(self, i):
            self.device = type("Device", (), {"id": i})()
            self.dtype = np.dtype(np.float32)

    checks.check_same_device(("a", OnDevice(0)), ("b", OnDevice(0)))
    with pytest.raises(ValueError, match=r"a on device 0, b on device 1"):
        checks.check_same_device(("a", OnDevice(0)), ("b", OnDevice(1)))
