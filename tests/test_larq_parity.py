"""`refbnn crosscheck` against Larq itself: QuantConv2D / QuantDense (NHWC, HWIO / (in, out) kernels) and
single quantizers, gradients from tf.GradientTape. Runs when TensorFlow and Larq are installed:

    pip install tensorflow-cpu==2.16.1 tf-keras==2.16.0 larq 'numpy<2'   # run with TF_USE_LEGACY_KERAS=1

(checked with TensorFlow 2.16, tf-keras 2.16.0, Larq 0.14.0, NumPy 1.26; Larq needs NumPy < 2.)

Every quantizer name that both Larq and refbnn's catalogue know is checked, so the test grows with the
catalogue.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Larq needs Keras 2 (tf-keras) on TF 2.16

import numpy as np  # noqa: E402
import pytest  # noqa: E402

lq = pytest.importorskip("larq", reason="Larq (TensorFlow) not installed; install tensorflow-cpu==2.16.1 "
                         "tf-keras==2.16.0 larq 'numpy<2' with TF_USE_LEGACY_KERAS=1 to run")
tf = pytest.importorskip("tensorflow", reason="TensorFlow not installed")

from refbnn import crosscheck as xc  # noqa: E402
from refbnn.quantizers import QUANTIZERS  # noqa: E402

ELEMENTWISE = [n for n in ("ste_sign", "approx_sign", "swish_sign", "ste_heaviside") if n in QUANTIZERS]
KERNEL = ELEMENTWISE + [n for n in ("magnitude_aware_sign",) if n in QUANTIZERS]


def with_specials(rng, shape):
    a = rng.standard_normal(shape)
    m = rng.random(shape) < 0.25
    a[m] = rng.choice(np.array([0.0, 1.0, -1.0]), size=int(m.sum()))
    return a.astype(np.float32)


def run_layer(layer, x, rng):
    """out, grad_x and the gradients of layer.trainable_weights for L = sum(out * grad_out)."""
    tx = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tx)
        y = layer(tx)
        g = tf.constant(rng.standard_normal(tuple(y.shape)).astype(np.float32))
        loss = tf.reduce_sum(y * g)
    grads = tape.gradient(loss, [tx] + list(layer.trainable_weights))
    return y.numpy(), g.numpy(), [gr.numpy() for gr in grads]


@pytest.mark.parametrize("input_quantizer", ELEMENTWISE)
@pytest.mark.parametrize("kernel_quantizer", KERNEL)
@pytest.mark.parametrize("padding,stride,pad_values", [("same", 1, 0.0), ("same", 1, 1.0), ("same", 2, 1.0),
                                                       ("valid", 1, 0.0)])
def test_quantconv2d(input_quantizer, kernel_quantizer, padding, stride, pad_values):
    rng = np.random.default_rng(0)
    x = with_specials(rng, (2, 6, 6, 3))
    layer = lq.layers.QuantConv2D(4, 3, strides=stride, padding=padding, pad_values=pad_values,
                                  input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                                  kernel_constraint=None, use_bias=True)
    layer.build(x.shape)
    kernel, bias = with_specials(rng, (3, 3, 3, 4)), rng.standard_normal(4).astype(np.float32)
    layer.set_weights([kernel, bias])
    out, g, (dx, dk, db) = run_layer(layer, x, rng)
    bundle = {"x": x, "kernel": kernel, "bias": bias, "grad_out": g, "out": out, "grad_x": dx, "grad_kernel": dk,
              "grad_bias": db, "stride": np.array(stride), "padding": np.array(padding),
              "pad_values": np.array(pad_values)}
    report = xc.crosscheck(bundle, input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer)
    assert report.passed, report.table()


@pytest.mark.parametrize("input_quantizer", ELEMENTWISE)
@pytest.mark.parametrize("kernel_quantizer", KERNEL)
def test_quantdense(input_quantizer, kernel_quantizer):
    rng = np.random.default_rng(1)
    x = with_specials(rng, (4, 6))
    layer = lq.layers.QuantDense(5, input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                                 kernel_constraint=None, use_bias=True)
    layer.build(x.shape)
    kernel, bias = with_specials(rng, (6, 5)), rng.standard_normal(5).astype(np.float32)
    layer.set_weights([kernel, bias])
    out, g, (dx, dk, db) = run_layer(layer, x, rng)
    bundle = {"x": x, "kernel": kernel, "bias": bias, "grad_out": g, "out": out, "grad_x": dx, "grad_kernel": dk,
              "grad_bias": db}
    report = xc.crosscheck(bundle, input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer)
    assert report.passed, report.table()


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_single_quantizer(name):
    rng = np.random.default_rng(2)
    x = with_specials(rng, (3, 7))
    g = rng.standard_normal(x.shape).astype(np.float32)
    tx = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tx)
        y = lq.quantizers.get(name)(tx)
        loss = tf.reduce_sum(y * g)
    bundle = {"x": x, "grad_out": g, "out": y.numpy(), "grad_x": tape.gradient(loss, tx).numpy()}
    report = xc.crosscheck(bundle, quantizer=name)
    assert report.passed, report.table()


def test_refbnn_export_checked_by_larq(tmp_path):
    """The other direction: a bundle exported by refbnn, recomputed by Larq."""
    (path,) = xc.export_bundles(tmp_path, input_quantizer="ste_sign", kernel_quantizer="ste_sign", padding="same",
                                params={"pad_values": 1.0}, dtype="float32")
    b = dict(np.load(path, allow_pickle=False))
    layer = lq.layers.QuantConv2D(b["kernel"].shape[-1], b["kernel"].shape[:2], padding="same", pad_values=1.0,
                                  input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint=None)
    layer.build(b["x"].shape)
    layer.set_weights([b["kernel"], b["bias"]])
    tx = tf.constant(b["x"])
    with tf.GradientTape() as tape:
        tape.watch(tx)
        y = layer(tx)
        loss = tf.reduce_sum(y * b["grad_out"])
    dx, dk, db = tape.gradient(loss, [tx] + list(layer.trainable_weights))
    np.testing.assert_allclose(y.numpy(), b["out"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx.numpy(), b["grad_x"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk.numpy(), b["grad_kernel"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db.numpy(), b["grad_bias"], rtol=1e-5, atol=1e-5)
