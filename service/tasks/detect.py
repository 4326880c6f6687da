"""``/detect``: objects in one image — boxes in the upload's pixels, labels and scores, best first.

The graph does the decoding and the NMS (``boxes``, ``scores``, ``labels``, ``num_detections``, padded); here the
kept rows are ranked, and their boxes scaled from the model's input tensor to the upload and clipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from ..codecs import draw_detections, png_base64
from ..contract import ModelContract
from . import register_task
from .base import Outputs, Task, TaskOptions

__all__ = ["DetectTask", "DetectOptions", "DetectResponse", "Detection", "detections", "scale_boxes"]


class DetectOptions(TaskOptions):
    score_threshold: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False, description="default: the model's (recorded at export)"
    )
    iou_threshold: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False, description="NMS IoU; default: the model's"
    )
    max_detections: int = Field(100, ge=1, le=1000)
    render: bool = Field(
        False,
        description="also answer `rendered`: a base64 PNG of the upload with the boxes, labels, scores and instance "
        "masks drawn (semantic /segment: the colour overlay with a key)",
    )


class Detection(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in the uploaded image's pixels")
    index: int
    label: str
    score: float


class DetectResponse(BaseModel):
    model: str
    width: int
    height: int
    detections: list[Detection] = Field(description="best first")
    rendered: str | None = Field(
        None, description="with render=true: base64 PNG of the upload with each box, label and score drawn"
    )


def scale_boxes(boxes: np.ndarray, tensor_hw: tuple[int, int], upload_wh: tuple[int, int]) -> np.ndarray:
    """x1, y1, x2, y2 in the input tensor's pixels → the upload's pixels, clipped to the image."""
    (th, tw), (w, h) = tensor_hw, upload_wh
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([w / tw, h / th, w / tw, h / th])
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def detections(
    contract: ModelContract, outputs: Outputs, pixels: np.ndarray, upload: Image.Image, limit: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The padded detection outputs → best-first ``{"box", "index", "label", "score"}`` and the kept rows' order."""
    count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
    scores = np.asarray(outputs["scores"], dtype=np.float64)[:count]
    order = np.argsort(-scores, kind="stable")[:limit]
    tensor_hw = (int(pixels.shape[1]), int(pixels.shape[2]))
    boxes = scale_boxes(np.asarray(outputs["boxes"])[:count][order], tensor_hw, upload.size)
    labels = np.asarray(outputs["labels"])[:count][order]
    found = [
        {
            "box": [round(float(v), 2) for v in box],
            "index": int(label),
            "label": contract.label(int(label)),
            "score": float(scores[i]),
        }
        for box, label, i in zip(boxes, labels, order, strict=True)
    ]
    return found, order


def threshold_inputs(contract: ModelContract, options: TaskOptions) -> dict[str, float]:
    """The graph's scalar inputs (score / IoU thresholds): the request's value where it gave one, else the file's."""
    values = {}
    for name, default in contract.extra_inputs.items():
        given = getattr(options, name, None)
        values[name] = float(default if given is None else given)
    return values


@register_task
class DetectTask(Task):
    name = "detect"
    route = "/detect"
    title = "Detect"
    summary = "Objects in one image: boxes in the upload's pixels, labels and scores, best first."
    description = (
        "With `render=true` the answer also has `rendered`: a base64 PNG of the upload with every box drawn in its "
        "class's colour and a `label score` tag above it, for people who would rather look."
    )
    serves = ("detection",)
    default_model = "yolov1_shapes_conv"
    Options = DetectOptions
    Response = DetectResponse
    png_fields = ("rendered",)

    def graph_inputs(self, contract: ModelContract, options: DetectOptions) -> dict[str, float]:
        return threshold_inputs(contract, options)

    def answer_bytes_per_pixel(self, options: DetectOptions) -> int:
        # render: an RGB copy of a grey upload (4), its PNG, base64 and JSON copies
        return 12 if options.render else 0

    def answer(self, model, contract, outputs: Outputs, upload, pixels, options: DetectOptions) -> DetectResponse:
        found, _ = detections(contract, outputs, pixels, upload, options.max_detections)
        rendered = png_base64(draw_detections(upload, found, contract.classes, copy=False)) if options.render else None
        return DetectResponse(
            model=model, width=upload.width, height=upload.height, detections=found, rendered=rendered
        )
