"""``render=true``: the answer carries a picture of itself — the upload with boxes, ``label score`` tags (and instance
masks) drawn — and the picture changes the upload only where something was found.

HTTP through the session server's YOLO demo on generated shapes scenes; the drawing itself (masks included, which
no fast served model answers) through ``service.codecs.draw_detections``.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
from cnnserve.export.demos.shapes import HELD_OUT_SEED, make_dataset
from cnnserve.service.codecs import draw_detections
from conftest import png_bytes, post_image
from PIL import Image


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.fixture(scope="module")
def scenes() -> list[np.ndarray]:
    """Held-out shapes scenes at the model's 128×128 and enlarged to 256×192 (boxes must be mapped back)."""
    samples = make_dataset(6, seed=HELD_OUT_SEED + 7)
    small = [s.image for s in samples[:3]]
    large = [np.asarray(Image.fromarray(s.image).resize((256, 192), Image.Resampling.BILINEAR)) for s in samples[3:]]
    return small + large


def footprint(detections: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """Where drawing may happen: each box's pixels, and its tag's reach above it (or inside, when the box touches the
    top). The tag's text is Pillow's font at 1/50 of the picture's longer side (10 px at least): a line of it is under
    two font sizes high and a character under one wide."""
    font = max(10, round(max(shape) / 50))
    allowed = np.zeros(shape, dtype=bool)
    for det in detections:
        x1, y1, x2, y2 = det["box"]
        left, top, right, bottom = int(x1), int(y1), int(np.ceil(x2)), int(np.ceil(y2))
        tag_width = font * len(f"{det['label']} {det['score']:.2f}")
        allowed[max(top - 2 * font, 0) : max(bottom, top + 2 * font), left : max(right, left + tag_width)] = True
    return allowed


def outline(det: dict, shape: tuple[int, int]) -> np.ndarray:
    """The left, right and bottom edges of a box (its top edge may sit under its own tag): they must be drawn."""
    height, width = shape
    x1, y1, x2, y2 = det["box"]
    left, top = min(int(x1), width - 1), min(int(y1), height - 1)
    right, bottom = max(min(int(np.ceil(x2)) - 1, width - 1), left), max(min(int(np.ceil(y2)) - 1, height - 1), top)
    ring = np.zeros(shape, dtype=bool)
    ring[top : bottom + 1, left] = ring[top : bottom + 1, right] = ring[bottom, left : right + 1] = True
    return ring


def test_detect_render_draws_every_box_and_nothing_else(server, scenes) -> None:
    drawn_boxes = 0
    for image in scenes:
        plain = post_image(server, "/detect", png_bytes(image), model="yolov1_shapes", score_threshold=0.2).json()
        body = post_image(
            server, "/detect", png_bytes(image), model="yolov1_shapes", score_threshold=0.2, render="true"
        ).json()
        assert body["detections"] == plain["detections"]  # rendering changes nothing of the answer
        rendered = _image(body["rendered"])
        assert rendered.size == (image.shape[1], image.shape[0]) and rendered.mode == "RGB"
        changed = (np.asarray(rendered) != image).any(axis=-1)
        assert not (changed & ~footprint(body["detections"], changed.shape)).any(), "drawn outside every box and tag"
        for det in body["detections"]:
            ring = outline(det, changed.shape)
            assert changed[ring].mean() >= 0.9, det
            drawn_boxes += 1
    assert drawn_boxes >= len(scenes)  # the demo finds the shapes: something was drawn on every scene


def test_render_without_detections_is_the_upload(server, scenes) -> None:
    image = scenes[3]
    body = post_image(
        server, "/detect", png_bytes(image), model="yolov1_shapes", score_threshold=1.0, render="true"
    ).json()
    assert body["detections"] == []
    assert np.array_equal(np.asarray(_image(body["rendered"])), image)


def test_rendered_is_absent_unless_asked(server, scenes) -> None:
    image = png_bytes(scenes[0])
    assert "rendered" not in post_image(server, "/detect", image, model="yolov1_shapes").json()
    assert "rendered" not in post_image(server, "/detect", image, model="yolov1_shapes", render="false").json()
    response = post_image(server, "/detect", image, model="yolov1_shapes", render="perhaps")
    assert response.status_code == 400 and "render" in response.json()["error"]


def test_render_of_a_grey_upload_is_colour(server, scenes) -> None:
    grey = np.asarray(Image.fromarray(scenes[4]).convert("L"))
    body = post_image(server, "/detect", png_bytes(grey), model="yolov1_shapes", score_threshold=0.2, render="1").json()
    rendered = _image(body["rendered"])
    assert rendered.mode == "RGB" and rendered.size == (grey.shape[1], grey.shape[0]) and body["detections"]


def test_render_is_documented_in_openapi(server) -> None:
    schema = requests.get(f"{server.url}/docs.json", timeout=30).json()
    for route in ("/detect", "/segment"):
        body = schema["paths"][route]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert body["properties"]["render"]["type"] == "boolean"
        assert "render=true" in schema["paths"][route]["post"]["description"]


def test_instance_render_blends_each_mask_in_its_class_colour() -> None:
    """Masks are blended half and half with the class's colour; outside masks, boxes and tags nothing changes."""
    rng = np.random.default_rng(0)
    upload = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    detections = [
        {"box": [20.0, 30.0, 70.0, 90.0], "index": 1, "label": "person", "score": 0.91},
        {"box": [90.5, 10.2, 150.0, 60.7], "index": 3, "label": "car", "score": 0.42},
    ]
    masks = [np.zeros((120, 160), dtype=bool) for _ in detections]
    masks[0][45:80, 30:60] = True
    masks[1][25:50, 100:140] = True
    rendered = np.asarray(draw_detections(Image.fromarray(upload), detections, 91, masks)).astype(int)
    assert rendered.shape == upload.shape
    changed = (rendered != upload).any(axis=-1)
    assert not (changed & ~footprint(detections, changed.shape)).any()
    for det, mask in zip(detections, masks, strict=True):
        inside = mask & ~outline(det, mask.shape)
        colour = 2 * rendered[inside] - upload[inside]  # blended = (upload + colour) / 2, rounded
        assert np.ptp(colour, axis=0).max() <= 2, "one colour per instance"
        assert changed[outline(det, mask.shape)].mean() >= 0.9
    first = (2 * rendered[masks[0]] - upload[masks[0]]).mean(axis=0)
    second = (2 * rendered[masks[1]] - upload[masks[1]]).mean(axis=0)
    assert np.abs(first - second).max() > 20, "different classes, different colours"


def test_semantic_render_is_the_overlay_with_a_key(server, scenes) -> None:
    """For a semantic model `rendered` is the colour overlay plus a key in the top-left corner: one row per class
    present (background has no colour, so no row)."""
    image = scenes[4]
    body = post_image(server, "/segment", png_bytes(image), model="unet", overlay="true", render="true").json()
    overlay, rendered = np.asarray(_image(body["overlay"])), np.asarray(_image(body["rendered"]))
    assert rendered.shape == overlay.shape == image.shape
    changed = (rendered != overlay).any(axis=-1)
    rows, cols = np.nonzero(changed)
    present = [c["label"] for c in body["classes"] if c["index"] > 0]
    assert present, "the scene has shapes"
    font = max(10, round(max(image.shape[:2]) / 50))
    assert rows.max() < 2 * font * len(present) + 4 and cols.max() < font * (max(map(len, present)) + 3)
    key = changed[: rows.max() + 1, : cols.max() + 1]
    assert key.mean() > 0.5, "a solid key, not stray pixels"
    alone = post_image(server, "/segment", png_bytes(image), model="unet", render="true").json()
    assert "overlay" not in alone and alone["rendered"] == body["rendered"]
