"""EfficientNet-B0…B7 (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks").

The paper's idea in one line: find one good small network (B0, a stack of mobile inverted bottlenecks
``MBConv`` with squeeze-and-excitation), then grow it by *compound scaling* — widen every stage by α^φ, deepen
it by β^φ and feed it larger images (γ^φ) together, instead of scaling one dimension alone. So the file
holds exactly one architecture table (B0's seven stages, the paper's Table 1) and one row of coefficients per
variant; :func:`scale_stages` turns the pair into a concrete network. Widths are rounded to a multiple of 8
and depths rounded up, as the reference implementation (and torchvision) do.

Module names follow torchvision's ``efficientnet.py`` (``features.{stage}.{block}.block.{i}``,
``classifier.1``) so its published checkpoints load with ``strict=True``. Shape comments assume a 224×224
input.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from torchvision.ops import StochasticDepth

from .labels import imagenet_classifier_spec
from .registry import ModelSpec, register_model

__all__ = [
    "MBConv",
    "SqueezeExcitation",
    "EfficientNet",
    "StageConfig",
    "Scaling",
    "scale_stages",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
]


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a scaled channel count to the nearest multiple of ``divisor``, never losing more than 10%.

    The TensorFlow reference does this so channels stay hardware-friendly; torchvision's ``_make_divisible``
    is the same function, and the checkpoint shapes depend on it.
    """
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    *,
    stride: int = 1,
    groups: int = 1,
    bn_eps: float = 1e-5,
    bn_momentum: float = 0.1,
    activation: bool = True,
) -> nn.Sequential:
    """Conv ("same" padding, no bias) → BatchNorm → SiLU; a ``Sequential``, so keys read ``0.*``, ``1.*``."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
    ]
    if activation:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Hu et al. 2018: pool each channel, pass the descriptor through a bottleneck, gate channels (sigmoid).

    The 1×1 convolutions ``fc1``/``fc2`` act as fully connected layers on the (N, C, 1, 1) pooled descriptor.
    """

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.avgpool(x)  # (N, C, 1, 1): squeeze
        s = self.scale_activation(self.fc2(self.activation(self.fc1(s))))  # (N, C, 1, 1): excitation gate
        return s * x  # (N, C, H, W) rescaled channels


class MBConv(nn.Module):
    """Mobile inverted bottleneck (Sandler et al. 2018) with squeeze-and-excitation, the EfficientNet block.

    1×1 expand (×``expand_ratio``, skipped when it is 1) → k×k depthwise (carries the stride) → SE → 1×1
    linear projection. When the shape is kept the block is residual, z = x + F(x), and F is dropped per
    sample with probability ``stochastic_depth_prob`` while training (Huang et al. 2016).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        expand_ratio: int,
        kernel_size: int,
        stride: int,
        stochastic_depth_prob: float,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and in_channels == out_channels
        self.out_channels = out_channels
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}

        expanded = make_divisible(in_channels * expand_ratio)
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(conv_bn_act(in_channels, expanded, 1, **bn))  # expand
        layers += [
            conv_bn_act(expanded, expanded, kernel_size, stride=stride, groups=expanded, **bn),  # depthwise
            SqueezeExcitation(expanded, max(1, in_channels // 4)),  # squeeze relative to the block's *input*
            conv_bn_act(expanded, out_channels, 1, activation=False, **bn),  # linear projection
        ]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.block(x)  # (N, C_out, H/s, W/s)
        if self.use_res_connect:
            return x + self.stochastic_depth(f)  # z = x + F(x), F dropped per sample in training
        return f


class StageConfig(NamedTuple):
    """One row of the paper's Table 1: a stage of ``num_layers`` identical MBConv blocks."""

    expand_ratio: int
    kernel_size: int
    stride: int  # of the stage's first block; the rest use 1
    in_channels: int
    out_channels: int
    num_layers: int


# EfficientNet-B0 (Table 1, stages 2–8). Every other variant is this table scaled by `scale_stages`.
B0_STAGES: tuple[StageConfig, ...] = (
    StageConfig(1, 3, 1, 32, 16, 1),  # MBConv1 3×3, 112×112
    StageConfig(6, 3, 2, 16, 24, 2),  # MBConv6 3×3, 112 → 56
    StageConfig(6, 5, 2, 24, 40, 2),  # MBConv6 5×5, 56 → 28
    StageConfig(6, 3, 2, 40, 80, 3),  # MBConv6 3×3, 28 → 14
    StageConfig(6, 5, 1, 80, 112, 3),  # MBConv6 5×5, 14
    StageConfig(6, 5, 2, 112, 192, 4),  # MBConv6 5×5, 14 → 7
    StageConfig(6, 3, 1, 192, 320, 1),  # MBConv6 3×3, 7
)


def scale_stages(stages: tuple[StageConfig, ...], width_mult: float, depth_mult: float) -> tuple[StageConfig, ...]:
    """Compound scaling of a stage table: channels × ``width_mult`` (to a multiple of 8), layers ×
    ``depth_mult`` (rounded up)."""
    return tuple(
        s._replace(
            in_channels=make_divisible(s.in_channels * width_mult),
            out_channels=make_divisible(s.out_channels * width_mult),
            num_layers=math.ceil(s.num_layers * depth_mult),
        )
        for s in stages
    )


class EfficientNet(nn.Module):
    """Stem (3×3/2 conv), MBConv stages, 1×1 conv to 4× the last width, average pool, dropout, linear."""

    def __init__(
        self,
        stages: tuple[StageConfig, ...],
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.2,
        stochastic_depth_prob: float = 0.2,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        layers: list[nn.Module] = [conv_bn_act(in_channels, stages[0].in_channels, 3, stride=2, **bn)]

        # Stochastic depth grows linearly with depth: block k of K drops with p · k / K (the first never).
        total_blocks = sum(s.num_layers for s in stages)
        block_id = 0
        for s in stages:
            blocks: list[nn.Module] = []
            for i in range(s.num_layers):
                blocks.append(
                    MBConv(
                        s.in_channels if i == 0 else s.out_channels,
                        s.out_channels,
                        expand_ratio=s.expand_ratio,
                        kernel_size=s.kernel_size,
                        stride=s.stride if i == 0 else 1,
                        stochastic_depth_prob=stochastic_depth_prob * block_id / total_blocks,
                        **bn,
                    )
                )
                block_id += 1
            layers.append(nn.Sequential(*blocks))

        last_channels = 4 * stages[-1].out_channels
        layers.append(conv_bn_act(stages[-1].out_channels, last_channels, 1, **bn))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(last_channels, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                init_range = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -init_range, init_range)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 4·C_last, H/32, W/32); 1280×7×7 for B0 at 224
        return torch.flatten(self.avgpool(x), 1)  # (N, 4·C_last)

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Pooled features → logits; with ``pre_logits`` the pooled features themselves, the penultimate
        representation (an image's embedding)."""
        return x if pre_logits else self.classifier(x)  # (N, num_classes) logits

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # (N, num_classes) logits


class Scaling(NamedTuple):
    """A variant's compound-scaling coefficients and the regularisation/normalisation that go with them."""

    width_mult: float  # α^φ
    depth_mult: float  # β^φ
    resolution: int  # γ^φ as the paper's input size
    dropout: float
    # B5–B7's torchvision weights were ported from TensorFlow and need its BatchNorm settings (eps 1e-3,
    # momentum 0.01); with PyTorch's default eps=1e-5 their outputs drift.
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1


_SCALINGS: dict[str, Scaling] = {
    "efficientnet_b0": Scaling(1.0, 1.0, 224, 0.2),
    "efficientnet_b1": Scaling(1.0, 1.1, 240, 0.2),
    "efficientnet_b2": Scaling(1.1, 1.2, 260, 0.3),
    "efficientnet_b3": Scaling(1.2, 1.4, 300, 0.3),
    "efficientnet_b4": Scaling(1.4, 1.8, 380, 0.4),
    "efficientnet_b5": Scaling(1.6, 2.2, 456, 0.4, bn_eps=1e-3, bn_momentum=0.01),
    "efficientnet_b6": Scaling(1.8, 2.6, 528, 0.5, bn_eps=1e-3, bn_momentum=0.01),
    "efficientnet_b7": Scaling(2.0, 3.1, 600, 0.5, bn_eps=1e-3, bn_momentum=0.01),
}

# Eval recipe of each torchvision weights' transforms(): (weights, crop, resize, interpolation). The crop is
# the paper's resolution except for B2, whose ported weights are evaluated at 288 instead of 260.
_WEIGHTS: dict[str, tuple[str, int, int, str]] = {
    "efficientnet_b0": ("EfficientNet_B0_Weights.IMAGENET1K_V1", 224, 256, "bicubic"),
    "efficientnet_b1": ("EfficientNet_B1_Weights.IMAGENET1K_V1", 240, 256, "bicubic"),
    "efficientnet_b2": ("EfficientNet_B2_Weights.IMAGENET1K_V1", 288, 288, "bicubic"),
    "efficientnet_b3": ("EfficientNet_B3_Weights.IMAGENET1K_V1", 300, 320, "bicubic"),
    "efficientnet_b4": ("EfficientNet_B4_Weights.IMAGENET1K_V1", 380, 384, "bicubic"),
    "efficientnet_b5": ("EfficientNet_B5_Weights.IMAGENET1K_V1", 456, 456, "bicubic"),
    "efficientnet_b6": ("EfficientNet_B6_Weights.IMAGENET1K_V1", 528, 528, "bicubic"),
    "efficientnet_b7": ("EfficientNet_B7_Weights.IMAGENET1K_V1", 600, 600, "bicubic"),
}


def _spec(name: str) -> ModelSpec:
    sc = _SCALINGS[name]
    weights, crop, resize, interpolation = _WEIGHTS[name]
    return imagenet_classifier_spec(
        name,
        family="efficientnet",
        weights=weights,
        crop=crop,
        resize=resize,
        interpolation=interpolation,
        description=(
            f"EfficientNet-{name.removeprefix('efficientnet_').upper()}: B0 compound-scaled by width "
            f"×{sc.width_mult}, depth ×{sc.depth_mult} (paper resolution {sc.resolution})"
        ),
    )


def _efficientnet(
    name: str,
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    dropout: float | None = None,
    stochastic_depth_prob: float = 0.2,
) -> EfficientNet:
    sc = _SCALINGS[name]
    return EfficientNet(
        scale_stages(B0_STAGES, sc.width_mult, sc.depth_mult),
        num_classes=num_classes,
        in_channels=in_channels,
        dropout=sc.dropout if dropout is None else dropout,
        stochastic_depth_prob=stochastic_depth_prob,
        bn_eps=sc.bn_eps,
        bn_momentum=sc.bn_momentum,
    )


@register_model(_spec("efficientnet_b0"))
def efficientnet_b0(**kwargs: Any) -> EfficientNet:
    return _efficientnet("efficientnet_b0", **kwargs)


@register_model(_spec("efficientnet_b1"))
def efficientnet_b1(**kwargs: Any) -> EfficientNet:
    return _efficientnet("efficientnet_b1", **kwargs)


@register_model(_spec("efficientnet_b2"))
def efficientnet_b2(**kwargs: Any) -> EfficientNet:
    return _efficientnet("efficientnet_b2", **kwargs)


@register_model(_spec("efficientnet_b3"))
def efficientnet_b3(**kwargs: Any) -> EfficientNet:
    return _efficientnet("efficientnet_b3", **kwargs)


@register_model(_spec("efficientnet_b4"))
def efficientnet_b4(**kwargs: Any) -> EfficientNet:
    return _efficientnet("efficientnet_b4", **kwargs)


@register_model(_spec("efficientnet_b5"))
def efficientnet_b5(**kwargs: Any) -> EfficientNet:
    return _efficientnet("efficientnet_b5", **kwargs)


@register_model(_spec("efficientnet_b6"))
def efficientnet_b6(**kwargs: Any) -> EfficientNet:
    return _efficientnet("efficientnet_b6", **kwargs)


@register_model(_spec("efficientnet_b7"))
def efficientnet_b7(**kwargs: Any) -> EfficientNet:
    return _efficientnet("efficientnet_b7", **kwargs)
