"""Export wrappers for the dense tasks: semantic segmentation (U-Net), the autoencoder (CAE), inpainting (the
CAE variant) and generation (the VAE).

Registered with :func:`export.wrappers.register_task` on import. Each puts its whole contract in the graph:

* the segmenter normalises [0, 1] pixels with the spec's mean/std and answers per-pixel ``logits [N, K, H, W]``
  with dynamic H and W (multiples of 16 for a depth-4 U-Net);
* the autoencoder answers its ``reconstruction [N, C, H, W]``, the per-image mean squared reconstruction ``error
  [N]`` (so any runtime gets the anomaly score the calibrated ``cnnserve.threshold`` was measured with) and its
  latent code as ``embedding [N, Z]``, L2-normalised;
* the inpainter takes ``images [N, C, H, W]`` and ``mask [N, 1, H, W]`` (1 = fill), blanks the hole, reconstructs
  and answers ``inpainted [N, C, H, W]`` (the known pixels unchanged, the reconstruction inside the hole) and its
  code as ``embedding [N, Z]``, L2-normalised (with an empty mask: the image's embedding);
* the generator takes standard normal noise ``noise [N, D]`` (drawn by the caller), turns it into latent codes with
  its prior and answers the decoded ``images [N, C, H, W]`` in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn as nn
from cnnserve.models import ModelSpec

from .wrappers import Normalize, TaskExport, l2_normalize, register_task

__all__ = ["SegmenterExport", "AutoencoderExport", "InpainterExport", "GeneratorExport"]


class SegmenterExport(nn.Module):
    """images [N, C, H, W] in [0, 1] → logits [N, K, H, W] (normalise → network)."""

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images))


class AutoencoderExport(nn.Module):
    """images [N, C, H, W] in [0, 1] → (reconstruction [N, C, H, W] in [0, 1], error [N], embedding [N, Z]).

    ``error`` is the mean over C, H, W of (reconstruction − images)², against the un-normalised input pixels;
    ``embedding`` the bottleneck's code, L2-normalised.
    """

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        code = self.model.encode(self.normalize(images))  # (N, Z)
        reconstruction = self.model.decode(code)  # (N, C, H, W)
        error = ((reconstruction - images) ** 2).mean(dim=(1, 2, 3))  # (N,)
        return reconstruction, error, l2_normalize(code)


class InpainterExport(nn.Module):
    """(images [N, C, H, W] in [0, 1], mask [N, 1, H, W], 1 = fill) → (inpainted [N, C, H, W] in [0, 1],
    embedding [N, Z]).

    The network sees the image with the hole blanked and the mask as one more channel, and reconstructs the whole
    image; only the hole is taken from the reconstruction. ``embedding`` is the bottleneck's code, L2-normalised."""

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.model = model

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hole = (mask > 0.5).to(images.dtype)  # (N, 1, H, W): exactly 0 or 1, whatever the caller sent
        blanked = self.normalize(images) * (1.0 - hole)  # (N, C, H, W)
        code = self.model.encode(torch.cat([blanked, hole], dim=1))  # (N, Z)
        reconstruction = self.model.decode(code)  # (N, C, H, W)
        return hole * reconstruction + (1.0 - hole) * images, l2_normalize(code)


class GeneratorExport(nn.Module):
    """noise [N, D] from N(0, I) → images [N, C, H, W] in [0, 1]: the model's ``generate`` (prior, then decoder)."""

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.model = model

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.model.generate(noise)


def _inpainting_example(spec: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, spec.in_channels, *spec.input_size, generator=generator)
    mask = torch.zeros(2, 1, *spec.input_size)
    h, w = spec.input_size
    mask[0, :, h // 4 : h // 2, w // 4 : 3 * w // 4] = 1.0  # a rectangle
    mask[1, :, :, w // 2 :] = 1.0  # the right half
    return {"images": images, "mask": mask}


def _generation_example(spec: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
    if not spec.noise_dim:
        raise ValueError(f"{spec.name}: a generator's spec needs noise_dim")
    return {"noise": torch.randn(2, spec.noise_dim, generator=torch.Generator().manual_seed(seed))}


register_task(
    "semantic_segmentation",
    TaskExport(SegmenterExport, ("logits",), dynamic_hw=True, size_multiple=16, parity_tolerance=1e-4),
)
register_task(
    "autoencoder", TaskExport(AutoencoderExport, ("reconstruction", "error", "embedding"), parity_tolerance=1e-4)
)
# Variants: none (fp32, float32 input). The precision variants are written for graphs whose one per-row input is the
# images (int8 calibration feeds images alone; fp16 folds the images' normalisation into one Cast and one
# scale-and-shift before the backbone), and these two demos (under 1 MB) would gain nothing from them.
register_task(
    "inpainting",
    TaskExport(
        InpainterExport,
        ("inpainted", "embedding"),
        parity_tolerance=1e-4,
        example=_inpainting_example,
        precisions=("fp32",),
        uint8_input=False,
    ),
)
register_task(
    "generation",
    TaskExport(
        GeneratorExport,
        ("images",),
        parity_tolerance=1e-4,
        example=_generation_example,
        precisions=("fp32",),
        uint8_input=False,
    ),
)
