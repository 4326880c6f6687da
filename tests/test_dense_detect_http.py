"""Detection, segmentation, denoising and anomaly scoring through real HTTP, asserted against the demos' targets."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from cnnserve.export.demos.digits import digit_image, digit_png, digits_split
from cnnserve.export.demos.shapes import HELD_OUT_SEED, make_dataset
from cnnserve.export.demos.yolo_shapes import mean_average_precision
from conftest import png_bytes, post_image
from PIL import Image
from sklearn.metrics import roc_auc_score


@pytest.fixture(scope="module")
def scenes():
    """Held-out shapes scenes, half of them enlarged to 256×192 so boxes and masks must be mapped back."""
    samples = make_dataset(80, seed=HELD_OUT_SEED + 1)
    out = []
    for i, sample in enumerate(samples):
        image, mask, boxes = sample.image, sample.mask, sample.boxes
        if i % 2:
            sx, sy = 256 / image.shape[1], 192 / image.shape[0]
            image = np.asarray(Image.fromarray(image).resize((256, 192), Image.Resampling.BILINEAR))
            mask = np.asarray(Image.fromarray(mask).resize((256, 192), Image.Resampling.NEAREST))
            boxes = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
        out.append((image, mask, boxes, sample.labels))
    return out


def test_detect_finds_the_shapes_with_the_target_map(server, scenes) -> None:
    predictions, truth = [], []
    for image, _, boxes, labels in scenes:
        response = post_image(server, "/detect", png_bytes(image), model="yolov1_shapes", score_threshold=0.01)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["width"], body["height"]) == (image.shape[1], image.shape[0])
        found = body["detections"]
        assert all(0 <= d["box"][0] <= d["box"][2] <= body["width"] for d in found)
        assert all(0 <= d["box"][1] <= d["box"][3] <= body["height"] for d in found)
        assert [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)
        predictions.append(
            (
                np.array([d["box"] for d in found], dtype=np.float32).reshape(-1, 4),
                np.array([d["score"] for d in found], dtype=np.float32),
                np.array([d["index"] for d in found], dtype=np.int64),
            )
        )
        truth.append((boxes, labels - 1))  # shapes.py numbers classes from 1 (0 = background)
    result = mean_average_precision(predictions, truth, iou=0.5)
    assert result["map"] >= 0.7, result


def test_detect_thresholds_and_limits(server, scenes) -> None:
    image = png_bytes(scenes[0][0])
    low = post_image(server, "/detect", image, model="yolov1_shapes", score_threshold=0.01).json()["detections"]
    high = post_image(server, "/detect", image, model="yolov1_shapes", score_threshold=0.9).json()["detections"]
    one = post_image(server, "/detect", image, model="yolov1_shapes", score_threshold=0.01, max_detections=1).json()
    assert len(high) <= len(low) and all(d["score"] >= 0.9 for d in high)
    assert len(one["detections"]) == min(1, len(low))
    for bad in (
        {"score_threshold": "-0.1"},
        {"score_threshold": "NaN"},
        {"iou_threshold": "2"},
        {"max_detections": "0"},
        {"score_threshold": "high"},
    ):
        response = post_image(server, "/detect", image, model="yolov1_shapes", **bad)
        assert response.status_code == 400 and response.json()["error"], bad


def _mask(body: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]))))


def test_segment_reaches_the_target_mean_iou(server, scenes) -> None:
    confusion = np.zeros((4, 4), dtype=np.int64)
    for image, mask, _, _ in scenes:
        response = post_image(server, "/segment", png_bytes(image), model="unet")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["kind"] == "semantic"
        predicted = _mask(body)
        assert predicted.shape == mask.shape  # the upload's exact size
        counts = {c["index"]: c["pixels"] for c in body["classes"]}
        assert sum(counts.values()) == mask.size
        assert counts == {int(k): int(v) for k, v in zip(*np.unique(predicted, return_counts=True), strict=True)}
        confusion += np.bincount(mask.reshape(-1) * 4 + predicted.reshape(-1), minlength=16).reshape(4, 4)
    iou = np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))
    assert iou.mean() >= 0.85, iou


def test_segment_overlay_is_a_picture_of_the_upload(server, scenes) -> None:
    image = scenes[1][0]
    body = post_image(server, "/segment", png_bytes(image), model="unet", overlay="true").json()
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay"])))
    assert overlay.size == (image.shape[1], image.shape[0]) and overlay.mode == "RGB"
    assert "overlay" not in post_image(server, "/segment", png_bytes(image), model="unet").json()


def _noisy_and_clean_digits(count: int, sigma: float = 0.2) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Test-split digits 0–7 at the model's 32×32 (as the service resizes them), plus Gaussian noise σ."""
    from cnnserve.service.imaging import Preprocess, preprocess

    split = digits_split()
    keep = np.flatnonzero(split.test_labels <= 7)[:count]
    rng = np.random.default_rng(0)
    pre = Preprocess(input_size=(32, 32), in_channels=1)
    clean = [preprocess(digit_image(split.test_images[i]), pre)[0] for i in keep]
    noisy = [np.clip(c + rng.normal(0, sigma, c.shape), 0, 1) for c in clean]
    return clean, noisy


def _psnr(estimate: np.ndarray, clean: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((estimate - clean) ** 2)))


def test_denoise_gains_at_least_6_db(server) -> None:
    clean, noisy = _noisy_and_clean_digits(120)
    before, after = [], []
    for c, n in zip(clean, noisy, strict=True):
        upload = np.rint(n * 255).astype(np.uint8)
        response = post_image(server, "/denoise", png_bytes(upload), model="cae")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        out = Image.open(io.BytesIO(response.content))
        assert out.size == (32, 32) and out.mode == "L"  # the upload's size and mode family
        before.append(_psnr(upload / 255.0, c))
        after.append(_psnr(np.asarray(out, dtype=np.float64) / 255.0, c))
    gain = np.mean(after) - np.mean(before)
    assert gain >= 6.0, (np.mean(before), np.mean(after))


def test_denoise_keeps_size_and_colour_family(server) -> None:
    colour = np.zeros((50, 70, 3), dtype=np.uint8)
    colour[10:40, 20:50] = (255, 255, 255)
    out = Image.open(io.BytesIO(post_image(server, "/denoise", png_bytes(colour), model="cae").content))
    assert out.size == (70, 50) and out.mode == "RGB"


def test_anomaly_separates_held_out_digits(server) -> None:
    split = digits_split()
    normal = [digit_png(split.test_images[i]) for i in np.flatnonzero(split.test_labels <= 7)[:150]]
    anomalies = [digit_png(split.test_images[i]) for i in np.flatnonzero(split.test_labels >= 8)]
    scores, labels = [], []
    for label, group in ((0, normal), (1, anomalies)):
        for png in group:
            body = post_image(server, "/anomaly", png, model="cae").json()
            assert set(body) == {"model", "score", "threshold", "is_anomaly"}
            assert body["is_anomaly"] == (body["score"] > body["threshold"])
            scores.append(body["score"])
            labels.append(label)
    assert roc_auc_score(labels, scores) >= 0.95
    heat = post_image(server, "/anomaly", anomalies[0], model="cae", heatmap="true").json()["heatmap"]
    assert Image.open(io.BytesIO(base64.b64decode(heat))).size == (32, 32)


@pytest.mark.parametrize(
    ("route", "model"),
    [
        ("/detect", "lenet5"),
        ("/classify", "yolov1_shapes"),
        ("/segment", "cae"),
        ("/denoise", "yolov1_shapes"),
        ("/anomaly", "resnet18"),
    ],
)
def test_a_model_of_the_wrong_task_is_a_400(server, route: str, model: str) -> None:
    response = post_image(server, route, digit_png(digits_split().test_images[0]), model=model)
    assert response.status_code == 400 and "model" in response.json()["error"]


@pytest.mark.parametrize("route", ["/detect", "/segment", "/denoise", "/anomaly"])
@pytest.mark.parametrize(
    ("payload", "status"),
    [(b"", 400), (b"not an image", 400), (None, 200)],
    ids=["empty", "garbage", "1x1"],
)
def test_every_endpoint_handles_bad_and_tiny_images(server, route: str, payload, status: int) -> None:
    data = payload if payload is not None else png_bytes(np.full((1, 1, 3), 200, dtype=np.uint8))
    response = post_image(server, route, data)
    assert response.status_code == status, response.text
