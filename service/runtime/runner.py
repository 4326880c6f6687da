"""Runners: one model's batches, wherever its sessions are. The request path talks to a :class:`Runner` only.

* :class:`LocalRunner` — the sessions are in this process (one tier; the model tier of two; the batch scorer's
  ``--workers``). A batcher forms the runs, and the runs go to a few long-lived threads of this model (as many
  as may be in flight): onnxruntime releases the GIL, and its CUDA provider keeps per-thread state (streams,
  cuDNN/cuBLAS handles) that a fresh thread would pay for again.
* :class:`RemoteRunner` — an API worker of the two-tier service: its batcher groups this worker's concurrent
  requests into one call to the model tier, which batches the calls of every worker into onnxruntime runs. The
  call itself is a :class:`Transport`'s business (:mod:`.tier`: a Unix socket); pixels travel as uint8.

A new engine (Triton over gRPC, a Ray actor, another accelerator's runtime) is one more class with these three
methods; nothing above it changes (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from .batching import ModelBatcher, Rows
from .model import ModelInfo, OnnxModel

__all__ = ["Runner", "LocalRunner", "RemoteRunner", "Transport"]

logger = logging.getLogger("cnnserve.runtime")

Observe = Callable[[int, float], None]  # (images in the run, seconds) → metrics


class Runner(Protocol):
    """What the service needs of a model: its description and two ways to run it."""

    info: ModelInfo

    async def infer(
        self, images: np.ndarray, extra: Mapping[str, float], rows: Rows | None = None
    ) -> dict[str, np.ndarray]:
        """Images ``[n, C, H, W]`` + scalar graph inputs (+ further per-row graph inputs by name, e.g. an
        inpainting ``mask``) → their rows of every output, batched with concurrent requests. Pixels are uint8 (0–255,
        the routes' preprocessed images) or the graph's own input tensor (``/v2``: float32 in [0, 1], or uint8 for a
        uint8-input file; a generator's noise); ``OnnxModel.feed_for`` converts."""
        ...

    async def run_graph(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph as exported (``/v2``): the named outputs for a feed of graph inputs."""
        ...

    def close(self) -> None: ...


class LocalRunner:
    """A model whose sessions live in this process."""

    def __init__(
        self,
        model: OnnxModel,
        *,
        max_inflight: int = 1,
        observe: Observe | None = None,
        observe_queue: Callable[[float], None] | None = None,
    ) -> None:
        self.model = model
        policy = model.info.batching
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, max_inflight), thread_name_prefix=f"ort-{model.info.name}"
        )
        self.batcher = ModelBatcher(
            model.info.name,
            self._run,
            max_batch_size=policy.max_batch_size if policy else 16,
            max_latency_ms=policy.shed_after_ms if policy else 10_000,
            observe=observe,
            max_inflight=max_inflight,
            observe_queue=observe_queue,
        )

    @property
    def info(self) -> ModelInfo:
        return self.model.info

    async def _run(self, batch: np.ndarray, extra: dict[str, float], rows: dict[str, np.ndarray]) -> dict:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.model.run, batch, extra, rows)

    async def infer(
        self, images: np.ndarray, extra: Mapping[str, float], rows: Rows | None = None
    ) -> dict[str, np.ndarray]:
        self.info.require_ready()
        return await self.batcher.infer(images, rows, **extra)

    async def run_graph(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.info.require_ready()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.model.run_graph, names, feed)

    def close(self) -> None:
        self.batcher.shutdown()
        self._executor.shutdown(wait=False, cancel_futures=True)


# --- two tiers ----------------------------------------------------------------------------------------------------


class Transport(Protocol):
    """How an API worker reaches the model tier: ``method`` (``infer``, ``run_graph``) of model ``name`` with its
    arguments → the value, or the model tier's :class:`~service.errors.ServeError` raised here."""

    async def call(self, method: str, name: str, *parts: Any) -> Any: ...


class RemoteRunner:
    """A model served by the model tier. This worker's batcher gathers its concurrent requests into one call (the
    model tier forms the real batches), with a few calls in flight so the worker never idles on a round trip."""

    def __init__(self, info: ModelInfo, transport: Transport, *, max_batch_size: int, max_inflight: int) -> None:
        self.info = info
        self._transport = transport
        policy = info.batching
        self.batcher = ModelBatcher(
            info.name,
            self._call_infer,
            max_batch_size=max_batch_size,
            max_latency_ms=policy.shed_after_ms if policy else 10_000,
            max_inflight=max_inflight,
        )

    async def _call(self, method: str, *parts: Any) -> Any:
        return await self._transport.call(method, self.info.name, *parts)

    def _call_infer(
        self, batch: np.ndarray, extra: dict[str, float], rows: dict[str, np.ndarray]
    ) -> Awaitable[dict[str, np.ndarray]]:
        return self._call("infer", batch, extra, rows)

    async def infer(
        self, images: np.ndarray, extra: Mapping[str, float], rows: Rows | None = None
    ) -> dict[str, np.ndarray]:
        self.info.require_ready()
        return await self.batcher.infer(images, rows, **extra)

    async def run_graph(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.info.require_ready()
        return await self._call("run_graph", names, feed)

    def close(self) -> None:
        self.batcher.shutdown()
