"""Faster R-CNN on ``POST /detect`` and Mask R-CNN on ``POST /segment``, through a real ``bentoml serve``.

Both models are exported into the session's store with the seeded *lively* random weights of ``test_rcnn.py`` (no
COCO checkpoint can be downloaded here; plain random weights find nothing above the 0.05 default threshold), and a
second server is started for just these two. The answers must be well formed (boxes inside the upload's pixels,
COCO labels, best first, thresholds honoured, masks at the upload's size) and equal to what the same ONNX file gives
when run directly through the shared decode → pre-process → answer code that ``cnnserve score`` uses.

``slow``: two exports (~45 s each on 2 cores) and R-CNN inference at torchvision's 800-pixel resize. The fast suite
covers the same ONNX files and pre/post-processing against torchvision (``test_rcnn.py``) and the drawing of
instance masks (``test_render.py``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import skimage.data
import torch
import torchvision
from cnnserve.export.pipeline import export_model
from cnnserve.service.imaging import decode_image, preprocess_uint8
from cnnserve.service.runtime.model import OnnxModel, load_model
from cnnserve.service.store import resolve_model_file
from cnnserve.service.tasks import tasks_serving
from conftest import Server, png_bytes, post_image, start_server, stop_server
from PIL import Image
from test_rcnn import LIVELY_SPREADS, calibration_images, make_lively
from test_render import footprint

from cnnserve import models

pytestmark = pytest.mark.slow

FASTER, MASK = "fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn"
IMAGES = ("astronaut", "coffee")
COCO = torchvision.models.get_weight(models.get_spec(FASTER).torchvision_weights).meta["categories"]


def _png(name: str) -> bytes:
    return png_bytes(getattr(skimage.data, name)())


def _post(server: Server, route: str, data: bytes, **fields) -> requests.Response:
    return post_image(server, route, data, timeout=300, **fields)  # an R-CNN answer on this CPU takes seconds


def _decode_png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.fixture(scope="module")
def rcnn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Export both R-CNNs with lively weights into the session store and serve just them."""
    folder = tmp_path_factory.mktemp("rcnn-http")
    torch.manual_seed(0)
    faster = models.build_model(FASTER)
    make_lively(faster, calibration_images())
    torch.save(faster.state_dict(), folder / f"{FASTER}.pth")
    torch.manual_seed(0)
    mask = models.build_model(MASK)
    mask.load_state_dict(faster.state_dict(), strict=False)  # the backbone, RPN and box head; then the mask head
    make_lively(mask, calibration_images(), stages=LIVELY_SPREADS[2:], batch_norm=False)
    torch.save(mask.state_dict(), folder / f"{MASK}.pth")
    del faster, mask
    for name in (FASTER, MASK):
        export_model(name, weights=str(folder / f"{name}.pth"))
    server = start_server({"CNNSERVE_MODELS": f"{FASTER},{MASK}"}, folder / "serve.log")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def direct(rcnn_server: Server) -> Iterator:
    """The same stored ONNX file run in this process the way ``cnnserve score`` runs it."""
    loaded: dict[str, OnnxModel] = {}

    def answer(name: str, data: bytes, **thresholds: float) -> dict:
        if name not in loaded:
            loaded[name] = load_model(*resolve_model_file(name), providers=["CPUExecutionProvider"])
        model = loaded[name]
        contract = model.contract
        (task,) = tasks_serving(contract.task)
        upload = decode_image(data)
        pixels = preprocess_uint8(upload, contract.preprocess)
        outputs = {k: v[0] for k, v in model.run(pixels[None], thresholds).items()}
        return task.answer(name, contract, outputs, upload, pixels, task.parse_options({})).model_dump(
            exclude_none=True
        )

    yield answer
    loaded.clear()


def assert_well_formed(found: list[dict], width: int, height: int, floor: float) -> None:
    assert found, "lively weights find something in a photograph"
    for det in found:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height, det
        assert 0 < det["index"] < len(COCO) and det["label"] == COCO[det["index"]] != "__background__", det
        assert floor < det["score"] <= 1.0, det
    scores = [d["score"] for d in found]
    assert scores == sorted(scores, reverse=True)


def assert_same_answer(got: list[dict], expected: list[dict]) -> None:
    assert [d["index"] for d in got] == [d["index"] for d in expected]
    np.testing.assert_allclose([d["box"] for d in got], [d["box"] for d in expected], atol=0.05)
    np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in expected], atol=1e-5)


@pytest.mark.parametrize("image", IMAGES)
def test_detect_answers_coco_boxes_equal_to_the_batch_scorers(rcnn_server: Server, direct, image: str) -> None:
    data = _png(image)
    height, width = getattr(skimage.data, image)().shape[:2]
    response = _post(rcnn_server, "/detect", data, model=FASTER)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"model", "width", "height", "detections"}
    assert (body["model"], body["width"], body["height"]) == (FASTER, width, height)
    assert_well_formed(body["detections"], width, height, floor=0.05)
    assert_same_answer(body["detections"], direct(FASTER, data)["detections"])


def test_detect_honours_score_threshold_and_max_detections(rcnn_server: Server, direct) -> None:
    data = _png("astronaut")
    everything = _post(rcnn_server, "/detect", data, model=FASTER).json()["detections"]
    threshold = float(np.median([d["score"] for d in everything]))
    high = _post(rcnn_server, "/detect", data, model=FASTER, score_threshold=threshold).json()["detections"]
    assert 0 < len(high) < len(everything) and all(d["score"] > threshold for d in high)
    assert_same_answer(high, direct(FASTER, data, score_threshold=threshold)["detections"])
    assert_same_answer(high, everything[: len(high)])  # the same best detections: the threshold only cuts
    three = _post(rcnn_server, "/detect", data, model=FASTER, max_detections=3).json()["detections"]
    assert_same_answer(three, everything[:3])


def _mask_array(b64: str, size: tuple[int, int]) -> np.ndarray:
    image = _decode_png(b64)
    assert image.size == size and image.mode == "L"
    mask = np.asarray(image)
    assert set(np.unique(mask)) <= {0, 255}
    return mask > 0


@pytest.mark.parametrize("image", IMAGES)
def test_segment_answers_instances_equal_to_the_batch_scorers(rcnn_server: Server, direct, image: str) -> None:
    data = _png(image)
    height, width = getattr(skimage.data, image)().shape[:2]
    response = _post(rcnn_server, "/segment", data, model=MASK)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"model", "kind", "width", "height", "instances"}
    assert (body["model"], body["kind"], body["width"], body["height"]) == (MASK, "instance", width, height)
    assert_well_formed(body["instances"], width, height, floor=0.05)
    expected = direct(MASK, data)["instances"]
    assert_same_answer(body["instances"], expected)
    drawn = 0
    for got, want in zip(body["instances"], expected, strict=True):
        mask = _mask_array(got["mask"], (width, height))
        assert (mask != _mask_array(want["mask"], (width, height))).sum() <= 0.001 * mask.size
        # The 28×28 mask is pasted over its box grown by one mask pixel each side (torchvision's padding).
        x1, y1, x2, y2 = got["box"]
        pad_x, pad_y = (x2 - x1) / 28 + 1, (y2 - y1) / 28 + 1
        rows, cols = np.nonzero(mask)
        if len(rows):
            drawn += 1
            assert x1 - pad_x <= cols.min() and cols.max() <= x2 + pad_x, got["box"]
            assert y1 - pad_y <= rows.min() and rows.max() <= y2 + pad_y, got["box"]
    assert drawn >= 1, "some instance has mask pixels"


def test_segment_render_draws_the_masks(rcnn_server: Server) -> None:
    photo = skimage.data.astronaut()
    body = _post(rcnn_server, "/segment", _png("astronaut"), model=MASK, render="true", max_detections=5).json()
    rendered = np.asarray(_decode_png(body["rendered"]))
    assert rendered.shape == photo.shape and 1 <= len(body["instances"]) <= 5
    masks = [_mask_array(inst["mask"], (photo.shape[1], photo.shape[0])) for inst in body["instances"]]
    changed = (rendered != photo).any(axis=-1)
    allowed = footprint(body["instances"], changed.shape) | np.any(masks, axis=0)
    assert not (changed & ~allowed).any(), "drawn outside every box, tag and mask"
    union = np.any(masks, axis=0)
    assert changed[union].mean() >= 0.9, "masks are blended in"


@pytest.mark.parametrize(
    ("route", "fields", "data", "status"),
    [
        ("/detect", {"model": FASTER}, b"not an image", 400),
        ("/detect", {"model": FASTER}, b"", 400),
        ("/detect", {"model": FASTER, "score_threshold": "1.5"}, None, 400),
        ("/detect", {"model": FASTER, "iou_threshold": "nan"}, None, 400),
        ("/detect", {"model": FASTER, "render": "maybe"}, None, 400),
        ("/detect", {"model": MASK}, None, 400),  # an instance segmentation model on the detection route
        ("/segment", {"model": FASTER}, None, 400),
        ("/segment", {"model": MASK, "max_detections": "0"}, None, 400),
        ("/segment", {"model": MASK}, _png("astronaut")[:2000], 400),  # truncated
        ("/detect", {"model": "yolov1_shapes"}, None, 404),  # not served by this server
    ],
)
def test_bad_input_is_a_4xx_with_a_message(rcnn_server: Server, route: str, fields: dict, data, status: int) -> None:
    response = _post(rcnn_server, route, data if data is not None else _png("coffee"), **fields)
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_both_models_are_listed_ready(rcnn_server: Server) -> None:
    listed = {m["name"]: m for m in requests.get(f"{rcnn_server.url}/models", timeout=30).json()["models"]}
    assert set(listed) == {FASTER, MASK}
    assert all(m["ready"] and m["labels"] == len(COCO) for m in listed.values())
    assert (listed[FASTER]["task"], listed[MASK]["task"]) == ("detection", "instance_segmentation")


def test_score_writes_instance_masks_equal_to_the_http_answer(rcnn_server: Server, tmp_path: Path) -> None:
    """`cnnserve score` on an instance model: the HTTP answer, with each mask written as a PNG file beside the JSONL."""
    image = tmp_path / "coffee.png"
    image.write_bytes(_png("coffee"))
    out = tmp_path / "instances.jsonl"
    cnnserve = str(Path(sys.executable).parent / "cnnserve")
    command = [cnnserve, "score", "--model", MASK, str(image), "--output", str(out)]
    subprocess.run(command, check=True, capture_output=True, env=os.environ, timeout=600)
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    http = _post(rcnn_server, "/segment", image.read_bytes(), model=MASK).json()
    assert line.pop("path") == str(image) and line["kind"] == "instance"
    assert_same_answer(line["instances"], http["instances"])
    size = (http["width"], http["height"])
    for got, want in zip(line["instances"], http["instances"], strict=True):
        assert Path(got["mask"]).parent == tmp_path / "instances_files"
        mask = np.asarray(Image.open(got["mask"])) > 0
        assert mask.shape == (size[1], size[0])
        assert (mask != _mask_array(want["mask"], size)).sum() <= 0.001 * mask.size
