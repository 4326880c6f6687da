"""U-Net (Ronneberger, Fischer & Brox 2015, "U-Net: Convolutional Networks for Biomedical Image Segmentation").

A contracting path of ``DoubleConv`` blocks (two 3×3 convolutions + ReLU), each ``Down`` halving the resolution
with a 2×2 max-pool and doubling the width; an expanding path where each ``Up`` doubles the resolution with a 2×2
up-convolution (``ConvTranspose2d``, stride 2) that halves the width, concatenates the encoder features of the
same level (the skip connection) and runs another ``DoubleConv``; a 1×1 convolution maps the last features to
per-pixel class logits.

Two departures from the paper a reader should know about: ``DoubleConv`` has BatchNorm after each convolution
(it did not exist in 2015; it makes the small demo train in minutes), and ``padding="same"`` (the default) pads
the 3×3 convolutions so the logits have the input's size. ``padding="valid"`` is the paper's unpadded variant:
every convolution loses a 1-pixel border, each skip is centre-cropped to the up-sampled map, and a 572×572 tile
gives 388×388 logits (depth 4). The paper's width is 64 (``base_width=64``); the registered demo uses 16.
There is no torchvision counterpart; the demo weights come from ``cnnserve train unet-shapes``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import ModelSpec, register_model

__all__ = ["DoubleConv", "Down", "Up", "UNet", "unet", "valid_output_size", "SHAPES_LABELS"]

# The classes of the synthetic shapes demo (cnnserve/demos/shapes.py; models/ does not import cnnserve).
SHAPES_LABELS = ("background", "circle", "square", "triangle")
PADDINGS = ("same", "valid")


class DoubleConv(nn.Module):
    """(3×3 convolution → BatchNorm → ReLU) × 2: the unit of both paths."""

    def __init__(self, in_channels: int, out_channels: int, *, padding: str = "same") -> None:
        super().__init__()
        pad = 1 if padding == "same" else 0
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=pad, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=pad, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Down(nn.Module):
    """One contracting step: 2×2 max-pool (stride 2), then a DoubleConv that doubles the width."""

    def __init__(self, in_channels: int, out_channels: int, *, padding: str = "same") -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))  # (N, C, H, W) → (N, C', H/2 − b, W/2 − b), b = 4 if valid else 0


def _center_crop(skip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The paper's "cropping is necessary due to the loss of border pixels in every convolution"."""
    top = (skip.shape[-2] - height) // 2
    left = (skip.shape[-1] - width) // 2
    return skip[..., top : top + height, left : left + width]


class Up(nn.Module):
    """One expanding step: 2×2 up-convolution halving the width, concatenate the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, *, padding: str = "same") -> None:
        super().__init__()
        self.padding = padding
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        # Concatenation: in_channels // 2 up-sampled + (in_channels - in_channels // 2) skip channels.
        self.conv = DoubleConv(in_channels, out_channels, padding=padding)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (N, C, h, w) → (N, C/2, 2h, 2w)
        if self.padding == "valid":
            skip = _center_crop(skip, x.shape[-2], x.shape[-1])
        else:
            # "same": a side that was odd before a pool comes back one pixel short; pad it (zeros, bottom/right).
            x = F.pad(x, (0, skip.shape[-1] - x.shape[-1], 0, skip.shape[-2] - x.shape[-2]))
        x = torch.cat([skip, x], dim=1)  # (N, C_skip + C/2, H, W): the skip connection
        return self.conv(x)


class UNet(nn.Module):
    """DoubleConv stem, ``depth`` Down steps, ``depth`` Up steps, 1×1 output convolution."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 4,
        base_width: int = 16,
        depth: int = 4,
        padding: str = "same",
    ) -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, not {padding!r}")
        if depth < 1 or base_width < 1:
            raise ValueError("depth and base_width must be positive")
        self.depth = depth
        self.padding = padding
        widths = [base_width * 2**i for i in range(depth + 1)]  # e.g. 64, 128, 256, 512, 1024 in the paper
        self.inc = DoubleConv(in_channels, widths[0], padding=padding)
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1], padding=padding) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], padding=padding) for i in reversed(range(depth)))
        self.outc = nn.Conv2d(widths[0], num_classes, kernel_size=1)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]  # (N, w, H, W)
        for down in self.downs:
            skips.append(down(skips[-1]))  # (N, w·2^i, H/2^i, W/2^i), i = 1..depth
        x = skips.pop()  # the bottleneck: (N, w·2^depth, H/2^depth, W/2^depth)
        for up in self.ups:
            x = up(x, skips.pop())  # width halves, resolution doubles, back up the U
        return self.outc(x)  # (N, num_classes, H, W) logits (smaller for "valid", see valid_output_size)


def valid_output_size(size: int, depth: int = 4) -> int:
    """The paper's arithmetic for ``padding="valid"``: each DoubleConv loses 4 pixels, each pool halves.

    572 → 388 for depth 4 (Fig. 1 of the paper). Raises if a pooled map would have an odd size.
    """
    for _ in range(depth):
        size -= 4
        if size % 2:
            raise ValueError("an odd feature map before a 2×2 max-pool; choose another input size")
        size //= 2
    size -= 4  # bottleneck DoubleConv
    for _ in range(depth):
        size = size * 2 - 4
    if size < 1:
        raise ValueError("the input is too small for this depth with valid convolutions")
    return size


@register_model(
    ModelSpec(
        name="unet",
        task="semantic_segmentation",
        family="unet",
        input_size=(128, 128),
        in_channels=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        num_classes=len(SHAPES_LABELS),
        labels=SHAPES_LABELS,
        description="U-Net, base width 16, depth 4, same padding (demo weights: synthetic shapes)",
    )
)
def unet(
    *,
    in_channels: int = 3,
    num_classes: int = 4,
    base_width: int = 16,
    depth: int = 4,
    padding: str = "same",
) -> UNet:
    return UNet(in_channels=in_channels, num_classes=num_classes, base_width=base_width, depth=depth, padding=padding)
