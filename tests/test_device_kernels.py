"""The GPU training path end to end, without a GPU: the engine on the simulated device
(tests/simdevice.py) with its binary products computed by the CUDA kernels under the emulation
harness (tests/cuda_emulation/).

On a GPU, ``backend="auto"`` sends a binary layer's product of CuPy arrays to
``refbnn.kernels.cupy_backend``, which is ``refbnn.kernels.cuda.Kernels`` on CuPy with a launcher
of compiled ``cupy.RawModule`` functions. Here the same ``Kernels`` runs on simulated device arrays
with a launcher that hands their buffers to the emulated ``.cu`` sources. So the layer code, the
kernel boundary, the argument checks, packing, the launches and the deferred reading of the
packing flags are the ones a GPU run goes through, and the training step must still equal the
NumPy reference bit for bit (the packed products are exact integers) and read the device once.
"""
from __future__ import annotations

import numpy as np
import pytest
import simdevice as sd

from refbnn import kernels
from refbnn.checks import array_module, to_host
from refbnn.device import move
from refbnn.methods import LayerFactory, get_method
from refbnn.models import build_model
from refbnn.optim import Adam
from refbnn.train import train_step

pytestmark = pytest.mark.gpu_emulated

INPUT = {"mlp": (64,), "resnet20": (3, 8, 8), "vgg_small": (3, 8, 8)}


@pytest.fixture(scope="module")
def device_kernels(cuda_emulation_library):
    """``refbnn.kernels.cuda.Kernels`` on the simulated device: what cupy_backend is on a GPU."""
    from cuda_emulation import emulator  # noqa: PLC0415 - tests/cuda_emulation/

    from refbnn.kernels import cuda  # noqa: PLC0415

    emulated = emulator.EmulatedLaunch(cuda_emulation_library)

    def launch(kernel, grid, block, args):  # a device array's buffer is the "device pointer"
        emulated(kernel, grid, block, tuple(a._a if isinstance(a, sd.DeviceArray) else a for a in args))

    k = cuda.Kernels(sd, launch)
    k.launches = emulated.launches
    return k


@pytest.fixture
def kernels_on_the_device(monkeypatch, device_kernels):
    """``backend="auto"`` on simulated device arrays resolves to the emulated CUDA kernels, as it
    resolves to cupy_backend for CuPy arrays."""
    real = kernels.resolve_backend

    def resolve(backend, x):
        return device_kernels if array_module(x) is sd and backend == "auto" else real(backend, x)

    monkeypatch.setattr(kernels, "resolve_backend", resolve)
    device_kernels.launches.clear()
    return device_kernels


def _run(model_name, method_name, backend, xp, steps=2):
    method = get_method(method_name)
    model = build_model(model_name, LayerFactory(method, rng=0, backend=backend), INPUT[model_name], 10, 0.25)
    method.on_epoch(model, 0, 10, "paper", rng=np.random.default_rng(7))
    opt = Adam(model, lr=1e-2)
    if xp is not np:
        model.to(xp)
        opt.to(xp)
    rng = np.random.default_rng(1)
    losses, syncs = [], []
    for _ in range(steps):
        x = rng.standard_normal((4, *INPUT[model_name])).astype(np.float32)
        y = rng.integers(0, 10, 4)
        before = len(sd.syncs)
        loss, _ = train_step(model, opt, None, move(x, xp), move(y, xp))
        syncs.append(len(sd.syncs) - before)
        losses.append(float(loss))
    model.eval()
    logits, _ = model.forward(move(np.random.default_rng(2).standard_normal((3, *INPUT[model_name]))
                                   .astype(np.float32), xp))
    return model.host_state_dict(), losses, to_host(logits), syncs


# the methods whose binary layers multiply exactly-binary operands (sign(0) = +-1 on both sides), so
# that training sends the product to the packed kernels: plain, with a learned per-channel scale
# (XNOR-Net++), with sign-Swish's estimator (BNN+), with the clipped STE
@pytest.mark.parametrize("model_name,method_name", [
    ("mlp", "bnn"), ("resnet20", "bnn"), ("resnet20", "xnorpp"), ("vgg_small", "bnnplus"), ("resnet20", "bnn_ste"),
])
def test_training_through_the_cuda_kernels_equals_the_reference(kernels_on_the_device, model_name, method_name):
    want_state, want_losses, want_logits, _ = _run(model_name, method_name, "numpy", np)
    sd.reset()
    got_state, got_losses, got_logits, syncs = _run(model_name, method_name, "auto", sd)
    launched = {kernel for kernel, _, _ in kernels_on_the_device.launches}
    assert {"pack_f32", "bgemm" if model_name == "mlp" else "bconv2d_float"} <= launched, launched
    assert got_losses == want_losses
    assert got_logits.tobytes() == want_logits.tobytes()
    assert want_state.keys() == got_state.keys()
    for k in want_state:
        assert got_state[k].tobytes() == want_state[k].tobytes(), k
    assert syncs == [1, 1], sd.syncs  # the packing flags join the step's one deferred read


def test_a_non_binary_value_reaching_a_kernel_fails_at_the_end_of_the_step(kernels_on_the_device):
    """pack_bits' flag is read with the step's other checks: a value that is not +-1 in a product the
    layer sends to the kernel still stops the step, with the kernel's message."""
    method = get_method("bnn")
    model = build_model("mlp", LayerFactory(method, rng=0), INPUT["mlp"], 10, 0.25).to(sd)
    opt = Adam(model, lr=1e-2)
    layer = next(m for _, m in model.modules() if getattr(m, "weight_quantizer", None) is not None)
    layer.weight_quantizer.forward = lambda w, training=True: (w, None)  # latent weights, not their signs
    before = {k: v.copy() for k, v in model.host_state_dict().items()}
    x = move(np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32), sd)
    with pytest.raises(ValueError, match=r"expected exactly \+-1 values"):
        train_step(model, opt, None, x, move(np.arange(4), sd))
    after = model.host_state_dict()
    assert all(after[k].tobytes() == before[k].tobytes() for k in before)
