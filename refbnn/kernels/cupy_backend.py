"""The ``"cupy"`` backend: the reference's binary products on CuPy arrays, computed by the CUDA
kernels in ``refbnn/kernels/cuda/`` (XOR and ``__popcll`` on bit-packed words).

Same signatures and results as :mod:`refbnn.kernels.reference` (float +-1 in, integer-valued float
out, bit for bit). The ``.cu`` sources are compiled with NVRTC through ``cupy.RawModule`` the
first time a kernel is used on a device, then reused for the rest of the process (CuPy also keeps
the compiled code in its on-disk kernel cache).

This module imports CuPy; ``refbnn.kernels`` imports it only when the ``"cupy"`` backend is asked
for (a CuPy array with ``backend="auto"``, or ``refbnn info``), and reports why it is unavailable:
CuPy not installed, or installed with no usable CUDA device. The packed kernels themselves are
here too (``pack_bits``, ``bgemm``, ``bconv2d``, ``bmaxpool2d``, with the CPU kernels' arguments).

``bgemm`` (and ``binary_matmul``) run on the 1-bit tensor cores (``bgemm_tc.cu``,
``mma.sync...m16n8k256...b1.xor.popc``) on devices of compute capability 8.0 or later, and the
plain kernel (``bgemm.cu``) on older ones; ``tensor_cores=True`` / ``False`` forces either (the
results are the same bit for bit), see :func:`use_tensor_cores`.
"""
from __future__ import annotations

import threading

try:
    import cupy
except ImportError as exc:
    raise ImportError(f"CuPy is not installed ({exc}); install it with `pip install 'refbnn[gpu]'` "
                      "(the cupy-cuda13x wheel)") from exc

from . import cuda


def _unavailable() -> str | None:
    """Why CuPy cannot run kernels here, or None."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError, or a missing libcudart / driver
        return (f"CuPy {cupy.__version__} is installed but the CUDA runtime reports no usable device "
                f"({type(exc).__name__}: {exc}); a GPU and its driver are needed")
    if count == 0:
        return f"CuPy {cupy.__version__} is installed but there is no CUDA device"
    return None


_why = _unavailable()
if _why is not None:
    raise ImportError(_why)

_modules: dict[tuple[int, str], object] = {}   # (device id, source file) -> cupy.RawModule
_functions: dict[tuple[int, str], object] = {}  # (device id, kernel) -> its cupy.RawKernel
_lock = threading.Lock()


def _function(kernel: str):
    """The compiled kernel on the current device (compiled once per device and process)."""
    device = cupy.cuda.Device().id
    function = _functions.get((device, kernel))
    if function is not None:
        return function
    source = cuda.KERNEL_SOURCE[kernel]
    key = (device, source)
    try:
        with _lock:
            module = _modules.get(key)
            if module is None:
                module = _modules[key] = cupy.RawModule(code=cuda.read_source(source), options=cuda.NVRTC_OPTIONS)
        function = _functions[(device, kernel)] = module.get_function(kernel)
        return function
    except cupy.cuda.compiler.CompileException as exc:
        _modules.pop(key, None)
        raise RuntimeError(f"NVRTC could not compile {source}:\n{exc.get_message()}") from exc
    except (ImportError, OSError, RuntimeError) as exc:
        _modules.pop(key, None)
        if "nvrtc" in str(exc).lower():
            raise RuntimeError(f"NVRTC, the CUDA runtime compiler, is missing or does not load ({exc}); install "
                               "it with `pip install 'cuda-toolkit[nvrtc]==13.*'`") from exc
        raise


def compute_capability(device=None) -> tuple[int, int]:
    """(major, minor) compute capability of ``device`` (default: the current CuPy device)."""
    device = cupy.cuda.Device() if device is None else device
    cc = str(device.compute_capability)                 # CuPy gives e.g. "80", "90", "120"
    return int(cc[:-1]), int(cc[-1])


def use_tensor_cores(tensor_cores=None, device=None) -> bool:
    """Whether ``bgemm`` runs on the tensor cores (bgemm_tc.cu) on ``device`` (default: current).

    ``None``: when the compute capability is at least 8.0 (the ``m16n8k256`` 1-bit MMA needs sm_80).
    ``True`` / ``False`` force it; ``True`` on an older device raises ValueError.
    """
    if tensor_cores is None:
        return compute_capability(device) >= cuda.TC_MIN_CC
    if not isinstance(tensor_cores, bool):
        raise TypeError(f"tensor_cores: expected None, True or False, got {tensor_cores!r}")
    if tensor_cores and compute_capability(device) < cuda.TC_MIN_CC:
        dev = cupy.cuda.Device() if device is None else device
        raise ValueError("tensor_cores=True needs compute capability {}.{} or later (mma.sync m16n8k256 .b1); "
                         "CUDA device {} has {}.{}".format(*cuda.TC_MIN_CC, dev.id, *compute_capability(dev)))
    return tensor_cores


_tc_checked: set[int] = set()    # devices where bgemm_tc equalled bgemm (Kernels.check_tensor_cores)
_tc_lock = threading.Lock()      # not _lock: the check launches kernels, which take _lock to compile


def _tensor_cores_for_call(tensor_cores) -> bool:
    """use_tensor_cores on the current device; before the first tensor-core call on a device, the
    comparison of bgemm_tc with bgemm there (Kernels.check_tensor_cores: RuntimeError if they
    differ, then again on every later tensor-core call, never a wrong product)."""
    use = use_tensor_cores(tensor_cores)
    if use:
        device = cupy.cuda.Device()
        if device.id not in _tc_checked:
            with _tc_lock:
                if device.id not in _tc_checked:
                    _kernels.check_tensor_cores("CUDA device {} (compute capability {}.{})".format(
                        device.id, *compute_capability(device)))
                    _tc_checked.add(device.id)
    return use


def _launch(kernel, grid, block, args):
    _function(kernel)(tuple(grid), tuple(block), tuple(args))


_kernels = cuda.Kernels(cupy, _launch)


def _same_device(**arrays):
    """Refuse NumPy (or other) arrays among CuPy ones, and CuPy arrays on different devices; return
    the device they are on."""
    device = None
    first = None
    for name, a in arrays.items():
        if a is None:
            continue
        if not isinstance(a, cupy.ndarray):
            raise TypeError(f"{name}: expected a CuPy array (the other arguments are on the GPU), got "
                            f"{type(a).__module__}.{type(a).__name__}; move it with cupy.asarray")
        if device is None:
            device, first = a.device, name
        elif a.device.id != device.id:
            raise ValueError(f"{name} is on CUDA device {a.device.id} but {first} is on device {device.id}; "
                             "move them to one device")
    return device


def binary_matmul(a, b, tensor_cores=None):
    """``a @ b.T`` for +-1 CuPy matrices a (M, K), b (N, K) (refbnn.kernels.reference.binary_matmul);
    ``tensor_cores`` as in :func:`use_tensor_cores`."""
    with _same_device(a=a, b=b):
        return _kernels.binary_matmul(a, b, _tensor_cores_for_call(tensor_cores))


def binary_conv2d(x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, pad_value=0.0):
    """Convolution of +-1 CuPy activations (N, C, H, W) with +-1 weights (O, C/groups, kh, kw)."""
    with _same_device(x=x, w=w):
        return _kernels.binary_conv2d(x, w, stride, padding, dilation, groups, pad_value)


def pack_bits(x, axis=-1, polarity="lce"):
    """Signs of a CuPy array along ``axis`` -> uint64 words (as refbnn.kernels.pack_bits)."""
    with _same_device(x=x):
        return _kernels.pack_bits(x, axis, polarity)


def bgemm(a_words, b_words, k, tensor_cores=None):
    """int32 (M, N) +-1 dot products of packed rows (as refbnn.kernels.bgemm); on the tensor cores
    or not as :func:`use_tensor_cores` says for ``tensor_cores`` (same results either way)."""
    with _same_device(a_words=a_words, b_words=b_words):
        return _kernels.bgemm(a_words, b_words, k, _tensor_cores_for_call(tensor_cores))


def bconv2d(x_words, w_words, channels, stride=1, padding=0, dilation=1, groups=1, pad_value=0.0, **kwargs):
    """Binary convolution of packed CuPy words (as refbnn.kernels.bconv2d; output, multiplier, bias,
    clamp, thresholds, flip, layout by keyword)."""
    per_channel = {k: kwargs[k] for k in ("multiplier", "bias", "thresholds", "flip")
                   if k in kwargs and hasattr(kwargs[k], "shape")}
    with _same_device(x_words=x_words, w_words=w_words, **per_channel):
        return _kernels.bconv2d(x_words, w_words, channels, stride, padding, dilation, groups, pad_value, **kwargs)


def bmaxpool2d(x_words, kernel_size, stride=None, padding=0):
    """Binary max pool of packed CuPy words (as refbnn.kernels.bmaxpool2d)."""
    with _same_device(x_words=x_words):
        return _kernels.bmaxpool2d(x_words, kernel_size, stride, padding)
