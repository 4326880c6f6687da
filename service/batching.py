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

import anyio
import numpy as np
from bentoml._internal.marshal.dispatcher import CorkDispatcher

from .errors import ModelUnavailable
from .runtime import LoadedModel

__all__ = ["ModelBatcher"]


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
            get_batch_size=lambda _image: 1,
        )
        self._call = self._dispatcher(self._run_batch)
        self.batch_sizes: list[int] = []  # recent batch sizes, for tests and /models

    def _overloaded(self) -> None:
        raise ModelUnavailable(
            f"model {self.model.name!r} is overloaded: the request waited longer than the latency budget; retry later"
        )

    async def _run_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        # The dispatcher counts requests; each request is one image, so this never exceeds max_batch_size.
        if len(images) > self.max_batch_size:
            raise RuntimeError(f"dispatcher formed a batch of {len(images)} > max_batch_size {self.max_batch_size}")
        batch = np.stack(images)  # (N, C, H, W)
        self.batch_sizes = [*self.batch_sizes[-99:], len(images)]
        start = time.perf_counter()
        outputs = await anyio.to_thread.run_sync(self.model.run, batch)
        if self._observe is not None:
            self._observe(len(images), time.perf_counter() - start)
        return [{name: value[i] for name, value in outputs.items()} for i in range(len(images))]

    async def infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """One preprocessed image ``[C, H, W]`` → its slice of every graph output."""
        result = await self._call(image)
        if result is None:  # the dispatcher's fallback path when the request was cancelled
            self._overloaded()
        return result  # type: ignore[return-value]

    def shutdown(self) -> None:
        self._dispatcher.shutdown()
