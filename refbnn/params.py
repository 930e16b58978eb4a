"""``NAME=VALUE`` options, read one way by ``refbnn train --param`` and ``refbnn crosscheck --param``."""
from __future__ import annotations


class ParamError(ValueError):
    """A ``--param`` item that is not ``NAME=VALUE``, or a name given twice."""


def parse_value(text: str):
    """A ``--param`` value: ``none`` -> None, ``true``/``false`` -> bool, then int, float, else the string."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_params(items) -> dict:
    """``["tau=0.9", "clip_value=none"]`` -> ``{"tau": 0.9, "clip_value": None}``."""
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ParamError(f"--param {item!r}: expected NAME=VALUE (VALUE 'none' for None)")
        name = name.strip()
        if name in out:
            raise ParamError(f"--param {name} given twice")
        out[name] = parse_value(value)
    return out
