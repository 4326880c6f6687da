"""Weights into models and models into ONNX files: ``export/weights.py`` through ``export.pipeline.export_model``.

No test touches the network or the user's caches: each one points ``TORCH_HOME`` and ``BENTOML_HOME`` at its own
temporary folders, writes ONNX files with ``save=False, output=...`` (BentoML reads its home once, at import), and
checks the files the way any runtime would — onnxruntime, input name from the session.
"""

from __future__ import annotations

import hashlib
import re
import urllib.error
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import safetensors.torch
import torch
import torchvision.models
from cnnserve.export.onnx import read_metadata
from cnnserve.export.pipeline import ExportError, export_model
from cnnserve.export.weights import (
    WeightsError,
    apply_state_dict,
    load_state_dict_file,
    torchvision_checkpoint_path,
)

from cnnserve import models


@pytest.fixture(autouse=True)
def isolated_homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fresh, empty torch hub and BentoML homes; nothing here may read or fill the real ones."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml-home"))
    return tmp_path


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {session.get_inputs()[0].name: images.astype(np.float32)})
    return probabilities


def lenet_state(seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return models.build_model("lenet5").state_dict()


class NotWeights:
    """Pickled into a ``.pth`` file: ``weights_only=True`` must refuse to rebuild it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))  # would create the marker file if unpickling ran code


# --- torchvision's published weights, from the torch hub cache ----------------------------------------------------


def torchvision_like_resnet18() -> torch.nn.Module:
    """torchvision's own ResNet-18 with seeded, non-trivial weights (stands in for the published checkpoint)."""
    torch.manual_seed(1234)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
        model.fc.weight.normal_(0.0, 0.01)
        model.fc.bias.normal_(0.0, 0.1)
    return model.eval()


def test_torchvision_weights_load_offline_from_the_hub_cache(tmp_path: Path) -> None:
    reference = torchvision_like_resnet18()
    spec = models.get_spec("resnet18")
    url, cached = torchvision_checkpoint_path(spec)
    assert url == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert cached == tmp_path / "torch-home" / "hub" / "checkpoints" / Path(url).name
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)

    output = tmp_path / "resnet18.onnx"
    result = export_model("resnet18", weights="torchvision", output=output, save=False)

    assert result.source == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert result.tag is None
    assert result.path == output
    assert result.parity <= 1e-3
    # The file answers exactly what torchvision's model answers on normalised input: the cached file was used.
    # Three different images in [0, 1]: dark, mid and bright noise.
    images = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(7)) * 0.5
    images += torch.tensor([0.0, 0.25, 0.5]).view(3, 1, 1, 1)
    preset = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    mean = torch.tensor(preset.mean).view(1, 3, 1, 1)
    std = torch.tensor(preset.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(reference((images - mean) / std), dim=1).numpy()
    got = run_onnx(output, images.numpy())
    assert got.shape == (3, 1000)
    # Spread-out distributions that differ per image, so agreement to 1e-4 is not a coincidence of saturation.
    assert expected.max() < 0.9
    assert np.abs(expected[0] - expected[1]).max() > 1e-2
    assert np.abs(expected[1] - expected[2]).max() > 1e-2
    assert np.abs(got - expected).max() <= 1e-4

    metadata = read_metadata(output)
    recorded = metadata["cnnserve.spec"]
    assert recorded["weights"] == result.source
    assert len(recorded["labels"]) == 1000
    assert recorded["labels"][0] == "tench"
    assert recorded["input_size"] == [224, 224]
    assert recorded["resize_size"] == 256
    assert float(metadata["cnnserve.parity"]) == pytest.approx(result.parity, rel=1e-5)


def test_torchvision_weights_not_cached_and_offline_say_where_to_put_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    url, cached = torchvision_checkpoint_path(models.get_spec("resnet18"))
    output = tmp_path / "resnet18.onnx"
    with pytest.raises(WeightsError) as info:
        export_model("resnet18", weights="torchvision", output=output, save=False)
    message = str(info.value)
    assert url in message
    assert str(cached) in message
    assert "offline" in message.lower()
    assert not output.exists()


def test_torchvision_weights_for_a_model_without_a_counterpart_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="lenet5 has no torchvision counterpart"):
        export_model("lenet5", weights="torchvision", output=tmp_path / "x.onnx", save=False)


# --- weight files: .pth, .safetensors, training checkpoints --------------------------------------------------------


def save_pth(state: object, path: Path) -> Path:
    torch.save(state, path)
    return path


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> Path:
    safetensors.torch.save_file(state, str(path))
    return path


@pytest.mark.parametrize(
    "write",
    [
        lambda state, tmp: save_pth(state, tmp / "lenet5.pth"),
        lambda state, tmp: save_safetensors(state, tmp / "lenet5.safetensors"),
        lambda state, tmp: save_pth({"epoch": 3, "state_dict": state}, tmp / "checkpoint.pth"),
        lambda state, tmp: save_pth({"model": state, "optimizer": {"lr": 0.1}}, tmp / "checkpoint.pt"),
        lambda state, tmp: save_pth({"model_state_dict": state}, tmp / "checkpoint.pth"),
    ],
    ids=["pth", "safetensors", "nested-state_dict", "nested-model", "nested-model_state_dict"],
)
def test_weight_files_load_strictly_with_a_content_digest(write, tmp_path: Path) -> None:
    state = lenet_state()
    path = write(state, tmp_path)
    loaded, source = load_state_dict_file(path)
    assert source == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    model = models.build_model("lenet5")
    apply_state_dict(model, models.get_spec("lenet5"), loaded)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_exporting_a_weights_file_records_its_digest_and_uses_its_weights(tmp_path: Path) -> None:
    state = lenet_state(seed=5)
    path = save_safetensors(state, tmp_path / "mine.safetensors")
    output = tmp_path / "mine.onnx"
    result = export_model("lenet5", weights=str(path), output=output, save=False)
    assert result.source == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_metadata(output)["cnnserve.spec"]["weights"] == result.source
    model = models.build_model("lenet5").eval()
    model.load_state_dict(state)
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = torch.softmax(model((images - 0.5) / 0.5), dim=1).numpy()
    np.testing.assert_allclose(run_onnx(output, images.numpy()), expected, atol=1e-5)


def test_a_pth_holding_pickled_objects_is_refused_without_running_them(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = save_pth({"c1.weight": NotWeights(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="weights_only"):
        load_state_dict_file(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda state: state.pop("f6.weight"), "f6.weight"),
        (lambda state: state.__setitem__("c1.weight", torch.zeros(6, 1, 3, 3)), "c1.weight"),
        (lambda state: state.__setitem__("extra.weight", torch.zeros(1)), "extra.weight"),
    ],
    ids=["missing-key", "wrong-shape", "unexpected-key"],
)
def test_weights_that_do_not_fit_are_refused_naming_the_model(damage, expected: str, tmp_path: Path) -> None:
    state = lenet_state()
    damage(state)
    path = save_pth(state, tmp_path / "bad.pth")
    output = tmp_path / "bad.onnx"
    with pytest.raises(WeightsError) as info:
        export_model("lenet5", weights=str(path), output=output, save=False)
    assert "lenet5" in str(info.value)
    assert expected in str(info.value)
    assert not output.exists()


def test_a_missing_weights_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(WeightsError, match="does not exist"):
        export_model("lenet5", weights=str(missing), output=tmp_path / "x.onnx", save=False)


@pytest.mark.parametrize("name", ["weights.npz", "weights.onnx"])
def test_a_weights_file_of_another_kind_is_refused(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(WeightsError, match=r"\.safetensors"):
        load_state_dict_file(path)


def test_a_pth_that_is_not_a_dict_is_refused(tmp_path: Path) -> None:
    path = save_pth([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="state dict"):
        load_state_dict_file(path)


# --- DenseNet's legacy key names -----------------------------------------------------------------------------------

LEGACY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")


def test_densenet_loads_torchvision_legacy_key_names() -> None:
    torch.manual_seed(0)
    current = models.build_model("densenet121").state_dict()
    # torchvision's published checkpoint says `denselayer1.norm.1.weight` where the module is `norm1`; it predates
    # BatchNorm's `num_batches_tracked` (PyTorch 0.4), which load_state_dict fills in for such files.
    legacy = OrderedDict(
        (LEGACY.sub(r"\1.\2.", key), value) for key, value in current.items() if "num_batches_tracked" not in key
    )
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    assert "features.denseblock4.denselayer16.conv.2.weight" in legacy
    assert "features.denseblock1.denselayer1.norm1.weight" not in legacy

    torch.manual_seed(1)
    model = models.build_model("densenet121")
    with pytest.raises(RuntimeError):
        model.load_state_dict(legacy, strict=True)  # without the adapter the names do not fit
    apply_state_dict(model, models.get_spec("densenet121"), legacy)
    for key, value in model.state_dict().items():
        assert torch.equal(value, current[key]), key


# --- export_model: demo weights, precision, heads, dynamic batch ---------------------------------------------------


@pytest.fixture(scope="module")
def lenet_demo(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("lenet-demo")
        patch.setenv("TORCH_HOME", str(home / "torch-home"))
        patch.setenv("BENTOML_HOME", str(home / "bentoml-home"))
        output = home / "lenet5.onnx"
        return export_model("lenet5", weights="demo", output=output, save=False), output


def test_demo_weights_export_records_their_dataset(lenet_demo) -> None:
    result, output = lenet_demo
    assert result.source == "demo:sklearn-digits"
    assert result.parity <= 1e-3
    recorded = read_metadata(output)["cnnserve.spec"]
    assert recorded["weights"] == "demo:sklearn-digits"
    assert recorded["labels"] == [str(d) for d in range(10)]
    assert recorded["input_size"] == [32, 32]
    assert recorded["in_channels"] == 1


@pytest.mark.parametrize("batch", [1, 5])
def test_exported_file_has_a_dynamic_batch(lenet_demo, batch: int) -> None:
    _, output = lenet_demo
    images = np.random.default_rng(batch).random((batch, 1, 32, 32), dtype=np.float32)
    probabilities = run_onnx(output, images)
    assert probabilities.shape == (batch, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(probabilities >= 0)


def test_unknown_precision_is_refused_before_writing_anything(tmp_path: Path) -> None:
    output = tmp_path / "int4.onnx"
    with pytest.raises(ExportError, match="int4"):
        export_model("lenet5", precision="int4", output=output, save=False)
    assert not output.exists()


def test_random_weights_with_a_new_head(tmp_path: Path) -> None:
    output = tmp_path / "three.onnx"
    result = export_model("lenet5", weights="random", num_classes=3, output=output, save=False)
    assert result.source == "random"
    recorded = read_metadata(output)["cnnserve.spec"]
    assert recorded["num_classes"] == 3
    assert recorded["labels"] is None
    assert recorded["weights"] == "random"
    images = np.random.default_rng(0).random((4, 1, 32, 32), dtype=np.float32)
    probabilities = run_onnx(output, images)
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("weights", ["demo", "torchvision"])
def test_a_new_head_cannot_replace_published_weights(weights: str, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="num-classes"):
        export_model("resnet18" if weights == "torchvision" else "lenet5", weights=weights, num_classes=3, save=False)
