"""Run refbnn's CUDA kernels (refbnn/kernels/cuda/*.cu) on the CPU: see README.md beside this file.

:func:`build` compiles every ``.cu`` source as C++ with ``cuda_emulation.h`` into one shared
library (g++, in a directory the caller gives), and :class:`EmulatedLaunch` is a
``launch(kernel, grid, block, args)`` for :class:`refbnn.kernels.cuda.Kernels` that runs a kernel
there on NumPy arrays: each array is passed as the address of its first element, each NumPy
scalar by value with its own C type (the library checks every argument's size against the
kernel's parameter before it runs anything).
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np

from refbnn.kernels import cuda

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_emulation.h"
CXXFLAGS = ["-std=c++17", "-O1", "-fPIC", "-shared", "-pthread", "-ffp-contract=off", "-Wall", "-Werror",
            "-Wno-unused-function"]


def compiler() -> str | None:
    return shutil.which("g++")


# the harness's own test kernels (source beside this file -> kernels), built with refbnn's
SELFTEST_SOURCES = {"selftest.cu": ("selftest_syncwarp",)}


def build(directory: Path) -> Path:
    """Compile every kernel source (refbnn's and :data:`SELFTEST_SOURCES`) into
    ``directory/libcuda_emulation.so``; CalledProcessError (with g++'s output) when one does not
    compile as C++ under the harness."""
    directory = Path(directory)
    sources = [(cuda.source_path(name), kernels) for name, kernels in cuda.SOURCES.items()]
    sources += [(HERE / name, kernels) for name, kernels in SELFTEST_SOURCES.items()]
    units = []
    for path, kernels in sources:
        unit = directory / f"emu_{path.stem}.cpp"
        exports = "\n".join(f"EMU_EXPORT({k})" for k in kernels)
        unit.write_text(f'#include "{HEADER}"\n#include "{path}"\n{exports}\n')
        units.append(str(unit))
    lib = directory / "libcuda_emulation.so"
    subprocess.run([compiler(), *CXXFLAGS, "-o", str(lib), *units], check=True, capture_output=True, text=True)
    return lib


_C_SCALARS = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
              np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.float32): ctypes.c_float,
              np.dtype(np.float64): ctypes.c_double}


class EmulatedLaunch:
    """``launch(kernel, grid, block, args)`` on the emulation library; records every launch."""

    def __init__(self, lib_path: Path):
        self.lib = ctypes.CDLL(str(lib_path))
        self.launches: list[tuple[str, tuple, tuple]] = []
        self._lock = threading.Lock()      # one launch at a time: __shared__ and the barrier are global

    def __call__(self, kernel, grid, block, args):
        keep, pointers, sizes = [], [], []
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                c = ctypes.c_void_p(a.ctypes.data)
            elif isinstance(a, np.generic) and a.dtype in _C_SCALARS:
                c = _C_SCALARS[a.dtype](a.item())
            else:     # CuPy would guess a C type for a Python scalar: the kernels take exact types only
                raise TypeError(f"{kernel}: argument {i} is {type(a).__name__}; expected an array or a NumPy scalar")
            keep.append(c)
            pointers.append(ctypes.cast(ctypes.pointer(c), ctypes.c_void_p))
            sizes.append(ctypes.sizeof(c))
        fn = getattr(self.lib, f"emu_launch_{kernel}")
        fn.restype = ctypes.c_int
        n = len(args)
        with self._lock:
            rc = fn((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), (ctypes.c_void_p * n)(*pointers),
                    (ctypes.c_longlong * n)(*sizes), n)
        if rc != 0:
            raise RuntimeError(f"emulated launch of {kernel} refused (code {rc}): "
                               + ("wrong number of arguments" if rc <= -1000 and rc > -2000 else
                                  "bad grid or block" if rc == -2000 else f"argument {-rc - 1} has the wrong size"))
        self.launches.append((kernel, tuple(grid), tuple(block)))
