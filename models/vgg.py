"""VGG (Simonyan & Zisserman 2014, "Very Deep Convolutional Networks for Large-Scale Image Recognition").

The paper's idea in one line: depth from nothing but stacked 3×3 convolutions (two of them see 5×5, three see
7×7, with fewer parameters and more non-linearities), five stages each closed by a 2×2/2 max-pool that halves
the resolution while the width doubles 64 → 128 → 256 → 512 → 512, then AlexNet's 4096-4096 head. The
variants differ only in how many convolutions each stage holds, so the paper's Table 1 (configurations A, B,
D, E → VGG-11/13/16/19) is one data table here and :meth:`VGG._make_features` turns a row into layers; the
``_bn`` variants add a batch norm after every convolution (not in the paper; torchvision's later recipe).

``features`` and ``classifier`` stay flat ``nn.Sequential`` stacks, as in torchvision's ``vgg.py``, so the
parameter names (``features.<i>.weight`` … ``classifier.6.bias``) match its published checkpoints and they
load with ``strict=True``; a stage is therefore a run of indices, not a nested module.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .labels import imagenet_classifier_spec
from .registry import ModelSpec, register_model

__all__ = [
    "VGG",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
]

StageDepths = tuple[int, int, int, int, int]

# Output channels of the five stages; every configuration shares them.
STAGE_WIDTHS: tuple[int, int, int, int, int] = (64, 128, 256, 512, 512)

# The paper's Table 1: configuration → 3×3 convolutions per stage. Weight layers = convolutions + 3 linear.
CONFIGS: dict[str, StageDepths] = {
    "A": (1, 1, 2, 2, 2),  # VGG-11: 8 convolutions
    "B": (2, 2, 2, 2, 2),  # VGG-13: 10
    "D": (2, 2, 3, 3, 3),  # VGG-16: 13
    "E": (2, 2, 4, 4, 4),  # VGG-19: 16
}


def conv3x3(in_planes: int, out_planes: int) -> nn.Conv2d:
    """Padding 1 keeps the resolution: only the max-pools shrink it. Bias stays even before batch norm, as in
    torchvision (its checkpoints carry it)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, padding=1)


class VGG(nn.Module):
    """Five stages of 3×3 convs, each closed by a 2×2 max-pool; a fixed 7×7 pool; three linear layers."""

    def __init__(
        self,
        stage_depths: StageDepths,
        *,
        batch_norm: bool = False,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.features = self._make_features(stage_depths, batch_norm=batch_norm, in_channels=in_channels)
        # Identity at 224×224; lets other input sizes (down to 32×32) reach the fixed-size head.
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),  # fc7
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),  # fc8
        )

        # torchvision's scheme (the paper instead initialised deeper nets from a trained configuration A).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_features(stage_depths: StageDepths, *, batch_norm: bool, in_channels: int) -> nn.Sequential:
        """One configuration row → the flat conv stack: per stage, ``depth`` × (3×3 conv [→ BN] → ReLU), then
        a 2×2/2 max-pool."""
        layers: list[nn.Module] = []
        for width, depth in zip(STAGE_WIDTHS, stage_depths, strict=True):
            for _ in range(depth):
                layers.append(conv3x3(in_channels, width))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                in_channels = width
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))  # (N, width, H/2, W/2) of the stage input
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 512, H/32, W/32)
        return torch.flatten(self.avgpool(x), 1)  # (N, 512·7·7)

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Pooled features → logits, or with ``pre_logits`` fc7's activations, the penultimate
        representation (an image's embedding)."""
        x = self.classifier[:-1](x)  # (N, 4096): fc6 → fc7
        return x if pre_logits else self.classifier[-1](x)  # (N, num_classes) logits

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]  # fc8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # (N, num_classes) logits


# name → (configuration, batch norm, torchvision weights enum member). Variants are data, read by `_vgg`.
_VGGS: dict[str, tuple[str, bool, str]] = {
    "vgg11": ("A", False, "VGG11_Weights.IMAGENET1K_V1"),
    "vgg11_bn": ("A", True, "VGG11_BN_Weights.IMAGENET1K_V1"),
    "vgg13": ("B", False, "VGG13_Weights.IMAGENET1K_V1"),
    "vgg13_bn": ("B", True, "VGG13_BN_Weights.IMAGENET1K_V1"),
    "vgg16": ("D", False, "VGG16_Weights.IMAGENET1K_V1"),
    "vgg16_bn": ("D", True, "VGG16_BN_Weights.IMAGENET1K_V1"),
    "vgg19": ("E", False, "VGG19_Weights.IMAGENET1K_V1"),
    "vgg19_bn": ("E", True, "VGG19_BN_Weights.IMAGENET1K_V1"),
}


def _spec(name: str) -> ModelSpec:
    config, batch_norm, weights = _VGGS[name]
    depth = sum(CONFIGS[config]) + 3
    # Input contract of every VGG*_Weights.IMAGENET1K_V1.transforms(): resize 256, crop 224, bilinear.
    return imagenet_classifier_spec(
        name,
        family="vgg",
        weights=weights,
        description=(
            f"VGG-{depth} (configuration {config}): convolutions per stage {CONFIGS[config]}"
            + (", batch norm after each convolution" if batch_norm else "")
        ),
    )


def _vgg(name: str, *, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    config, batch_norm, _ = _VGGS[name]
    return VGG(
        CONFIGS[config],
        batch_norm=batch_norm,
        num_classes=num_classes,
        in_channels=in_channels,
        dropout=dropout,
    )


@register_model(_spec("vgg11"))
def vgg11(**kwargs: Any) -> VGG:
    return _vgg("vgg11", **kwargs)


@register_model(_spec("vgg11_bn"))
def vgg11_bn(**kwargs: Any) -> VGG:
    return _vgg("vgg11_bn", **kwargs)


@register_model(_spec("vgg13"))
def vgg13(**kwargs: Any) -> VGG:
    return _vgg("vgg13", **kwargs)


@register_model(_spec("vgg13_bn"))
def vgg13_bn(**kwargs: Any) -> VGG:
    return _vgg("vgg13_bn", **kwargs)


@register_model(_spec("vgg16"))
def vgg16(**kwargs: Any) -> VGG:
    return _vgg("vgg16", **kwargs)


@register_model(_spec("vgg16_bn"))
def vgg16_bn(**kwargs: Any) -> VGG:
    return _vgg("vgg16_bn", **kwargs)


@register_model(_spec("vgg19"))
def vgg19(**kwargs: Any) -> VGG:
    return _vgg("vgg19", **kwargs)


@register_model(_spec("vgg19_bn"))
def vgg19_bn(**kwargs: Any) -> VGG:
    return _vgg("vgg19_bn", **kwargs)
