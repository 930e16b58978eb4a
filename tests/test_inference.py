"""Inference: export (batch norm folded into thresholds), the model file, the packed runner.

Exactness: every packed boundary holds the training model's eval-mode signs bit for bit, and the
logits agree within float32 rounding (bit for bit where no scale or batch norm is folded into a
float multiplier), on random small networks and on a model trained by ``refbnn train``.
"""
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("refbnn.kernels._bitpack", reason="the inference runner needs the compiled kernels "
                    "(python setup.py build_ext --inplace)")

from refbnn.checkpoint import load_checkpoint, save_checkpoint
from refbnn.cli import main
from refbnn.data import load_dataset
from refbnn.inference import (
    ExportError,
    InferenceModel,
    ModelFileError,
    build_from_checkpoint,
    export_checkpoint,
    export_model,
    load_model,
    read_graph,
)
from refbnn.kernels import pack_bits, unpack_bits
from refbnn.layers.binary import BinaryConv2d, _BinaryLayer
from refbnn.methods import LayerFactory, get_method
from refbnn.models import build_model, mlp, resnet18

EXPORTED = ("bnn", "xnorpp", "bnnplus", "bireal", "irnet", "recu")
REFUSED = {"float": "no binary layers", "bc": "real-valued activations", "irnet_1w32a": "real-valued activations",
           "pc": "real-valued activations", "bnnpp": "real-valued activations", "xnor": "scaled",
           "dorefa": "not a sign"}


# ---- helpers ------------------------------------------------------------------------------------

def randomize(model, rng, gammas=(-1.5, -0.3, 0.0, 0.4, 2.0)):
    """Random batch-norm statistics (negative and zero gamma included) and learned scales (either sign)."""
    for _, m in model.modules():
        if "running_var" in m.buffers:
            c = m.params["gamma"].size
            m.params["gamma"][:] = rng.choice(gammas, c)
            m.params["beta"][:] = rng.normal(size=c)
            m.buffers["running_mean"][:] = rng.normal(size=c) * 2
            m.buffers["running_var"][:] = rng.uniform(0.2, 5.0, size=c)
        if "alpha" in m.params:
            m.params["alpha"][:] = rng.normal(size=m.params["alpha"].size)
    return model.eval()


def binary_inputs(model, x):
    """Training model's eval forward; returns (logits, {binary layer name: its quantized input})."""
    seen, originals = {}, {}
    for name, m in model.modules():
        if isinstance(m, _BinaryLayer):
            originals[name] = m.forward

            def wrapped(inp, m=m, name=name, fwd=m.forward):
                seen[name.rstrip(".")] = m.input_quantizer.forward(inp, training=False)[0]
                return fwd(inp)
            m.forward = wrapped
    try:
        logits, _ = model.forward(x)
    finally:
        for name, m in model.modules():
            if name in originals:
                del m.forward
    return logits, seen


def check_exact(model, graph, x, float_tol=0.0):
    """Bits at every packed boundary equal the training model's signs; logits within ``float_tol``."""
    im = InferenceModel(graph)
    ref, seen = binary_inputs(model, x)
    rec = {}
    out = im.forward(x, record=rec)
    bconvs = [n for n in graph.nodes if n["op"] == "bconv"]
    assert {n["layer"] for n in bconvs} == set(seen)
    for n in bconvs:
        xq = seen[n["layer"]]
        packed = rec[n["in"][0]]
        got = unpack_bits(packed, n["channels"])               # (N, H, W, C) NHWC
        want = xq.reshape(len(xq), xq.shape[1], 1, 1) if xq.ndim == 2 else xq
        np.testing.assert_array_equal(got, want.transpose(0, 2, 3, 1), err_msg=f"bits into {n['layer']}")
    np.testing.assert_allclose(out, ref, rtol=float_tol, atol=float_tol)
    np.testing.assert_array_equal(out.argmax(1), ref.argmax(1))
    return out


def _factory(method, seed, convention="paper"):
    """The training model on the NumPy reference backend: its eval forward is the oracle (the compiled
    float ops of the "auto" backend add the float convolutions' sums in another order)."""
    return LayerFactory(get_method(method), rng=np.random.default_rng(seed), convention=convention, backend="numpy")


# ---- exactness on random small networks ---------------------------------------------------------

@settings(max_examples=15)
@given(seed=st.integers(0, 2 ** 16), hidden=st.integers(1, 150), depth=st.integers(1, 3),
       features=st.integers(1, 70), method=st.sampled_from(("bnn", "xnorpp", "bnnplus")),
       sign_zero=st.sampled_from((1.0, -1.0)))
def test_mlp_bits_and_logits_match_training_model(seed, hidden, depth, features, method, sign_zero):
    rng = np.random.default_rng(seed)
    model = mlp(_factory(method, seed), (features,), 7, hidden=hidden, depth=depth)
    for _, m in model.modules():
        if isinstance(m, _BinaryLayer):
            m.input_quantizer.sign_zero = sign_zero
    randomize(model, rng)
    for _, m in model.modules():          # gamma = beta = 0: exact zeros meet sign(0) at packs and thresholds
        if "running_var" in m.buffers:
            m.params["gamma"][:1] = 0.0
            m.params["beta"][:1] = 0.0
    graph = export_model(model, (features,), 7)
    ops = [n["op"] for n in graph.nodes]
    assert ops.count("bconv") == depth and ops.count("pack") == 1   # bits chained, packed once
    assert sum(n.get("output") == "bits" for n in graph.nodes) == depth - 1
    x = rng.normal(size=(9, features)).astype(np.float32)
    check_exact(model, graph, x, float_tol=1e-5)


@settings(max_examples=8)
@given(seed=st.integers(0, 2 ** 16), width=st.sampled_from((0.03, 0.05, 0.11)), hw=st.sampled_from((8, 16)),
       pad_value=st.sampled_from((0.0, 1.0, -1.0)), method=st.sampled_from(("bnn", "xnorpp", "bireal")))
def test_vgg_small_bits_and_logits_match_training_model(seed, width, hw, pad_value, method):
    rng = np.random.default_rng(seed)
    model = build_model("vgg_small", _factory(method, seed), (3, hw, hw), 10, width)
    for _, m in model.modules():
        if isinstance(m, BinaryConv2d):
            m.pad_value = pad_value
    randomize(model, rng)
    graph = export_model(model, (3, hw, hw), 10)
    ops = [n["op"] for n in graph.nodes]
    assert ops.count("bmaxpool2d") == 2 and ops.count("pack") == 1   # pools on packed bits
    x = rng.normal(size=(3, 3, hw, hw)).astype(np.float32)
    check_exact(model, graph, x, float_tol=0.0 if method != "bireal" else 1e-4)


@settings(max_examples=6)
@given(seed=st.integers(0, 2 ** 16), width=st.sampled_from((0.25, 0.5, 0.7)), hw=st.sampled_from((5, 8)),
       pad_value=st.sampled_from((0.0, 1.0)), method=st.sampled_from(("bnn", "bnnplus", "recu")))
def test_resnet20_bits_and_logits_match_training_model(seed, width, hw, pad_value, method):
    """Bi-Real double skip, option-A shortcut (subsample + zero channels), stride 2, odd sizes."""
    rng = np.random.default_rng(seed)
    model = build_model("resnet20", _factory(method, seed), (3, hw, hw), 10, width)
    for _, m in model.modules():
        if isinstance(m, BinaryConv2d):
            m.pad_value = pad_value
    randomize(model, rng)
    graph = export_model(model, (3, hw, hw), 10)
    assert [n["op"] for n in graph.nodes].count("shortcut_a") == 2
    x = rng.normal(size=(4, 3, hw, hw)).astype(np.float32)
    check_exact(model, graph, x, float_tol=0.0 if method != "recu" else 1e-4)


def test_threshold_cases_negative_and_zero_gamma_are_exercised():
    """The random networks above reach the three threshold cases: flips, constants, plain."""
    rng = np.random.default_rng(3)
    model = randomize(mlp(_factory("bnn", 3), (20,), 5, hidden=70, depth=2), rng)
    graph = export_model(model, (20,), 5)
    (node,) = [n for n in graph.nodes if n.get("output") == "bits"]
    thr, flip = graph.arrays[node["arrays"]["thresholds"]], graph.arrays[node["arrays"]["flip"]]
    assert flip.any() and (~flip).any()
    assert np.isin(thr, [np.iinfo(np.int32).min, np.iinfo(np.int32).max]).any()   # gamma = 0: a constant bit
    check_exact(model, graph, rng.normal(size=(50, 20)).astype(np.float32), float_tol=1e-5)


# ---- methods ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", EXPORTED)
def test_exported_methods_match(method):
    rng = np.random.default_rng(1)
    model = randomize(build_model("resnet20", _factory(method, 1), (3, 8, 8), 10, 0.5), rng)
    graph = export_model(model, (3, 8, 8), 10)
    check_exact(model, graph, rng.normal(size=(6, 3, 8, 8)).astype(np.float32), float_tol=1e-4)


@pytest.mark.parametrize("method", sorted(REFUSED))
def test_refused_methods_say_why(method):
    model = build_model("mlp", _factory(method, 0), (1, 8, 8), 10)
    with pytest.raises(ExportError, match=REFUSED[method]):
        export_model(model, (1, 8, 8), 10)


@pytest.mark.parametrize("method", ("bnn", "irnet", "recu"))
def test_official_convention_sign_zero_is_refused(method):
    model = build_model("mlp", _factory(method, 0, "official"), (1, 8, 8), 10)
    with pytest.raises(ExportError, match="sign\\(0\\) = 0"):
        export_model(model, (1, 8, 8), 10)


@pytest.mark.parametrize("shortcut", ("conv", "A"))
@pytest.mark.parametrize("method", ("bnn", "bireal"))
def test_resnet18_basic_block_matches(shortcut, method):
    """conv1 -> bn1 -> act1 -> conv2 as packed bits; the FP 1x1 conv + BN or option-A (average
    pool) shortcut in float."""
    rng = np.random.default_rng(5)
    model = randomize(resnet18(_factory(method, 5), (3, 8, 8), 10, 0.1, shortcut=shortcut), rng)
    graph = export_model(model, (3, 8, 8), 10)
    assert sum(n.get("output") == "bits" for n in graph.nodes) == 8
    check_exact(model, graph, rng.normal(size=(3, 3, 8, 8)).astype(np.float32),
                float_tol=0.0 if method == "bnn" else 1e-4)


# ---- a model trained by refbnn train, through the command line ---------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    assert main(["train", "--method", "bnn", "--epochs", "3", "--out", str(d), "--no-progress"]) == 0
    assert main(["export", str(d / "checkpoint.npz"), "--out", str(d / "model.npz")]) == 0
    return d


def test_trained_digits_mlp_same_predictions_image_for_image(trained):
    model, run, _, _ = build_from_checkpoint(str(trained / "checkpoint.npz"))
    assert run["method"] == "bnn" and run["model"] == "mlp"
    data = load_dataset("digits")
    im = load_model(str(trained / "model.npz"))
    ref, _ = model.forward(data.x_test)
    np.testing.assert_array_equal(im.predict(data.x_test), ref.argmax(1))
    check_exact(model, read_graph(str(trained / "model.npz")), data.x_test, float_tol=1e-5)


def test_infer_command_reports_the_trained_accuracy(trained, capsys):
    path = trained / "infer.json"
    assert main(["infer", str(trained / "model.npz"), "--dataset", "digits", "--json", str(path),
                 "--threads", "2"]) == 0
    result = json.loads(path.read_text())
    _, _, meta = load_checkpoint(str(trained / "checkpoint.npz"))
    assert result["accuracy"] == meta["history"]["test_accuracy"][-1]
    assert result["n_images"] == 360 and result["images_per_second"] > 0


def test_file_size_matches_accounting(trained):
    """Packed weights are 32x smaller than float32 (512 inputs: whole words), and the file is the
    arrays plus the JSON and the zip headers, nothing more."""
    path = str(trained / "model.npz")
    graph = read_graph(path)
    model, _, _, _ = build_from_checkpoint(str(trained / "checkpoint.npz"))
    binary_float_bytes = sum(m.params["weight"].nbytes for _, m in model.modules() if isinstance(m, _BinaryLayer))
    assert graph.packed_weight_bytes() * 32 == binary_float_bytes
    float_bytes = sum(m.params[k].nbytes + 0 for _, m in model.modules() if not isinstance(m, _BinaryLayer)
                      for k in m.params) + sum(b.nbytes for _, m in model.modules() for b in m.buffers.values())
    # the float layers are stored as they are; the last binary layer's batch norm (4 x 512 float32) is
    # folded into a multiplier and a bias (2 x 512), the first one's into thresholds and flips (int32 + bool)
    assert graph.float_array_bytes() == float_bytes - 4 * 512 * 4 * 2 + 2 * 512 * 4 + 512 * 4 + 512
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        header = sum(30 + len(i.filename) + len(i.extra) + 46 + len(i.filename) for i in infos) + 22
        stored = sum(i.file_size for i in infos)
    array_bytes = graph.packed_weight_bytes() + graph.float_array_bytes()
    assert array_bytes < stored < array_bytes + 128 * len(infos) + 20000   # + .npy headers and the JSON
    assert os.path.getsize(path) <= stored + header + 64 * len(infos)


# ---- bad input ----------------------------------------------------------------------------------

def test_checkpoint_of_unknown_model(trained, tmp_path):
    state, optim, meta = load_checkpoint(str(trained / "checkpoint.npz"))
    meta["run"]["model"] = "transformer"
    save_checkpoint(tmp_path / "c.npz", state, optim, meta)
    with pytest.raises(ValueError, match="unknown model 'transformer'"):
        build_from_checkpoint(str(tmp_path / "c.npz"))


@pytest.mark.parametrize("change", ("missing", "extra"))
def test_checkpoint_with_missing_or_extra_arrays(trained, tmp_path, change):
    state, optim, meta = load_checkpoint(str(trained / "checkpoint.npz"))
    if change == "missing":
        del state["input.fc.weight"]
    else:
        state["extra.fc.weight"] = np.zeros(3, np.float32)
    save_checkpoint(tmp_path / "c.npz", state, optim, meta)
    match = "missing \\['input.fc.weight'\\]" if change == "missing" else "extra.fc.weight"
    with pytest.raises(ValueError, match=match):
        export_checkpoint(str(tmp_path / "c.npz"), str(tmp_path / "m.npz"))
    assert main(["export", str(tmp_path / "c.npz"), "--out", str(tmp_path / "m.npz")]) == 2
    assert not (tmp_path / "m.npz").exists()


def _rewrite(src, dst, edit):
    with np.load(src, allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    meta = json.loads(str(entries.pop("graph")))
    edit(meta, entries)
    np.savez(dst, graph=np.asarray(json.dumps(meta)), **entries)


def _bits_node(meta):
    return next(i for i, n in enumerate(meta["nodes"]) if n.get("output") == "bits")


def _shrink_thresholds(meta, entries):
    i = _bits_node(meta)
    key = meta["nodes"][i]["arrays"]["thresholds"]
    entries[key] = entries[key][:-1]
    meta["arrays"][key]["shape"] = [len(entries[key])]


def _wrong_channels(meta, entries):
    meta["nodes"][_bits_node(meta)]["channels"] += 1


def _drop_node(meta, entries):
    i = _bits_node(meta)
    for key in meta["nodes"][i]["arrays"].values():
        del entries[key]
        del meta["arrays"][key]
    del meta["nodes"][i]


BAD_FILES = {
    "array shape differs from the JSON": (lambda m, e: e.update({"n1.weight": e["n1.weight"][:, :-1]}),
                                          "n1.weight"),
    "array missing": (lambda m, e: e.pop("n1.weight"), "missing \\['n1.weight'\\]"),
    "extra array": (lambda m, e: e.update({"stowaway": np.zeros(2)}), "not described \\['stowaway'\\]"),
    "thresholds per channel": (_shrink_thresholds, "thresholds"),
    "channels vs the packed input": (_wrong_channels, "channels"),
    "node count (a node removed)": (_drop_node, "computed earlier"),
    "unknown op": (lambda m, e: m["nodes"][0].update(op="softmax"), "unknown op"),
    "wrong format": (lambda m, e: m.update(format="onnx"), "format 'onnx'"),
    "NaN in a constant": (lambda m, e: e["n1.weight"].__setitem__((0, 0), np.nan), "NaN"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_model_file_json_and_arrays_disagree(trained, tmp_path, case):
    edit, message = BAD_FILES[case]
    bad = tmp_path / "bad.npz"
    _rewrite(trained / "model.npz", bad, edit)
    with pytest.raises(ModelFileError, match=message):
        load_model(str(bad))
    assert main(["infer", str(bad)]) == 2


def test_damaged_model_file_is_never_partly_loaded(trained, tmp_path):
    data = (trained / "model.npz").read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match="corrupt or truncated"):
            load_model(str(tmp_path / "cut.npz"))
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "none.npz"))


def test_wrong_input_is_named(trained):
    im = load_model(str(trained / "model.npz"))
    with pytest.raises(ValueError, match="expected shape \\(N, 1, 8, 8\\)"):
        im.forward(np.zeros((2, 64), np.float32))
    with pytest.raises(TypeError, match="float32"):
        im.forward(np.zeros((2, 1, 8, 8), np.float64))
    with pytest.raises(TypeError, match="NumPy array"):
        im.forward([[0.0]])
    x = np.zeros((2, 1, 8, 8), np.float32)
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        im.forward(x)
    with pytest.raises(ValueError, match="threads"):
        InferenceModel(im.graph, threads=0)


def test_pack_sign_zero_minus_one_packs_zero_as_minus_one():
    """The runner's pack of sign(0) = -1 (bitorch polarity on -x) against LCE packing of the signs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 70)).astype(np.float32)
    x[:, ::5] = 0.0
    signs = np.where(x > 0, 1.0, -1.0).astype(np.float32)
    np.testing.assert_array_equal(pack_bits(-x, axis=1, polarity="bitorch"), pack_bits(signs, axis=1))
