"""Readable layer names: Sequential's (name, module) pairs, the names of every model, binary_layers, the
checkpoint keys, and the clear error for a checkpoint with the positional names of an earlier refbnn."""
import numpy as np
import pytest

from refbnn.checkpoint import HISTORY_KEYS, CheckpointError, load_checkpoint, save_checkpoint
from refbnn.cli import main
from refbnn.inference import export_checkpoint
from refbnn.layers import BatchNorm1d, BinaryLinear, Linear, ReLU, Sequential
from refbnn.methods import LayerFactory, get_method
from refbnn.models import MODELS, binary_layers, build_model, layer_names
from refbnn.train import TrainConfig, train

SHAPES = {"mlp": (1, 8, 8), "vgg_small": (3, 8, 8), "resnet20": (3, 8, 8), "resnet18": (3, 8, 8)}


def _model(name, method="recu", width=0.1):
    factory = LayerFactory(get_method(method), rng=0)
    return build_model(name, factory, SHAPES[name], 10, width)


def _blocks(stages, blocks):
    return [f"stage{s}.block{b}" for s in range(1, stages + 1) for b in range(1, blocks + 1)]


BLOCK_CHILDREN = ["conv1", "bn1", "act1", "conv2", "bn2", "act2", "shortcut"]
EXPECTED_TOP = {
    "mlp": ["flatten", "input.fc", "input.bn", "input.act", "hidden1.fc", "hidden1.bn", "hidden1.act", "hidden2.fc",
            "hidden2.bn", "hidden2.act", "classifier"],
    "vgg_small": ["stem.conv", "stem.bn", "stem.act", "conv1", "pool1", "bn1", "act1", "conv2", "bn2", "act2", "conv3",
                  "pool3", "bn3", "act3", "conv4", "bn4", "act4", "conv5", "pool5", "bn5", "act5", "flatten",
                  "classifier"],
    "resnet20": ["stem.conv", "stem.bn", "stem.act", *_blocks(3, 3), "head.pool", "head.bn", "head.fc"],
    "resnet18": ["stem.conv", "stem.bn", *_blocks(4, 2), "head.pool", "head.bn", "head.fc"],
}
EXPECTED_BINARY = {
    "mlp": ["hidden1.fc", "hidden2.fc"],
    "vgg_small": ["conv1", "conv2", "conv3", "conv4", "conv5"],
    "resnet20": [f"{b}.{c}" for b in _blocks(3, 3) for c in ("conv1", "conv2")],
    "resnet18": [f"{b}.{c}" for b in _blocks(4, 2) for c in ("conv1", "conv2")],
}


def test_sequential_takes_names_and_positions():
    a, b, c = Linear(2, 3, rng=0), ReLU(), Linear(3, 1, rng=1)
    net = Sequential(("stage1.fc", a), b, ("head", c))
    assert list(net.children) == ["stage1.fc", "1", "head"]
    assert list(net.state_dict()) == ["stage1.fc.weight", "stage1.fc.bias", "head.weight", "head.bias"]
    x = np.ones((4, 2), np.float32)
    out, cache = net.forward(x)
    np.testing.assert_array_equal(out, c.forward(b.forward(a.forward(x)[0])[0])[0])
    assert net.backward(np.ones_like(out), cache).shape == x.shape
    assert list(Sequential(a, b).children) == ["0", "1"]


@pytest.mark.parametrize("items,error,match", [
    ((("a", Linear(1, 1)), ("a", ReLU())), ValueError, "the name 'a' is used twice"),
    ((("", ReLU()),), ValueError, "expected a non-empty name"),
    ((("a..b", ReLU()),), ValueError, "parts are non-empty"),
    ((("a.", ReLU()),), ValueError, "parts are non-empty"),
    (((3, ReLU()),), ValueError, "expected a non-empty name"),
    ((("a", ReLU(), 1),), TypeError, "a tuple of 3"),
    ((("a", "relu"),), TypeError, "expected a refbnn Module"),
])
def test_sequential_refuses_bad_names(items, error, match):
    with pytest.raises(error, match=match):
        Sequential(*items)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_names_every_layer(name):
    model = _model(name)
    assert list(model.children) == EXPECTED_TOP[name]
    assert [n for n, _ in binary_layers(model)] == EXPECTED_BINARY[name]
    for n, layer in binary_layers(model):
        assert isinstance(layer, type(dict(model.modules())[n + "."]))
        assert layer.weight_quantizer.precision == 1
    for block in (n for n in EXPECTED_TOP[name] if n.startswith("stage")):
        assert list(model.children[block].children) == BLOCK_CHILDREN
    keys = list(model.state_dict())
    assert all(not k.split(".")[0].isdigit() for k in keys), keys
    assert _model(name, "float").children.keys() == model.children.keys()
    assert binary_layers(_model(name, "float")) == []


def test_resnet18_conv_shortcut_is_named_and_state_keys_are_dotted():
    model = _model("resnet18")
    sc = dict(model.modules())["stage2.block1.shortcut."]
    assert list(sc.children) == ["conv", "bn"]
    keys = model.state_dict()
    assert "stage2.block1.shortcut.conv.weight" in keys and "stage2.block1.shortcut.bn.running_mean" in keys
    assert "stage2.block1.conv1.weight" in keys and "head.fc.bias" in keys
    assert layer_names("resnet18")[:3] == ["stem.conv", "stem.bn", "stage1.block1.conv1"]


def test_binary_layers_needs_a_one_bit_weight_quantizer():
    net = Sequential(("fc", Linear(3, 4, rng=0)), ("bn", BatchNorm1d(4)),
                     ("b1", BinaryLinear(4, 4, "ste_sign", "ste_sign", rng=1)),
                     ("b2", BinaryLinear(4, 2, "noop", None, rng=2)),          # precision 32: not binary
                     ("b3", BinaryLinear(2, 2, None, "ste_sign", rng=3)))      # float weights
    assert [n for n, _ in binary_layers(net)] == ["b1"]


def test_named_checkpoint_round_trip(tmp_path):
    train(TrainConfig(epochs=1, width=0.1, progress=False, out=str(tmp_path)), log=lambda *a: None)
    with np.load(tmp_path / "checkpoint.npz") as z:
        files = z.files
    assert "model/hidden1.fc.weight" in files and "model/hidden2.fc.weight_quantizer.tau" in files
    assert "model/input.bn.running_var" in files and "model/classifier.bias" in files
    assert not [f for f in files if f.startswith("model/") and f[6:].split(".")[0].isdigit()]
    state, _, _ = load_checkpoint(tmp_path / "checkpoint.npz")
    model = _model("mlp", width=0.1)
    model.load_state_dict(state)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k])


def _to_positional(path):
    """Rewrite a checkpoint's model keys as an earlier refbnn wrote them: top-level layers by position."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    order = EXPECTED_TOP["mlp"]
    out = {}
    for k, v in arrays.items():
        if k.startswith("model/"):
            layer = next(n for n in order if k[6:].startswith(n + "."))
            k = f"model/{order.index(layer)}{k[6 + len(layer):]}"
        out[k] = v
    np.savez(path, **out)
    return sorted(k for k in out if k.startswith("model/"))


def test_an_old_positional_checkpoint_is_a_clear_error(tmp_path, capsys):
    train(TrainConfig(epochs=1, width=0.1, progress=False, out=str(tmp_path)), log=lambda *a: None)
    path = tmp_path / "checkpoint.npz"
    keys = _to_positional(path)
    assert "model/4.weight" in keys and "model/7.weight_quantizer.tau" in keys
    match = r"uses the old positional layer names of an earlier refbnn \(e\.g\. model/\d+\..*input\.fc, input\.bn, " \
            r"hidden1\.fc, hidden1\.bn, hidden2\.fc, hidden2\.bn, classifier"
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=match + r".*not remapped"):
        train(TrainConfig(epochs=2, width=0.1, progress=False, out=str(tmp_path), resume=True), log=lambda *a: None)
    with pytest.raises(CheckpointError, match="old positional layer names"):
        export_checkpoint(str(path))
    assert main(["export", str(path), "--out", str(tmp_path / "m.npz")]) == 2
    assert "old positional layer names" in capsys.readouterr().err


def test_positional_keys_of_a_model_that_is_not_a_refbnn_model_load(tmp_path):
    """A hand-built Sequential saved with save_checkpoint keeps its positional names (nothing is old there)."""
    net = Sequential(Linear(2, 2, rng=0), ReLU())
    meta = {"epoch": 0, "run": {"model": "my_net"}, "seconds": 0.0,
            "history": {k: [{} if k in ("schedule", "flips") else 0.5] for k in HISTORY_KEYS}}
    save_checkpoint(tmp_path / "c.npz", net.state_dict(), {}, meta)
    state, _, _ = load_checkpoint(tmp_path / "c.npz")
    assert sorted(state) == ["0.bias", "0.weight"]
