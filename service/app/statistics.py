"""Triton's model statistics (``GET /v2/models[/{name}]/stats``, gRPC ``ModelStatistics``), from the metrics the
service already keeps for ``/metrics``.

The figures are read from the Prometheus series of *every* process of the service (BentoML's multiprocess
directory: the API workers and, with two tiers, the model tier), so any worker answers for all of them. Per model,
over all its routes (``/classify`` and the like, ``/v2`` and gRPC):

========================  ===========================================================================================
Triton's field            from
========================  ===========================================================================================
``success`` / ``fail``    ``cnnserve_requests_total``: 2xx answers / the others; ``success.ns`` is the time of every
                          request's stages (``cnnserve_stage_seconds``), ``fail.ns`` is not kept (0)
``queue``                 stage ``queue``: a request's wait in the batcher of the process that runs the model
``compute_input``         time of stages ``decode`` + ``preprocess`` (images; for v2 and gRPC: reading the tensors)
``compute_infer``         time of stage ``inference`` (runner call, batching wait included) minus ``queue``
``compute_output``        time of stage ``postprocess`` (the answer)
``inference_count``       images run (``cnnserve_batch_size`` sum); ``execution_count``: runs (its count)
``last_inference``        ``cnnserve_last_run_timestamp_seconds``, in ms
========================  ===========================================================================================

The three compute counts are one count, the requests that reached the model (stage ``inference``), as in Triton,
where a request's compute phases are counted together when it completes: perf_analyzer refuses statistics whose
compute counts differ, and stages observed one after the other would differ while a request is in flight or after
one failed in decoding. No response cache here: ``cache_hit`` / ``cache_miss`` are zero. ``batch_stats`` (per exact
batch size) is not kept (the batch-size histogram has power-of-two buckets), so it is empty. Every count and ns is
an integer: Triton's clients (perf_analyzer) read them as unsigned 64-bit integers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from ..catalog import Catalog
from .oip import MODEL_VERSION

__all__ = ["model_statistics"]


def _registry() -> Any:
    """All processes' series when BentoML runs several (its ``PROMETHEUS_MULTIPROC_DIR``), else this process's."""
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    try:
        multiprocess.MultiProcessCollector(registry)
    except ValueError:  # no multiprocess directory: a single process (the series are in the default registry)
        return REGISTRY
    return registry


def _samples(models: set[str]) -> dict[str, dict[tuple, float]]:
    """``{model: {(sample name, label values…): value}}`` for the cnnserve series of the given models."""
    found: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
    for metric in _registry().collect():
        if not metric.name.startswith("cnnserve_"):
            continue
        for sample in metric.samples:
            model = sample.labels.get("model")
            if model not in models:
                continue
            if sample.name == "cnnserve_requests_total":
                key: tuple = (sample.name, "ok" if sample.labels.get("status", "").startswith("2") else "fail")
            elif sample.name.startswith("cnnserve_stage_seconds"):
                key = (sample.name, sample.labels.get("stage"))
            else:
                key = (sample.name,)
            if sample.name == "cnnserve_last_run_timestamp_seconds":
                found[model][key] = max(found[model][key], sample.value)
            else:
                found[model][key] += sample.value
    return found


def _duration(count: float, seconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": max(0, int(seconds * 1e9))}


def _model(name: str, values: dict[tuple, float]) -> dict[str, Any]:
    def stage(which: str) -> tuple[float, float]:
        return (
            values.get(("cnnserve_stage_seconds_count", which), 0.0),
            values.get(("cnnserve_stage_seconds_sum", which), 0.0),
        )

    decode, preprocess, inference, postprocess, queue = (
        stage(s) for s in ("decode", "preprocess", "inference", "postprocess", "queue")
    )
    stages_seconds = decode[1] + preprocess[1] + inference[1] + postprocess[1]
    zero = {"count": 0, "ns": 0}
    return {
        "name": name,
        "version": MODEL_VERSION,
        "last_inference": int(values.get(("cnnserve_last_run_timestamp_seconds",), 0.0) * 1000),
        "inference_count": int(values.get(("cnnserve_batch_size_sum",), 0.0)),
        "execution_count": int(values.get(("cnnserve_batch_size_count",), 0.0)),
        "inference_stats": {
            "success": _duration(values.get(("cnnserve_requests_total", "ok"), 0.0), stages_seconds),
            "fail": _duration(values.get(("cnnserve_requests_total", "fail"), 0.0), 0.0),
            "queue": _duration(*queue),
            "compute_input": _duration(inference[0], decode[1] + preprocess[1]),
            "compute_infer": _duration(inference[0], inference[1] - queue[1]),
            "compute_output": _duration(inference[0], postprocess[1]),
            "cache_hit": dict(zero),
            "cache_miss": dict(zero),
        },
        "batch_stats": [],
        "memory_usage": [],
    }


def model_statistics(catalog: Catalog, names: Iterable[str] | None = None) -> dict[str, Any]:
    """Triton's ``ModelStatisticsResponse`` as JSON, for the named models (default: every ready one)."""
    chosen = list(names) if names is not None else [info.name for info in catalog if info.ready]
    samples = _samples(set(chosen))
    return {"model_stats": [_model(name, samples.get(name, {})) for name in chosen]}
