"""ResNet (He et al. 2015, "Deep Residual Learning for Image Recognition").

The paper's idea in one line: a block learns a residual F(x) and outputs z = x + F(x), so a deep stack can
fall back to the identity. ``BasicBlock`` (two 3×3 convolutions) builds ResNet-18/34, ``Bottleneck``
(1×1 reduce → 3×3 → 1×1 expand, ``expansion = 4``) builds ResNet-50/101/152. Module names follow torchvision's
``resnet.py`` so its published checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .labels import imagenet_classifier_spec
from .registry import ModelSpec, register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions; the shortcut is the identity unless the shape changes (then a strided 1×1)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        f = self.relu(self.bn1(self.conv1(x)))
        f = self.bn2(self.conv2(f))
        return self.relu(identity + f)  # z = x + F(x)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 → 1×1 expand (×4); the stride sits on the 3×3 as in torchvision ("ResNet v1.5")."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        f = self.relu(self.bn1(self.conv1(x)))
        f = self.relu(self.bn2(self.conv2(f)))
        f = self.bn3(self.conv3(f))
        return self.relu(identity + f)  # z = x + F(x)


class ResNet(nn.Module):
    """Stem (7×7/2 conv + 3×3/2 max-pool), four stages of residual blocks, global average pool, linear head."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, int, int, int],
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block starts as the identity (Goyal et al. 2017)
            for m in self.modules():
                last_bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
                if last_bn is not None:
                    nn.init.zeros_(last_bn.weight)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        """One stage: the first block may change resolution/width (projection shortcut), the rest keep it."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 512·e, H/32, W/32)
        return torch.flatten(self.avgpool(x), 1)  # (N, 512·e)

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Pooled features → logits; with ``pre_logits`` the pooled features themselves, the penultimate
        representation (an image's embedding)."""
        return x if pre_logits else self.fc(x)  # (N, num_classes) logits

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # (N, num_classes) logits


# name → (block, stage depths, torchvision weights enum member). Variants are data; one builder reads a row.
_RESNETS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int], str]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), "ResNet18_Weights.IMAGENET1K_V1"),
    "resnet34": (BasicBlock, (3, 4, 6, 3), "ResNet34_Weights.IMAGENET1K_V1"),
    "resnet50": (Bottleneck, (3, 4, 6, 3), "ResNet50_Weights.IMAGENET1K_V1"),
    "resnet101": (Bottleneck, (3, 4, 23, 3), "ResNet101_Weights.IMAGENET1K_V1"),
    "resnet152": (Bottleneck, (3, 8, 36, 3), "ResNet152_Weights.IMAGENET1K_V1"),
}


def _spec(name: str) -> ModelSpec:
    block, layers, weights = _RESNETS[name]
    return imagenet_classifier_spec(
        name,
        family="resnet",
        weights=weights,
        description=f"ResNet-{name.removeprefix('resnet')}: {block.__name__} blocks, stage depths {layers}",
    )


def _resnet(name: str, *, num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    block, layers, _ = _RESNETS[name]
    return ResNet(
        block, layers, num_classes=num_classes, in_channels=in_channels, zero_init_residual=zero_init_residual
    )


@register_model(_spec("resnet18"))
def resnet18(**kwargs: Any) -> ResNet:
    return _resnet("resnet18", **kwargs)


@register_model(_spec("resnet34"))
def resnet34(**kwargs: Any) -> ResNet:
    return _resnet("resnet34", **kwargs)


@register_model(_spec("resnet50"))
def resnet50(**kwargs: Any) -> ResNet:
    return _resnet("resnet50", **kwargs)


@register_model(_spec("resnet101"))
def resnet101(**kwargs: Any) -> ResNet:
    return _resnet("resnet101", **kwargs)


@register_model(_spec("resnet152"))
def resnet152(**kwargs: Any) -> ResNet:
    return _resnet("resnet152", **kwargs)
