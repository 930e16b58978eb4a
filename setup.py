"""Build script: the package is declared in pyproject.toml; this file adds the compiled kernels.

Cython sources live in src_cython/ and are compiled into ``refbnn.kernels._bitpack`` (the
bit-packed binary kernels) and ``refbnn.kernels._floatops`` (the float ops of the training step). The build
sets its own flags: -O3, OpenMP when the compiler has it, -ffp-contract=off (the float output
transform must round like NumPy). It never uses -march: the AVX2 and AVX-512 kernels carry
per-function target attributes and are chosen at run time, so one build runs on any x86-64 (and
the scalar path everywhere else).
"""
import os
import shutil
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = ["src_cython/_bitpack.pyx", "src_cython/bk_common.c", "src_cython/bk_scalar.c", "src_cython/bk_avx2.c",
           "src_cython/bk_avx512.c", "src_cython/bk_neon.c"]


def _compiles(compiler, flags):
    """Whether ``compiler`` builds and links a tiny OpenMP shared library with ``flags`` (linked as
    the extension will be, so CFLAGS/LDFLAGS such as -fsanitize=address apply)."""
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "omp_test.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint refbnn_omp_test(void) { return omp_get_max_threads(); }\n")
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
        compiler.link_shared_object(objs, os.path.join(tmp, "omp_test.so"), extra_postargs=flags)
        return True
    except Exception:  # noqa: BLE001 - any compiler or linker failure means "no"
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        if msvc:
            flags, omp = ["/O2", "/fp:precise"], ["/openmp"]
        else:
            flags, omp = ["-O3", "-ffp-contract=off"], ["-fopenmp"]
        use_omp = os.environ.get("REFBNN_NO_OPENMP") != "1" and _compiles(self.compiler, omp)
        if not use_omp:
            print("refbnn: building the kernels without OpenMP (threads= will run on one thread)", file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = flags + (omp if use_omp else []) + ext.extra_compile_args
            ext.extra_link_args = (omp if use_omp and not msvc else []) + ext.extra_link_args
        super().build_extensions()


# The compiled float ops of the training step (convolution gradients, batch norm, element-wise ops):
# implementations of refbnn.ops, tested against it within a stated float tolerance.
FLOAT_SOURCES = ["src_cython/_floatops.pyx", "src_cython/fo_conv.c", "src_cython/fo_norm.c"]
_MACROS = [("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")]

extensions = [Extension("refbnn.kernels._bitpack", SOURCES, include_dirs=["src_cython", numpy.get_include()],
                        define_macros=_MACROS, depends=["src_cython/bitkernels.h", "src_cython/bk_epilogue.h"]),
              Extension("refbnn.kernels._floatops", FLOAT_SOURCES, include_dirs=["src_cython", numpy.get_include()],
                        define_macros=_MACROS,
                        depends=["src_cython/fo_conv.h", "src_cython/fo_norm.h", "src_cython/fo_conv.pxi",
                                 "src_cython/fo_norm.pxi"])]

setup(ext_modules=cythonize(extensions, build_dir="build/cython", language_level=3),
      cmdclass={"build_ext": BuildExt})
