"""Flip ratios (refbnn.flips): the definition on hand-made cases, the tail/body split, the records
``refbnn train`` writes (metrics JSON, checkpoint history) and their validation, and the schedule
values every scheduled method logs."""
import copy
import json
import math

import numpy as np
import pytest

from refbnn.checkpoint import HISTORY_KEYS, CheckpointError, check_meta, load_checkpoint
from refbnn.conventions import get_convention
from refbnn.flips import TAIL_TAU, FlipTracker, tail_mask, weight_signs
from refbnn.layers import BinaryLinear, Linear, Sequential
from refbnn.methods import METHODS, get_method
from refbnn.quantizers import get_quantizer
from refbnn.train import TrainConfig, train


def _layer(weight, quantizer="ste_sign"):
    o, i = weight.shape
    layer = BinaryLinear(i, o, quantizer, "ste_sign", rng=0)
    layer.params["weight"][...] = weight
    return layer


def _flip(layer, idx):
    """Negate the latent weights at flat indices ``idx`` (an optimizer step that flips exactly these signs)."""
    w = layer.params["weight"].reshape(-1)
    w[list(idx)] *= -1


def test_flip_ratio_is_the_share_of_changed_signs_averaged_over_steps():
    rng = np.random.default_rng(0)
    a = _layer(rng.uniform(0.1, 1.0, (2, 4)).astype(np.float32) * rng.choice([-1, 1], (2, 4)))   # 8 weights
    b = _layer(rng.uniform(0.1, 1.0, (1, 4)).astype(np.float32))                                 # 4 weights
    model = Sequential(("fp", Linear(4, 4, rng=1)), ("a", a), ("b", b))
    t = FlipTracker(model)
    assert t.names == ["a", "b"] and t.sizes == [8, 4]
    t.start_epoch()
    _flip(a, [0, 5])          # step 1: 2 of 8 signs of a, 1 of 4 of b
    _flip(b, [2])
    t.after_step()
    _flip(a, [0])             # step 2: weight 0 flips back (a flip again), b unchanged
    t.after_step()
    t.after_step()            # step 3: nothing changes
    out = t.end_epoch()
    assert out["a"]["all"] == 3 / (8 * 3) and out["b"]["all"] == 1 / (4 * 3)
    assert t.mean == 4 / (12 * 3)
    assert t.mean == pytest.approx((8 * out["a"]["all"] + 4 * out["b"]["all"]) / 12, abs=1e-15)
    t.start_epoch()           # a new epoch compares with the weights as it starts
    t.after_step()
    assert t.end_epoch()["a"]["all"] == 0.0


def test_signs_are_the_eval_mode_quantizer_output():
    """Stochastic BinaryConnect samples in training mode only: unchanged weights never count as flips;
    sign(0) = 0 (torch.sign) is a sign of its own: 0 -> +x is a flip."""
    w = np.array([[0.3, -0.2, 0.1, -0.4]], np.float32)
    layer = _layer(w, get_quantizer("stochastic_sign"))
    t = FlipTracker(Sequential(layer))
    t.start_epoch()
    for _ in range(5):
        t.after_step()
    assert t.end_epoch()["0"]["all"] == 0.0
    np.testing.assert_array_equal(weight_signs(layer), [[1, -1, 1, -1]])
    assert weight_signs(layer).dtype == np.int8
    zero = _layer(np.array([[0.0, 1.0, -1.0, 2.0]], np.float32), get_quantizer("ste_sign", sign_zero=0.0))
    t = FlipTracker(Sequential(("z", zero)))
    t.start_epoch()
    zero.params["weight"][0, 0] = 0.5
    t.after_step()
    assert t.end_epoch()["z"]["all"] == 1 / 4


def test_only_one_bit_weight_layers_are_tracked():
    model = Sequential(("noop", BinaryLinear(4, 4, "noop", "ste_sign", rng=0)), ("fp", Linear(4, 2, rng=1)))
    t = FlipTracker(model)
    t.start_epoch()
    t.after_step()
    assert t.names == [] and t.end_epoch() == {} and t.mean is None


def _outlier_rows():
    """Two rows of 50: 49 weights of +-0.5 and one outlier (+20 at [0, 0], -20 at [1, 5]): the outliers are
    the tail (|w1| about 6.9 against Q = -b ln 0.02 about 1.2)."""
    w = np.tile(np.where(np.arange(50) % 2 == 0, 0.5, -0.5), (2, 1)).astype(np.float32)
    w[0, 0], w[1, 5] = 20.0, -20.0
    return w


def test_tail_is_the_laplace_quantile_of_the_standardized_weights():
    w = _outlier_rows()
    mask = tail_mask(w)
    assert np.flatnonzero(mask).tolist() == [0, 55]
    # the definition written out with the standard library, on random Laplace conv weights
    rng = np.random.default_rng(1)
    w = rng.laplace(0.0, 0.05, (6, 3, 3, 3)).astype(np.float32)
    rows = [[float(v) for v in row.reshape(-1)] for row in w]
    w1 = []
    for row in rows:
        mean = math.fsum(row) / len(row)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in row) / len(row))
        w1.append([(v - mean) / std for v in row])
    b = math.fsum(abs(v) for row in w1 for v in row) / w.size
    q = -b * math.log(2 - 2 * TAIL_TAU)
    expected = np.array([[abs(v) > q for v in row] for row in w1]).reshape(w.shape)
    np.testing.assert_array_equal(tail_mask(w), expected)
    # Laplace weights: about 2 - 2 tau = 2 % in the tail
    share = tail_mask(rng.laplace(0.0, 1.0, (8, 20000))).mean()
    assert 0.017 < share < 0.023, share
    # a constant row has std 0: no tail there, no division by zero
    assert not tail_mask(np.ones((2, 5), np.float32)).any()


def test_tail_and_body_flip_ratios():
    layer = _layer(_outlier_rows())
    t = FlipTracker(Sequential(("fc", layer)))
    t.start_epoch()
    _flip(layer, [0, 1, 2, 3])    # step 1: the tail weight [0, 0] and 3 body weights
    t.after_step()
    _flip(layer, [60])            # step 2: one body weight; the tail stays fixed within the epoch
    t.after_step()
    out = t.end_epoch()["fc"]
    assert out == {"all": 5 / (100 * 2), "tail": 1 / (2 * 2), "body": 4 / (98 * 2), "tail_share": 2 / 100}


def test_an_empty_tail_has_no_flip_ratio():
    layer = _layer(np.array([[0.5, -0.5, 0.5, -0.5]], np.float32))
    t = FlipTracker(Sequential(("fc", layer)))
    t.start_epoch()
    _flip(layer, [1])
    t.after_step()
    assert t.end_epoch()["fc"] == {"all": 0.25, "tail": None, "body": 0.25, "tail_share": 0.0}


def test_tracker_calls_in_the_wrong_order_are_errors():
    t = FlipTracker(Sequential(("fc", _layer(np.ones((1, 2), np.float32)))))
    with pytest.raises(RuntimeError, match="call start_epoch"):
        t.after_step()
    with pytest.raises(RuntimeError, match="call start_epoch"):
        t.end_epoch()


# ---- refbnn train: metrics JSON and checkpoint history -----------------------------------------------

NEW_KEYS = ("binary_layers", "flip_ratio", "flip_ratio_mean", "tail_flips", "epoch_seconds")


def test_train_records_flips_per_epoch(tmp_path):
    m = train(TrainConfig(method="recu", epochs=3, width=0.25, progress=False, out=str(tmp_path / "run"),
                          metrics_json=str(tmp_path / "m.json")), log=lambda *a: None)
    saved = json.loads((tmp_path / "m.json").read_text())
    for key in NEW_KEYS:
        assert saved[key] == m[key], key
    layers = ["hidden1.fc", "hidden2.fc"]
    assert m["binary_layers"] == layers and list(m["flip_ratio"]) == layers and list(m["tail_flips"]) == layers
    assert len(m["flip_ratio_mean"]) == len(m["epoch_seconds"]) == 3
    assert all(s > 0 for s in m["epoch_seconds"])
    for name in layers:
        assert len(m["flip_ratio"][name]) == 3 and all(0 < r < 0.5 for r in m["flip_ratio"][name])
        assert {k: len(v) for k, v in m["tail_flips"][name].items()} == {"tail_share": 3, "tail": 3, "body": 3}
    for e in range(3):  # equal layer sizes: the weighted mean is the plain mean
        assert m["flip_ratio_mean"][e] == pytest.approx(np.mean([m["flip_ratio"][n][e] for n in layers]), rel=1e-12)
    _, _, meta = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    h = meta["history"]
    assert h["epoch_seconds"] == m["epoch_seconds"] and h["flip_ratio_mean"] == m["flip_ratio_mean"]
    assert [e["hidden2.fc"]["all"] for e in h["flips"]] == m["flip_ratio"]["hidden2.fc"]
    assert [e["hidden1.fc"]["tail_share"] for e in h["flips"]] == m["tail_flips"]["hidden1.fc"]["tail_share"]


def test_a_float_model_has_no_flips():
    m = train(TrainConfig(method="float", epochs=2, width=0.1, progress=False), log=lambda *a: None)
    assert (m["binary_layers"], m["flip_ratio"], m["tail_flips"]) == ([], {}, {})
    assert m["flip_ratio_mean"] == [None, None] and len(m["epoch_seconds"]) == 2


def _meta(epochs=2):
    entry = {"hidden1.fc": {"all": 0.1, "tail": None, "body": 0.1, "tail_share": 0.0}}
    history = {k: [0.5] * epochs for k in HISTORY_KEYS}
    history.update(schedule=[{}] * epochs, flips=[copy.deepcopy(entry) for _ in range(epochs)])
    return {"format": "refbnn-checkpoint-v1", "epoch": epochs - 1, "run": {}, "history": history, "seconds": 1.0}


@pytest.mark.parametrize("change,match", [
    (lambda h: h.pop("flips"), r"history.flips: expected a list of 2 entries"),
    (lambda h: h.update(epoch_seconds=[1.0]), r"history.epoch_seconds: expected a list of 2 entries"),
    (lambda h: h["epoch_seconds"].__setitem__(1, -1.0), r"history.epoch_seconds\[1\] = -1.0"),
    (lambda h: h["flip_ratio_mean"].__setitem__(0, 1.5), r"history.flip_ratio_mean\[0\] = 1.5"),
    (lambda h: h["flip_ratio_mean"].__setitem__(0, "x"), r"history.flip_ratio_mean\[0\]"),
    (lambda h: h["flips"][1]["hidden1.fc"].__setitem__("all", 2.0), r"history.flips\[1\] = .*expected \{layer"),
    (lambda h: h["flips"][0]["hidden1.fc"].__setitem__("all", None), r"history.flips\[0\]"),
    (lambda h: h["flips"][1]["hidden1.fc"].pop("tail"), r"history.flips\[1\]"),
    (lambda h: h["flips"][1].update(other={"all": 0.0, "tail": None, "body": 0.0, "tail_share": 0.0}),
     r"history.flips\[1\]"),  # another layer set than the first epoch's
    (lambda h: h["flips"].__setitem__(0, []), r"history.flips\[0\]"),
])
def test_checkpoint_meta_validates_the_flip_history(change, match):
    meta = _meta()
    assert check_meta(copy.deepcopy(meta)) == meta
    change(meta["history"])
    with pytest.raises(CheckpointError, match=match):
        check_meta(meta)


# ---- schedules: every scheduled method logs its values, and the quantizers hold them -----------------

SCHEDULED = {"recu": {"tau"}, "irnet": {"t", "k"}, "irnet_1w32a": {"t", "k"}, "pc": {"mu"}, "bnnpp": {"beta"}}


def test_the_scheduled_methods_are_the_ones_checked():
    assert {n for n, m in METHODS.items() if m.schedule is not None} == set(SCHEDULED)


@pytest.mark.parametrize("method", sorted(SCHEDULED))
def test_every_scheduled_method_logs_its_values(method, tmp_path):
    m = train(TrainConfig(method=method, epochs=3, width=0.1, progress=False, out=str(tmp_path)),
              log=lambda *a: None)
    schedule = get_method(method).schedule
    assert len(m["schedule"]) == 3
    for epoch, values in enumerate(m["schedule"]):
        assert set(values) == SCHEDULED[method]
        assert values == schedule.at(epoch, 3, get_convention("paper").schedule_clock)
    assert m["schedule"][0] != m["schedule"][2]  # the values move
    state, _, _ = load_checkpoint(tmp_path / "checkpoint.npz")
    held = {k.rsplit(".", 1)[1]: float(v) for k, v in state.items() if k.startswith("hidden2.fc.weight_quantizer.")}
    assert held == pytest.approx({k: v for k, v in m["schedule"][-1].items()})
