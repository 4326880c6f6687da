"""EfficientNet and ViT behaviour that the registry-wide tests (param counts, strict load) cannot see.

A state dict does not record strides, BatchNorm eps/momentum or stochastic-depth rates, and a zero-initialised
ViT head makes any two ViTs agree; these tests pin those down against torchvision and the papers' numbers.
Big models are built on the meta device, so the file runs in seconds.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision.models as tvm
from cnnserve.models import efficientnet, vit

from cnnserve import models

EFFICIENTNETS = [f"efficientnet_b{i}" for i in range(8)]
VITS = ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"]


def _meta(builder, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return builder(**kwargs)


def _stage_layout(model: nn.Module) -> list[list[tuple]]:
    """Per MBConv stage, per block: every convolution's (in, out, kernel, stride, groups)."""
    return [
        [
            tuple(
                (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.groups)
                for c in block.modules()
                if isinstance(c, nn.Conv2d)
            )
            for block in stage
        ]
        for stage in model.features[1:-1]
    ]


def _randomise(model: nn.Module) -> None:
    """Give the zero/one-initialised tensors (biases, norms, heads, class token) values that can disagree."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "class_token" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif "head" in name or "classifier" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


# --- EfficientNet -------------------------------------------------------------------------------------------


def test_b0_is_the_papers_table_1() -> None:
    model = _meta(efficientnet.efficientnet_b0)
    assert [len(stage) for stage in model.features[1:-1]] == [1, 2, 2, 3, 3, 4, 1]
    assert [stage[-1].out_channels for stage in model.features[1:-1]] == [16, 24, 40, 80, 112, 192, 320]
    assert model.features[0][0].out_channels == 32 and model.classifier[1].in_features == 1280


def test_b7_is_b0_compound_scaled() -> None:
    # width ×2.0, depth ×3.1 (ceil): worked out by hand from the B0 table.
    model = _meta(efficientnet.efficientnet_b7)
    assert [len(stage) for stage in model.features[1:-1]] == [4, 7, 7, 10, 10, 13, 4]
    assert [stage[-1].out_channels for stage in model.features[1:-1]] == [32, 48, 80, 160, 224, 384, 640]
    assert model.features[0][0].out_channels == 64 and model.classifier[1].in_features == 2560


@pytest.mark.parametrize("name", EFFICIENTNETS)
def test_efficientnet_layout_matches_torchvision(name: str) -> None:
    """Widths, depths, kernels *and strides* (which a state dict does not record) per stage and block."""
    ours, theirs = _meta(getattr(efficientnet, name)), _meta(getattr(tvm, name))
    assert _stage_layout(ours) == _stage_layout(theirs)


@pytest.mark.parametrize("name", EFFICIENTNETS)
def test_efficientnet_batchnorm_and_stochastic_depth_match_torchvision(name: str) -> None:
    ours, theirs = _meta(getattr(efficientnet, name)), _meta(getattr(tvm, name))

    def bn(m: nn.Module) -> set[tuple[float, float]]:
        return {(b.eps, b.momentum) for b in m.modules() if isinstance(b, nn.BatchNorm2d)}

    def drop_rates(m: nn.Module) -> list[float]:
        return [b.stochastic_depth.p for stage in m.features[1:-1] for b in stage]

    assert bn(ours) == bn(theirs)
    assert bn(ours) == (
        {(1e-3, 0.01)} if name in {"efficientnet_b5", "efficientnet_b6", "efficientnet_b7"} else {(1e-5, 0.1)}
    )
    assert drop_rates(ours) == pytest.approx(drop_rates(theirs))
    assert drop_rates(ours)[0] == 0.0 and drop_rates(ours)[-1] < 0.2


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b5"])
def test_efficientnet_eval_parity_with_real_batchnorm_statistics(name: str) -> None:
    """With running statistics other than (0, 1) a wrong BatchNorm eps changes the output: caught here."""
    theirs = getattr(tvm, name)()
    _randomise(theirs)
    for b in theirs.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.momentum = None  # cumulative average: running stats = this batch's statistics
    with torch.no_grad():
        theirs.train()(torch.randn(4, 3, 64, 64))
    ours = getattr(efficientnet, name)()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), atol=1e-4, rtol=0)


def test_efficientnet_in_channels_and_num_classes() -> None:
    model = efficientnet.efficientnet_b0(in_channels=1, num_classes=10).eval()
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 10)


# --- ViT ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("image_size", "tokens"), [(64, 2 * 2 + 1), ((64, 96), 2 * 3 + 1), (224, 7 * 7 + 1)])
def test_vit_token_count_is_patches_plus_class_token(image_size: int | tuple[int, int], tokens: int) -> None:
    model = vit.vit_b_32(image_size=image_size).eval()
    seen: list[torch.Size] = []
    model.encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    with torch.no_grad():
        model(torch.rand(2, 3, h, w))
    assert seen == [torch.Size([2, tokens, 768])]
    assert model.encoder.pos_embedding.shape == (1, tokens, 768)


def test_vit_h_14_at_518_matches_torchvision_swag_shape() -> None:
    kwargs = models.get_spec("vit_h_14").torchvision_kwargs
    ours, theirs = _meta(vit.vit_h_14, **kwargs), _meta(tvm.vit_h_14, **kwargs)
    assert ours.encoder.pos_embedding.shape == theirs.encoder.pos_embedding.shape == (1, 37 * 37 + 1, 1280)


def test_vit_image_size_not_divisible_by_patch_is_refused() -> None:
    with pytest.raises(ValueError, match=r"not divisible by patch_size 16.*224×224"):
        vit.vit_b_16(image_size=230)


def test_vit_wrong_input_size_is_refused() -> None:
    model = vit.vit_b_32(image_size=64)
    with pytest.raises(ValueError, match=r"expected images of 64×64.*got 96×96"):
        model(torch.rand(1, 3, 96, 96))


@pytest.mark.parametrize("train", [False, True])
def test_vit_attention_matches_torchvision_multihead_attention(train: bool) -> None:
    """Our written-out attention against nn.MultiheadAttention (torchvision's), on a small random ViT."""
    cfg = {
        "image_size": 32,
        "patch_size": 8,
        "num_layers": 2,
        "num_heads": 4,
        "hidden_dim": 64,
        "mlp_dim": 128,
    }
    theirs = tvm.VisionTransformer(**cfg, num_classes=10)
    _randomise(theirs)
    ours = vit.VisionTransformer(**cfg, num_classes=10)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.train(train), theirs.train(train)  # no dropout configured, so training mode is deterministic too
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)


def test_vit_in_channels_and_representation_size() -> None:
    model = vit.vit_b_32(in_channels=1, num_classes=10, image_size=64, representation_size=128).eval()
    theirs = _meta(tvm.vit_b_32, num_classes=10, image_size=64, representation_size=128)
    assert [k for k in model.state_dict()] == [k for k in theirs.state_dict()]
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 10)


# --- Specs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EFFICIENTNETS + VITS)
def test_spec_follows_torchvision_weights_transforms(name: str) -> None:
    spec = models.get_spec(name)
    weights = tvm.get_weight(spec.torchvision_weights)
    t = weights.transforms()
    assert spec.family == name.split("_")[0] and spec.torchvision == name
    assert spec.interpolation == t.interpolation.value
    if name == "vit_h_14":
        # The default build takes 224; the published SWAG weights need image_size=518, carried in the spec.
        assert spec.input_size == (224, 224)
        assert spec.torchvision_kwargs == {"image_size": weights.transforms().crop_size[0]} == {"image_size": 518}
    else:
        assert spec.input_size == (t.crop_size[0], t.crop_size[0])
        assert spec.resize_size == t.resize_size[0]
        assert spec.torchvision_kwargs == {}
