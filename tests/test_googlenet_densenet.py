"""GoogLeNet and DenseNet: what the papers promise beyond "loads torchvision's weights".

GoogLeNet answers three heads in training and one in inference (so exported graphs carry no aux heads), and
its ``transform_input`` switch is what the Caffe-ported weights need. DenseNet's blocks concatenate every
earlier feature map, its variants' widths come from one table, and ``adapt_state_dict`` reads torchvision's
legacy checkpoint keys. Strict-load parity and parameter counts are the registry-wide suite's job.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from cnnserve.models.densenet import DenseBlock, DenseNet, Transition, adapt_state_dict, densenet121
from cnnserve.models.googlenet import GoogLeNet, GoogLeNetOutputs, googlenet
from cnnserve.models.registry import IMAGENET_MEAN, IMAGENET_STD, get_spec

# GoogLeNet is convolutional up to its adaptive pools; 64×64 keeps every stage non-empty and the tests fast.
SMALL = (64, 64)


@pytest.fixture(scope="module")
def net() -> GoogLeNet:
    torch.manual_seed(0)
    return googlenet(num_classes=10)


@pytest.fixture(scope="module")
def lively() -> GoogLeNet:
    """No aux heads; He-initialised so the logits depend on the input (the 0.01-std init washes it out)."""
    torch.manual_seed(0)
    model = googlenet(num_classes=10, aux_logits=False)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


def test_googlenet_train_mode_answers_main_and_both_aux_heads(net: GoogLeNet) -> None:
    out = net.train()(torch.rand(2, 3, *SMALL))
    assert isinstance(out, GoogLeNetOutputs)
    assert [t.shape for t in out] == [torch.Size([2, 10])] * 3
    assert not torch.equal(out.logits, out.aux_logits1)
    assert not torch.equal(out.aux_logits1, out.aux_logits2)


def test_googlenet_eval_mode_answers_logits_and_never_runs_the_aux_heads(net: GoogLeNet) -> None:
    calls: list[str] = []
    hooks = [head.register_forward_hook(lambda *_: calls.append("aux")) for head in (net.aux1, net.aux2)]
    try:
        with torch.no_grad():
            out = net.eval()(torch.rand(2, 3, *SMALL))
    finally:
        for hook in hooks:
            hook.remove()
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
    assert calls == []


def test_googlenet_without_aux_heads_has_no_aux_parameters_and_answers_logits_in_training(
    lively: GoogLeNet,
) -> None:
    assert not any(key.startswith(("aux1.", "aux2.")) for key in lively.state_dict())
    out = lively.train()(torch.rand(2, 3, *SMALL))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


def test_googlenet_transform_input_turns_imagenet_normalisation_into_caffe_normalisation(
    lively: GoogLeNet,
) -> None:
    # The published weights were trained on (p − 0.5)/0.5; the service feeds (p − mean)/std.
    model = lively.eval()
    pixels = torch.rand(2, 3, *SMALL)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    try:
        with torch.no_grad():
            expected = model((pixels - 0.5) / 0.5)
            untransformed = model((pixels - mean) / std)
            model.transform_input = True
            got = model((pixels - mean) / std)
    finally:
        model.transform_input = False
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(untransformed, expected, rtol=1e-2, atol=1e-3)  # the switch is not a no-op


def test_googlenet_spec_asks_for_transform_input_and_other_input_widths_refuse_it() -> None:
    assert get_spec("googlenet").torchvision_kwargs == {"transform_input": True}
    with pytest.raises(ValueError, match="in_channels=3"):
        googlenet(in_channels=1, transform_input=True)
    grey = googlenet(in_channels=1, num_classes=10).eval()
    with torch.no_grad():
        assert grey(torch.rand(1, 1, *SMALL)).shape == (1, 10)


def test_dense_block_concatenates_every_earlier_feature_map() -> None:
    c_in, k, layers = 16, 8, 3
    block = DenseBlock(num_layers=layers, num_input_features=c_in, bn_size=4, growth_rate=k, drop_rate=0.0).eval()
    seen: list[int] = []
    for layer in block.values():
        layer.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[1]))
    x = torch.randn(2, c_in, 8, 8)
    with torch.no_grad():
        y = block(x)
    assert seen == [c_in, c_in + k, c_in + 2 * k]  # layer ℓ sees x_0 … x_{ℓ−1}
    assert y.shape == (2, c_in + layers * k, 8, 8)
    torch.testing.assert_close(y[:, :c_in], x, rtol=0, atol=0)  # x_0 passes through untouched


def test_transition_halves_width_and_resolution() -> None:
    with torch.no_grad():
        y = Transition(64, 32).eval()(torch.randn(1, 64, 8, 8))
    assert y.shape == (1, 32, 4, 4)


@pytest.mark.parametrize(
    ("name", "width"),
    # Final feature widths of DenseNet-BC (Huang et al., Table 1; torchvision's classifier.in_features).
    [("densenet121", 1024), ("densenet161", 2208), ("densenet169", 1664), ("densenet201", 1920)],
)
def test_densenet_variants_reach_the_papers_final_width(name: str, width: int) -> None:
    import cnnserve.models.densenet as family

    with torch.device("meta"):
        model = getattr(family, name)(num_classes=7)
    assert model.classifier.in_features == width
    assert model.classifier.out_features == 7
    assert get_spec(name).family == "densenet"


def _legacy(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old-style checkpoint: dotted dense-layer names, no ``num_batches_tracked`` (hardest strict load)."""
    legacy = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        if ".denselayer" in key:
            for part in ("norm1", "relu1", "conv1", "norm2", "relu2", "conv2"):
                key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        legacy[key] = value
    return legacy


def test_adapt_state_dict_reads_torchvisions_legacy_keys() -> None:
    torch.manual_seed(0)
    source = DenseNet(4, (1, 2, 1, 1), 8, num_classes=3)
    legacy = _legacy(source.state_dict())
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    before = dict(legacy)

    adapted = adapt_state_dict(legacy)

    assert legacy == before  # the caller's dict is not modified
    expected = [k for k in source.state_dict() if not k.endswith("num_batches_tracked")]
    assert list(adapted) == expected  # renamed in place, order kept; stem/transition keys untouched
    target = DenseNet(4, (1, 2, 1, 1), 8, num_classes=3).eval()
    target.load_state_dict(adapted, strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source.eval()(x))


def test_adapt_state_dict_leaves_current_keys_alone() -> None:
    with torch.device("meta"):
        state = densenet121().state_dict()
    assert list(adapt_state_dict(state)) == list(state)


def test_densenet_builders_refuse_an_unknown_override() -> None:
    with pytest.raises(TypeError):
        densenet121(memory_efficient=True)  # checkpointing cannot be exported to ONNX; not offered


def test_densenet_accepts_other_input_widths() -> None:
    model = DenseNet(4, (1, 1, 1, 1), 8, num_classes=5, in_channels=1).eval()
    assert isinstance(model.features.conv0, nn.Conv2d) and model.features.conv0.in_channels == 1
    with torch.no_grad():
        assert model(torch.rand(2, 1, 32, 32)).shape == (2, 5)
