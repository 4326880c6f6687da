"""Wrapper modules that put a task's pre- and post-processing inside the exported graph.

What the graph can do, the graph does: a caller feeds float32 pixels in [0, 1] (the ONNX contract) and gets
answers, whatever runtime runs the file — our service, Triton, or a user's own onnxruntime script. Each task has
one wrapper and one list of output names, looked up in :data:`TASK_OUTPUTS`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from models import ModelSpec

__all__ = ["Normalize", "ClassifierExport", "TASK_OUTPUTS", "wrap_for_export"]


class Normalize(nn.Module):
    """(x − mean) / std with the spec's constants baked in as buffers."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class ClassifierExport(nn.Module):
    """images [N, C, H, W] in [0, 1] → probabilities [N, K] (normalise → network → softmax)."""

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(self.normalize(images)), dim=1)


TASK_OUTPUTS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "classification": (ClassifierExport, ("probabilities",)),
}


def wrap_for_export(model: nn.Module, spec: ModelSpec) -> tuple[nn.Module, tuple[str, ...]]:
    """The eval-mode wrapper for the spec's task and the names of its graph outputs."""
    try:
        wrapper_cls, outputs = TASK_OUTPUTS[spec.task]
    except KeyError:
        raise NotImplementedError(f"export of {spec.task} models is not implemented yet ({spec.name})") from None
    return wrapper_cls(model, spec).eval(), outputs
