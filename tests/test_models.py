"""The registry as a specification: every contract name, exact torchvision parameter counts, strict loads."""

from __future__ import annotations

import pytest
import torch
import torchvision

from cnnserve import models

CONTRACT_NAMES = (
    ["lenet5", "alexnet"]
    + [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]
    + ["googlenet"]
    + [f"resnet{d}" for d in (18, 34, 50, 101, 152)]
    + [f"densenet{d}" for d in (121, 161, 169, 201)]
    + [f"efficientnet_b{i}" for i in range(8)]
    + ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"]
    + ["unet", "yolov1", "yolov1_tiny", "fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "cae"]
)
# Each family's representative (the registry's): strict-load parity in the fast suite; the rest run under `slow`.
FAST_PARITY = set(models.representatives("classification"))
# ImageNet classifiers with a torchvision twin; the detectors' twins are checked in test_rcnn.py (their outputs are
# not one tensor, and torchvision builds them with trainable batch norm unless pretrained weights are asked for).
WITH_TORCHVISION = [n for n in models.list_models(task="classification") if models.get_spec(n).torchvision]


def test_every_contract_name_is_registered() -> None:
    assert set(CONTRACT_NAMES) <= set(models.list_models())
    assert models.list_models(task="classification") == [
        n for n in models.list_models() if models.get_spec(n).task == "classification"
    ]


def test_unknown_names_and_tasks_fail_clearly() -> None:
    with pytest.raises(KeyError, match="unknown model 'resnet19'"):
        models.get_spec("resnet19")
    with pytest.raises(ValueError, match="unknown task"):
        models.list_models(task="poetry")


def test_registry_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        models.register_model(models.get_spec("resnet18"))(lambda: None)


@pytest.mark.parametrize("name", models.list_models())
def test_spec_is_consistent(name: str) -> None:
    spec = models.get_spec(name)
    assert spec.name == name
    assert len(spec.mean) == len(spec.std) == spec.in_channels
    if spec.task in ("autoencoder", "inpainting", "generation"):
        assert spec.labels is None
    else:
        assert spec.labels is not None and len(spec.labels) == spec.num_classes
    if spec.torchvision:
        torchvision.models.get_model_builder(spec.torchvision)  # raises if torchvision has no such builder
        weights = torchvision.models.get_weight(spec.torchvision_weights)
        assert weights.meta["categories"] == list(spec.labels)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_lenet5_is_the_classic_size() -> None:
    assert _count(models.build_model("lenet5")) == 61_706
    out = models.build_model("lenet5")(torch.rand(3, 1, 32, 32))
    assert out.shape == (3, 10)


@pytest.mark.parametrize("name", WITH_TORCHVISION)
def test_parameter_count_equals_torchvision(name: str) -> None:
    with torch.device("meta"):  # no memory: ViT-H/14 is 632 M parameters
        ours = models.build_model(name)
        theirs = getattr(torchvision.models, models.get_spec(name).torchvision)(weights=None)
    assert _count(ours) == _count(theirs)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]


def _make_outputs_depend_on_everything(model: torch.nn.Module) -> None:
    """Random BN statistics, biases, heads and tokens, so a wrong eps, a zero head or a dropped branch shows up."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
        for p in model.parameters():
            if p.abs().max() == 0:  # zero-initialised heads and biases (ViT head, class token)
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


@pytest.mark.parametrize(
    "name",
    [n if n in FAST_PARITY else pytest.param(n, marks=pytest.mark.slow) for n in WITH_TORCHVISION],
)
def test_torchvision_state_dict_loads_strictly_and_matches(name: str) -> None:
    spec = models.get_spec(name)
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, spec.torchvision)(weights=None).eval()
    _make_outputs_depend_on_everything(theirs)
    ours = models.build_model(name).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.rand(2, 3, *spec.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max() > 1e-3, "outputs are trivially zero; the comparison would prove nothing"
    assert (got - expected).abs().max().item() <= 1e-4
