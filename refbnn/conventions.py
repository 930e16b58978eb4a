"""The named choices on which BNN papers and their official code disagree.

Each field is a convention a quantizer, layer or schedule may read; ``PAPER`` and ``OFFICIAL``
select them all at once. Every quantizer says which fields it reads in its ``convention_kwargs``
(the mapping from a convention to its constructor arguments); the binary layers built by
``refbnn.methods.LayerFactory`` read ``pad_value`` and ``bias_order``; explicit constructor
arguments always win over the convention. Sources: IR-Net (Qin et al., CVPR 2020, arXiv 1909.10788)
and its code (htqin/IR-Net); ReCU (Xu et al., ICCV 2021, arXiv 2103.12369) and its code
(z-hXu/ReCU @ 9a73bed7a6452736184795759770ae17ad0308ec, cifar/modules/binarized_modules.py, cited
below as "ReCU code L<n>"); Bi-Real Net (arXiv 1808.00278); Larq.

| field                | paper                               | official code                          |
|----------------------|-------------------------------------|----------------------------------------|
| ``sign_zero``        | +1 (BNN, IR-Net Eq. 3, ReCU Eq. 2,  | 0 (``torch.sign`` in the ReCU and      |
|                      | Larq)                               | IR-Net code)                           |
| ``pad_value``        | 0.0 (binarize, then zero-pad)       | 0.0 (border taps see 0, a third value) |
| ``clip_inclusive``   | True (BNN: 1[abs(x) <= 1])          | True (``torch.clamp`` passes at bounds)|
| ``std_ddof``         | 1                                   | 1 (``torch.std``/``var`` default)      |
| ``eps_inside_sqrt``  | True                                | True (ReCU: sqrt(var + 1e-5))          |
| ``standardize_grad`` | "identity": the standardization is  | "through": autograd differentiates the |
|                      | the identity in the backward        | mean and the std (IR-Net code; ReCU    |
|                      | (IR-Net Algorithm 1 line 9)         | code L20-21, nothing detached)         |
| ``schedule_clock``   | "progress": p = e / (E - 1), the    | "epoch": p = e / E, the end value is   |
|                      | end value is reached                | never reached                          |
| ``bias_order``       | "after_scale": out = alpha conv + b | "before_scale": out = alpha (conv + b) |
|                      | (an affine offset of the layer's    | (ReCU code L35-39: the bias goes into  |
|                      | output; no paper puts a bias in its | ``F.conv2d``, then the output is       |
|                      | scaled binary product)              | multiplied by alpha)                   |
| ``recu_alpha``       | "analytic": alpha = b(2 tau - 1)    | "learned": per-output-channel alpha,   |
|                      | (ReCU Eq. 13 / A1)                  | init U[0, 1) (ReCU code L13, L39)      |
| ``recu_act_norm``    | False                               | True: activations divided by their     |
|                      |                                     | per-sample std in training mode (L26-29)|
| ``recu_ws_center``   | False (ReCU Eq. 22: no centering)   | True (code L20 centers each channel)   |
| ``bireal_scaled_grad``| True (Bi-Real paper, Larq: the     | False (Bi-Real/ReActNet code: the      |
|                      | detached scale multiplies the       | gradient is 1[abs(w) <= 1], unscaled)  |
|                      | weight gradient)                    |                                        |

Field meanings:

- ``sign_zero``: the value of sign(0).
- ``pad_value``: what a binary convolution pads its binarized input with: 0.0 or +1.0 / -1.0.
- ``clip_inclusive``: whether a clipped straight-through estimator passes the gradient at
  abs(x) == clip (``torch.clamp``, Larq) or not (``torch.nn.Hardtanh``).
- ``std_ddof``: 1 for the unbiased standard deviation, 0 for the biased one.
- ``eps_inside_sqrt``: epsilon added to the variance (sqrt(var + eps)) or to the std (std + eps).
- ``standardize_grad``: how the gradient passes a standardization y = gain (x - mean) / s (IR-Net's
  Libra-PB, ReCU's weights, ReCU's per-sample activation normalization; see
  ``refbnn.quantizers.standardize``), one of ``STANDARDIZE_GRADS``:

  - "through": mean and std are differentiated, as autograd does in both official codes;
  - "detached": mean and std are constants, dL/dx = gain dL/dy / s (for ReCU's weights
    gain / s = 2 sqrt(2) / sigma_o, about 48 for Kaiming-initialised 3x3 convs with 64 channels);
  - "identity": the standardization is the identity in the backward, dL/dx = dL/dy (IR-Net's
    Algorithm 1, line 9, which applies the estimator's derivative at the standardized weights
    directly to the latent weights).

  The paper preset uses "identity": IR-Net's Algorithm 1 states it; the ReCU paper gives its
  standardization only as a forward map (Eq. 19-23) and the straight-through rule of sign, no
  gradient for the standardization, so refbnn follows IR-Net's algorithm, on which ReCU builds. The
  official preset uses "through" (neither code detaches anything). "detached" is the third reading,
  selectable by hand. Old spelling: ``grad_through_stats`` (a bool) is still accepted by
  ``Convention.with_`` (True -> "through", False -> "identity") and readable as a property
  (``standardize_grad == "through"``).
- ``schedule_clock``: how a per-epoch schedule turns the 0-based epoch index e of E epochs into
  a progress value p in [0, 1] (see ``refbnn.schedules.schedule_progress``).
- ``bias_order``: where a binary layer with a per-channel scale alpha adds its bias b (one of
  ``BIAS_ORDERS``): "after_scale", out = alpha op(x_b, w_b) + b, dL/db = sum dout, dL/dalpha =
  sum dout op(x_b, w_b); "before_scale", out = alpha (op(x_b, w_b) + b), dL/db = sum alpha dout,
  dL/dalpha = sum dout (op(x_b, w_b) + b). Without a scale the two are the same. IR-Net's code adds
  its (unused) bias inside its conv and has no scale in the layer, so there the order is moot.
- ``recu_alpha``, ``recu_act_norm``, ``recu_ws_center``: ReCU's three paper/code differences
  that the generic fields do not cover (the scaling factor, the activation normalization and the
  centering of the weight standardization).
- ``bireal_scaled_grad``: Bi-Real's magnitude-aware weight gradient.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .checks import array_module

STANDARDIZE_GRADS = ("through", "detached", "identity")
BIAS_ORDERS = ("after_scale", "before_scale")


@dataclass(frozen=True)
class Convention:
    name: str = "paper"
    sign_zero: float = 1.0
    pad_value: float = 0.0
    clip_inclusive: bool = True
    std_ddof: int = 1
    eps_inside_sqrt: bool = True
    standardize_grad: str = "identity"
    schedule_clock: str = "progress"
    bias_order: str = "after_scale"
    recu_alpha: str = "analytic"
    recu_act_norm: bool = False
    recu_ws_center: bool = False
    bireal_scaled_grad: bool = True

    def __post_init__(self):
        if self.sign_zero not in (1.0, 0.0, -1.0):
            raise ValueError(f"sign_zero: expected 1.0, 0.0 or -1.0, got {self.sign_zero!r}")
        if self.pad_value not in (0.0, 1.0, -1.0):
            raise ValueError(f"pad_value: expected 0.0, 1.0 or -1.0, got {self.pad_value!r}")
        if self.std_ddof not in (0, 1):
            raise ValueError(f"std_ddof: expected 0 or 1, got {self.std_ddof!r}")
        if self.schedule_clock not in ("epoch", "progress"):
            raise ValueError(f"schedule_clock: expected 'epoch' or 'progress', got {self.schedule_clock!r}")
        if self.standardize_grad not in STANDARDIZE_GRADS:
            raise ValueError(f"standardize_grad: expected one of {list(STANDARDIZE_GRADS)}, "
                             f"got {self.standardize_grad!r}")
        if self.bias_order not in BIAS_ORDERS:
            raise ValueError(f"bias_order: expected one of {list(BIAS_ORDERS)}, got {self.bias_order!r}")
        if self.recu_alpha not in ("analytic", "learned"):
            raise ValueError(f"recu_alpha: expected 'analytic' or 'learned', got {self.recu_alpha!r}")

    @property
    def grad_through_stats(self) -> bool:
        """The old boolean spelling of ``standardize_grad``: True iff it is "through"."""
        return self.standardize_grad == "through"

    def with_(self, **changes) -> "Convention":
        """A copy with fields changed; the old ``grad_through_stats=True/False`` is accepted as
        ``standardize_grad="through"/"identity"``."""
        if "grad_through_stats" in changes:
            old = changes.pop("grad_through_stats")
            if not isinstance(old, bool):
                raise ValueError(f"grad_through_stats: expected True or False, got {old!r}")
            if "standardize_grad" in changes:
                raise ValueError("give standardize_grad or its old spelling grad_through_stats, not both")
            changes["standardize_grad"] = "through" if old else "identity"
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)


PAPER = Convention(name="paper", sign_zero=1.0, pad_value=0.0, clip_inclusive=True, std_ddof=1,
                   eps_inside_sqrt=True, standardize_grad="identity", schedule_clock="progress",
                   bias_order="after_scale", recu_alpha="analytic", recu_act_norm=False, recu_ws_center=False,
                   bireal_scaled_grad=True)
OFFICIAL = Convention(name="official", sign_zero=0.0, pad_value=0.0, clip_inclusive=True, std_ddof=1,
                      eps_inside_sqrt=True, standardize_grad="through", schedule_clock="epoch",
                      bias_order="before_scale", recu_alpha="learned", recu_act_norm=True, recu_ws_center=True,
                      bireal_scaled_grad=False)
PRESETS = {"paper": PAPER, "official": OFFICIAL}


def get_convention(c) -> Convention:
    if isinstance(c, Convention):
        return c
    if c not in PRESETS:
        raise ValueError(f"unknown convention {c!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[c]


def sign(x, zero: float = 1.0):
    """sign(x) in x's dtype, with sign(0) = ``zero`` (+1: papers and Larq; 0: torch.sign)."""
    # The three sign(0) values the quantizers accept, as arithmetic on the comparison masks: the same
    # values as the general form below (NaN included: +1, -1, 0), about 20x faster than a where() on a
    # random mask (the branchy select is the bottleneck there).
    if zero == 1.0:      # 1 - 2 [x < 0]
        out = (x < 0).astype(x.dtype)
        out *= -2
        out += 1
        return out
    if zero == -1.0:     # 2 [x > 0] - 1
        out = (x > 0).astype(x.dtype)
        out *= 2
        out -= 1
        return out
    if zero == 0.0:      # [x > 0] - [x < 0]
        out = (x > 0).astype(x.dtype)
        out -= (x < 0)
        return out
    xp = array_module(x)
    one = x.dtype.type(1)
    return xp.where(x > 0, one, xp.where(x < 0, -one, x.dtype.type(zero)))


def clip_mask(x, clip_value: float, inclusive: bool = True):
    """1[|x| <= clip] (inclusive) or 1[|x| < clip] (exclusive), as x's dtype."""
    a = abs(x)
    return ((a <= clip_value) if inclusive else (a < clip_value)).astype(x.dtype, copy=False)
