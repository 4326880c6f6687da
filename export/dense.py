"""Export wrappers for the dense tasks: semantic segmentation (U-Net) and the autoencoder (CAE).

Registered with :func:`export.wrappers.register_task` on import. Both put their whole contract in the graph:
the segmenter normalises [0, 1] pixels with the spec's mean/std and answers per-pixel ``logits [N, K, H, W]``
with dynamic H and W (multiples of 16 for a depth-4 U-Net); the autoencoder answers its ``reconstruction
[N, C, H, W]`` and the per-image mean squared reconstruction ``error [N]`` computed in the graph, so any runtime
gets the anomaly score the calibrated threshold (``cnnserve.threshold`` metadata) was measured with.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from cnnserve.models import ModelSpec

from .wrappers import Normalize, TaskExport, register_task

__all__ = ["SegmenterExport", "AutoencoderExport"]


class SegmenterExport(nn.Module):
    """images [N, C, H, W] in [0, 1] → logits [N, K, H, W] (normalise → network)."""

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images))


class AutoencoderExport(nn.Module):
    """images [N, C, H, W] in [0, 1] → (reconstruction [N, C, H, W] in [0, 1], error [N]).

    ``error`` is the mean over C, H, W of (reconstruction − images)², against the un-normalised input pixels.
    """

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reconstruction = self.model(self.normalize(images))  # (N, C, H, W)
        error = ((reconstruction - images) ** 2).mean(dim=(1, 2, 3))  # (N,)
        return reconstruction, error


register_task(
    "semantic_segmentation",
    TaskExport(SegmenterExport, ("logits",), dynamic_hw=True, size_multiple=16, parity_tolerance=1e-4),
)
register_task("autoencoder", TaskExport(AutoencoderExport, ("reconstruction", "error"), parity_tolerance=1e-4))
