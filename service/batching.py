"""Adaptive batching per model, with BentoML's own dispatcher.

BentoML batches a ``@bentoml.api(batchable=True)`` method through its ``CorkDispatcher`` (the adaptive
algorithm that learns the batch cost and waits only while waiting pays). One batchable method cannot serve
several models (a batch must hold one model's inputs), and the models here are configuration, not code, so each
model gets its own dispatcher instance of the same class, fed in-process with numpy arrays. ``bentoml`` is
pinned, which keeps this internal import stable.

The same batcher works at both tiers of the two-tier service (``service.service``): in an API worker it groups
that worker's concurrent requests into one call to the model tier (so the model tier sees a few calls carrying
many images, not one call per image), and in the model tier it groups those calls from all API workers into one
onnxruntime run. A job is therefore a small batch ``[n, C, H, W]``, not always one image.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np
from bentoml._internal.marshal.dispatcher import CorkDispatcher

from .errors import ModelUnavailable

__all__ = ["ModelBatcher", "RunBatch"]

# (images [N, C, H, W], scalar graph inputs) → every graph output for those N images.
RunBatch = Callable[[np.ndarray, dict[str, float]], Awaitable[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class _Job:
    images: np.ndarray  # (n, C, H, W)
    extra: dict[str, float]


def _pad_to(batch: np.ndarray, size: int) -> np.ndarray:
    pad = np.zeros((size - len(batch), *batch.shape[1:]), dtype=batch.dtype)
    return np.concatenate([batch, pad])


class ModelBatcher:
    """``await batcher.infer(images)`` → those images' outputs, computed in a batch with concurrent requests."""

    def __init__(
        self,
        name: str,
        run: RunBatch,
        *,
        max_batch_size: int,
        max_latency_ms: int,
        observe: Callable[[int, float], None] | None = None,
        pad_batches: bool = False,
    ) -> None:
        self.name = name
        self._run = run
        self.max_batch_size = max_batch_size
        # CUDA: pad a batch up to the next power of two, so cuDNN sees a handful of shapes it has already tuned
        # instead of every size from 1 to max_batch_size; the padded rows are dropped from the answers.
        self.pad_batches = pad_batches
        self._observe = observe  # (batch size, seconds) of each run, for metrics
        self._dispatcher: CorkDispatcher = CorkDispatcher(
            max_latency_in_ms=max_latency_ms,
            max_batch_size=max_batch_size,
            fallback=self._overloaded,
            get_batch_size=lambda job: len(job.images),
        )
        self._call = self._dispatcher(self._run_batch)

    def _overloaded(self) -> None:
        raise ModelUnavailable(
            f"model {self.name!r} is overloaded: the request waited longer than the latency budget; retry later"
        )

    async def _run_batch(self, jobs: Sequence[_Job]) -> list[dict[str, np.ndarray]]:
        # Jobs share one run only when they fit one tensor and one set of scalar inputs (detection
        # thresholds): group them, keep each job's rows for its answer.
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(
                (job.images.shape[1:], job.images.dtype.str, tuple(sorted(job.extra.items()))), []
            ).append(i)
        answers: list[dict[str, np.ndarray]] = [{} for _ in jobs]
        for indices in groups.values():
            parts = [jobs[i].images for i in indices]
            batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
            rows = len(batch)
            if self.pad_batches and rows & (rows - 1):
                batch = _pad_to(batch, min(1 << rows.bit_length(), max(self.max_batch_size, rows)))
            start = time.perf_counter()
            outputs = await self._run(batch, jobs[indices[0]].extra)
            if self._observe is not None:
                self._observe(rows, time.perf_counter() - start)
            offset = 0
            for i in indices:
                n = len(jobs[i].images)
                answers[i] = {name: value[offset : offset + n] for name, value in outputs.items()}
                offset += n
        return answers

    async def infer(self, images: np.ndarray, **extra: float) -> dict[str, np.ndarray]:
        """Preprocessed images ``[n, C, H, W]`` (+ scalar graph inputs) → their rows of every graph output."""
        if len(images) > self.max_batch_size:  # the dispatcher cannot split a job; split it here
            parts = [
                await self.infer(images[i : i + self.max_batch_size], **extra)
                for i in range(0, len(images), self.max_batch_size)
            ]
            return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        result = await self._call(_Job(images, extra))
        if result is None:  # the dispatcher's fallback path when the request was cancelled
            self._overloaded()
        return result  # type: ignore[return-value]

    async def infer_one(self, image: np.ndarray, **extra: float) -> dict[str, np.ndarray]:
        """One image ``[C, H, W]`` → its slice of every graph output (no batch axis)."""
        outputs = await self.infer(image[None], **extra)
        return {name: value[0] for name, value in outputs.items()}

    def shutdown(self) -> None:
        self._dispatcher.shutdown()
