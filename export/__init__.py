"""PyTorch → ONNX: wrappers that put pre/post-processing in the graph, export, parity, weights and the store.

Knows the models (``models``) and ONNX; knows nothing of HTTP.
"""

from .pipeline import DEFAULT_EXPORTS, ExportError, ExportResult, export_model

__all__ = ["DEFAULT_EXPORTS", "ExportError", "ExportResult", "export_model"]
