"""Response models: what ``/docs`` shows and what clients get, one class per answer of the contract."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["Prediction", "ClassifyResponse", "ModelStatus", "ModelsResponse", "ErrorResponse", "quality_of"]


class Prediction(BaseModel):
    index: int = Field(description="class index in the model's output")
    label: str
    score: float = Field(ge=0.0, le=1.0, description="probability (softmax inside the graph)")


class ClassifyResponse(BaseModel):
    model: str
    predictions: list[Prediction] = Field(description="best first")

    model_config = {
        "json_schema_extra": {
            "example": {"model": "lenet5", "predictions": [{"index": 3, "label": "3", "score": 0.998}]}
        }
    }


class BatchPoint(BaseModel):
    batch: int
    ms: float = Field(description="median time of one onnxruntime run of this many images")
    images_per_s: float


class Batching(BaseModel):
    """How this model is batched, and why: the limit follows from its measured batch-cost curve."""

    max_batch_size: int = Field(description="largest batch of one onnxruntime run")
    source: str = Field(description="measured (here, by `cnnserve tune`) | family default | setting | built-in")
    shed_after_ms: float = Field(description="a request still queued after this long gets a 503")
    budget_ms: float | None = Field(None, description="the longest one run may take when choosing the limit")
    measured_on: str | None = None
    measured_at: str | None = None
    reference: str | None = Field(None, description="family default: the model and precision measured")
    curve: list[BatchPoint] = Field(default_factory=list)


class ModelStatus(BaseModel):
    name: str
    task: str
    input_size: list[int] | None
    precision: str
    source: str
    ready: bool
    providers: list[str]
    error: str | None = None
    parity: float | None = Field(None, description="max |ONNX − PyTorch| measured at export")
    labels: int | None = Field(None, description="number of classes")
    quality: dict[str, Any] | None = Field(
        None,
        description="fp16/int8/uint8 variants: quality measured against the fp32 export "
        "(metric, fp32, variant, drop, data)",
        examples=[{"metric": "accuracy", "fp32": 0.9844, "variant": 0.9844, "drop": 0.0, "data": "digits (450)"}],
    )
    batching: Batching | None = None


def quality_of(metadata: dict[str, str]) -> dict[str, Any] | None:
    """The ``cnnserve.quality`` metadata of a variant (JSON), or None for an fp32 export or an unreadable value."""
    raw = metadata.get("cnnserve.quality")
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class ModelsResponse(BaseModel):
    models: list[ModelStatus]


class ErrorResponse(BaseModel):
    error: str


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


class AnomalyResponse(BaseModel):
    model: str
    score: float = Field(description="mean squared reconstruction error of the image")
    threshold: float = Field(description="calibrated at training time from the training set's errors")
    is_anomaly: bool
    heatmap: str | None = Field(None, description="with heatmap=true: base64 PNG of the per-pixel error")
