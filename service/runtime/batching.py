"""Batching per model: requests that arrive while a batch is running ride together in the next one.

The rule is the simplest one that keeps a fast device busy without making anyone wait on purpose: a job that
finds a free slot runs at once (with whatever else is already queued); while ``max_inflight`` batches are running,
new jobs queue, and the next free slot takes as many of them as fit ``max_batch_size``. So one client sees no
added latency, and under load the batch size grows with the queue by itself. A job that has waited longer than the
latency budget is shed with a 503 rather than served late.

(BentoML's own adaptive ``CorkDispatcher`` was used here first. It allows one batch in flight, polls every
millisecond and holds requests back by a learned "wait" that feeds on itself: on the GPU machine it kept the model
tier's event loop busy and the GPU nearly idle; ``benchmarks/gpu/run1`` has the figures.)

The same batcher works at both tiers of the two-tier service (:mod:`.runner`): in an API worker it groups that
worker's concurrent requests into one call to the model tier (several calls in flight, so the worker never idles
on one round trip), and in the model tier it groups the calls from all API workers into one onnxruntime run. A job
is therefore a small batch ``[n, C, H, W]``, not always one image, plus the rows of any further per-row graph
inputs (an inpainting mask ``[n, 1, H, W]``), which travel with the images and are cut the same way. Padding a batch
to a fixed shape is the model's business (:mod:`.model`'s buckets), not the batcher's.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelUnavailable

__all__ = ["ModelBatcher", "Rows", "RunBatch"]

# Per-row graph inputs beside the first one (an inpainting mask), by graph input name: n rows each, like the images.
Rows = Mapping[str, np.ndarray]
# (images [N, C, H, W], scalar graph inputs, further per-row inputs) → every graph output for those N rows.
RunBatch = Callable[[np.ndarray, dict[str, float], dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]


@dataclass
class _Job:
    images: np.ndarray  # (n, C, H, W): the graph's first input (a generator's latent codes (n, Z))
    extra: dict[str, float]
    future: asyncio.Future
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # name → (n, ...)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple:
        # Jobs share one run only when they fit one tensor and one set of scalar inputs (detection thresholds).
        shapes = tuple((name, value.shape[1:], value.dtype.str) for name, value in sorted(self.rows.items()))
        return (self.images.shape[1:], self.images.dtype.str, tuple(sorted(self.extra.items())), shapes)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


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
        max_inflight: int = 1,
        observe_queue: Callable[[float], None] | None = None,
    ) -> None:
        self.name = name
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000.0
        self.max_inflight = max(1, max_inflight)
        self._observe = observe  # (batch size, seconds) of each run, for metrics
        self._observe_queue = observe_queue  # each job's wait before its run started, for metrics
        self._queue: collections.deque[_Job] = collections.deque()
        self._inflight = 0
        self._tasks: set[asyncio.Task] = set()

    # --- scheduling ------------------------------------------------------------------------------------------

    def _take_batch(self) -> list[_Job]:
        """Up to max_batch_size images of the oldest job's kind, oldest first; expired jobs are shed on the way."""
        now = time.monotonic()
        while self._queue and now - self._queue[0].enqueued > self.max_latency:
            self._shed(self._queue.popleft())
        if not self._queue:
            return []
        key = self._queue[0].key
        batch, rows, skipped = [], 0, collections.deque()
        while self._queue:
            job = self._queue.popleft()
            if job.key != key or (batch and rows + len(job.images) > self.max_batch_size):
                skipped.append(job)
                if rows >= self.max_batch_size:
                    break
                continue
            batch.append(job)
            rows += len(job.images)
        self._queue.extendleft(reversed(skipped))
        return batch

    def _shed(self, job: _Job) -> None:
        if not job.future.done():
            job.future.set_exception(
                ModelUnavailable(
                    f"model {self.name!r} is overloaded: the request waited longer than the latency budget "
                    f"({self.max_latency * 1000:.0f} ms); retry later"
                )
            )

    def _dispatch(self) -> None:
        while self._inflight < self.max_inflight and self._queue:
            batch = self._take_batch()
            if not batch:
                return
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, jobs: list[_Job]) -> None:
        try:
            batch = _joined([job.images for job in jobs])
            per_row = {name: _joined([job.rows[name] for job in jobs]) for name in jobs[0].rows}
            rows = len(batch)
            if self._observe_queue is not None:
                now = time.monotonic()
                for job in jobs:
                    self._observe_queue(now - job.enqueued)
            start = time.perf_counter()
            try:
                outputs = await self._run(batch, jobs[0].extra, per_row)
            except Exception as exc:  # every job of the batch gets the error (a ServeError keeps its status)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                return
            if self._observe is not None:
                self._observe(rows, time.perf_counter() - start)
            offset = 0
            for job in jobs:
                n = len(job.images)
                if not job.future.done():
                    job.future.set_result({name: value[offset : offset + n] for name, value in outputs.items()})
                offset += n
        finally:
            self._inflight -= 1
            self._dispatch()  # the freed slot takes what queued meanwhile

    # --- the API ---------------------------------------------------------------------------------------------

    async def infer(self, images: np.ndarray, rows: Rows | None = None, **extra: float) -> dict[str, np.ndarray]:
        """Preprocessed images ``[n, C, H, W]`` (+ further per-row inputs, + scalar graph inputs) → their rows of
        every graph output."""
        rows = dict(rows or {})
        if len(images) > self.max_batch_size:  # one job never exceeds a batch: split it here
            step = self.max_batch_size
            parts = [
                await self.infer(images[i : i + step], {k: v[i : i + step] for k, v in rows.items()}, **extra)
                for i in range(0, len(images), step)
            ]
            return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        job = _Job(images, extra, asyncio.get_running_loop().create_future(), rows)
        self._queue.append(job)
        self._dispatch()
        return await job.future

    async def infer_one(self, image: np.ndarray, **extra: float) -> dict[str, np.ndarray]:
        """One image ``[C, H, W]`` → its slice of every graph output (no batch axis)."""
        outputs = await self.infer(image[None], None, **extra)
        return {name: value[0] for name, value in outputs.items()}

    def shutdown(self) -> None:
        for job in self._queue:
            job.future.cancel()
        self._queue.clear()
        for task in self._tasks:
            task.cancel()
