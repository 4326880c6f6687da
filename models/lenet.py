"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning applied to document recognition").

The classic form: a 32×32 grey image, C1 (6 5×5 convolutions) → S2 (2×2 subsampling) → C3 (16 5×5 convolutions)
→ S4 (2×2 subsampling) → C5 (120 5×5 convolutions, which on a 5×5 map is a fully connected layer) → F6 (84 units)
→ output (10 classes): two convolution stages and three fully connected layers, 61,706 parameters.

Kept close to the paper with two modern simplifications a reader should know about: S2/S4 are average pools
without the paper's trainable coefficient, C3 connects to all six S2 maps (the paper's sparse table was an
engineering trick of its time), and the output is a linear layer rather than Euclidean RBF units. There is no
torchvision counterpart; the demo weights come from ``cnnserve train lenet5-digits``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .labels import DIGIT_LABELS
from .registry import ModelSpec, register_model

__all__ = ["LeNet5", "lenet5"]


class LeNet5(nn.Module):
    def __init__(self, *, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 6, kernel_size=5)
        self.s2 = nn.AvgPool2d(kernel_size=2, stride=2)
        self.c3 = nn.Conv2d(6, 16, kernel_size=5)
        self.s4 = nn.AvgPool2d(kernel_size=2, stride=2)
        self.c5 = nn.Conv2d(16, 120, kernel_size=5)
        self.f6 = nn.Linear(120, 84)
        self.output = nn.Linear(84, num_classes)
        self.act = nn.Tanh()  # the paper's squashing function (a scaled tanh)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s2(self.act(self.c1(x)))  # (N, 6, 14, 14)
        x = self.s4(self.act(self.c3(x)))  # (N, 16, 5, 5)
        x = self.act(self.c5(x))  # (N, 120, 1, 1)
        return torch.flatten(x, 1)  # (N, 120)

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """C5's features → logits, or with ``pre_logits`` F6's activations, the penultimate representation
        (an image's embedding)."""
        x = self.act(self.f6(x))  # (N, 84)
        return x if pre_logits else self.output(x)  # (N, num_classes) logits

    def get_classifier(self) -> nn.Module:
        return self.output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # (N, num_classes) logits


@register_model(
    ModelSpec(
        name="lenet5",
        task="classification",
        family="lenet",
        input_size=(32, 32),
        in_channels=1,
        background=(0, 0, 0),  # the digits: light ink on black
        mean=(0.5,),
        std=(0.5,),
        num_classes=10,
        labels=DIGIT_LABELS,
        description="LeNet-5, 32×32 grey input, digits 0–9 (demo weights: sklearn digits)",
    )
)
def lenet5(*, num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    return LeNet5(num_classes=num_classes, in_channels=in_channels)
