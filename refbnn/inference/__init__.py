"""Inference: export a trained model to packed weights and folded thresholds, save, load and run.

``export_checkpoint(path, out)`` / ``export_model(model, input_shape, classes)`` build the graph
(:mod:`refbnn.inference.export`), :mod:`refbnn.inference.format` is the model file,
``load_model(path)`` returns an :class:`InferenceModel` that runs it with the bit-packed kernels.
"""
from __future__ import annotations

from .export import (
           DATASET_SHAPES,
           ExportError,
           build_from_checkpoint,
           export_checkpoint,
           export_model,
)
from .format import FORMAT, Graph, ModelFileError, read_graph
from .runner import InferenceModel, load_model

__all__ = [
           "DATASET_SHAPES",
           "FORMAT",
           "ExportError",
           "Graph",
           "InferenceModel",
           "ModelFileError",
           "build_from_checkpoint",
           "export_checkpoint",
           "export_model",
           "load_model",
           "read_graph",
]
