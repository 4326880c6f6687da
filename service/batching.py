"""Adaptive batching per model, with BentoML's own dispatcher.

BentoML batches a ``@bentoml.api(batchable=True)`` method through its ``CorkDispatcher`` (the adaptive
algorithm that learns the batch cost and waits only while waiting pays). One batchable method cannot serve
several models (a batch must hold one model's inputs), and the models here are configuration, not code, so each
loaded model gets its own dispatcher instance of the same class, fed in-process with numpy arrays — no
serialisation between the API and the model. ``bentoml`` is pinned, which keeps this internal import stable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import numpy as np
from bentoml._internal.marshal.dispatcher import CorkDispatcher

from .errors import ModelUnavailable
from .runtime import LoadedModel

__all__ = ["ModelBatcher"]


@dataclass(frozen=True)
class _Job:
    image: np.ndarray  # (C, H, W)
    extra: dict[str, float]


class ModelBatcher:
    """``await batcher.infer(image)`` → that image's outputs, computed in a batch with concurrent requests."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        max_batch_size: int,
        max_latency_ms: int,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self._observe = observe  # (batch size, seconds) of each onnxruntime call, for metrics
        self._dispatcher: CorkDispatcher = CorkDispatcher(
            max_latency_in_ms=max_latency_ms,
            max_batch_size=max_batch_size,
            fallback=self._overloaded,
            get_batch_size=lambda _job: 1,
        )
        self._call = self._dispatcher(self._run_batch)

    def _overloaded(self) -> None:
        raise ModelUnavailable(
            f"model {self.model.name!r} is overloaded: the request waited longer than the latency budget; retry later"
        )

    async def _run_batch(self, jobs: Sequence[_Job]) -> list[dict[str, np.ndarray]]:
        # The dispatcher counts requests; each request is one image, so this never exceeds max_batch_size.
        if len(jobs) > self.max_batch_size:
            raise RuntimeError(f"dispatcher formed a batch of {len(jobs)} > max_batch_size {self.max_batch_size}")
        # Requests share one onnxruntime call only when they fit one tensor and one set of scalar inputs
        # (detection thresholds): group them, keep each request's position for its answer.
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.image.shape, tuple(sorted(job.extra.items()))), []).append(i)
        answers: list[dict[str, np.ndarray]] = [{} for _ in jobs]
        for indices in groups.values():
            batch = np.stack([jobs[i].image for i in indices])  # (N, C, H, W)
            extra = jobs[indices[0]].extra
            start = time.perf_counter()
            outputs = await anyio.to_thread.run_sync(lambda b=batch, e=extra: self.model.run(b, **e))
            if self._observe is not None:
                self._observe(len(indices), time.perf_counter() - start)
            for row, i in enumerate(indices):
                answers[i] = {name: value[row] for name, value in outputs.items()}
        return answers

    async def infer(self, image: np.ndarray, **extra: float) -> dict[str, np.ndarray]:
        """One preprocessed image ``[C, H, W]`` (+ scalar graph inputs) → its slice of every graph output."""
        result = await self._call(_Job(image, extra))
        if result is None:  # the dispatcher's fallback path when the request was cancelled
            self._overloaded()
        return result  # type: ignore[return-value]

    def shutdown(self) -> None:
        self._dispatcher.shutdown()
