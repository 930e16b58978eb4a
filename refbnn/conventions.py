"""The named choices on which BNN papers and their official code disagree.

Each field is a convention a quantizer or layer may read; ``PAPER`` and ``OFFICIAL`` select them
all at once (see ../shared/spec/algorithms.md section 1 for the sources):

- ``sign_zero``: the value of sign(0): +1 in the papers and Larq, 0 in ``torch.sign`` (official
  ReCU and IR-Net code).
- ``pad_value``: what a binary convolution pads its binarized input with: 0.0 (the official code
  binarizes, then zero-pads, so border taps see 0) or +1.0 / -1.0.
- ``clip_inclusive``: whether the clipped straight-through estimator passes the gradient at
  |x| == clip (BNN paper, Larq, ``torch.clamp``: yes) or not (``torch.nn.Hardtanh``: no).
- ``std_ddof``: 1 for the unbiased standard deviation (PyTorch's ``std``), 0 for the biased one.
- ``eps_inside_sqrt``: epsilon added to the variance (sqrt(var + eps)) or to the std (std + eps).
- ``grad_through_stats``: whether gradients flow through standardization statistics (official
  code: autograd does it) or the standardization is treated as identity (IR-Net Algorithm 1).
- ``schedule_clock``: "epoch" evaluates schedules once per epoch at a 0-based index e with progress
  e / E (official; the end value is never reached), "progress" uses a continuous progress in [0, 1].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .checks import array_module


@dataclass(frozen=True)
class Convention:
    name: str = "paper"
    sign_zero: float = 1.0
    pad_value: float = 0.0
    clip_inclusive: bool = True
    std_ddof: int = 1
    eps_inside_sqrt: bool = True
    grad_through_stats: bool = False
    schedule_clock: str = "progress"

    def __post_init__(self):
        if self.sign_zero not in (1.0, 0.0, -1.0):
            raise ValueError(f"sign_zero: expected 1.0, 0.0 or -1.0, got {self.sign_zero!r}")
        if self.pad_value not in (0.0, 1.0, -1.0):
            raise ValueError(f"pad_value: expected 0.0, 1.0 or -1.0, got {self.pad_value!r}")
        if self.std_ddof not in (0, 1):
            raise ValueError(f"std_ddof: expected 0 or 1, got {self.std_ddof!r}")
        if self.schedule_clock not in ("epoch", "progress"):
            raise ValueError(f"schedule_clock: expected 'epoch' or 'progress', got {self.schedule_clock!r}")

    def with_(self, **changes) -> "Convention":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)


PAPER = Convention(name="paper", sign_zero=1.0, pad_value=0.0, clip_inclusive=True, std_ddof=1,
                   eps_inside_sqrt=True, grad_through_stats=False, schedule_clock="progress")
OFFICIAL = Convention(name="official", sign_zero=0.0, pad_value=0.0, clip_inclusive=True, std_ddof=1,
                      eps_inside_sqrt=True, grad_through_stats=True, schedule_clock="epoch")
PRESETS = {"paper": PAPER, "official": OFFICIAL}


def get_convention(c) -> Convention:
    if isinstance(c, Convention):
        return c
    if c not in PRESETS:
        raise ValueError(f"unknown convention {c!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[c]


def sign(x, zero: float = 1.0):
    """sign(x) in x's dtype, with sign(0) = ``zero`` (+1: papers and Larq; 0: torch.sign)."""
    xp = array_module(x)
    one = x.dtype.type(1)
    if zero == 1.0:      # the same values as the general form below, in one pass
        return xp.where(x < 0, -one, one)
    if zero == -1.0:
        return xp.where(x > 0, one, -one)
    return xp.where(x > 0, one, xp.where(x < 0, -one, x.dtype.type(zero)))


def clip_mask(x, clip_value: float, inclusive: bool = True):
    """1[|x| <= clip] (inclusive) or 1[|x| < clip] (exclusive), as x's dtype."""
    a = abs(x)
    return ((a <= clip_value) if inclusive else (a < clip_value)).astype(x.dtype, copy=False)
