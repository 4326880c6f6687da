"""AlexNet (Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification with Deep Convolutional Neural
Networks").

The network that started the deep-learning era in vision: five convolutions (an 11×11/4 stem, then 5×5 and
three 3×3), ReLU instead of saturating non-linearities, overlapping 3×3/2 max-pooling, and a 4096-4096 fully
connected head regularised with dropout. This is torchvision's *single-tower* variant (Krizhevsky 2014, "One
weird trick for parallelizing convolutional neural networks"): 64-192-384-256-256 channels instead of the
paper's two GPU halves of 96-256-384-384-256, and no local response normalisation.

``features`` and ``classifier`` stay flat ``nn.Sequential`` stacks, as in torchvision's ``alexnet.py``, so the
parameter names (``features.0.weight`` … ``classifier.6.bias``) match its published checkpoint and it loads
with ``strict=True``. Shape comments assume a 224×224 input.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .labels import imagenet_classifier_spec
from .registry import ModelSpec, register_model

__all__ = ["AlexNet", "alexnet"]


class AlexNet(nn.Module):
    """Five convolutions with three overlapping max-pools, a fixed 6×6 pool, three fully connected layers."""

    def __init__(self, *, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),  # (N, 64, 55, 55)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (N, 64, 27, 27): overlapping pooling
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # (N, 192, 27, 27)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (N, 192, 13, 13)
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # (N, 384, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # (N, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # (N, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (N, 256, 6, 6)
        )
        # Identity at 224×224; lets other input sizes (down to 63×63) reach the fixed-size head.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),  # fc7
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),  # fc8
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 256, H', W'); 6×6 at 224×224
        return torch.flatten(self.avgpool(x), 1)  # (N, 9216)

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Pooled features → logits, or with ``pre_logits`` fc7's activations, the penultimate
        representation (an image's embedding)."""
        x = self.classifier[:-1](x)  # (N, 4096): fc6 → fc7
        return x if pre_logits else self.classifier[-1](x)  # (N, num_classes) logits

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]  # fc8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # (N, num_classes) logits


def _spec(name: str) -> ModelSpec:
    # As AlexNet_Weights.IMAGENET1K_V1.transforms() has it: resize 256, centre crop 224, bilinear.
    return imagenet_classifier_spec(
        name,
        family="alexnet",
        weights="AlexNet_Weights.IMAGENET1K_V1",
        description="AlexNet (single-tower variant): 5 convolutions, 3 fully connected layers, dropout",
    )


@register_model(_spec("alexnet"))
def alexnet(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> AlexNet:
    return AlexNet(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
