"""refbnn.summary / ``refbnn summary``: parameter, memory and MAC counts checked against hand arithmetic
and independent counts."""
import json
import os

import pytest

from refbnn.cli import main
from refbnn.data import load_dataset
from refbnn.kernels import pack_bits
from refbnn.layers.binary import BinaryConv2d, BinaryLinear
from refbnn.summary import INPUT_SHAPES, build_summary_model, packed_weight_bytes, summarize


def _summary(model, method, dataset, width=1.0, convention="paper"):
    m, shape = build_summary_model(model, method, dataset, width, convention)
    return m, summarize(m, shape)


def test_digits_mlp_counts_by_hand():
    # mlp(hidden=512, depth=2) on digits (64 features): Flatten, Linear(64, 512, no bias), BN1d(512), act,
    # 2 x [BinaryLinear(512, 512), BN1d(512), act], Linear(512, 10) with bias; bnn has no learned scale
    _, s = _summary("mlp", "bnn", "digits")
    rows = {r.name: r for r in s.layers}
    assert [r.type for r in s.layers] == ["Flatten", "Linear", "BatchNorm1d", "Hardtanh", "BinaryLinear",
                                          "BatchNorm1d", "Hardtanh", "BinaryLinear", "BatchNorm1d", "Hardtanh",
                                          "Linear"]
    assert [r.name for r in s.layers] == ["flatten", "input.fc", "input.bn", "input.act", "hidden1.fc", "hidden1.bn",
                                          "hidden1.act", "hidden2.fc", "hidden2.bn", "hidden2.act", "classifier"]
    fc, bn = rows["input.fc"], rows["input.bn"]
    assert rows["flatten"].output_shape == (64,) and fc.output_shape == (512,)
    assert rows["classifier"].output_shape == (10,)
    assert (fc.params_32bit, fc.float_macs, fc.binary_macs) == (64 * 512, 64 * 512, 0)
    assert (bn.params_32bit, bn.buffers, bn.float_macs) == (2 * 512, 2 * 512, 0)
    for name in ("hidden1.fc", "hidden2.fc"):
        r = rows[name]
        assert (r.params_1bit, r.params_32bit, r.binary_macs, r.float_macs) == (512 * 512, 0, 512 * 512, 0)
        assert r.memory_packed_bytes == 512 * (512 // 64) * 8            # 512 rows of 8 words
        assert r.memory_float32_bytes == 4 * 512 * 512
    assert (rows["classifier"].params_32bit, rows["classifier"].float_macs) == (512 * 10 + 10, 512 * 10)
    t = s.totals
    p1 = 2 * 512 * 512
    p32 = 64 * 512 + 3 * 2 * 512 + 512 * 10 + 10
    assert (t["params_1bit"], t["params_32bit"], t["buffers"]) == (p1, p32, 3 * 2 * 512)
    assert (t["binary_macs"], t["float_macs"]) == (2 * 512 * 512, 64 * 512 + 512 * 10)
    assert t["memory_packed_bytes"] == 2 * 512 * 8 * 8 + 4 * p32
    assert t["memory_float32_bytes"] == 4 * (p1 + p32)
    assert t["binary_param_share"] == pytest.approx(p1 / (p1 + p32))
    assert t["binary_mac_share"] == pytest.approx(2 * 512 * 512 / (2 * 512 * 512 + 64 * 512 + 512 * 10))


def test_resnet20_against_independent_counts():
    # official convention: ReCU's learned per-channel alpha, a 32-bit parameter of each binary conv
    model, s = _summary("resnet20", "recu", "cifar10", convention="official")
    t = s.totals
    assert t["params"] == sum(m.params[k].size for _, m, k in model.named_parameters())
    assert t["params_1bit"] == sum(m.params["weight"].size for _, m in model.modules()
                                   if isinstance(m, BinaryConv2d))
    assert t["params_32bit"] > 0 and any(r.type == "BinaryConv2d" and r.params_32bit for r in s.layers)
    # MACs from the architecture (32x32 input, 3x3 convs): stem 3 -> 16; stage 1: 6 convs 16 -> 16 at 32x32;
    # stage 2: 16 -> 32 at 16x16, then 5 convs 32 -> 32; stage 3: 32 -> 64 at 8x8, then 5 convs 64 -> 64;
    # FP linear 64 -> 10
    binary = (6 * 32 * 32 * 16 * 16 * 9 + 16 * 16 * 32 * 16 * 9 + 5 * 16 * 16 * 32 * 32 * 9
              + 8 * 8 * 64 * 32 * 9 + 5 * 8 * 8 * 64 * 64 * 9)
    assert t["binary_macs"] == binary
    assert t["float_macs"] == 32 * 32 * 16 * 3 * 9 + 64 * 10


def test_vgg_small_per_layer_macs_and_params():
    model, s = _summary("vgg_small", "bnn", "cifar10")
    t = s.totals
    assert t["params"] == sum(m.params[k].size for _, m, k in model.named_parameters())
    convs = [r for r in s.layers if r.type in ("Conv2d", "BinaryConv2d")]
    # (out channels, in channels, output side) of conv0 and the five binary convs
    arch = [(128, 3, 32), (128, 128, 32), (256, 128, 16), (256, 256, 16), (512, 256, 8), (512, 512, 8)]
    assert [r.output_shape for r in convs] == [(o, h, h) for o, _, h in arch]
    assert [r.float_macs + r.binary_macs for r in convs] == [h * h * o * c * 9 for o, c, h in arch]
    assert convs[0].binary_macs == 0 and all(r.float_macs == 0 for r in convs[1:])
    assert s.layers[-1].float_macs == 512 * 4 * 4 * 10


def test_float_method_has_no_binary_share():
    for model, dataset in (("mlp", "digits"), ("resnet20", "cifar10")):
        _, s = _summary(model, "float", dataset)
        t = s.totals
        assert t["params_1bit"] == 0 and t["binary_macs"] == 0
        assert t["binary_param_share"] == 0.0 and t["binary_mac_share"] == 0.0
        assert t["memory_packed_bytes"] == t["memory_float32_bytes"] == 4 * t["params"]


def test_real_activations_give_float_macs_with_binary_weights():
    _, s = _summary("mlp", "irnet_1w32a", "digits")
    t = s.totals
    assert t["binary_macs"] == 0 and t["binary_mac_share"] == 0.0
    assert t["params_1bit"] == 2 * 512 * 512
    assert t["float_macs"] == 64 * 512 + 2 * 512 * 512 + 512 * 10


@pytest.mark.parametrize("model,dataset,width", [("resnet20", "cifar10", 1.0), ("resnet20", "cifar10", 0.5),
                                                 ("mlp", "digits", 0.1), ("vgg_small", "digits", 0.25)])
def test_packed_memory_is_what_pack_bits_stores(model, dataset, width):
    # channel counts 8/16/32 (width 0.5), 51 (mlp width 0.1), 32/64/128: rows shorter than one word or not whole
    m, s = _summary(model, "bnn", dataset, width)
    rows = {r.name: r for r in s.layers}
    checked = 0
    for name, layer in m.modules():
        if isinstance(layer, (BinaryConv2d, BinaryLinear)):
            w = layer.params["weight"]
            w4 = w.reshape(w.shape[0], w.shape[1], 1, 1) if w.ndim == 2 else w     # as refbnn export packs
            r = rows[name.rstrip(".")]
            assert r.memory_packed_bytes - 4 * r.params_32bit == pack_bits(w4, axis=1).nbytes
            checked += 1
    assert checked >= 2


def test_input_shape_is_the_loaders():
    assert INPUT_SHAPES["digits"] == load_dataset("digits").input_shape


def test_summarize_restores_the_model():
    model, shape = build_summary_model("resnet20", "bnn", "cifar10")
    summarize(model, shape)
    assert all(m.training for _, m in model.modules())
    assert all("forward" not in vars(m) for _, m in model.modules())
    with pytest.raises(ValueError, match="input_shape"):
        summarize(model, (3, 0, 32))


def test_cli_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["summary", "--model", "mlp", "--dataset", "digits", "--method", "bnn", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "BinaryLinear" in text and "Total" in text and "binarized share" in text
    data = json.loads(out.read_text())
    assert data["model"] == "mlp" and data["method"] == "bnn" and data["input_shape"] == [1, 8, 8]
    assert data["totals"]["params_1bit"] == 2 * 512 * 512
    assert data["totals"]["binary_macs"] == 2 * 512 * 512
    assert len(data["layers"]) == 11 and data["layers"][4]["type"] == "BinaryLinear"


@pytest.mark.parametrize("argv,word", [(["--model", "alexnet"], "--model"), (["--method", "nope"], "--method"),
                                       (["--dataset", "imagenet"], "--dataset"), (["--width", "0"], "--width"),
                                       (["--width", "nan"], "--width"), (["--width", "x"], "--width")])
def test_cli_bad_input_exits_2_with_one_line(argv, word, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["summary", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and word in err


def test_cli_unknown_names_list_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        main(["summary", "--model", "alexnet"])
    err = capsys.readouterr().err
    assert all(name in err for name in ("mlp", "vgg_small", "resnet20", "resnet18"))


# ---- the exported model's size (refbnn export) ---------------------------------------------------

def _zip_layout(path):
    """(file size the zip's records account for, the records' bytes, {entry name: bytes stored}) of
    an uncompressed .npz: per entry a local header (30 bytes, the name, an extra field: NumPy writes
    a zip64 one) and a central directory entry (46 bytes, the name, its extra field), then the
    22-byte end record."""
    import struct
    import zipfile
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    records = 22
    with open(path, "rb") as f:
        for i in infos:
            f.seek(i.header_offset)
            sig, *_, name_len, extra_len = struct.unpack("<IHHHHHIIIHH", f.read(30))
            assert sig == 0x04034B50
            records += 30 + name_len + extra_len + 46 + len(i.filename.encode()) + len(i.extra) + len(i.comment)
    return records + sum(i.compress_size for i in infos), records, {i.filename: i.file_size for i in infos}


@pytest.mark.parametrize("model,method,dataset,width", [
    ("mlp", "bnn", "digits", 1.0), ("resnet20", "bnn", "cifar10", 0.5), ("resnet20", "recu", "cifar10", 0.25),
    ("vgg_small", "bnnplus", "cifar10", 0.25), ("resnet18", "bireal", "mnist", 0.25)])
def test_summary_predicts_the_exported_file(tmp_path, model, method, dataset, width):
    """The summary's per-layer export bytes are, layer by layer, the arrays refbnn export writes
    (bit-packed inputs with thresholds and flips, batch norm folded into a multiplier and bias,
    kept beside a residual add, max pools' inverts, layer scales and biases); the file is those
    arrays plus, per array, its .npy header and the zip's records, plus the JSON graph."""
    pytest.importorskip("refbnn.kernels._bitpack", reason="refbnn export packs with the compiled kernels")
    from refbnn.inference import export_model, read_graph
    m, shape = build_summary_model(model, method, dataset, width)
    s = summarize(m, shape)
    assert s.export_error is None
    predicted = {r.name: r.export_bytes for r in s.layers if r.export_bytes}
    path = tmp_path / "model.npz"
    export_model(m, shape, 10).save(path)
    graph = read_graph(str(path))
    stored = {}
    for i, n in enumerate(graph.nodes):          # a max pool's inverts belong to the binary layer before it
        for key in n.get("arrays", {}).values():
            layer = n["layer"] if n["op"] != "bmaxpool2d" else graph.nodes[i - 1]["layer"]
            stored[layer] = stored.get(layer, 0) + graph.arrays[key].nbytes
    assert predicted == stored
    total = s.totals["export_bytes"]
    assert total == sum(stored.values()) == graph.packed_weight_bytes() + graph.float_array_bytes()
    # packed weights: the float32 weight / 32 where the input channels fill whole 64-bit words
    for name, layer in m.modules():
        if isinstance(layer, (BinaryConv2d, BinaryLinear)) and layer.params["weight"].shape[1] % 64 == 0:
            assert 32 * packed_weight_bytes(layer.params["weight"].shape) == layer.params["weight"].nbytes
    # the file: the arrays, a .npy header per array (a multiple of 64 bytes, at most 128 here), the JSON
    size, records, entries = _zip_layout(path)
    assert os.path.getsize(path) == size
    json_entry = entries.pop("graph.npy")
    assert set(entries) == {f"{k}.npy" for k in graph.arrays}
    headers = {n: e - graph.arrays[n[:-len(".npy")]].nbytes for n, e in entries.items()}
    assert set(headers.values()) <= {64, 128}
    assert size == total + sum(headers.values()) + json_entry + records
    assert records < 200 * (len(entries) + 1)


def test_methods_that_do_not_export_say_why(capsys):
    _, s = _summary("mlp", "xnor", "digits")
    assert s.totals["export_bytes"] is None and all(r.export_bytes is None for r in s.layers)
    assert "per-sample scale" in s.export_error and "exported model: none" in s.table()
    _, s = _summary("mlp", "float", "digits")
    assert s.export_error == "no binary layers"
    assert main(["summary", "--model", "mlp", "--dataset", "digits", "--method", "bnn"]) == 0
    assert "exported model (refbnn export): " in capsys.readouterr().out
