"""``cnnserve bench --http URL``: closed-loop HTTP load against a running service.

C concurrent clients (asyncio, one connection each) send the same image to an endpoint for S seconds, each
sending its next request as soon as its answer arrives. Reported: requests/s, latency p50/p95/p99, and errors —
non-2xx answers, transport failures, and (with ``expect``) answers whose top label is not the expected one. The
numbers are measured on the client side, so they include HTTP, decoding and batching: what a user sees.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["run_load"]


async def _client(
    client: Any,
    url: str,
    files: dict[str, tuple[str, bytes]],
    data: dict[str, str],
    deadline: float,
    expect: str | None,
    latencies: list[float],
    outcomes: Counter,
    samples: list[tuple[float, float]],
    started: float,
) -> None:
    while (now := time.perf_counter()) < deadline:
        try:
            response = await client.post(url, files=files, data=data)
            elapsed = time.perf_counter() - now
        except Exception as exc:  # transport failure: counted, the client goes on
            outcomes[f"error:{type(exc).__name__}"] += 1
            continue
        latencies.append(elapsed)
        samples.append((now - started, elapsed))
        if response.status_code != 200:
            outcomes[f"status:{response.status_code}"] += 1
        elif expect is not None and _top_label(response) != expect:
            outcomes["wrong-answer"] += 1
        else:
            outcomes["ok"] += 1


def _top_label(response: Any) -> str | None:
    try:
        return response.json()["predictions"][0]["label"]
    except (ValueError, KeyError, IndexError):
        return None


async def _load(
    base_url: str,
    route: str,
    image: bytes,
    fields: dict[str, str],
    concurrency: int,
    duration: float,
    expect: str | None,
) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    samples: list[tuple[float, float]] = []
    outcomes: Counter = Counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        started = time.perf_counter()
        deadline = started + duration
        await asyncio.gather(
            *(
                _client(
                    client,
                    base_url.rstrip("/") + route,
                    {"image": ("image", image)},
                    fields,
                    deadline,
                    expect,
                    latencies,
                    outcomes,
                    samples,
                    started,
                )
                for _ in range(concurrency)
            )
        )
        wall = time.perf_counter() - started
    lat_ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    errors = sum(v for k, v in outcomes.items() if k != "ok")
    return {
        "url": base_url,
        "route": route,
        "fields": fields,
        "concurrency": concurrency,
        "duration_s": round(wall, 2),
        "requests": int(sum(outcomes.values())),
        "ok": int(outcomes.get("ok", 0)),
        "errors": int(errors),
        "outcomes": dict(outcomes),
        "requests_per_s": round(len(latencies) / wall, 1),
        "latency_ms": {
            "p50": round(float(np.percentile(lat_ms, 50)), 2),
            "p95": round(float(np.percentile(lat_ms, 95)), 2),
            "p99": round(float(np.percentile(lat_ms, 99)), 2),
            "max": round(float(lat_ms.max()), 2),
        },
    }


def run_load(
    base_url: str,
    *,
    image: bytes,
    route: str = "/classify",
    fields: dict[str, str] | None = None,
    concurrency: int = 8,
    duration: float = 10.0,
    expect: str | None = None,
    output: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    result = asyncio.run(_load(base_url, route, image, fields or {}, concurrency, duration, expect))
    lat = result["latency_ms"]
    log(
        f"{result['requests']} requests in {result['duration_s']} s with {concurrency} clients: "
        f"{result['requests_per_s']} req/s, p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms, "
        f"errors {result['errors']} {result['outcomes']}"
    )
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
    return result
