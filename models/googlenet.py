"""GoogLeNet (Szegedy et al. 2014, "Going Deeper with Convolutions"), a.k.a. Inception v1.

The paper's idea in one line: let each stage look at several scales at once — an ``InceptionModule`` runs a
1×1, a 3×3 and a 5×5 convolution and a max-pool side by side and concatenates their outputs along channels,
with 1×1 "reduce" convolutions in front of the expensive branches to keep the width (and the cost) in check.
Two auxiliary classifiers (``InceptionAux``) tapped off the middle of the network add gradient during training
only; at inference (and so in every exported ONNX graph) the model answers the main head's logits alone.

Module names follow torchvision's ``googlenet.py`` (including the aux heads) so its published checkpoint loads
with ``strict=True``; those weights were ported from Caffe and expect ``transform_input=True``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .labels import imagenet_classifier_spec
from .registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, register_model

__all__ = ["BasicConv2d", "InceptionModule", "InceptionAux", "GoogLeNet", "GoogLeNetOutputs", "googlenet"]


class GoogLeNetOutputs(NamedTuple):
    """Training-mode answer with aux heads on; field names are torchvision's, so its training loops work."""

    logits: torch.Tensor
    aux_logits2: torch.Tensor
    aux_logits1: torch.Tensor


class BasicConv2d(nn.Module):
    """Conv → BatchNorm (eps 1e-3, as in torchvision's port) → ReLU; every convolution in the net is one."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionModule(nn.Module):
    """Four parallel branches over the same input, concatenated: the columns of the paper's Table 1.

    Output width is ``ch1x1 + ch3x3 + ch5x5 + pool_proj``; every branch keeps the spatial size.
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, kernel_size=1),
            # The paper has a 5×5 here; torchvision uses a 3×3 (pytorch/vision#906) and its published weights
            # were trained that way, so we keep the 3×3 for checkpoint compatibility.
            BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1(x)  # 1×1                (N, ch1x1, H, W)
        b2 = self.branch2(x)  # 1×1 reduce → 3×3   (N, ch3x3, H, W)
        b3 = self.branch3(x)  # 1×1 reduce → "5×5" (N, ch5x5, H, W)
        b4 = self.branch4(x)  # 3×3 max-pool → 1×1 (N, pool_proj, H, W)
        return torch.cat([b1, b2, b3, b4], dim=1)  # (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)


class InceptionAux(nn.Module):
    """Auxiliary classifier: 4×4 average pool → 1×1 conv (128) → FC 1024 → dropout → FC; training only."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, (4, 4))  # (N, C, 4, 4)
        x = torch.flatten(self.conv(x), 1)  # (N, 2048)
        x = self.dropout(F.relu(self.fc1(x), inplace=True))  # (N, 1024)
        return self.fc2(x)  # (N, num_classes)


class GoogLeNet(nn.Module):
    """Stem, nine Inception modules in three groups (3a–b, 4a–e, 5a–b) between max-pools, average pool, FC.

    In training mode with ``aux_logits`` the forward answers :class:`GoogLeNetOutputs`; otherwise the logits.
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        aux_logits: bool = True,
        transform_input: bool = False,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
    ) -> None:
        super().__init__()
        if transform_input and in_channels != 3:
            raise ValueError("transform_input re-normalises ImageNet RGB input; it needs in_channels=3")
        self.aux_logits = aux_logits
        self.transform_input = transform_input

        self.conv1 = BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        # Table 1 of the paper: (in, #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj).
        self.inception3a = InceptionModule(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = InceptionModule(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = InceptionModule(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = InceptionModule(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = InceptionModule(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = InceptionModule(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = InceptionModule(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = InceptionModule(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = InceptionModule(832, 384, 192, 384, 48, 128, 128)

        self.aux1: InceptionAux | None = InceptionAux(512, num_classes, dropout_aux) if aux_logits else None
        self.aux2: InceptionAux | None = InceptionAux(528, num_classes, dropout_aux) if aux_logits else None

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """The Caffe-ported weights expect (p − 0.5)/0.5 pixels; ours arrive as (p − mean)/std, so convert."""
        channels = [
            x[:, c : c + 1] * (std / 0.5) + (mean - 0.5) / 0.5
            for c, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))
        ]
        return torch.cat(channels, dim=1)

    def _trunk(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Pooled features, plus both aux heads' logits if asked (tapped after 4a and 4d, as in the paper)."""
        if self.transform_input:
            x = self._transform_input(x)
        x = self.maxpool1(self.conv1(x))  # (N, 64, H/4, W/4)
        x = self.maxpool2(self.conv3(self.conv2(x)))  # (N, 192, H/8, W/8)
        x = self.inception3b(self.inception3a(x))  # (N, 480, H/8, W/8)
        x = self.inception4a(self.maxpool3(x))  # (N, 512, H/16, W/16)
        aux1 = self.aux1(x) if with_aux and self.aux1 is not None else None  # (N, num_classes)
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # (N, 528, H/16, W/16)
        aux2 = self.aux2(x) if with_aux and self.aux2 is not None else None  # (N, num_classes)
        x = self.maxpool4(self.inception4e(x))  # (N, 832, H/32, W/32)
        x = self.inception5b(self.inception5a(x))  # (N, 1024, H/32, W/32)
        return torch.flatten(self.avgpool(x), 1), aux2, aux1  # (N, 1024)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x, with_aux=False)[0]  # (N, 1024)

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Pooled features → logits; with ``pre_logits`` the pooled features themselves, the penultimate
        representation (an image's embedding)."""
        return x if pre_logits else self.fc(self.dropout(x))  # (N, num_classes) logits

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        with_aux = self.training and self.aux_logits
        features, aux2, aux1 = self._trunk(x, with_aux)
        logits = self.forward_head(features)  # (N, num_classes)
        if with_aux and aux1 is not None and aux2 is not None:
            return GoogLeNetOutputs(logits, aux2, aux1)
        return logits


def _spec(name: str) -> ModelSpec:
    return imagenet_classifier_spec(
        name,
        family="googlenet",
        weights="GoogLeNet_Weights.IMAGENET1K_V1",
        # The published weights are Caffe ports trained on (p − 0.5)/0.5 pixels.
        torchvision_kwargs={"transform_input": True},
        description="GoogLeNet (Inception v1): nine Inception modules, aux classifiers in training only",
    )


def _googlenet(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    aux_logits: bool = True,
    transform_input: bool = False,
    dropout: float = 0.2,
    dropout_aux: float = 0.7,
) -> GoogLeNet:
    return GoogLeNet(
        num_classes=num_classes,
        in_channels=in_channels,
        aux_logits=aux_logits,
        transform_input=transform_input,
        dropout=dropout,
        dropout_aux=dropout_aux,
    )


@register_model(_spec("googlenet"))
def googlenet(**kwargs: Any) -> GoogLeNet:
    return _googlenet(**kwargs)
