"""Convolutional autoencoder (after Masci et al. 2011, "Stacked Convolutional Auto-Encoders"; denoising as in
Vincent et al. 2008, "Extracting and Composing Robust Features with Denoising Autoencoders").

The encoder is a stack of ``EncoderBlock`` stages (3×3 convolution → BatchNorm → ReLU, then a stride-2 3×3
convolution that halves the resolution), flattened into a small fully connected bottleneck (``latent_dim``
numbers per image); the decoder mirrors it with ``DecoderBlock`` stages (a 2×2 transposed convolution, stride 2,
that doubles the resolution, then 3×3 convolution → BatchNorm → ReLU) and a 3×3 output convolution with a sigmoid,
so the reconstruction is in [0, 1] like the input pixels.

The inpainting variant (``cae_inpaint``; the task of Pathak et al. 2016, "Context Encoders: Feature Learning by
Inpainting") is the same network with a wider bottleneck that sees two channels, the image with its hole blanked
and the hole's mask, and reconstructs the whole image; the exported graph keeps the known pixels and takes the
reconstruction only inside the hole.

The bottleneck is what makes it an anomaly detector: it is too narrow to copy an image, so the network can only
reconstruct what looks like its training data, and the reconstruction error of anything else is large. Trained
on noisy inputs against clean targets, the same network is a denoiser. The input size is fixed by the linear
bottleneck (``input_size``, 32×32 for the demo, divisible by 2**len(channels)).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .registry import ModelSpec, register_model

__all__ = ["EncoderBlock", "DecoderBlock", "ConvAutoencoder", "cae", "cae_inpaint"]


class EncoderBlock(nn.Module):
    """3×3 conv → BN → ReLU, then a stride-2 3×3 conv → BN → ReLU: (N, C, H, W) → (N, C', H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    """2×2 transposed conv (stride 2) → BN → ReLU, then 3×3 conv → BN → ReLU: (N, C, H, W) → (N, C', 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConvAutoencoder(nn.Module):
    """Encoder stages → linear bottleneck (``latent_dim``) → decoder stages → sigmoid reconstruction."""

    def __init__(
        self,
        *,
        in_channels: int = 1,
        channels: tuple[int, ...] = (16, 32, 64),
        latent_dim: int = 8,
        input_size: tuple[int, int] = (32, 32),
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels needs at least one stage")
        scale = 2 ** len(channels)
        if input_size[0] % scale or input_size[1] % scale:
            raise ValueError(f"input_size {input_size} must be divisible by 2**len(channels) = {scale}")
        self.feature_shape = (channels[-1], input_size[0] // scale, input_size[1] // scale)
        features = channels[-1] * self.feature_shape[1] * self.feature_shape[2]
        widths = (in_channels, *channels)
        self.encoder = nn.Sequential(*(EncoderBlock(widths[i], widths[i + 1]) for i in range(len(channels))))
        self.to_latent = nn.Linear(features, latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim, features), nn.ReLU(inplace=True))
        # Mirror of the encoder: (64 → 32), (32 → 16), (16 → 16) for channels (16, 32, 64).
        decoder_in = channels[::-1]
        decoder_out = (*channels[::-1][1:], channels[0])
        self.decoder = nn.Sequential(*(DecoderBlock(i, o) for i, o in zip(decoder_in, decoder_out, strict=True)))
        self.output = nn.Conv2d(channels[0], out_channels or in_channels, kernel_size=3, padding=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder(x)  # (N, C_last, H/2^S, W/2^S)
        return self.to_latent(torch.flatten(x, 1))  # (N, latent_dim): the bottleneck

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = self.from_latent(z).view(-1, *self.feature_shape)  # (N, C_last, H/2^S, W/2^S)
        x = self.decoder(x)  # (N, C_0, H, W)
        return torch.sigmoid(self.output(x))  # (N, out_channels, H, W) in [0, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


@register_model(
    ModelSpec(
        name="cae",
        task="autoencoder",
        family="cae",
        input_size=(32, 32),
        in_channels=1,
        background=(0, 0, 0),  # the digits: light ink on black
        mean=(0.0,),
        std=(1.0,),
        num_classes=0,
        labels=None,
        description="Denoising convolutional autoencoder, 32×32 grey, 8-number bottleneck (demo: digits 0–7)",
    )
)
def cae(
    *,
    in_channels: int = 1,
    channels: tuple[int, ...] = (16, 32, 64),
    latent_dim: int = 8,
    input_size: tuple[int, int] = (32, 32),
) -> ConvAutoencoder:
    return ConvAutoencoder(in_channels=in_channels, channels=channels, latent_dim=latent_dim, input_size=input_size)


@register_model(
    ModelSpec(
        name="cae_inpaint",
        task="inpainting",
        family="cae",
        input_size=(32, 32),
        in_channels=1,  # the image's; the network also sees the hole's mask as a second channel
        background=(0, 0, 0),  # the digits: light ink on black
        mean=(0.0,),
        std=(1.0,),
        num_classes=0,
        labels=None,
        description="Inpainting convolutional autoencoder, 32×32 grey + hole mask, 32-number bottleneck "
        "(demo: digits 0–9 with random holes)",
    )
)
def cae_inpaint(
    *,
    channels: tuple[int, ...] = (16, 32, 64),
    latent_dim: int = 32,
    input_size: tuple[int, int] = (32, 32),
) -> ConvAutoencoder:
    """(image with the hole blanked, mask) → the whole image: 2 channels in, 1 out."""
    return ConvAutoencoder(
        in_channels=2, out_channels=1, channels=channels, latent_dim=latent_dim, input_size=input_size
    )
