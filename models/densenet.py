"""DenseNet (Huang et al. 2017, "Densely Connected Convolutional Networks"), the DenseNet-BC variant.

The paper's idea in one line: inside a dense block, layer ℓ sees the concatenation of *every* earlier feature
map, x_ℓ = H_ℓ([x_0, x_1, …, x_{ℓ−1}]), and adds only ``growth_rate`` (k) new channels, so features are reused
instead of re-learned. ``DenseLayer`` is H_ℓ (BN-ReLU-1×1 bottleneck to 4k, BN-ReLU-3×3 to k), ``DenseBlock``
does the concatenating, ``Transition`` (BN-ReLU-1×1 halving the width, 2×2 average pool) joins blocks.

Module names follow torchvision's ``densenet.py`` so its state dicts load with ``strict=True``. Its
*published* checkpoints predate that naming (``norm.1`` for ``norm1``); :func:`adapt_state_dict` applies
torchvision's rename. torchvision's ``memory_efficient`` (gradient checkpointing) is left out on purpose: the
forward must export to ONNX.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .labels import imagenet_classifier_spec
from .registry import ModelSpec, register_model

__all__ = [
    "DenseLayer",
    "DenseBlock",
    "Transition",
    "DenseNet",
    "adapt_state_dict",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
]

# torchvision's published checkpoints name a dense layer's parts "norm.1", "conv.2", …; '.' is no longer
# allowed in module names, so they became "norm1", "conv2". Same pattern as torchvision's `_load_state_dict`.
_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def adapt_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename legacy keys (``denselayer1.norm.1.weight`` → ``denselayer1.norm1.weight``); others pass through.

    The weight loader calls this on any checkpoint it loads into a DenseNet, so torchvision's published files
    load strictly without a hand-edited copy. Returns a new dict in the same order, keeping the checkpoint's
    ``_metadata`` (the module versions ``load_state_dict`` consults; torchvision's in-place rename keeps them
    too); the input is left alone.
    """
    adapted: dict[str, torch.Tensor] = OrderedDict()
    for key, value in state_dict.items():
        match = _LEGACY_KEY.match(key)
        adapted[match.group(1) + match.group(2) if match else key] = value
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        adapted._metadata = metadata  # type: ignore[attr-defined]
    return adapted


class DenseLayer(nn.Module):
    """H_ℓ: BN-ReLU-Conv1×1 (to ``bn_size·k`` channels) → BN-ReLU-Conv3×3 (to k channels) → dropout if set."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.relu1(self.norm1(x)))  # (N, bn_size·k, H, W) bottleneck
        x = self.conv2(self.relu2(self.norm2(x)))  # (N, k, H, W) the new features
        return F.dropout(x, p=self.drop_rate, training=self.training) if self.drop_rate > 0 else x


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; layer i sees ``num_input_features + i·k`` channels, the block adds L·k."""

    def __init__(
        self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int, drop_rate: float
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]  # x_0
        for layer in self.values():
            features.append(layer(torch.cat(features, dim=1)))  # x_ℓ = H_ℓ([x_0, …, x_{ℓ−1}]), (N, k, H, W)
        return torch.cat(features, dim=1)  # (N, C_in + L·k, H, W)


class Transition(nn.Module):
    """Between blocks: BN-ReLU-Conv1×1 to ``num_output_features`` (compression θ = 0.5), then 2×2 avg-pool."""

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.relu(self.norm(x)))  # (N, C_out, H, W)
        return self.pool(x)  # (N, C_out, H/2, W/2)


class DenseNet(nn.Module):
    """Stem (7×7/2 conv + 3×3/2 max-pool), four dense blocks joined by transitions, BN-ReLU, average pool, FC.

    Everything up to the final BatchNorm lives in ``self.features`` (an ordered ``conv0 … norm5`` sequence),
    as in torchvision, because that is where its checkpoints put the keys.
    """

    def __init__(
        self,
        growth_rate: int,
        block_config: tuple[int, int, int, int],
        num_init_features: int,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        bn_size: int = 4,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    (
                        "conv0",
                        nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3, bias=False),
                    ),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ]
            )
        )
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(num_layers, num_features, bn_size, growth_rate, drop_rate)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x), inplace=True)  # (N, C, H/32, W/32), C = 1024 for DenseNet-121
        return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)  # (N, C)

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Pooled features → logits; with ``pre_logits`` the pooled features themselves, the penultimate
        representation (an image's embedding)."""
        return x if pre_logits else self.classifier(x)  # (N, num_classes) logits

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # (N, num_classes) logits


# name → (growth rate k, layers per block, stem width, torchvision weights member); one builder reads a row.
_DENSENETS: dict[str, tuple[int, tuple[int, int, int, int], int, str]] = {
    "densenet121": (32, (6, 12, 24, 16), 64, "DenseNet121_Weights.IMAGENET1K_V1"),
    "densenet161": (48, (6, 12, 36, 24), 96, "DenseNet161_Weights.IMAGENET1K_V1"),
    "densenet169": (32, (6, 12, 32, 32), 64, "DenseNet169_Weights.IMAGENET1K_V1"),
    "densenet201": (32, (6, 12, 48, 32), 64, "DenseNet201_Weights.IMAGENET1K_V1"),
}


def _spec(name: str) -> ModelSpec:
    growth_rate, block_config, _, weights = _DENSENETS[name]
    return imagenet_classifier_spec(
        name,
        family="densenet",
        weights=weights,
        description=f"DenseNet-{name.removeprefix('densenet')}-BC: growth rate {growth_rate}, "
        f"layers per block {block_config}",
    )


def _densenet(
    name: str, *, num_classes: int = 1000, in_channels: int = 3, bn_size: int = 4, drop_rate: float = 0.0
) -> DenseNet:
    growth_rate, block_config, num_init_features, _ = _DENSENETS[name]
    return DenseNet(
        growth_rate,
        block_config,
        num_init_features,
        num_classes=num_classes,
        in_channels=in_channels,
        bn_size=bn_size,
        drop_rate=drop_rate,
    )


@register_model(_spec("densenet121"))
def densenet121(**kwargs: Any) -> DenseNet:
    return _densenet("densenet121", **kwargs)


@register_model(_spec("densenet161"))
def densenet161(**kwargs: Any) -> DenseNet:
    return _densenet("densenet161", **kwargs)


@register_model(_spec("densenet169"))
def densenet169(**kwargs: Any) -> DenseNet:
    return _densenet("densenet169", **kwargs)


@register_model(_spec("densenet201"))
def densenet201(**kwargs: Any) -> DenseNet:
    return _densenet("densenet201", **kwargs)
