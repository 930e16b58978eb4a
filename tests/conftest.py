import atexit
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings

# "ci": the default profile, bounded so the suite stays fast; REFBNN_HYPOTHESIS_EXAMPLES raises the
# example count for long fuzzing runs (e.g. 100000).
settings.register_profile("ci", max_examples=int(os.environ.get("REFBNN_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile("ci")

# The kernels' path choice is cached in the user's cache directory (refbnn/kernels/dispatch.py); the
# suite (and the subprocesses it starts) writes its own, never the real one in ~/.cache.
_CACHE = tempfile.mkdtemp(prefix="refbnn-test-cache-")
os.environ["REFBNN_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)

KERNEL_PATHS = ("avx512", "avx2", "avx2+popcnt", "neon", "scalar")


@pytest.fixture(params=KERNEL_PATHS)
def kernel_path(request, monkeypatch):
    """Each SIMD path of the compiled kernels in turn, forced through $REFBNN_KERNEL_PATH; the
    paths this CPU lacks are skipped."""
    from refbnn.kernels import compiled  # noqa: PLC0415 - the kernel tests need the extension

    supported = compiled().supported_paths()
    if request.param not in supported:
        pytest.skip(f"this CPU does not support the {request.param} path (supported: {supported})")
    monkeypatch.setenv("REFBNN_KERNEL_PATH", request.param)
    return request.param


@pytest.fixture(scope="session")
def cuda_emulation_library(tmp_path_factory):
    """The CUDA kernels (refbnn/kernels/cuda/*.cu) compiled for the CPU emulation harness
    (tests/cuda_emulation/), once per session."""
    from cuda_emulation import emulator  # noqa: PLC0415 - tests/cuda_emulation/

    if emulator.compiler() is None:
        pytest.skip("no g++ on this machine: the CUDA emulation harness compiles the kernels with it")
    return emulator.build(tmp_path_factory.mktemp("cuda_emulation"))
