"""Response models: what ``/docs`` shows and what clients get, one class per answer of the contract."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["Prediction", "ClassifyResponse", "ModelStatus", "ModelsResponse", "ErrorResponse"]


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


class ModelsResponse(BaseModel):
    models: list[ModelStatus]


class ErrorResponse(BaseModel):
    error: str
