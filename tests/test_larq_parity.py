"""`refbnn crosscheck` against Larq itself, over the quantizer-pair matrix: every element-wise Larq
quantizer as the input quantizer, those and magnitude_aware_sign as the kernel quantizer, QuantConv2D
(padding same/valid, stride 1/2, pad_values 0/1; NHWC, HWIO kernels) and QuantDense, each quantizer
alone, and the other direction (a bundle exported by refbnn, recomputed by Larq).

Larq 0.14 needs NumPy < 2 and refbnn NumPy >= 2, so Larq runs in an environment of its own, whose Python
``REFBNN_LARQ_PYTHON`` names (.ci/run makes it from .ci/larq-requirements.txt and sets it): the module
records the matrix there once (``refbnn/crosscheck/record_keras.py --set parity``), and each test checks
one bundle with ``crosscheck(path)``, no options (the bundle names its quantizers and geometry). Where
TensorFlow and Larq import in this environment itself, they are used directly. Otherwise skipped.
"""
import importlib.util
import os
import subprocess

import numpy as np
import pytest

from refbnn import crosscheck as xc
from refbnn.crosscheck import record_keras as rk
from refbnn.quantizers import QUANTIZERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDER = os.path.join(ROOT, "refbnn", "crosscheck", "record_keras.py")
LARQ_PYTHON = os.environ.get("REFBNN_LARQ_PYTHON")
SKIP_REASON = ("no Larq: set REFBNN_LARQ_PYTHON to a Python with TensorFlow and Larq (.ci/run makes one: "
               "pip install -r .ci/larq-requirements.txt, then pip install --no-deps tf-keras==2.21.0)")

INPUT = [n for n in rk.PARITY_INPUT_QUANTIZERS if n in QUANTIZERS]
KERNEL = [n for n in rk.PARITY_KERNEL_QUANTIZERS if n in QUANTIZERS]


def larq_in_process():
    return not LARQ_PYTHON and importlib.util.find_spec("larq") is not None


def run_recorder(*args):
    """record_keras.py with ``args``, in the Larq environment (or in this process where Larq imports)."""
    if LARQ_PYTHON:
        proc = subprocess.run([LARQ_PYTHON, RECORDER, *args], capture_output=True, text=True, timeout=900,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert proc.returncode == 0, proc.stderr[-4000:]
    elif larq_in_process():
        assert rk.main(list(args)) == 0
    else:
        pytest.skip(SKIP_REASON)


@pytest.fixture(scope="module")
def parity_dir(tmp_path_factory):
    if not LARQ_PYTHON and not larq_in_process():
        pytest.skip(SKIP_REASON)
    out = tmp_path_factory.mktemp("larq-parity")
    run_recorder("--set", "parity", "--out", str(out))
    return out


def check(path, **meta):
    bundle = xc.load_bundle(path)
    for k, v in meta.items():
        assert str(bundle[k]) == str(v), (k, bundle[k], v)
    report = xc.crosscheck(path)
    assert report.passed, report.table()


@pytest.mark.parametrize("input_quantizer", INPUT)
@pytest.mark.parametrize("kernel_quantizer", KERNEL)
@pytest.mark.parametrize("padding,stride,pad_values", rk.PARITY_CONV_GEOMETRIES)
def test_quantconv2d(parity_dir, input_quantizer, kernel_quantizer, padding, stride, pad_values):
    check(parity_dir / rk.parity_conv_name(input_quantizer, kernel_quantizer, padding, stride, pad_values),
          input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer, padding=padding, stride=stride,
          pad_values=float(pad_values))


@pytest.mark.parametrize("input_quantizer", INPUT)
@pytest.mark.parametrize("kernel_quantizer", KERNEL)
def test_quantdense(parity_dir, input_quantizer, kernel_quantizer):
    check(parity_dir / rk.parity_dense_name(input_quantizer, kernel_quantizer), input_quantizer=input_quantizer,
          kernel_quantizer=kernel_quantizer)


@pytest.mark.parametrize("name", INPUT)
def test_single_quantizer(parity_dir, name):
    check(parity_dir / rk.parity_quantizer_name(name), quantizer=name)


EXPORTS = {
    "conv-same-pad1": dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", padding="same",
                           params={"pad_values": 1.0}),
    "conv-bireal-valid-stride2": dict(input_quantizer="approx_sign", kernel_quantizer="magnitude_aware_sign",
                                      padding="valid", params={"stride": 2}),
    "dense-tern-clip0.5": dict(input_quantizer="ste_sign", kernel_quantizer="ste_tern", layer="linear",
                               params={"clip_value": 0.5}),
    "swish_sign": dict(quantizer="swish_sign", part="input", layout="nhwc", params={"beta": 3.0}),
    "dorefa-weights": dict(quantizer="dorefa_quantizer", part="weight", layout="nhwc",
                           params={"mode": "weights", "k_bit": 3}),
}


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """name -> (refbnn's exported bundle, Larq's recomputation of it), one Larq run for all."""
    if not LARQ_PYTHON and not larq_in_process():
        pytest.skip(SKIP_REASON)
    root = tmp_path_factory.mktemp("larq-replay")
    paths = {}
    for name, kw in EXPORTS.items():
        (path,) = xc.export_bundles(root / "refbnn" / name, dtype="float32", **kw)
        paths[name] = path
    run_recorder("--replay", *paths.values(), "--out", str(root / "larq"))
    return {name: (path, root / "larq" / os.path.basename(path)) for name, path in paths.items()}


@pytest.mark.parametrize("name", EXPORTS)
def test_refbnn_export_checked_by_larq(replayed, name):
    """The other direction: a bundle exported by refbnn, recomputed by Larq (record_keras.py --replay) from
    the bundle's own inputs and settings; Larq's outputs must equal refbnn's."""
    path, larq_path = replayed[name]
    ours, theirs = xc.load_bundle(path), xc.load_bundle(larq_path)
    outputs = [k for k in ("out", "grad_x", "grad_kernel", "grad_bias") if k in ours]
    assert set(outputs) <= set(theirs) and len(outputs) >= 2
    for k in outputs:
        np.testing.assert_allclose(theirs[k], ours[k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert xc.crosscheck(larq_path).passed  # Larq's bundle names everything refbnn needs
