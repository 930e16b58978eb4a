"""What Keras/Larq really computes, checked by refbnn: bundles recorded by refbnn/crosscheck/record_keras.py
in a Larq environment of its own (Larq 0.14 needs NumPy < 2; refbnn NumPy >= 2).

.ci/run makes that environment, records the CI set into a folder and sets

- ``REFBNN_LARQ_BUNDLES``: the folder; every bundle in it must pass ``crosscheck(path)`` with no options,
  and the folder must hold exactly the CI set (a recorder that wrote nothing fails);
- ``REFBNN_LARQ_PYTHON``: the Larq environment's Python, for record_keras's bad-input checks and for
  recording layers that only exist there.

Without them those tests are skipped; the recorder's tables and ``save_bundle`` are checked anyway.
"""
import glob
import json
import os
import subprocess

import numpy as np
import pytest

from refbnn import crosscheck as xc
from refbnn.crosscheck import record_keras as rk
from refbnn.quantizers import QUANTIZERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDER = os.path.join(ROOT, "refbnn", "crosscheck", "record_keras.py")
BUNDLES = os.environ.get("REFBNN_LARQ_BUNDLES")
LARQ_PYTHON = os.environ.get("REFBNN_LARQ_PYTHON")

needs_bundles = pytest.mark.skipif(not BUNDLES, reason="REFBNN_LARQ_BUNDLES is not set: no bundles recorded by "
                                   "Keras/Larq to check (.ci/run records them with refbnn/crosscheck/record_keras.py "
                                   "in a Larq environment and sets it)")
needs_larq_python = pytest.mark.skipif(not LARQ_PYTHON, reason="REFBNN_LARQ_PYTHON is not set: no Python with "
                                       "TensorFlow and Larq to run the recorder in (.ci/run makes one and sets it)")

SIGN_QUANTIZERS = {"ste_sign", "approx_sign", "swish_sign", "magnitude_aware_sign"}


# --- the recorder's tables, against refbnn's catalogue (no Larq needed) ---------------------------

def test_larq_names_map_to_catalogue_quantizers_and_their_parameters():
    for cls, (name, params, _) in rk.LARQ_QUANTIZERS.items():
        assert name in QUANTIZERS, f"Larq's {cls} maps to {name!r}, which refbnn's catalogue lacks"
        assert set(params.values()) <= set(QUANTIZERS[name].parameter_names()), (cls, params)
    assert set(rk.REFBNN_TO_LARQ) == {e[0] for e in rk.LARQ_QUANTIZERS.values()}


def test_ci_set_records_every_larq_quantizer_and_the_layers():
    recorded = {rk.LARQ_QUANTIZERS[cls][0] for cls, *_ in rk.CI_QUANTIZERS.values()}
    assert recorded == set(rk.REFBNN_TO_LARQ) == {"ste_sign", "approx_sign", "swish_sign", "magnitude_aware_sign",
                                                  "ste_heaviside", "ste_tern", "dorefa_quantizer", "noop"}
    layers = {(cls, kw.get("padding"), kw.get("strides", 1), kw.get("pad_values", 0.0))
              for cls, kw, _ in rk.CI_LAYERS.values()}
    for needed in (("QuantDense", None, 1, 0.0), ("QuantConv2D", "same", 1, 0.0), ("QuantConv2D", "valid", 1, 0.0),
                   ("QuantConv2D", "same", 2, 0.0), ("QuantConv2D", "same", 1, 1.0)):
        assert needed in layers
    assert len(set(rk.CI_BUNDLES)) == len(rk.CI_QUANTIZERS) + len(rk.CI_LAYERS)


def test_with_specials_puts_exact_zeros_and_clip_points_in():
    x = rk.with_specials(np.random.default_rng(0), (2, 5, 5, 3), rk._pm(1.0, 0.5))
    assert x.dtype == np.float32
    for v in (0.0, 1.0, -1.0, 0.5, -0.5):
        assert (x == v).any(), v


def test_save_bundle_writes_atomically_and_reads_without_pickle(tmp_path):
    bundle = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "quantizer": np.array("ste_sign"),
              "clip_value": np.array("none"), "training": np.array(True), "stride": np.array(2)}
    path = rk.save_bundle(tmp_path / "sub" / "b", bundle)
    assert path == str(tmp_path / "sub" / "b.npz")
    assert os.listdir(tmp_path / "sub") == ["b.npz"]  # no temporary file left
    back = xc.load_bundle(path)
    assert set(back) == set(bundle) and all(np.array_equal(back[k], bundle[k]) for k in bundle)
    rk.save_bundle(path, {"x": np.zeros(2)})  # replaces the file whole
    assert set(xc.load_bundle(path)) == {"x"}


def test_save_bundle_rejects_what_would_need_pickle(tmp_path):
    with pytest.raises(rk.RecordError, match=r"bundle\['x'\]: expected numbers or a string, got dtype object"):
        rk.save_bundle(tmp_path / "b.npz", {"x": np.array([None, 1], dtype=object)})
    with pytest.raises(rk.RecordError, match="non-empty dict"):
        rk.save_bundle(tmp_path / "b.npz", {})
    with pytest.raises(rk.RecordError, match="names must be non-empty strings"):
        rk.save_bundle(tmp_path / "b.npz", {1: np.zeros(2)})
    assert os.listdir(tmp_path) == []


def test_recorder_imports_no_refbnn_dependency_beyond_numpy():
    """The recorder runs where refbnn's NumPy >= 2 cannot be installed: it may import only the standard
    library, NumPy, TensorFlow and Larq (and never refbnn)."""
    import ast
    import sys

    tree = ast.parse(open(RECORDER).read())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import would reach refbnn"
            modules.add(node.module.split(".")[0])
    third_party = {m for m in modules if m not in sys.stdlib_module_names}
    assert third_party == {"numpy", "tensorflow", "larq", "tf_keras"}, third_party


# --- the CI set recorded by Keras/Larq, checked by refbnn ------------------------------------------

@needs_bundles
def test_the_folder_holds_exactly_the_ci_set():
    found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(BUNDLES, "*.npz")))
    assert found == sorted(rk.CI_BUNDLES), (f"missing: {sorted(set(rk.CI_BUNDLES) - set(found))}, "
                                            f"unexpected: {sorted(set(found) - set(rk.CI_BUNDLES))}")
    with open(os.path.join(BUNDLES, "versions.json")) as f:
        versions = json.load(f)
    assert versions["larq"].startswith("0.14") and versions["numpy"].startswith("1."), versions


@needs_bundles
@pytest.mark.parametrize("name", rk.CI_BUNDLES)
def test_recorded_bundle_passes_refbnn_crosscheck(name):
    report = xc.crosscheck(os.path.join(BUNDLES, name))
    assert report.passed, report.table()
    assert {r.name for r in report.rows} >= {"out", "grad_x"}


def _larq_names(b):
    return {str(b[k]) for k in ("quantizer", "input_quantizer", "kernel_quantizer") if k in b}


@needs_bundles
@pytest.mark.parametrize("name", [n for n in rk.CI_BUNDLES if n.startswith("layer-") or
                                  rk.LARQ_QUANTIZERS[rk.CI_QUANTIZERS[n[len("quantizer-"):-4]][0]][0]
                                  in SIGN_QUANTIZERS])
def test_recorded_inputs_reach_sign_of_zero(name):
    """The recorded inputs hold exact zeros where sign() decides: with sign(0) = -1 instead of Larq's +1,
    refbnn disagrees (so a pass above is not vacuous)."""
    b = xc.load_bundle(os.path.join(BUNDLES, name))
    key = "sign_zero" if "quantizer" in b else "input_quantizer.sign_zero"
    if "quantizer" not in b and str(b["input_quantizer"]) not in SIGN_QUANTIZERS:
        key = "kernel_quantizer.sign_zero"
    report = xc.crosscheck(b, params={key: -1.0})
    assert not report.passed and not report.row("out").passed, report.table()


@needs_bundles
@pytest.mark.parametrize("name", [n for n in rk.CI_BUNDLES if "pad1" in n])
def test_recorded_pad_values_matter(name):
    b = xc.load_bundle(os.path.join(BUNDLES, name))
    assert float(b["pad_values"]) == 1.0
    b["pad_values"] = np.array(0.0)
    assert not xc.crosscheck(b).passed


@needs_bundles
@pytest.mark.parametrize("name", ["quantizer-ste_sign.npz", "quantizer-ste_sign-clip0.5.npz", "layer-dense.npz",
                                  "layer-conv2d-same-pad1.npz"])
def test_recorded_inputs_reach_the_clip_points(name):
    """Exact +-clip_value in the inputs: Larq's clip is inclusive (|x| <= clip passes the gradient)."""
    b = xc.load_bundle(os.path.join(BUNDLES, name))
    key = "clip_inclusive" if "quantizer" in b else "input_quantizer.clip_inclusive"
    report = xc.crosscheck(b, params={key: False})
    assert not report.passed and not report.row("grad_x").passed and report.row("out").passed, report.table()


# --- record_keras in the Larq environment -----------------------------------------------------------

def run_in_larq(code, tmp_path):
    """Run ``code`` in the Larq environment's Python with the recorder importable as ``rk``; returns its
    stdout's last line parsed as JSON."""
    script = tmp_path / "script.py"
    script.write_text("import importlib.util, json, os, sys\n"
                      f"spec = importlib.util.spec_from_file_location('record_keras', {RECORDER!r})\n"
                      "rk = importlib.util.module_from_spec(spec); spec.loader.exec_module(rk)\n"
                      "tf, lq = rk._tf()\nimport numpy as np\n" + code)
    proc = subprocess.run([LARQ_PYTHON, str(script)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


BAD_INPUT_CASES = '''
errors = {}
def attempt(case, fn):
    try:
        fn()
        errors[case] = None
    except Exception as exc:
        errors[case] = [type(exc).__name__, str(exc), isinstance(exc, ValueError)]
x = np.zeros((2, 6), np.float32)
dense = lq.layers.QuantDense(3, input_quantizer="ste_sign")
attempt("not_a_layer", lambda: rk.record_keras("ste_sign", x))
attempt("no_kernel", lambda: rk.record_keras(tf.keras.layers.Flatten(), x))
attempt("depthwise", lambda: rk.record_keras(lq.layers.QuantDepthwiseConv2D(3), np.zeros((1, 5, 5, 2), np.float32)))
attempt("list_x", lambda: rk.record_keras(dense, [[0.0] * 6]))
attempt("int_x", lambda: rk.record_keras(dense, np.zeros((2, 6), np.int32)))
attempt("nan_x", lambda: rk.record_keras(dense, np.full((2, 6), np.nan, np.float32)))
attempt("float64_x", lambda: rk.record_keras(dense, np.zeros((2, 6))))
attempt("rank_x", lambda: rk.record_keras(lq.layers.QuantConv2D(2, 3), x))
attempt("activation", lambda: rk.record_keras(lq.layers.QuantDense(3, activation="relu"), x))
attempt("grad_out_shape", lambda: rk.record_keras(dense, x, np.zeros((2, 4), np.float32)))
attempt("lambda_quantizer", lambda: rk.record_keras(lq.layers.QuantDense(3, input_quantizer=lambda t: t), x))
attempt("replay_int_padding", lambda: rk.replay_bundle({"x": np.zeros((1, 5, 5, 3), np.float32),
        "kernel": np.zeros((3, 3, 3, 2), np.float32), "padding": np.array(1), "input_quantizer": np.array("ste_sign")}))
attempt("replay_unknown_quantizer", lambda: rk.larq_quantizer("recu_weight", {}))
attempt("dtype_mix", lambda: rk.record_keras(lq.layers.QuantDense(3, input_quantizer="ste_sign", dtype="float64"),
                                             np.zeros((2, 6))))
attempt("ok", lambda: rk.record_keras(dense, x))
print(json.dumps(errors))
'''


@needs_larq_python
def test_record_keras_rejects_bad_input_naming_what_it_needs(tmp_path):
    errors = run_in_larq(BAD_INPUT_CASES, tmp_path)
    expect = {
        "not_a_layer": r"layer: expected a Keras/Larq layer or quantizer .*got str",
        "no_kernel": r"layer: Flatten is a layer without a kernel; expected one of: larq.layers.QuantDense",
        "depthwise": r"layer: QuantDepthwiseConv2D is a layer refbnn has no counterpart of",
        "list_x": r"x: expected a NumPy array or a TensorFlow tensor, got list",
        "int_x": r"x: expected dtype float32 or float64, got int32",
        "nan_x": r"x: contains NaN or Inf",
        "float64_x": r"x: expected dtype float32 \(the layer's dtype; Keras would cast\), got float64",
        "rank_x": r"x: expected a 4-D array \(N, H, W, C\) for QuantConv2D, got shape \(2, 6\)",
        "activation": r"layer: has activation 'relu'",
        "grad_out_shape": r"grad_out: expected shape \(2, 3\) and dtype float32",
        "lambda_quantizer": r"input_quantizer: expected a Larq quantizer",
        "replay_int_padding": r"padding: Larq's QuantConv2D pads 'same' or 'valid', got 1",
        "replay_unknown_quantizer": r"quantizer 'recu_weight': Larq has no counterpart",
        "dtype_mix": r"input_quantizer: dtype float32 differs from the layer's float64 .*SteSign\(dtype='float64'\)",
    }
    import re

    for case, pattern in expect.items():
        assert errors[case] is not None, f"{case}: no error raised"
        kind, message, is_value_error = errors[case]
        assert kind == "RecordError" and is_value_error, (case, kind, message)
        assert re.search(pattern, message), (case, message)
    assert errors["ok"] is None


RECORD_FORMS = '''
rng = np.random.default_rng(5)
x4 = rk.with_specials(rng, (2, 5, 5, 3), rk._pm(1.0))
x2 = rk.with_specials(rng, (3, 6), rk._pm(1.0))
out = {}
# Larq's function form of a quantizer, a plain Keras Conv2D (no quantizers), an unbuilt QuantDense built on x,
# and a QuantConv2D with an even kernel and stride 2 (asymmetric "same" padding) fed a tf.Tensor
out["function-ste_tern"] = rk.record_keras(lq.quantizers.ste_tern, x4)
out["keras-conv2d"] = rk.record_keras(tf.keras.layers.Conv2D(2, 3, padding="same", strides=2), x4)
out["unbuilt-dense"] = rk.record_keras(lq.layers.QuantDense(4, input_quantizer="swish_sign",
                                                            kernel_quantizer="ste_tern"), x2)
out["even-kernel"] = rk.record_keras(lq.layers.QuantConv2D(3, 2, padding="same", strides=2, pad_values=-1.0,
                                                           input_quantizer=lq.quantizers.SteSign(clip_value=0.5),
                                                           kernel_quantizer="ste_sign"), tf.constant(x4))
for k, b in out.items():
    rk.save_bundle(os.path.join(sys.argv[0] + "-out", k), b)
print(json.dumps(sorted(out)))
'''


@needs_larq_python
def test_record_keras_forms_pass_refbnn_crosscheck(tmp_path):
    names = run_in_larq(RECORD_FORMS, tmp_path)
    folder = tmp_path / "script.py-out"
    for name in names:
        b = xc.load_bundle(folder / f"{name}.npz")
        report = xc.crosscheck(b)
        assert report.passed, (name, report.table())
    keras = xc.load_bundle(folder / "keras-conv2d.npz")
    assert str(keras["input_quantizer"]) == str(keras["kernel_quantizer"]) == "none"
    even = xc.load_bundle(folder / "even-kernel.npz")
    assert float(even["input_quantizer.clip_value"]) == 0.5 and float(even["pad_values"]) == -1.0
    assert str(xc.load_bundle(folder / "function-ste_tern.npz")["quantizer"]) == "ste_tern"
