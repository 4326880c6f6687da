"""One image's graph outputs → the contract's JSON answer, per task; shared by HTTP and batch scoring."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import BadInput
from .postprocess import check_top_k, rank_classes
from .runtime import LoadedModel

__all__ = ["answer_for"]


def answer_for(
    model: LoadedModel, outputs: dict[str, np.ndarray], *, size: tuple[int, int], top_k: int = 5
) -> dict[str, Any]:
    """``outputs`` holds one image's slice of every graph output; ``size`` is the upload's (width, height)."""
    if model.task == "classification":
        k = check_top_k(top_k, model.num_classes, model.name)
        return {"model": model.name, "predictions": rank_classes(outputs["probabilities"], k, model.labels)}
    raise BadInput(f"model {model.name!r} is a {model.task} model; this version answers classification only")
