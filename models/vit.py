"""Vision Transformer (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words").

The paper's idea in one line: cut the image into p×p patches, embed each linearly as a token, prepend a learnt
class token, add learnt position embeddings, and run a plain pre-norm Transformer encoder; the class token's
final state is classified. There is no convolutional prior beyond the patchify projection. The five sizes
(B/L/H with patch 16, 32 or 14) differ only in the numbers in :data:`_VITS`.

The modules are written out in the spirit of lucidrains' ``vit.py`` (``Attention``, ``FeedForward``,
``EncoderBlock``, ``Encoder``) rather than using ``nn.MultiheadAttention``, so the attention formula is on the
page and exports to plain ONNX ops. Parameter names still follow torchvision's ``vision_transformer.py``
(``self_attention.in_proj_weight``, ``mlp.0``, ``encoder.layers.encoder_layer_{i}``, ``heads.head``) so its
published checkpoints load with ``strict=True``. Shape comments use N images, S = (H/p)(W/p) + 1 tokens and
D = ``hidden_dim``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .labels import imagenet_classifier_spec
from .registry import ModelSpec, register_model

__all__ = [
    "Attention",
    "FeedForward",
    "EncoderBlock",
    "Encoder",
    "VisionTransformer",
    "vit_b_16",
    "vit_b_32",
    "vit_l_16",
    "vit_l_32",
    "vit_h_14",
]


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class Attention(nn.Module):
    """Multi-head self-attention, softmax(QKᵀ/√d)·V per head, then an output projection.

    Q, K and V come from one packed projection (``in_proj_weight`` is [W_q; W_k; W_v], shape (3D, D)), the
    layout ``nn.MultiheadAttention`` stores, so its checkpoints load unchanged.
    """

    def __init__(self, dim: int, *, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout_p = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (N, S, 3D)
        qkv = qkv.reshape(n, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (3, N, h, S, D/h)
        q, k, v = qkv.unbind(0)
        dropout_p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)  # softmax(QKᵀ/√d)V: (N, h, S, D/h)
        out = out.transpose(1, 2).reshape(n, s, d)  # (N, S, D): heads concatenated
        return self.out_proj(out)


class FeedForward(nn.Sequential):
    """The Transformer MLP: Linear → GELU → Dropout → Linear → Dropout (keys ``0.*`` and ``3.*``)."""

    def __init__(self, dim: int, hidden_dim: int, *, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)


class EncoderBlock(nn.Module):
    """Pre-norm Transformer layer: x = x + MSA(LN(x)), then x = x + MLP(LN(x)) (the paper's eqs. 2–3)."""

    def __init__(
        self, dim: int, *, heads: int, mlp_dim: int, dropout: float = 0.0, attention_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = Attention(dim, heads=heads, dropout=attention_dropout)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FeedForward(dim, mlp_dim, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attention(self.ln_1(x)))  # (N, S, D)
        return x + self.mlp(self.ln_2(x))  # (N, S, D)


class Encoder(nn.Module):
    """Learnt position embeddings, ``depth`` encoder blocks, and a final LayerNorm."""

    def __init__(
        self,
        seq_length: int,
        dim: int,
        *,
        depth: int,
        heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim).normal_(std=0.02))  # from BERT
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(
            OrderedDict(
                (
                    f"encoder_layer_{i}",
                    EncoderBlock(
                        dim,
                        heads=heads,
                        mlp_dim=mlp_dim,
                        dropout=dropout,
                        attention_dropout=attention_dropout,
                    ),
                )
                for i in range(depth)
            )
        )
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x + self.pos_embedding)  # (N, S, D)
        return self.ln(self.layers(x))  # (N, S, D)


class VisionTransformer(nn.Module):
    """Patchify (a p×p/p convolution), prepend the class token, encode, classify the class token.

    ``image_size`` is fixed at construction because the position embeddings have one entry per patch; it may
    be an int or (H, W), and each side must be a multiple of ``patch_size``.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int] = 224,
        patch_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        representation_size: int | None = None,
    ) -> None:
        super().__init__()
        self.image_size = _pair(image_size)
        self.patch_size = patch_size
        h, w = self.image_size
        if h % patch_size or w % patch_size:
            raise ValueError(
                f"image_size {h}×{w} is not divisible by patch_size {patch_size}; use multiples of "
                f"{patch_size}, e.g. {h // patch_size * patch_size}×{w // patch_size * patch_size}"
            )
        self.seq_length = (h // patch_size) * (w // patch_size) + 1  # patches + the class token

        self.conv_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.encoder = Encoder(
            self.seq_length,
            hidden_dim,
            depth=num_layers,
            heads=num_heads,
            mlp_dim=mlp_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
        )
        heads: OrderedDict[str, nn.Module] = OrderedDict()
        if representation_size is not None:  # the paper's pre-training head: a tanh hidden layer
            heads["pre_logits"] = nn.Linear(hidden_dim, representation_size)
            heads["act"] = nn.Tanh()
        heads["head"] = nn.Linear(representation_size or hidden_dim, num_classes)
        self.heads = nn.Sequential(heads)

        fan_in = in_channels * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        if representation_size is not None:
            nn.init.trunc_normal_(self.heads.pre_logits.weight, std=math.sqrt(1 / hidden_dim))
            nn.init.zeros_(self.heads.pre_logits.bias)
        # Zero head, as torchvision and the paper's fine-tuning recipe do: untrained, it predicts uniformly.
        nn.init.zeros_(self.heads.head.weight)
        nn.init.zeros_(self.heads.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(
                f"expected images of {self.image_size[0]}×{self.image_size[1]} (the position embeddings' "
                f"grid), got {x.shape[-2]}×{x.shape[-1]}; build it with image_size={tuple(x.shape[-2:])}"
            )
        x = self.conv_proj(x)  # (N, D, H/p, W/p): one embedding per patch
        x = x.flatten(2).transpose(1, 2)  # (N, S-1, D): patches as a token sequence
        cls = self.class_token.expand(x.shape[0], -1, -1)  # (N, 1, D)
        x = self.encoder(torch.cat([cls, x], dim=1))  # (N, S, D)
        return x[:, 0]  # (N, D): the class token's final state

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """The class token → logits; with ``pre_logits`` the class token (through the pre-training head's tanh
        layer when there is one), the penultimate representation (an image's embedding)."""
        x = self.heads[:-1](x)  # (N, D) or (N, representation_size)
        return x if pre_logits else self.heads.head(x)  # (N, num_classes) logits

    def get_classifier(self) -> nn.Module:
        return self.heads.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # (N, num_classes) logits


class _Size(NamedTuple):
    patch_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int


# The paper's Table 1 sizes (Base / Large / Huge) with their patch sizes.
_VITS: dict[str, _Size] = {
    "vit_b_16": _Size(16, 12, 12, 768, 3072),
    "vit_b_32": _Size(32, 12, 12, 768, 3072),
    "vit_l_16": _Size(16, 24, 16, 1024, 4096),
    "vit_l_32": _Size(32, 24, 16, 1024, 4096),
    "vit_h_14": _Size(14, 32, 16, 1280, 5120),
}

# torchvision weights and the eval recipe of their transforms(): (weights, crop, resize, interpolation).
# ViT-H/14 has no 224-pixel end-to-end weights: its default weights (SWAG, fine-tuned at 518) need
# image_size=518 (torchvision_kwargs below); the spec describes the default 224 build, with the SWAG recipe.
_WEIGHTS: dict[str, tuple[str, int, int, str]] = {
    "vit_b_16": ("ViT_B_16_Weights.IMAGENET1K_V1", 224, 256, "bilinear"),
    "vit_b_32": ("ViT_B_32_Weights.IMAGENET1K_V1", 224, 256, "bilinear"),
    "vit_l_16": ("ViT_L_16_Weights.IMAGENET1K_V1", 224, 242, "bilinear"),
    "vit_l_32": ("ViT_L_32_Weights.IMAGENET1K_V1", 224, 256, "bilinear"),
    "vit_h_14": ("ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1", 224, 224, "bicubic"),
}
_TORCHVISION_KWARGS: dict[str, dict[str, Any]] = {"vit_h_14": {"image_size": 518}}


def _spec(name: str) -> ModelSpec:
    size = _VITS[name]
    weights, crop, resize, interpolation = _WEIGHTS[name]
    return imagenet_classifier_spec(
        name,
        family="vit",
        weights=weights,
        crop=crop,
        resize=resize,
        interpolation=interpolation,
        torchvision_kwargs=_TORCHVISION_KWARGS.get(name),
        description=(
            f"ViT-{name[4].upper()}/{size.patch_size}: {size.num_layers} layers, {size.num_heads} heads, "
            f"width {size.hidden_dim}, MLP {size.mlp_dim}"
        ),
    )


def _vit(
    name: str,
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 224,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    representation_size: int | None = None,
) -> VisionTransformer:
    return VisionTransformer(
        **_VITS[name]._asdict(),
        image_size=image_size,
        num_classes=num_classes,
        in_channels=in_channels,
        dropout=dropout,
        attention_dropout=attention_dropout,
        representation_size=representation_size,
    )


@register_model(_spec("vit_b_16"))
def vit_b_16(**kwargs: Any) -> VisionTransformer:
    return _vit("vit_b_16", **kwargs)


@register_model(_spec("vit_b_32"), representative=True)
def vit_b_32(**kwargs: Any) -> VisionTransformer:
    return _vit("vit_b_32", **kwargs)


@register_model(_spec("vit_l_16"))
def vit_l_16(**kwargs: Any) -> VisionTransformer:
    return _vit("vit_l_16", **kwargs)


@register_model(_spec("vit_l_32"))
def vit_l_32(**kwargs: Any) -> VisionTransformer:
    return _vit("vit_l_32", **kwargs)


@register_model(_spec("vit_h_14"))
def vit_h_14(**kwargs: Any) -> VisionTransformer:
    return _vit("vit_h_14", **kwargs)
