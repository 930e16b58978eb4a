"""Cross-checking: compare refbnn with your own implementation through reference bundles.

A *reference bundle* is an ``.npz`` of named arrays (read with ``allow_pickle=False``):

- inputs: ``x``, ``weight`` (``kernel`` in the NHWC/Larq layout), ``bias``, ``alpha``, ``grad_out``;
- expected outputs (any that apply): ``out``, ``grad_x``, ``grad_weight`` (``grad_kernel``),
  ``grad_bias``, ``grad_alpha``; gradients are those of L = sum(out * grad_out);
- settings as 0-d arrays: ``stride``, ``padding`` (an int, a pair, a 4-vector (top, bottom, left, right),
  or ``"same"``/``"valid"``),
  ``dilation``, ``groups``, ``pad_value`` (Larq: ``pad_values``), ``training``, ``epoch``/``epochs``
  (``Method.on_epoch`` sets the method's schedule values at the convention's clock), and any quantizer
  parameter (``clip_value``, ``beta``, ...), schedule value (``tau``, ``t``, ``k``, ...), schedule
  parameter (``T_min``, ``tau_min``, ...), convention field (``sign_zero``, ...) or method field
  (``scale``, ``weight_quantizer``, ``input_quantizer``) by name;
- arrays as frameworks hold them are read where one reading only is possible, and the report lists each
  reading: a size-1 array as a scalar (``torch.tensor([0.1])``), a per-output-channel array with singleton
  axes ((O, 1, 1), (1, O, 1, 1), (O, 1, 1, 1)) as (O,) (compared in its own shape), a weight quantizer's
  input and gradient as ``weight``/``grad_weight`` (or ``kernel``/``grad_kernel``) as well as ``x``/``grad_x``;
  two names for one array are refused; :func:`record_torch` writes such a bundle from a PyTorch module;
- optionally how it was made, as 0-d strings: ``method``, ``convention``, ``quantizer``,
  ``input_quantizer``, ``kernel_quantizer``, ``schedule``, ``part``, ``layer``, ``layout`` (written by
  :func:`export_bundles`; they act as defaults, and a conflicting command-line value is an error).

:func:`crosscheck` runs refbnn on the bundle's inputs and compares every expected output it holds;
:func:`export_bundles` writes bundles computed by refbnn. Both are generic over the registries and
build everything through the catalogue's own paths: a method's layer with
``LayerFactory(method, convention=..., params=...)`` (``Method.with_params`` routes the named values
to the method's fields, quantizer constructors and schedule), its epoch with ``Method.on_epoch``, a
quantizer with ``get_quantizer``/``from_convention``, a schedule from the tables of
``refbnn.schedules`` (``QUANTIZER_SCHEDULES``, evaluated with ``QuantizerSchedule.at`` at the
convention's clock, and the learning-rate schedules; see :func:`schedule_table`). Layer settings
(geometry, ``pad_value``, ``training``, ``epoch``/``epochs``) and convention fields are taken here;
every other name goes to the method's (or the Larq layer's, or the quantizer's) parameters. A name
that nothing takes is an error, so a typo in a bundle is never ignored. Prefix a name with
``weight_quantizer.``, ``kernel_quantizer.`` or ``input_quantizer.`` (or ``Method.with_params``'s
``weight.``/``input.``) to reach one quantizer only. Schedule values given by name (``tau``, ``t``,
``k``) win over those ``epoch``/``epochs`` set; a schedule value given neither way is an error (the
quantizer's initial value is never used silently). A 0-d string ``"none"`` stands for None, ``"'none'"``
for the string ``'none'`` (:mod:`refbnn.params`). The report lists the convention choices the inputs
exercise and notes those they never reach (:mod:`.boundaries`).

Arrays are compared element-wise after casting to float64: ``max_abs = max |refbnn - yours|``,
``max_rel = max_abs / max(max |refbnn|, max |yours|)`` (relative to the tensor's scale, so exact
zeros in one gradient do not blow it up), and a tensor passes when ``max_abs <= atol + rtol * scale``.
Default tolerances follow the dtype (:data:`DEFAULT_TOLERANCES`); NaN/Inf must match exactly.

The package, one concept per module: :mod:`.bundle` (reading and writing bundles), :mod:`.report`
(comparison and report), :mod:`.settings` (the request and the routing of named values),
:mod:`.layout` (NCHW/NHWC, OIHW/HWIO), :mod:`.layer`, :mod:`.quantizer` and :mod:`.schedule` (the three
checks), :mod:`.boundaries` (which convention choices the inputs exercise), :mod:`.check` (:func:`crosscheck`),
:mod:`.diagnose` (``diagnose=True``: which nearby choice makes a differing tensor pass), :mod:`.export`
(refbnn's own bundles), :mod:`.record_torch` (bundles from PyTorch modules).
"""
from __future__ import annotations

from ..params import parse_params, parse_value  # noqa: F401 - kept importable from here
from ..quantizers import QUANTIZERS  # noqa: F401 - `refbnn crosscheck --list`
from .bundle import (GEOMETRY, LAYER_INPUTS, LAYER_OUTPUTS, META_KEYS, QUANTIZER_INPUTS, QUANTIZER_OUTPUTS,
                     BundleError, load_bundle, save_bundle)
from .check import crosscheck
from .export import export_bundles
from .record_torch import record_torch
from .report import DEFAULT_TOLERANCES, Report, TensorResult, compare, default_tolerances
from .schedule import get_schedule, schedule_table
from .settings import LAYERS, LAYOUTS, PARTS, Request

__all__ = ["BundleError", "DEFAULT_TOLERANCES", "GEOMETRY", "LAYERS", "LAYER_INPUTS", "LAYER_OUTPUTS", "LAYOUTS",
           "META_KEYS", "PARTS", "QUANTIZER_INPUTS", "QUANTIZER_OUTPUTS", "Report", "Request", "TensorResult",
           "compare", "crosscheck", "default_tolerances", "export_bundles", "get_schedule", "load_bundle",
           "parse_params", "parse_value", "record_torch", "save_bundle", "schedule_table"]
