"""The service through real HTTP against a real `bentoml serve`: answers, accuracy, errors, health."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch
from cnnserve.export.demos.digits import digit_png, digits_split
from PIL import Image


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def classify(server, data: bytes, **fields) -> requests.Response:
    return requests.post(
        f"{server.url}/classify",
        files={"image": ("img", data)},
        data={k: str(v) for k, v in fields.items()},
        timeout=60,
    )


def test_digits_test_split_is_classified_correctly_over_http(server) -> None:
    split = digits_split()

    def predict(pixels: np.ndarray) -> int:
        response = classify(server, digit_png(pixels), model="lenet5", top_k=1)
        assert response.status_code == 200, response.text
        return int(response.json()["predictions"][0]["label"])

    with ThreadPoolExecutor(max_workers=8) as pool:  # concurrent clients: exercises adaptive batching
        predicted = list(pool.map(predict, split.test_images))
    accuracy = float(np.mean(np.array(predicted) == split.test_labels))
    assert accuracy >= 0.97, f"accuracy {accuracy:.2%} on {len(predicted)} held-out digits"


def test_photo_through_resnet_matches_pytorch(server) -> None:
    """A real photo (skimage's cat) through the served ResNet-18 equals PyTorch with the same seeded weights and
    torchvision's own transforms: the whole chain (decode, resize, crop, normalise, softmax, ranking) is right."""
    import skimage.data
    import torchvision.transforms as T

    from cnnserve import models

    data = _jpeg(skimage.data.chelsea())
    response = classify(server, data, model="resnet18", top_k=5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "resnet18"
    preds = body["predictions"]

    torch.manual_seed(0)  # export_model's seed for random weights
    model = models.build_model("resnet18").eval()
    transform = T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(models.IMAGENET_MEAN, models.IMAGENET_STD)]
    )
    with torch.no_grad():
        probs = torch.softmax(model(transform(Image.open(io.BytesIO(data)).convert("RGB"))[None]), dim=1)[0]
    top = torch.topk(probs, 5)
    assert [p["index"] for p in preds] == top.indices.tolist()
    np.testing.assert_allclose([p["score"] for p in preds], top.values.numpy(), atol=1e-4)
    labels = models.get_spec("resnet18").labels
    assert [p["label"] for p in preds] == [labels[i] for i in top.indices.tolist()]
    assert all(a["score"] >= b["score"] for a, b in zip(preds, preds[1:], strict=False))


def test_json_base64_and_raw_bodies_give_the_same_answer(server) -> None:
    data = digit_png(digits_split().test_images[3])
    multipart = classify(server, data, model="lenet5").json()
    as_json = requests.post(
        f"{server.url}/classify", json={"image": base64.b64encode(data).decode(), "model": "lenet5"}, timeout=30
    )
    data_url = requests.post(
        f"{server.url}/classify",
        json={"image": "data:image/png;base64," + base64.b64encode(data).decode(), "model": "lenet5"},
        timeout=30,
    )
    raw = requests.post(
        f"{server.url}/classify?model=lenet5", data=data, headers={"Content-Type": "image/png"}, timeout=30
    )
    assert as_json.json() == data_url.json() == raw.json() == multipart


def test_default_model_and_top_k(server) -> None:
    data = digit_png(digits_split().test_images[0])
    body = classify(server, data).json()
    assert body["model"] == "lenet5"  # the first ready classification model
    assert len(body["predictions"]) == 5
    assert len(classify(server, data, top_k=10).json()["predictions"]) == 10


@pytest.mark.parametrize(
    ("send", "status", "phrase"),
    [
        (lambda s: classify(s, b"\x00\x01garbage bytes, not an image"), 400, "not an image"),
        (lambda s: classify(s, b""), 400, "empty"),
        (lambda s: classify(s, _jpeg(np.zeros((64, 64, 3), np.uint8))[:300]), 400, "truncated"),
        (lambda s: classify(s, b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"), 400, "not an image"),
        (lambda s: classify(s, digit_png(np.zeros((8, 8))), model="nope"), 404, "not served"),
        (lambda s: classify(s, digit_png(np.zeros((8, 8))), model="broken"), 503, "not ready"),
        (lambda s: classify(s, digit_png(np.zeros((8, 8))), model="not-exported"), 503, "not in the model store"),
        (lambda s: classify(s, digit_png(np.zeros((8, 8))), top_k=0), 400, "top_k"),
        (lambda s: classify(s, digit_png(np.zeros((8, 8))), top_k=11), 400, "top_k"),
        (lambda s: classify(s, digit_png(np.zeros((8, 8))), top_k="many"), 400, "integer"),
        (lambda s: requests.post(f"{s.url}/classify", data={"model": "lenet5"}, timeout=30), 400, "image"),
        (lambda s: requests.post(f"{s.url}/classify", json={"image": "%%%"}, timeout=30), 400, "base64"),
        (
            lambda s: requests.post(
                f"{s.url}/classify", data="{oops", headers={"Content-Type": "application/json"}, timeout=30
            ),
            400,
            "JSON",
        ),
        (
            lambda s: requests.post(
                f"{s.url}/classify", data="hello", headers={"Content-Type": "text/plain"}, timeout=30
            ),
            400,
            "content type",
        ),
        (lambda s: classify(s, b"\xff" * (3 * 1024 * 1024)), 413, "limit"),
    ],
    ids=[
        "garbage",
        "empty",
        "truncated-jpeg",
        "pdf",
        "unknown-model",
        "broken-model",
        "missing-model",
        "top_k-0",
        "top_k-too-big",
        "top_k-text",
        "no-image-field",
        "bad-base64",
        "bad-json",
        "text-body",
        "over-upload-limit",
    ],
)
def test_bad_input_is_a_clear_4xx_or_503(server, send, status, phrase) -> None:
    response = send(server)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and phrase.lower() in error.lower()


def test_models_lists_readiness_per_model(server) -> None:
    response = requests.get(f"{server.url}/models", timeout=10)
    assert response.status_code == 200
    by_name = {m["name"]: m for m in response.json()["models"]}
    served = {"lenet5", "lenet5-u8", "resnet18", "yolov1_shapes", "cae", "unet", "broken", "not-exported", "xss_labels"}
    served |= {"cae_inpaint", "cvae", "lenet5_before_embed", "yolov1_shapes_conv"}
    assert set(by_name) == served
    lenet = by_name["lenet5"]
    assert lenet["ready"] is True and lenet["task"] == "classification"
    assert lenet["input_size"] == [32, 32] and lenet["precision"] == "fp32"
    assert lenet["source"] == "demo:sklearn-digits"
    assert lenet["providers"] == ["CPUExecutionProvider"]
    # each model's batch limit follows its family's measured curve (service/runtime/batching_defaults.json): LeNet-5
    # gains from big batches on a CPU, a ResNet hardly at all
    assert lenet["batching"]["source"] == "family default" and lenet["batching"]["max_batch_size"] >= 32
    assert lenet["batching"]["curve"][0]["batch"] == 1 and lenet["batching"]["reference"] == "lenet5 fp32"
    resnet = by_name["resnet18"]["batching"]
    assert resnet["reference"] == "resnet50 fp32" and resnet["max_batch_size"] <= 4
    assert by_name["broken"]["ready"] is False and by_name["broken"]["error"]
    assert by_name["not-exported"]["ready"] is False
    # the server is alive although two models are broken
    assert requests.get(f"{server.url}/livez", timeout=10).status_code == 200


def test_openapi_documents_the_endpoints(server) -> None:
    spec = requests.get(f"{server.url}/docs.json", timeout=10).json()
    assert "/classify" in spec["paths"] and "/models" in spec["paths"]
    assert requests.get(f"{server.url}/docs", timeout=10).status_code == 200
