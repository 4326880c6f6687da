"""Wrapper modules that put a task's pre- and post-processing inside the exported graph.

What the graph can do, the graph does: a caller feeds float32 pixels in [0, 1] (the ONNX contract) and gets
answers, whatever runtime runs the file — our service, Triton, or a user's own onnxruntime script. Each task
registers one :class:`TaskExport` (wrapper class, output names, which dimensions are dynamic, extra scalar graph
inputs such as detection thresholds) with :func:`register_task`, keyed by task, or by model family where one
task has several wrappers (YOLO and Faster R-CNN are both detection); the exporter asks :func:`export_for`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from cnnserve.models import ModelSpec

__all__ = [
    "Normalize",
    "ClassifierExport",
    "l2_normalize",
    "TaskExport",
    "register_task",
    "export_for",
    "wrap_for_export",
]


class Normalize(nn.Module):
    """(x − mean) / std with the spec's constants baked in as buffers."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (the ``embedding`` outputs): cosine similarity becomes a dot product."""
    return F.normalize(x, p=2.0, dim=1, eps=1e-12)


class ClassifierExport(nn.Module):
    """images [N, C, H, W] in [0, 1] → (probabilities [N, K], embedding [N, D]).

    One pass: normalise → the network's features → its penultimate representation (``forward_head(...,
    pre_logits=True)``: pooled features, ViT's class token, AlexNet/VGG's fc7, LeNet's F6) → the last layer →
    softmax. ``embedding`` is that penultimate representation, L2-normalised; ``embedding=False`` leaves it out (a
    graph of one output, what Triton's ``image_client.py`` takes)."""

    def __init__(self, model: nn.Module, spec: ModelSpec, *, embedding: bool = True) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.model = model
        self.embedding = embedding

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        features = self.model.forward_features(self.normalize(images))
        penultimate = self.model.forward_head(features, pre_logits=True)  # (N, D)
        probabilities = torch.softmax(self.model.get_classifier()(penultimate), dim=1)  # (N, K)
        return (probabilities, l2_normalize(penultimate)) if self.embedding else probabilities


@dataclass(frozen=True)
class TaskExport:
    """How one task is exported.

    ``wrapper(model, spec)`` is an ``nn.Module`` whose ``forward(images, *extra)`` takes the images and then one
    0-d float32 tensor per entry of ``extra_inputs`` (name → default value, e.g. ``score_threshold``), and returns
    the tensors named by ``outputs`` in that order. A task whose graph takes other per-row inputs (an inpainting
    ``mask``, a generator's ``latent`` instead of images) names them with an example batch in ``example``
    (``example(spec, seed)`` → name → tensor with 2 rows); they come first, in that order, before the scalars.
    ``dynamic_hw`` makes H and W of the first input dynamic (the model must accept any size that is a multiple of
    ``size_multiple``). ``parity_tolerance`` overrides the exporter's default where the task's contract asks for
    less (or tolerates more, e.g. integer outputs). ``precisions`` and ``uint8_input`` say which variants make sense
    (int8 calibration and a uint8 input need image inputs).
    """

    wrapper: Callable[[nn.Module, ModelSpec], nn.Module]
    outputs: tuple[str, ...]
    dynamic_hw: bool = False
    size_multiple: int = 1
    extra_inputs: dict[str, float] = field(default_factory=dict)
    parity_tolerance: float | None = None
    # (expected outputs, onnxruntime outputs) → a distance, for outputs a plain max |Δ| does not fit (padded
    # detections whose order may swap between near-equal scores).
    parity_metric: Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], float] | None = None
    # Custom op translations for torch.onnx.export(custom_translation_table=...), e.g. an NMS op.
    onnx_translations: dict[Any, Any] | None = None
    example: Callable[[ModelSpec, int], dict[str, torch.Tensor]] | None = None  # None: the images alone
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    uint8_input: bool = True


_TASKS: dict[str, TaskExport] = {}


def register_task(key: str, export: TaskExport) -> None:
    """Register the export of a task (``"classification"``), a model family (``"yolo"``) or one model name."""
    if key in _TASKS:
        raise ValueError(f"an export for {key!r} is already registered")
    _TASKS[key] = export


register_task("classification", TaskExport(ClassifierExport, ("probabilities", "embedding")))


def export_for(spec: ModelSpec) -> TaskExport:
    """The model's own export if it registered one, else its family's, else its task's."""
    _load_task_modules()
    export = _TASKS.get(spec.name) or _TASKS.get(spec.family) or _TASKS.get(spec.task)
    if export is None:
        raise NotImplementedError(f"export of {spec.task} models ({spec.name}) is not implemented")
    return export


# Modules that register the other tasks' wrappers on import (kept beside the models they wrap).
_TASK_MODULES: tuple[str, ...] = ("dense", "yolo", "rcnn")


def _load_task_modules() -> None:
    import importlib

    for module in _TASK_MODULES:
        importlib.import_module(f"{__package__}.{module}")


def wrap_for_export(model: nn.Module, spec: ModelSpec) -> tuple[nn.Module, tuple[str, ...]]:
    """The eval-mode wrapper for the spec's task and the names of its graph outputs."""
    export = export_for(spec)
    return export.wrapper(model, spec).eval(), export.outputs
