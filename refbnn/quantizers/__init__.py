"""Weight and activation quantizers: forward/backward pairs, looked up by name."""
from __future__ import annotations

from .base import Quantizer
from .sign import IdentitySteSign, SteSign

# The plain name -> class table. Names follow Larq's where Larq has the quantizer.
QUANTIZERS: dict[str, type[Quantizer]] = {
    "ste_sign": SteSign,
    "identity_ste_sign": IdentitySteSign,
}


def get_quantizer(name, **params) -> Quantizer | None:
    """A quantizer instance from a name (or pass an instance / None through)."""
    if name is None or isinstance(name, Quantizer):
        return name
    if name not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {name!r}; known quantizers: {', '.join(sorted(QUANTIZERS))}")
    return QUANTIZERS[name](**params)


__all__ = ["QUANTIZERS", "Quantizer", "get_quantizer", "SteSign", "IdentitySteSign"]
