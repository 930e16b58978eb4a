"""Build script: the package is declared in pyproject.toml; this file adds the compiled kernels.

Cython sources live in src_cython/ and are compiled into extensions inside ``refbnn``.
"""
from setuptools import setup

setup()
