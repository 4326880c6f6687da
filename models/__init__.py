"""Readable PyTorch definitions of the classic vision networks, behind one registry.

This package knows nothing of ONNX or HTTP: ``export/`` turns these modules into ONNX files and ``service/``
serves the files.
"""

from .registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TASKS,
    ModelSpec,
    build_model,
    get_spec,
    list_models,
    register_model,
    representatives,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TASKS",
    "ModelSpec",
    "build_model",
    "get_spec",
    "list_models",
    "register_model",
    "representatives",
]
