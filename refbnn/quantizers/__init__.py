"""Weight and activation quantizers: forward/backward pairs, looked up by name.

One file per family: sign.py (BinaryConnect, BNN, Bi-Real, BNN+), larq.py (Larq's remaining
quantizers), dorefa.py, xnor.py, irnet.py, recu.py, proxconnect.py (ProxConnect++ / BNN++). The
interface is in base.py; docs/usage.md ("Catalogue") lists every entry with its formulas.
"""
from __future__ import annotations

from .base import Quantizer
from .dorefa import DoReFa, DoReFaSign
from .irnet import EDE, LibraPB
from .larq import NoOp, SteHeaviside, SteTern
from .proxconnect import ProxConnectPair, ProxSign, SignSwish
from .recu import RecuActivation, RecuWeight
from .sign import ApproxSign, IdentitySteSign, MagnitudeAwareSign, SteSign, StochasticSign, SwishSign
from .xnor import XnorActivation, XnorWeight

# The plain name -> class table. Names follow Larq's where Larq has the quantizer.
QUANTIZERS: dict[str, type[Quantizer]] = {cls.name: cls for cls in [
    # Larq's catalogue, Larq's names and semantics
    SteSign, ApproxSign, SwishSign, MagnitudeAwareSign, SteHeaviside, SteTern, DoReFa, NoOp,
    # baselines
    IdentitySteSign, StochasticSign, XnorWeight, XnorActivation, DoReFaSign,
    # IR-Net
    LibraPB, EDE,
    # ReCU
    RecuWeight, RecuActivation,
    # ProxConnect++ / BNN++
    ProxConnectPair, SignSwish, ProxSign,
]}


def get_quantizer(name, **params) -> Quantizer | None:
    """A quantizer instance from a registry name and constructor parameters (an instance or None
    passes through unchanged)."""
    if name is None or isinstance(name, Quantizer):
        if params:
            raise ValueError("get_quantizer: parameters are only accepted with a quantizer name")
        return name
    if name not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {name!r}; known quantizers: {', '.join(sorted(QUANTIZERS))}")
    cls = QUANTIZERS[name]
    unknown = sorted(set(params) - set(cls.parameter_names()))
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {unknown}; accepted: {', '.join(cls.parameter_names())}")
    return cls(**params)


__all__ = ["QUANTIZERS", "Quantizer", "get_quantizer", "SteSign", "IdentitySteSign", "StochasticSign", "ApproxSign",
           "SwishSign", "MagnitudeAwareSign", "SteHeaviside", "SteTern", "NoOp", "DoReFa", "DoReFaSign", "XnorWeight",
           "XnorActivation", "LibraPB", "EDE", "RecuWeight", "RecuActivation", "ProxConnectPair", "SignSwish",
           "ProxSign"]
