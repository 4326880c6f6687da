"""Open Inference Protocol v2 through the stock `tritonclient.http`, against the real server."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from cnnserve.export.demos.digits import digit_png, digits_split
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


def test_health_and_readiness_per_model(client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("lenet5")
    assert client.is_model_ready("lenet5", model_version="1")
    assert not client.is_model_ready("broken")  # truncated file: not ready, the rest serve
    assert not client.is_model_ready("not-exported")
    assert not client.is_model_ready("../../etc/passwd")


def test_model_metadata(client) -> None:
    meta = client.get_model_metadata("resnet18")
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}]
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_matches_the_classify_endpoint(client, server, binary: bool) -> None:
    """The same digit through v2 (the raw graph) and /classify (decode + preprocess) gives the same probabilities."""
    from cnnserve.service.imaging import Preprocess, preprocess
    from PIL import Image

    split = digits_split()
    pngs = [digit_png(split.test_images[i]) for i in range(3)]
    pre = Preprocess(input_size=(32, 32), in_channels=1)
    batch = np.stack([preprocess(Image.open(io.BytesIO(p)), pre) for p in pngs])
    tensor = triton.InferInput("images", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    result = client.infer(
        "lenet5",
        [tensor],
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary)],
        model_version="1",
    )
    probs = result.as_numpy("probabilities")
    assert probs.shape == (3, 10)
    for png, row in zip(pngs, probs, strict=True):
        answer = requests.post(
            f"{server.url}/classify", files={"image": png}, data={"model": "lenet5", "top_k": "10"}, timeout=30
        ).json()
        by_index = {p["index"]: p["score"] for p in answer["predictions"]}
        np.testing.assert_allclose([by_index[i] for i in range(10)], row, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "phrase"),
    [
        (
            {"inputs": [{"name": "images", "shape": [1, 1, 32, 31], "datatype": "FP32", "data": [0.0] * 992}]},
            400,
            "shape",
        ),
        (
            {"inputs": [{"name": "images", "shape": [1, 1, 32, 32], "datatype": "INT64", "data": [0] * 1024}]},
            400,
            "FP32",
        ),
        (
            {"inputs": [{"name": "images", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": [0.0] * 5}]},
            400,
            "values",
        ),
        (
            {"inputs": [{"name": "images", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": ["NaN"] * 1024}]},
            400,
            "",
        ),
        ({"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [0.0]}]}, 400, "unknown input"),
        ({"inputs": []}, 400, "inputs"),
        (
            {
                "inputs": [{"name": "images", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": [0.0] * 1024}],
                "outputs": [{"name": "logits"}],
            },
            400,
            "outputs",
        ),
    ],
    ids=["wrong-shape", "wrong-dtype", "too-few-values", "nan", "unknown-input", "no-inputs", "unknown-output"],
)
def test_infer_errors_are_400_with_a_message(server, body, status, phrase) -> None:
    response = requests.post(f"{server.url}/v2/models/lenet5/infer", data=json.dumps(body), timeout=30)
    assert response.status_code == status, response.text
    assert phrase.lower() in response.json()["error"].lower()


def test_nan_values_are_refused(server) -> None:
    data = [0.0] * 1023 + [float("nan")]
    tensor = json.dumps({"name": "images", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": data})  # NaN literal
    body = '{"inputs": [' + tensor + "]}"
    response = requests.post(f"{server.url}/v2/models/lenet5/infer", data=body, timeout=30)
    assert response.status_code == 400 and "nan" in response.json()["error"].lower()


def test_unknown_model_version_and_not_ready_models(server) -> None:
    ok = {"inputs": [{"name": "images", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": [0.5] * 1024}]}
    assert requests.post(f"{server.url}/v2/models/lenet5/versions/1/infer", json=ok, timeout=30).status_code == 200
    assert requests.post(f"{server.url}/v2/models/lenet5/versions/7/infer", json=ok, timeout=30).status_code == 404
    assert requests.post(f"{server.url}/v2/models/nope/infer", json=ok, timeout=30).status_code == 404
    broken = requests.post(f"{server.url}/v2/models/broken/infer", json=ok, timeout=30)
    assert broken.status_code == 503 and "not ready" in broken.json()["error"]
    assert requests.get(f"{server.url}/v2", timeout=10).json()["name"] == "cnnserve"
