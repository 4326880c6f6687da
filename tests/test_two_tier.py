"""The two-tier service (API workers + model tier) on CPU: the same answers as the one-tier service, batching
across API workers, errors crossing the process boundary with their status. It runs with batch buckets, as on a
GPU (one input shape per session), so the bucketed sessions answer real requests here too."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from cnnserve.export.demos.digits import digit_png, digits_split
from cnnserve.export.demos.shapes import HELD_OUT_SEED, make_dataset
from conftest import _SESSION_DIR, png_bytes, post_image, start_server, stop_server
from PIL import Image


@pytest.fixture(scope="module")
def tiered(model_store):
    srv = start_server(
        {
            "CNNSERVE_TIERS": "two",
            "CNNSERVE_API_WORKERS": "2",
            "CNNSERVE_MODELS": "lenet5,yolov1_shapes,cae,broken",
            "CNNSERVE_BATCH_BUCKETS": "1,4",
        },
        _SESSION_DIR / "serve-two-tier.log",
    )
    yield srv
    stop_server(srv)


def test_models_come_from_the_model_tier(tiered) -> None:
    models = {m["name"]: m for m in requests.get(f"{tiered.url}/models", timeout=10).json()["models"]}
    assert set(models) == {"lenet5", "yolov1_shapes", "cae", "broken"}
    assert models["lenet5"]["ready"] and models["lenet5"]["providers"] == ["CPUExecutionProvider"]
    assert not models["broken"]["ready"] and models["broken"]["error"]
    for name in ("lenet5", "yolov1_shapes", "cae"):  # each model's buckets: 1, 4 and its batch limit
        batching = models[name]["batching"]
        limit = batching["max_batch_size"]
        assert batching["buckets"] == [b for b in (1, 4) if b < limit] + [limit], batching
        assert batching["sessions"] == len(batching["buckets"])  # one run in flight per bucket on the CPU
    response = post_image(tiered, "/classify", b"\x89PNG", model="broken")
    assert response.status_code == 503 and "not ready" in response.json()["error"]


def test_classify_and_detect_answers_equal_the_one_tier_service(tiered, server) -> None:
    split = digits_split()
    for image in split.test_images[:5]:
        one = post_image(server, "/classify", digit_png(image), model="lenet5").json()
        two = post_image(tiered, "/classify", digit_png(image), model="lenet5").json()
        assert [p["index"] for p in one["predictions"]] == [p["index"] for p in two["predictions"]]
        np.testing.assert_allclose(
            [p["score"] for p in one["predictions"]], [p["score"] for p in two["predictions"]], atol=1e-6
        )
    for sample in make_dataset(3, seed=HELD_OUT_SEED + 7):
        one = post_image(server, "/detect", png_bytes(sample.image), model="yolov1_shapes", score_threshold=0.3).json()
        two = post_image(tiered, "/detect", png_bytes(sample.image), model="yolov1_shapes", score_threshold=0.3).json()
        assert len(one["detections"]) == len(two["detections"])
        for a, b in zip(one["detections"], two["detections"], strict=True):
            assert a["label"] == b["label"]
            np.testing.assert_allclose(a["box"], b["box"], atol=1e-3)


def test_concurrent_requests_are_batched_in_the_model_tier_and_all_right(tiered) -> None:
    split = digits_split()
    images, labels = split.test_images[:64], split.test_labels[:64]

    def classify(i: int) -> str:
        response = post_image(tiered, "/classify", digit_png(images[i]), model="lenet5")
        assert response.status_code == 200, response.text
        return response.json()["predictions"][0]["label"]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(classify, range(len(images))))
    assert np.mean([a == str(t) for a, t in zip(answers, labels, strict=True)]) >= 0.95

    # A model slow enough (YOLO, ~10 ms a run here) that 32 clients queue behind a run: batches must form.
    scene = png_bytes(make_dataset(1, seed=HELD_OUT_SEED + 3)[0].image)
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(lambda _: post_image(tiered, "/detect", scene).status_code, range(96)))
    assert statuses == [200] * 96
    metrics = requests.get(f"{tiered.url}/metrics", timeout=10).text
    # The model tier's batch-size histogram: calls that carried three or more images mean batches formed. How many
    # form depends on how fast the API worker decodes against the model's run (a busy machine forms fewer), so the
    # check is that they form at all, not how large they are on average.
    count = _metric(metrics, 'cnnserve_batch_size_count{model="yolov1_shapes"}')
    total = _metric(metrics, 'cnnserve_batch_size_sum{model="yolov1_shapes"}')
    at_most_two = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("cnnserve_batch_size_bucket{") and 'le="2.0"' in line and 'model="yolov1_shapes"' in line
    )
    assert total >= 96 and count < total and at_most_two < count, (count, total, at_most_two)


def _metric(text: str, name: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]
    assert values, f"{name} not in /metrics:\n{text}"
    return sum(values)


def test_anomaly_heatmap_and_v2_cross_the_process_boundary(tiered) -> None:
    split = digits_split()
    body = post_image(tiered, "/anomaly", digit_png(split.test_images[0]), model="cae", heatmap="true").json()
    assert {"score", "threshold", "is_anomaly", "heatmap"} <= set(body)
    Image.open(io.BytesIO(base64.b64decode(body["heatmap"]))).verify()
    x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    request = {"inputs": [{"name": "images", "shape": [2, 1, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}]}
    response = requests.post(f"{tiered.url}/v2/models/lenet5/infer", json=request, timeout=30)
    assert response.status_code == 200, response.text
    probabilities = np.asarray(response.json()["outputs"][0]["data"]).reshape(2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_v2_and_grpc_through_both_api_workers(tiered, server) -> None:
    """Two API workers share the gRPC port (SO_REUSEPORT): clients on separate connections are all answered, the
    v2 tensors cross into the model tier (float32 here, padded to a bucket) and come back as the one-tier service
    answers them, and the statistics any worker reports count every worker's requests."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    split = digits_split()
    batch = np.repeat(np.repeat(split.test_images[:3].astype(np.float32) / 255.0, 4, axis=1), 4, axis=2)[:, None]

    def infer(module, url: str) -> np.ndarray:
        client = module.InferenceServerClient(url)
        tensor = module.InferInput("images", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        return client.infer("lenet5", [tensor]).as_numpy("probabilities")

    expected = infer(httpclient, server.url.removeprefix("http://"))
    before = httpclient.InferenceServerClient(tiered.url.removeprefix("http://")).get_inference_statistics("lenet5")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: infer(grpcclient, tiered.grpc_url), range(16)))
    answers.append(infer(httpclient, tiered.url.removeprefix("http://")))
    for answer in answers:
        np.testing.assert_allclose(answer, expected, atol=1e-6)
    after = httpclient.InferenceServerClient(tiered.url.removeprefix("http://")).get_inference_statistics("lenet5")
    success = after["model_stats"][0]["inference_stats"]["success"]["count"]
    assert success - before["model_stats"][0]["inference_stats"]["success"]["count"] == 17
    assert after["model_stats"][0]["inference_count"] - before["model_stats"][0]["inference_count"] == 17 * 3
