"""AlexNet and VGG: the paper's layer counts, the input contract torchvision's weights expect, the overrides.

Models are built on the ``meta`` device (shapes, no storage), so even VGG-19 costs milliseconds; numerical
parity with torchvision is the registry-wide suite's job.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision.models
from cnnserve.models import build_model, get_spec

# name → 3×3 convolutions (Simonyan & Zisserman, Table 1: configurations A, B, D, E).
VGG_CONVS = {
    "vgg11": 8,
    "vgg11_bn": 8,
    "vgg13": 10,
    "vgg13_bn": 10,
    "vgg16": 13,
    "vgg16_bn": 13,
    "vgg19": 16,
    "vgg19_bn": 16,
}
NAMES = ["alexnet", *VGG_CONVS]


def _meta(name: str, **overrides: object) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, **overrides)


def _count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("name", VGG_CONVS)
def test_vgg_layer_counts_follow_the_paper(name: str) -> None:
    model = _meta(name)
    convs = _count(model, nn.Conv2d)
    assert convs == VGG_CONVS[name]
    # "VGG-16" counts weight layers: convolutions plus the three fully connected ones.
    assert convs + _count(model, nn.Linear) == int(name.removeprefix("vgg").removesuffix("_bn"))
    assert _count(model, nn.BatchNorm2d) == (convs if name.endswith("_bn") else 0)
    assert _count(model, nn.MaxPool2d) == 5
    assert all(m.kernel_size == (3, 3) for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", NAMES)
def test_spec_matches_torchvision_weights(name: str) -> None:
    spec = get_spec(name)
    enum_name, member = spec.torchvision_weights.split(".")
    weights = getattr(getattr(torchvision.models, enum_name), member)
    preset = weights.transforms()
    assert spec.torchvision == name
    assert spec.input_size == (preset.crop_size[0], preset.crop_size[0])
    assert spec.resize_size == preset.resize_size[0]
    assert spec.interpolation == preset.interpolation.value
    assert spec.mean == pytest.approx(preset.mean)
    assert spec.std == pytest.approx(preset.std)
    assert spec.labels == tuple(weights.meta["categories"])
    assert sum(p.numel() for p in _meta(name).parameters()) == weights.meta["num_params"]


@pytest.mark.parametrize("name", ["alexnet", "vgg11_bn"])
def test_overrides_reshape_stem_head_and_dropout(name: str) -> None:
    model = _meta(name, num_classes=10, in_channels=1, dropout=0.2)
    assert next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels == 1
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.2}
    assert model(torch.empty(2, 1, 224, 224, device="meta")).shape == (2, 10)


@pytest.mark.parametrize(("name", "features"), [("alexnet", 256 * 6 * 6), ("vgg16", 512 * 7 * 7)])
def test_adaptive_pool_feeds_the_fixed_head_from_any_size(name: str, features: int) -> None:
    model = _meta(name)
    # torchvision's weights declare min_size (63 for AlexNet, 32 for VGG); larger inputs are pooled back.
    enum_name, member = get_spec(name).torchvision_weights.split(".")
    min_h, min_w = getattr(getattr(torchvision.models, enum_name), member).meta["min_size"]
    for h, w in [(min_h, min_w), (224, 224), (320, 288)]:
        x = torch.empty(1, 3, h, w, device="meta")
        assert model.forward_features(x).shape == (1, features)
        assert model(x).shape == (1, 1000)
