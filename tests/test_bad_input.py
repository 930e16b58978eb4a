"""Bad input gets a clear error naming what was expected, before any arithmetic."""
import numpy as np
import pytest

from refbnn import kernels, ops
from refbnn.data import load_dataset
from refbnn.layers import BatchNorm1d, BatchNorm2d, BinaryConv2d, BinaryLinear, Conv2d, Linear
from refbnn.methods import get_method
from refbnn.models import build_model
from refbnn.quantizers import get_quantizer
from refbnn.train import TrainConfig

rng = np.random.default_rng(0)
X4 = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
W4 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)


@pytest.mark.parametrize("bad,err,match", [
    (X4[0], ValueError, "expected a 4-D array"),
    (X4.astype(np.int32), TypeError, "expected dtype float32 or float64"),
    (X4.astype(np.float16), TypeError, "float32 or float64"),
    ([[1.0]], TypeError, "expected a NumPy or CuPy array"),
])
def test_conv_rejects_bad_input(bad, err, match):
    with pytest.raises(err, match=match):
        ops.conv2d_forward(bad, W4)


def test_nan_and_inf_rejected():
    for v in (np.nan, np.inf, -np.inf):
        x = X4.copy()
        x[0, 0, 0, 0] = v
        with pytest.raises(ValueError, match="NaN or Inf"):
            ops.conv2d_forward(x, W4)
        with pytest.raises(ValueError, match="NaN or Inf"):
            Conv2d(3, 4, 3)(x)


def test_shape_mismatches():
    with pytest.raises(ValueError, match="input has 3 channels.*expects 5"):
        ops.conv2d_forward(X4, rng.standard_normal((4, 5, 3, 3)).astype(np.float32))
    with pytest.raises(ValueError, match="smaller than the"):
        ops.conv2d_forward(X4, rng.standard_normal((4, 3, 7, 7)).astype(np.float32))
    with pytest.raises(ValueError, match="input has 7 features"):
        Linear(6, 2)(np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match=r"bias: expected shape \(4\)"):
        ops.conv2d_forward(X4, W4, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="expected a 2-D input"):
        BatchNorm1d(3)(X4)
    with pytest.raises(ValueError, match="expected a 4-D input"):
        BatchNorm2d(3)(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"gamma: expected shape \(3\)"):
        ops.batchnorm_forward(X4, np.ones(2, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32),
                              np.ones(3, np.float32))
    with pytest.raises(ValueError, match="shapes differ"):
        ops.add_forward(X4, X4[:, :2])
    with pytest.raises(ValueError, match="dout: expected shape"):
        y, cache = ops.linear_forward(np.ones((2, 3)), np.ones((4, 3)))
        ops.linear_backward(np.ones((2, 5)), cache)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ops.batchnorm_forward(np.ones((1, 3)), *(np.ones(3),) * 4, training=True)


def test_dtype_mismatch():
    with pytest.raises(TypeError, match="dtype mismatch"):
        ops.conv2d_forward(X4, W4.astype(np.float64))
    with pytest.raises(TypeError, match="dtype mismatch"):
        Linear(5, 2)(np.zeros((3, 5), np.float64))


def test_binary_layers_reject_bad_input():
    with pytest.raises(ValueError, match="input has 4 channels"):
        BinaryConv2d(3, 4, 3)(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        BinaryLinear(3, 4)(np.full((2, 3), np.nan, np.float32))
    layer = BinaryLinear(3, 4).eval()  # kernel path in eval mode: same errors
    with pytest.raises(ValueError, match="input has 5 features"):
        layer(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="scale"):
        BinaryLinear(3, 4, scale="median")
    with pytest.raises(ValueError, match="pad_value"):
        BinaryConv2d(3, 4, 3, pad_value=0.5)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="known methods: .*bnn"):
        get_method("nope")
    with pytest.raises(ValueError, match="known quantizers: .*ste_sign"):
        get_quantizer("nope")
    with pytest.raises(ValueError, match="known data sets: digits"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="known models: mlp"):
        build_model("alexnet", None, (1, 8, 8), 10)
    with pytest.raises(ValueError, match="unknown backend"):
        kernels.binary_matmul(np.ones((2, 3)), np.ones((2, 3)), backend="fpga")
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig(optimizer="lion").resolved()
    with pytest.raises(ValueError, match="epochs: expected a positive"):
        TrainConfig(epochs=0).resolved()


def test_model_input_constraints():
    from refbnn.methods import METHODS, LayerFactory
    f = LayerFactory(METHODS["bnn"])
    with pytest.raises(ValueError, match="divisible by 8"):
        build_model("vgg_small", f, (3, 12, 12), 10)
    with pytest.raises(ValueError, match="expected image inputs"):
        build_model("resnet20", f, (40,), 10)


def test_kernel_interface_validates():
    with pytest.raises(ValueError, match="K must match"):
        kernels.binary_matmul(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="pad_value"):
        kernels.binary_conv2d(np.ones((1, 2, 3, 3)), np.ones((1, 2, 3, 3)), pad_value=2.0)
    with pytest.raises(ValueError, match="runs on CuPy arrays"):
        kernels.binary_matmul(np.ones((2, 3)), np.ones((2, 3)), backend="cupy")


def test_missing_compiled_backend_says_how_to_build(monkeypatch):
    """Simulate an install without the extension: 'auto' falls back to NumPy, 'cython' explains."""
    monkeypatch.setitem(kernels._OPTIONAL, "cython", "refbnn.kernels._not_built_here")
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setattr(kernels, "_load_errors", {})
    a = np.sign(rng.standard_normal((3, 70)))
    assert kernels.resolve_backend("auto", a) is kernels.reference
    np.testing.assert_array_equal(kernels.binary_matmul(a, a), a @ a.T)
    with pytest.raises(ImportError, match=r"not available .*pip install \."):
        kernels.binary_matmul(a, a, backend="cython")
