"""The "cython" backend behind refbnn.kernels.binary_matmul/binary_conv2d and the layers that use
it: bit-identical to the NumPy reference (forward in eval and training mode, and the gradients)."""
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refbnn import kernels
from refbnn.layers import BinaryConv2d, BinaryLinear
from refbnn.methods import LayerFactory, get_method
from refbnn.models import build_model

kernels.compiled()   # ImportError with the build command when the extension is not built
seeds = st.integers(0, 2**32 - 1)


def signs(rng, shape, dtype):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(dtype)


@given(seeds, st.sampled_from([np.float32, np.float64]))
def test_binary_matmul_backend(kernel_path, seed, dtype):
    rng = np.random.default_rng(seed)
    m, n, k = (int(v) for v in rng.integers(0, 70, 3))
    a, b = signs(rng, (m, k), dtype), signs(rng, (n, k), dtype)
    if rng.random() < 0.5:
        a = np.asfortranarray(a)
    out = kernels.binary_matmul(a, b, backend="cython")
    assert out.dtype == dtype and np.array_equal(out, kernels.binary_matmul(a, b, backend="numpy"))


@given(seeds, st.sampled_from([np.float32, np.float64]))
def test_binary_conv2d_backend(kernel_path, seed, dtype):
    rng = np.random.default_rng(seed)
    g = int(rng.choice([1, 2]))
    c, o = g * int(rng.integers(1, 70)), g * int(rng.integers(1, 20))
    k = int(rng.integers(1, 4))
    s, p, d = int(rng.integers(1, 3)), int(rng.integers(0, 2)), int(rng.integers(1, 3))
    h = int(rng.integers(max(1, (k - 1) * d + 1 - 2 * p), 8))
    x = signs(rng, (int(rng.integers(0, 3)), c, h, h), dtype)[:, :, ::-1]      # a non-contiguous view
    w = signs(rng, (o, c // g, k, k), dtype)
    pv = float(rng.choice([0.0, 1.0, -1.0]))
    out = kernels.binary_conv2d(x, w, s, p, d, g, pv, backend="cython")
    ref = kernels.binary_conv2d(x, w, s, p, d, g, pv, backend="numpy")
    assert out.dtype == dtype and out.shape == ref.shape and np.array_equal(out, ref)


def test_backend_rejects_values_that_are_not_signs():
    a = np.ones((3, 4))
    a[1, 2] = 0.5
    with pytest.raises(ValueError, match=r"\+-1"):
        kernels.binary_matmul(a, np.ones((2, 4)), backend="cython")
    x = np.ones((1, 2, 4, 4), np.float32)
    x[0, 0, 0, 0] = 0.0
    with pytest.raises(ValueError, match=r"\+-1"):
        kernels.binary_conv2d(x, np.ones((3, 2, 3, 3), np.float32), backend="cython")


def test_backend_auto_uses_the_compiled_kernels():
    assert kernels.resolve_backend("auto", np.zeros(1)).__name__ == "refbnn.kernels.cython_backend"
    assert "cython" in kernels.available_backends()


def close(got, ref, rtol=1e-5):
    """float32 gradients of the compiled float ops against the reference's: the sums add in another
    order (each op's docstring states its bound); relative to the largest magnitude."""
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-30)
    return got.shape == ref.shape and float(np.abs(got - ref).max(initial=0.0)) <= rtol * scale


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("training", [False, True])
@given(seed=seeds)
def test_binary_layers_same_with_either_backend(kernel_path, training, dtype, seed):
    """Forward (eval and training) through the packed kernels equals the reference bit for bit. The
    backward too in float64 (the packed forward's cache, the reference's gradients); in float32 the
    compiled float ops compute the gradients, within float tolerance of the reference."""
    rng = np.random.default_rng(seed)
    pv = float(rng.choice([0.0, 1.0, -1.0]))
    for make, x in [
        (lambda b: BinaryConv2d(6, 5, 3, stride=2, padding=1, pad_value=pv, scale="mean_abs", bias=True,
                                backend=b, rng=1, dtype=dtype), rng.standard_normal((2, 6, 7, 7)).astype(dtype)),
        (lambda b: BinaryConv2d(4, 6, 2, padding=1, groups=2, pad_value=pv, backend=b, rng=2, dtype=dtype),
         rng.standard_normal((3, 4, 5, 5)).astype(dtype)),
        (lambda b: BinaryLinear(70, 9, scale="learned", backend=b, rng=3, dtype=dtype),
         rng.standard_normal((5, 70)).astype(dtype)),
    ]:
        fast, ref = make("cython").train(training), make("numpy").train(training)
        y1, c1 = fast.forward(x)
        y2, c2 = ref.forward(x)
        assert np.array_equal(y1, y2)
        g = rng.standard_normal(y1.shape).astype(dtype)
        same = np.array_equal if dtype == np.float64 else close
        assert same(fast.backward(g, c1), ref.backward(g, c2))
        for key in ref.grads:
            assert same(fast.grads[key], ref.grads[key]), key


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_resnet20_training_step_same_with_either_backend(dtype):
    """One forward/backward of the ResNet-20 BNN: identical logits (the binary products are exact; in
    float32 the compiled batch norm's statistics may differ in the last bits, so the logits are
    close) and gradients identical in float64, close in float32 (the compiled float ops)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 16, 16)).astype(dtype)
    nets = [build_model("resnet20", LayerFactory(get_method("bnn"), rng=0, backend=b, dtype=dtype), (3, 16, 16),
                        10, 0.5) for b in ("cython", "numpy")]
    outs = [net.forward(x) for net in nets]
    same = np.array_equal if dtype == np.float64 else (lambda a, b: close(a, b, 1e-4))
    assert same(outs[0][0], outs[1][0])
    g = rng.standard_normal(outs[0][0].shape).astype(dtype)
    for net, (_, cache) in zip(nets, outs):
        net.backward(g, cache)
    for (name, m1, key), (_, m2, _) in zip(nets[0].named_parameters(), nets[1].named_parameters()):
        if dtype == np.float64:
            assert np.array_equal(m1.grads[key], m2.grads[key]), name
        else:  # a sign flip of an activation near 0 changes a gradient entry: compare the bulk
            d = np.abs(m1.grads[key] - m2.grads[key])
            scale = max(float(np.abs(m2.grads[key]).max()), 1e-30)
            assert np.mean(d <= 1e-3 * scale) >= 0.99, name


def test_without_the_extension(monkeypatch):
    """As if the extension were not built: NumPy is used for "auto", "cython" and the compiled
    kernels raise ImportError saying how to build them, the NumPy parts still work."""
    for name in ("_bitpack", "cython_backend"):
        monkeypatch.setitem(sys.modules, f"refbnn.kernels.{name}", None)          # import -> ImportError
        monkeypatch.delattr(kernels, name, raising=False)
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setattr(kernels, "_load_errors", {})
    x = np.ones((2, 3))
    assert kernels.available_backends() == ["numpy"]
    assert kernels.resolve_backend("auto", x) is kernels.reference
    assert kernels.float_ops("auto", x.astype(np.float32)) is None          # the float ops: the reference
    with pytest.raises(ImportError, match="pip install"):
        kernels.float_ops("cython", x.astype(np.float32))
    assert np.array_equal(kernels.binary_matmul(x, x), x @ x.T)
    with pytest.raises(ImportError, match="pip install"):
        kernels.resolve_backend("cython", x)
    with pytest.raises(ImportError, match="pip install"):
        from refbnn.kernels import bgemm  # noqa: F401
    assert "pip install" in kernels.kernel_paths()["error"]
    assert kernels.unpack_bits(np.array([5], np.uint64), 3).tolist() == [-1.0, 1.0, -1.0]
    layer = BinaryLinear(3, 2, rng=0).eval()
    assert layer.forward(x)[0].shape == (2, 2)


def test_without_the_float_ops(monkeypatch):
    """The packed kernels built but not the float ops (or built from older sources): "auto" trains with
    the reference's float ops, "cython" says how to build them; the layers still train."""
    x = np.ones((2, 3, 4, 4), np.float32)
    assert kernels.float_ops("auto", x) is not None
    monkeypatch.setitem(sys.modules, "refbnn.kernels._floatops", None)           # import -> ImportError
    monkeypatch.delattr(kernels, "_floatops", raising=False)
    assert kernels.float_ops("auto", x) is None
    with pytest.raises(ImportError, match="pip install"):
        kernels.float_ops("cython", x)
    net = build_model("resnet20", LayerFactory(get_method("bnn"), rng=0), (3, 8, 8), 10, 0.25)
    out, cache = net.forward(np.ones((2, 3, 8, 8), np.float32))
    net.backward(np.ones_like(out), cache)


def test_float_ops_built_from_older_sources(monkeypatch):
    """An extension without one of the functions refbnn.ops calls counts as not built."""
    fast = kernels.float_ops("auto", np.ones(1, np.float32))
    monkeypatch.delattr(fast, "batchnorm_train_backward")
    assert kernels.float_ops("auto", np.ones(1, np.float32)) is None
    with pytest.raises(ImportError, match="older sources"):
        kernels.float_ops("cython", np.ones(1, np.float32))
