"""What the PyTorch parity test modules share: torch itself (skipped with the reason when missing,
an error under CI, where .ci/run installs it), the comparison, and the tolerance.

Needs PyTorch: pip install torch==2.13.0 (CI installs it).
"""
import os

import numpy as np
import pytest
from hypothesis import strategies as st

if os.environ.get("CI") == "true":  # .ci/run installs torch: there a missing torch is an error, not a skip
    import torch
else:
    torch = pytest.importorskip("torch", reason="PyTorch not installed; pip install torch==2.13.0 to run the parity "
                                "tests")
F = torch.nn.functional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-10
seeds = st.integers(0, 2**32 - 1)


def rel(a, b):
    """max |a - b| relative to the larger tensor's scale (floor 1)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max(initial=0.0) / max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), 1.0))


def T(a, grad=True):
    """A float64 torch tensor (requiring its gradient by default) from an array."""
    return torch.tensor(np.asarray(a, np.float64), requires_grad=grad)
