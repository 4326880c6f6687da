"""The app's own response models (``/models``, errors); each task's answer model lives with its task."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..catalog import Catalog
from ..runtime.model import ModelInfo
from ..runtime.policy import BatchPolicy
from ..tasks import all_tasks

__all__ = ["Endpoint", "EndpointFile", "ErrorResponse", "ModelStatus", "ModelsResponse", "models_response"]


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
    evaluation: list[dict[str, Any]] = Field(
        default_factory=list,
        description="demo files: figures the file itself reaches on held-out data, measured at export "
        "(metric, value, data, goal)",
        examples=[[{"metric": "knn_accuracy", "value": 0.96, "data": "digits test split (450)", "goal": 0.95}]],
    )
    gallery: str | None = Field(None, description="/embed: the reference set for neighbours and the map, if any")
    outputs: list[str] = Field(default_factory=list, description="the graph's outputs as exported")
    batching: BatchPolicy | None = None
    routes: list[str] = Field(default_factory=list, description="the endpoints that answer with this model")

    @classmethod
    def of(cls, info: ModelInfo) -> ModelStatus:
        contract = info.contract
        return cls(
            name=info.name,
            task=info.task,
            input_size=list(contract.input_size) if contract else None,
            precision=contract.precision if contract else "unknown",
            source=contract.weights if contract else "unknown",
            ready=info.ready,
            providers=list(info.providers),
            error=info.error,
            parity=contract.parity if contract else None,
            quality=contract.quality.model_dump() if contract and contract.quality else None,
            labels=len(contract.labels) if contract and contract.labels else None,
            evaluation=[e.model_dump() for e in contract.evaluation] if contract else [],
            gallery=contract.gallery.data if contract and contract.gallery else None,
            outputs=list(contract.outputs) if contract else [],
            batching=info.batching,
            routes=[task.route for task in all_tasks() if info.task in task.serves],
        )


class EndpointFile(BaseModel):
    name: str
    required: bool


class Endpoint(BaseModel):
    route: str
    title: str
    tasks: list[str] = Field(description="the model tasks it answers for, in the order a default is picked")
    default_model: str | None = Field(
        None,
        description="the model that answers a request naming none: the default set's model of this endpoint when "
        "it is served, else the first served model of its tasks (CNNSERVE_MODELS order, else by name)",
    )
    files: list[EndpointFile] = Field(default_factory=list, description="the files a request carries")


class ModelsResponse(BaseModel):
    models: list[ModelStatus]
    endpoints: list[Endpoint] = Field(default_factory=list, description="every endpoint, from the registry")


class ErrorResponse(BaseModel):
    error: str


def models_response(catalog: Catalog) -> ModelsResponse:
    return ModelsResponse(
        models=[ModelStatus.of(info) for info in catalog],
        endpoints=[
            Endpoint(
                route=t.route,
                title=t.title,
                tasks=list(t.serves),
                default_model=catalog.default_model(t),
                files=[EndpointFile(name=f.name, required=f.required) for f in t.files],
            )
            for t in all_tasks()
        ],
    )
