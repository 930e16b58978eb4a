"""``NAME=VALUE`` options, read one way by ``refbnn train --param`` and ``refbnn crosscheck --param``, and
the spelling of None and of strings in a bundle's 0-d string settings.

A value is read as: ``none`` (any case) or ``null`` -> None; ``true``/``false`` -> bool; an int; a float;
otherwise the string itself. A value in quotes is always the string inside them: ``"none"`` or ``'none'``
-> the string ``'none'`` (in a shell: ``--param "input_quantizer.scale='none'"``), ``'1'`` -> the string
``'1'``. A bundle's 0-d string settings follow the same rule for None and quotes (npz has no None):
``"none"`` stands for None, ``"'none'"`` for the string ``'none'``; :func:`format_setting` writes a value
so that it reads back unchanged.
"""
from __future__ import annotations

_QUOTES = ("'", '"')


class ParamError(ValueError):
    """A ``--param`` item that is not ``NAME=VALUE``, or a name given twice."""


def _unquoted(text: str):
    """The string inside one pair of matching quotes, or None when ``text`` is not quoted."""
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] == text[0]:
        return text[1:-1]
    return None


def parse_value(text: str):
    """A ``--param`` value: a quoted value -> the string inside the quotes; ``none``/``null`` -> None,
    ``true``/``false`` -> bool, then int, float, else the string."""
    stripped = text.strip()
    inner = _unquoted(stripped)
    if inner is not None:
        return inner
    low = stripped.lower()
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


def read_setting(text: str):
    """A bundle's 0-d string setting as a value: ``"none"`` (any case) -> None, a quoted string -> the string
    inside the quotes (``"'none'"`` -> ``'none'``), any other string unchanged."""
    inner = _unquoted(text)
    if inner is not None:
        return inner
    return None if text.lower() == "none" else text


def format_setting(value):
    """What a bundle stores for a setting so that :func:`read_setting` (strings) reads ``value`` back: None ->
    ``"none"``; a string that would read as something else (``none``, or one in quotes) -> in quotes; any
    other value unchanged."""
    if value is None:
        return "none"
    if isinstance(value, str) and (value.lower() == "none" or _unquoted(value) is not None):
        return f"'{value}'"
    return value


def parse_params(items) -> dict:
    """``["tau=0.9", "clip_value=none", "scale='none'"]`` -> ``{"tau": 0.9, "clip_value": None,
    "scale": "none"}``."""
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ParamError(f"--param {item!r}: expected NAME=VALUE (VALUE none for None, 'none' in quotes for the "
                             f"string)")
        name = name.strip()
        if name in out:
            raise ParamError(f"--param {name} given twice")
        out[name] = parse_value(value)
    return out
