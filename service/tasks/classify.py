"""``/classify``: the top-k classes of one image, probabilities best first.

Softmax already happened in the graph (``probabilities``), so this is only ranking: no second softmax here and no
ranking of raw logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from ..contract import ModelContract
from ..errors import BadInput
from . import register_task
from .base import Outputs, Task, TaskOptions

__all__ = ["ClassifyTask", "ClassifyOptions", "ClassifyResponse", "Prediction", "rank_classes"]


class ClassifyOptions(TaskOptions):
    top_k: int = Field(5, ge=1, description="classes to return")


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


def rank_classes(probabilities: np.ndarray, k: int, labels: Sequence[str] | None) -> list[Prediction]:
    """Best-first predictions for one image's probability vector."""
    probs = np.asarray(probabilities, dtype=np.float32).reshape(-1)
    k = min(k, probs.shape[0])
    # argpartition then sort the k winners: O(K) instead of sorting all 1000 classes.
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    return [
        Prediction(
            index=int(i),
            label=labels[i] if labels is not None and i < len(labels) else str(int(i)),
            score=float(probs[i]),
        )
        for i in idx
    ]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


@register_task
class ClassifyTask(Task):
    name = "classify"
    route = "/classify"
    title = "Classify"
    summary = "Top-k classes of one image, probabilities best first."
    serves = ("classification",)
    default_model = "lenet5"
    Options = ClassifyOptions
    Response = ClassifyResponse
    draft_decode = True

    def check(self, contract: ModelContract, options: ClassifyOptions) -> None:
        if not 1 <= options.top_k <= contract.classes:
            raise BadInput(
                f"top_k must be between 1 and {contract.classes} for model {contract.name!r}, got {options.top_k}"
            )

    def agreement(self, reference: Outputs, variant: Outputs) -> tuple[str, float, dict[str, float]]:
        """Top-5 overlap (the metric), top-1 agreement, and the cosine similarity of the probabilities and of the
        centred logits (recovered from log-probabilities; classes that underflow float32 carry none)."""
        p = np.asarray(reference["probabilities"], dtype=np.float64)
        q = np.asarray(variant["probabilities"], dtype=np.float64)
        k = min(5, p.shape[1])
        top_p, top_q = np.argsort(-p, axis=1)[:, :k], np.argsort(-q, axis=1)[:, :k]
        overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_p, top_q, strict=True)]))
        logit_cosines = []
        for a, b in zip(p, q, strict=True):
            finite = (a > 1e-30) & (b > 1e-30)
            la, lb = np.log(a[finite]), np.log(b[finite])
            logit_cosines.append(_cosine(la - la.mean(), lb - lb.mean()))
        return (
            "top5_overlap",
            overlap,
            {
                "top1_agreement": float(np.mean(top_p[:, 0] == top_q[:, 0])),
                "probability_cosine": float(np.mean([_cosine(a, b) for a, b in zip(p, q, strict=True)])),
                "logit_cosine": float(np.mean(logit_cosines)),
                "max_abs_probability_delta": float(np.max(np.abs(p - q))),
            },
        )

    def answer(self, model, contract, outputs: Outputs, upload, pixels, options: ClassifyOptions) -> ClassifyResponse:
        return ClassifyResponse(
            model=model, predictions=rank_classes(outputs["probabilities"], options.top_k, contract.labels)
        )
