"""Saving exported files into the BentoML model store, where the service finds them (``BENTOML_HOME``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import bentoml
from cnnserve.service.store import STORE_LABEL

__all__ = ["save_to_store"]


def save_to_store(onnx_path: Path, *, name: str, task: str, metadata: dict[str, str]) -> str:
    """Copy the ONNX file (and any external-data files beside it) into a new store version; returns the tag."""
    with bentoml.models.create(
        name,
        labels={STORE_LABEL: "onnx", "task": task},
        metadata={"onnx_file": onnx_path.name, **metadata},
    ) as entry:
        shutil.copy2(onnx_path, entry.path_of(onnx_path.name))
        for extra in onnx_path.parent.glob(f"{onnx_path.name}.data*"):
            shutil.copy2(extra, entry.path_of(extra.name))
    return str(entry.tag)
