"""Export as a specification: one member of each family → a checked ONNX file with its own contract inside."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cnnserve.export import export_model
from cnnserve.export.onnx import read_metadata
from cnnserve.export.parity import PARITY_TOLERANCE

from cnnserve import models


# One classifier per family, asked of the registry; a family whose representative is over 100 M parameters (VGG:
# a 0.5 GB file) is exported in the slow suite (its parity is in test_models' fast set).
def _one_per_family() -> list:
    params = {}
    for name in models.representatives("classification"):
        with torch.device("meta"):
            params[name] = sum(p.numel() for p in models.build_model(name).parameters())
    return [pytest.param(n, marks=pytest.mark.slow) if params[n] > 100e6 else n for n in params]


@pytest.mark.parametrize("name", _one_per_family())
def test_export_has_dynamic_batch_metadata_and_parity(name: str, tmp_path: Path) -> None:
    spec = models.get_spec(name)
    path = tmp_path / f"{name}.onnx"
    result = export_model(name, weights="random", output=path, save=False)
    assert result.parity <= PARITY_TOLERANCE
    onnx.checker.check_model(str(path))

    meta = read_metadata(path)
    recorded = meta["cnnserve.spec"]
    assert recorded["name"] == name and recorded["task"] == "classification"
    assert recorded["weights"] == "random"
    assert recorded["labels"] == list(spec.labels)
    assert float(meta["cnnserve.parity"]) == pytest.approx(result.parity, rel=1e-3, abs=1e-9)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "images" and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str), "batch dimension must be dynamic"
    assert [o.name for o in session.get_outputs()] == ["probabilities", "embedding"]
    assert recorded["outputs"] == ["probabilities", "embedding"]
    for batch in (1, 3):
        x = np.random.default_rng(batch).random((batch, spec.in_channels, *spec.input_size), dtype=np.float32)
        probs, embedding = session.run(None, {"images": x})
        assert probs.shape == (batch, spec.num_classes)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
        assert embedding.shape[0] == batch and embedding.dtype == np.float32


def test_normalisation_and_softmax_are_in_the_graph(tmp_path: Path) -> None:
    """The file takes [0, 1] pixels; the mean/std of the spec are applied inside, softmax at the end."""
    path = tmp_path / "r18.onnx"
    export_model("resnet18", weights="random", output=path, save=False, seed=3)
    torch.manual_seed(3)
    model = models.build_model("resnet18").eval()
    spec = models.get_spec("resnet18")
    x = torch.rand(2, 3, 224, 224)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(model((x - mean) / std), dim=1).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["probabilities"], {"images": x.numpy()})
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_export_saves_into_the_model_store(model_store: dict[str, str]) -> None:
    import bentoml

    entry = bentoml.models.get(model_store["lenet5"])
    assert entry.info.labels == {"cnnserve": "onnx", "task": "classification"}
    assert entry.info.metadata["weights"] == "demo:sklearn-digits"
    onnx_path = Path(entry.path_of(entry.info.metadata["onnx_file"]))
    assert read_metadata(onnx_path)["cnnserve.spec"]["labels"] == [str(d) for d in range(10)]
