"""Convolutional variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes").

The encoder is the CAE's stack of ``EncoderBlock`` stages (:mod:`.cae`), flattened into two linear heads that give
the approximate posterior q(z | x) = N(mean, diag(exp(log_var))) over a ``latent_dim``-dimensional code; a code is
drawn with the reparameterisation trick (z = mean + σ·ε, ε ~ N(0, I)), so the sampling step has a gradient. The
decoder mirrors the encoder with ``DecoderBlock`` stages and a sigmoid output: the means of p(x | z), one Bernoulli
per pixel, in [0, 1] like the input pixels.

Training maximises the evidence lower bound: reconstruction log-likelihood minus KL(q(z | x) ‖ N(0, I)). The KL term
pulls every posterior towards the standard normal prior, so decoding codes drawn from N(0, I) gives new images.

It pulls, but the codes of the training images never fill N(0, I) evenly: they gather in clusters (one per kind of
digit, roughly) with thin regions between them, and a code drawn from N(0, I) often lands between clusters and
decodes to a blend of two digits. So sampling uses a ``MixturePrior``: a Gaussian mixture fitted to the training
codes after training (the *ex-post density estimation* of Ghosh et al. 2020, "From Variational to Deterministic
Autoencoders"), driven by plain N(0, I) noise — :meth:`ConvVAE.generate`, what the exported graph computes. Before it
is fitted the mixture is N(0, I) itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .cae import DecoderBlock, EncoderBlock
from .registry import ModelSpec, register_model

__all__ = ["ConvVAE", "MixturePrior", "cvae", "kl_divergence"]


def kl_divergence(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) ‖ N(0, I)) per image, summed over the latent dimensions (the paper's eq. 10)."""
    return -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp(), dim=1)  # (N,)


class MixturePrior(nn.Module):
    """A Gaussian mixture over codes (``components`` × N(mean_k, L_k L_kᵀ)), sampled from standard normal noise of
    ``latent_dim + 1`` numbers: the first picks the component — its normal CDF, a uniform number, against the
    cumulative weights — and the rest are moved and shaped by that component's mean and Cholesky factor. The same
    noise always gives the same code. Buffers, set by fitting to the training codes; initially N(0, I)."""

    def __init__(self, components: int, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("weights", torch.full((components,), 1.0 / components))
        self.register_buffer("means", torch.zeros(components, latent_dim))
        self.register_buffer("scale_tril", torch.eye(latent_dim).repeat(components, 1, 1))

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        u = 0.5 * (1.0 + torch.erf(noise[:, 0] / math.sqrt(2.0)))  # (N,): uniform on (0, 1)
        bounds = torch.cumsum(self.weights, dim=0)[:-1]  # (K-1,)
        k = (u[:, None] > bounds[None, :]).sum(dim=1)  # (N,): the component
        shaped = torch.matmul(self.scale_tril[k], noise[:, 1:, None]).squeeze(-1)  # (N, Z): L_k ε
        return self.means[k] + shaped  # (N, Z): z ~ N(mean_k, L_k L_kᵀ)


class ConvVAE(nn.Module):
    """Encoder stages → (mean, log σ²) heads → z → decoder stages → sigmoid pixel means; a mixture prior to sample."""

    def __init__(
        self,
        *,
        in_channels: int = 1,
        channels: tuple[int, ...] = (16, 32, 64),
        latent_dim: int = 16,
        input_size: tuple[int, int] = (32, 32),
        prior_components: int = 10,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels needs at least one stage")
        scale = 2 ** len(channels)
        if input_size[0] % scale or input_size[1] % scale:
            raise ValueError(f"input_size {input_size} must be divisible by 2**len(channels) = {scale}")
        self.latent_dim = latent_dim
        self.feature_shape = (channels[-1], input_size[0] // scale, input_size[1] // scale)
        features = channels[-1] * self.feature_shape[1] * self.feature_shape[2]
        widths = (in_channels, *channels)
        self.encoder = nn.Sequential(*(EncoderBlock(widths[i], widths[i + 1]) for i in range(len(channels))))
        self.to_mean = nn.Linear(features, latent_dim)
        self.to_log_var = nn.Linear(features, latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim, features), nn.ReLU(inplace=True))
        decoder_in = channels[::-1]
        decoder_out = (*channels[::-1][1:], channels[0])
        self.decoder = nn.Sequential(*(DecoderBlock(i, o) for i, o in zip(decoder_in, decoder_out, strict=True)))
        self.output = nn.Conv2d(channels[0], in_channels, kernel_size=3, padding=1)
        self.prior = MixturePrior(prior_components, latent_dim)

    @property
    def noise_dim(self) -> int:
        """Numbers of N(0, I) noise per generated image: one picks the prior's component, the rest shape the code."""
        return self.latent_dim + 1

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.flatten(self.encoder(x), 1)  # (N, C_last·H/2^S·W/2^S)
        return self.to_mean(x), self.to_log_var(x)  # (N, latent_dim) each: q(z | x)

    @staticmethod
    def reparameterize(mean: torch.Tensor, log_var: torch.Tensor, generator: torch.Generator | None = None):
        """z = mean + σ·ε with ε ~ N(0, I): a draw from q(z | x) that gradients flow through."""
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(0.5 * log_var) * eps  # (N, latent_dim)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = self.from_latent(z).view(-1, *self.feature_shape)  # (N, C_last, H/2^S, W/2^S)
        x = self.decoder(x)  # (N, C_0, H, W)
        return torch.sigmoid(self.output(x))  # (N, in_channels, H, W): p(x | z)'s means, in [0, 1]

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        """Standard normal noise (N, latent_dim + 1) → new images (N, C, H, W): decode a draw from the prior."""
        return self.decode(self.prior(noise))

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training: (reconstruction of a posterior draw, mean, log σ²); in eval mode the code is the mean."""
        mean, log_var = self.encode(x)
        z = self.reparameterize(mean, log_var, generator) if self.training else mean
        return self.decode(z), mean, log_var


@register_model(
    ModelSpec(
        name="cvae",
        task="generation",
        family="vae",
        input_size=(32, 32),
        in_channels=1,
        background=(0, 0, 0),  # the digits: light ink on black
        mean=(0.0,),
        std=(1.0,),
        num_classes=0,
        labels=None,
        noise_dim=17,
        description="Convolutional VAE, 32×32 grey, 16-number latent code, 10-component mixture prior (demo: digits "
        "0–9); generates digits from 17 numbers of noise",
    )
)
def cvae(
    *,
    in_channels: int = 1,
    channels: tuple[int, ...] = (16, 32, 64),
    latent_dim: int = 16,
    input_size: tuple[int, int] = (32, 32),
    prior_components: int = 10,
) -> ConvVAE:
    return ConvVAE(
        in_channels=in_channels,
        channels=channels,
        latent_dim=latent_dim,
        input_size=input_size,
        prior_components=prior_components,
    )
