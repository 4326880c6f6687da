"""Prometheus metrics of the service, added to BentoML's own ``/metrics``.

Created when the service starts, not at import: BentoML sets ``PROMETHEUS_MULTIPROC_DIR`` in each worker after
the service module is imported, and ``prometheus_client`` must see it to write where ``/metrics`` reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Metrics", "QUEUE_STAGE", "STAGES"]

STAGES = ("decode", "preprocess", "inference", "postprocess")
# Recorded where the batches run (the one-tier service, the model tier): a request's wait in its model's batcher
# before its run started. Triton's statistics report it as `queue` (service.app.statistics).
QUEUE_STAGE = "queue"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "cnnserve_requests_total", "Requests by model, route and HTTP status", ["model", "route", "status"]
        )
        self.stage_seconds = Histogram(
            "cnnserve_stage_seconds",
            "Latency of one request's stage (decode, preprocess, inference incl. batching wait, postprocess)",
            ["model", "stage"],
            buckets=_LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "cnnserve_batch_size", "Images per onnxruntime call", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128)
        )
        self.batch_seconds = Histogram(
            "cnnserve_batch_seconds", "onnxruntime time per batch", ["model"], buckets=_LATENCY_BUCKETS
        )
        # "max" across processes: the latest run of any worker or tier (Triton's statistics: last_inference).
        self.last_run = Gauge(
            "cnnserve_last_run_timestamp_seconds",
            "Unix time at which the model's last run finished",
            ["model"],
            multiprocess_mode="max",
        )
        self.transport_cpu = Counter(
            "cnnserve_transport_cpu_seconds",
            "CPU spent moving calls between the tiers (packing, framing, writing, parsing, unpacking)",
            ["side"],
        )
        self.transport_messages = Counter(
            "cnnserve_transport_messages",
            "Messages (calls and replies) handled on this side of the tiers' socket",
            ["side"],
        )

    @contextmanager
    def stage(self, model: str, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(model=model, stage=stage).observe(time.perf_counter() - start)

    def observe(self, model: str, stage: str, seconds: float) -> None:
        """A stage timed elsewhere (decoding and pre-processing run in the image pool, and time themselves there)."""
        self.stage_seconds.labels(model=model, stage=stage).observe(seconds)

    def observe_batch(self, model: str) -> Callable[[int, float], None]:
        """A runner's per-run callback: images in the run and its seconds."""

        def observe(size: int, seconds: float) -> None:
            self.batch_size.labels(model=model).observe(size)
            self.batch_seconds.labels(model=model).observe(seconds)
            self.last_run.labels(model=model).set(time.time())

        return observe

    def observe_queue(self, model: str) -> Callable[[float], None]:
        """A runner's per-request callback: seconds the request waited in the batcher before its run started."""
        histogram = self.stage_seconds.labels(model=model, stage=QUEUE_STAGE)
        return histogram.observe

    def observe_transport(self, side: str, seconds: float, calls: int = 0) -> None:
        """The tiers' socket (service.runtime.tier): CPU spent on the hop, and calls sent or answered."""
        self.transport_cpu.labels(side=side).inc(seconds)
        if calls:
            self.transport_messages.labels(side=side).inc(calls)
