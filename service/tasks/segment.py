"""``/segment``: per-pixel classes (semantic models) or per-object masks (instance models), at the upload's size.

Semantic models answer ``logits [K, h, w]``: the argmax is resized (nearest) to the upload and counted per class.
Instance models answer detections plus one 28×28 mask probability map each, pasted back over its box in the
upload (:func:`service.masks.paste_mask`, torchvision's rule), one at a time: each full-size mask is encoded (and
drawn) before the next is made.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from ..codecs import blend_mask, colour_overlay, detection_colour, draw_detections, draw_legend, png_base64
from ..contract import ModelContract
from ..imaging import to_model_mode
from ..masks import paste_mask
from . import register_task
from .base import Outputs, Task, TaskOptions
from .detect import Detection, DetectOptions, detections, threshold_inputs

__all__ = ["SegmentTask", "SegmentOptions", "SegmentResponse", "ClassPixels", "Instance"]


class SegmentOptions(TaskOptions):
    score_threshold: float | None = DetectOptions.model_fields["score_threshold"]
    max_detections: int = DetectOptions.model_fields["max_detections"]
    overlay: bool = Field(False, description="semantic: add a colour overlay PNG")
    render: bool = DetectOptions.model_fields["render"]


class ClassPixels(BaseModel):
    index: int
    label: str
    pixels: int


class Instance(Detection):
    mask: str = Field(description="base64 PNG, the upload's size, 255 inside the instance")


class SegmentResponse(BaseModel):
    model: str
    kind: str = Field(description='"semantic" or "instance"')
    width: int
    height: int
    mask: str | None = Field(None, description="semantic: base64 PNG of class indices at the upload's size")
    classes: list[ClassPixels] | None = Field(None, description="semantic: pixels per class present")
    overlay: str | None = Field(None, description="semantic, with overlay=true: base64 PNG colour overlay")
    instances: list[Instance] | None = Field(None, description="instance: one entry per detected object")
    rendered: str | None = Field(
        None,
        description="with render=true: base64 PNG of the upload with the instances' masks, boxes and labels drawn "
        "(semantic: the colour overlay with a key to its classes)",
    )


@register_task
class SegmentTask(Task):
    name = "segment"
    route = "/segment"
    title = "Segment"
    summary = "Per-pixel classes (semantic models) or per-object masks (instance models), at the upload's size."
    description = (
        "With `render=true` the answer also has `rendered`, a base64 PNG for people who would rather look: instance "
        "models draw every mask, box and `label score` tag on the upload; semantic models give the colour overlay "
        "with a key."
    )
    serves = ("semantic_segmentation", "instance_segmentation")
    default_model = "unet"
    Options = SegmentOptions
    Response = SegmentResponse
    png_fields = ("mask", "overlay", "rendered")

    def answer_bytes_per_pixel(self, options: SegmentOptions) -> int:
        # the class mask (2), the overlay picture (4), its PNG and the base64 and JSON text of each picture
        return 16 if options.overlay or options.render else 4

    def graph_inputs(self, contract: ModelContract, options: SegmentOptions) -> dict[str, float]:
        return threshold_inputs(contract, options)

    def answer(self, model, contract, outputs: Outputs, upload, pixels, options: SegmentOptions) -> SegmentResponse:
        kinds = {"semantic_segmentation": self._semantic, "instance_segmentation": self._instance}
        return SegmentResponse(**kinds[contract.task](model, contract, outputs, upload, pixels, options))

    def _semantic(self, model, contract, outputs, upload: Image.Image, pixels, options) -> dict[str, Any]:
        logits = np.asarray(outputs["logits"])  # (K, h, w)
        small = logits.argmax(axis=0).astype(np.uint8)
        mask = Image.fromarray(small).resize(upload.size, Image.Resampling.NEAREST)
        counts = mask.histogram()[: logits.shape[0]]  # counted by Pillow: no full-size integer copy
        answer: dict[str, Any] = {
            "model": model,
            "kind": "semantic",
            "width": upload.width,
            "height": upload.height,
            "mask": png_base64(mask),
            "classes": [
                {"index": i, "label": contract.label(i), "pixels": int(counts[i])}
                for i in range(len(counts))
                if counts[i] > 0
            ],
        }
        if options.overlay or options.render:
            overlay = colour_overlay(upload, np.asarray(mask), logits.shape[0])
            del mask
            if options.overlay:
                answer["overlay"] = png_base64(overlay)
            if options.render:  # the overlay with a key to its colours, drawn on it once it has been encoded
                key = [(c["index"], c["label"]) for c in answer["classes"] if c["index"] > 0]
                answer["rendered"] = png_base64(draw_legend(overlay, key, logits.shape[0], copy=False))
        return answer

    def _instance(self, model, contract, outputs, upload: Image.Image, pixels, options) -> dict[str, Any]:
        found, order = detections(contract, outputs, pixels, upload, options.max_detections)
        count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
        boxes = np.array([d["box"] for d in found], dtype=np.float64).reshape(-1, 4)
        probabilities = np.asarray(outputs["masks"])[:count][order]
        canvas = to_model_mode(upload, 3) if options.render else None  # drawn on: the upload is not needed after
        for det, probability, box in zip(found, probabilities, boxes, strict=True):
            mask = paste_mask(probability, box, upload.height, upload.width)
            det["mask"] = png_base64(np.multiply(mask, 255, dtype=np.uint8))
            if canvas is not None:
                blend_mask(canvas, mask, detection_colour(det["index"], contract.classes))
        answer = {
            "model": model,
            "kind": "instance",
            "width": upload.width,
            "height": upload.height,
            "instances": found,
        }
        if canvas is not None:
            answer["rendered"] = png_base64(draw_detections(canvas, found, contract.classes, copy=False))
        return answer
