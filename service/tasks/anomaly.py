"""``/anomaly``: how unlike its training data an image is — the autoencoder's reconstruction error (computed in
the graph) against the threshold calibrated at training time and recorded in the file."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from ..codecs import heat_map, png_base64
from ..contract import ModelContract
from ..errors import BadInput
from ..imaging import to_unit_float
from . import register_task
from .base import Outputs, Task, TaskOptions

__all__ = ["AnomalyTask", "AnomalyOptions", "AnomalyResponse"]


class AnomalyOptions(TaskOptions):
    heatmap: bool = Field(False, description="add a per-pixel error PNG")


class AnomalyResponse(BaseModel):
    model: str
    score: float = Field(description="mean squared reconstruction error of the image")
    threshold: float = Field(description="calibrated at training time from the training set's errors")
    is_anomaly: bool
    heatmap: str | None = Field(None, description="with heatmap=true: base64 PNG of the per-pixel error")


@register_task
class AnomalyTask(Task):
    name = "anomaly"
    route = "/anomaly"
    title = "Anomaly"
    summary = "How unlike the training data the image is: reconstruction error against the calibrated threshold."
    serves = ("autoencoder",)
    default_model = "cae"
    Options = AnomalyOptions
    Response = AnomalyResponse
    png_fields = ("heatmap",)

    def check(self, contract: ModelContract, options: AnomalyOptions) -> None:
        if contract.threshold is None:
            raise BadInput(f"model {contract.name!r} has no calibrated anomaly threshold in its metadata; re-export it")

    def answer(self, model, contract, outputs: Outputs, upload, pixels, options: AnomalyOptions) -> AnomalyResponse:
        score = float(np.asarray(outputs["error"]).reshape(-1)[0])
        heatmap = None
        if options.heatmap:
            per_pixel = ((np.asarray(outputs["reconstruction"]) - to_unit_float(pixels)) ** 2).mean(axis=0)
            heatmap = png_base64(heat_map(per_pixel))
        threshold = float(contract.threshold)
        return AnomalyResponse(
            model=model, score=score, threshold=threshold, is_anomaly=score > threshold, heatmap=heatmap
        )
