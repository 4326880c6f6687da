"""Closed-loop HTTP load: ``cnnserve bench --http URL`` and ``cnnserve bench serve``.

C concurrent clients, each on its own keep-alive connection, send the same image to an endpoint for S seconds,
each sending its next request as soon as its answer arrives. Reported: requests/s, latency p50/p95/p99, and
errors — non-2xx answers, transport failures, and (with ``expect``) answers whose top label is not the expected
one. Measured on the client side, so the numbers include HTTP, decoding and batching: what a user sees.

The client must not be the bottleneck when the server does thousands of requests a second (a GPU service), so it
is deliberately bare: the multipart request is built once as bytes, each client writes it and reads the answer
with asyncio streams (no HTTP library per request), and the clients are spread over several processes.
:func:`client_ceiling` measures what this generator itself can do against a server that answers instantly, so a
benchmark can show that its figures are the server's and not the client's.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing as mp
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

__all__ = ["run_load", "client_ceiling", "build_request"]


def build_request(host: str, port: int, route: str, image: bytes, fields: dict[str, str]) -> bytes:
    """One complete ``multipart/form-data`` POST as bytes, sent as is by every client."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="image"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    head = (
        f"POST {route} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()
    return head + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length) if length else b""
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def _top_label(body: bytes) -> str | None:
    try:
        return json.loads(body)["predictions"][0]["label"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


async def _client(
    host: str,
    port: int,
    request: bytes,
    start_at: float,
    deadline: float,
    expect: str | None,
    latencies: list[float],
    outcomes: Counter,
) -> None:
    reader = writer = None
    while time.time() < start_at:
        await asyncio.sleep(min(0.05, max(0.0, start_at - time.time())))
    while time.time() < deadline:
        now = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
                writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            writer.write(request)
            status, body = await _read_response(reader)  # type: ignore[arg-type]
            elapsed = time.perf_counter() - now
        except Exception as exc:  # transport failure: counted, the client reconnects and goes on
            outcomes[f"error:{type(exc).__name__}"] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
            continue
        latencies.append(elapsed)
        if status != 200:
            outcomes[f"status:{status}"] += 1
        elif expect is not None and _top_label(body) != expect:
            outcomes["wrong-answer"] += 1
        else:
            outcomes["ok"] += 1
    if writer is not None:
        writer.close()


async def _clients(
    host: str, port: int, request: bytes, n: int, start_at: float, duration: float, expect: str | None
) -> tuple[list[float], Counter]:
    latencies: list[float] = []
    outcomes: Counter = Counter()
    deadline = start_at + duration
    await asyncio.gather(
        *(_client(host, port, request, start_at, deadline, expect, latencies, outcomes) for _ in range(n))
    )
    return latencies, outcomes


def _worker(args: tuple) -> tuple[list[float], dict[str, int]]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    latencies, outcomes = asyncio.run(_clients(*args))
    return latencies, dict(outcomes)


def _auto_processes(concurrency: int) -> int:
    cores = len(os.sched_getaffinity(0))
    # One process drives ~32 connections comfortably; never more than a quarter of the cores (the server's).
    return max(1, min(math.ceil(concurrency / 32), cores // 4 or 1))


def _load(
    base_url: str,
    route: str,
    image: bytes,
    fields: dict[str, str],
    concurrency: int,
    duration: float,
    expect: str | None,
    processes: int,
) -> dict[str, Any]:
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    request = build_request(host, port, route, image, fields)
    processes = max(1, min(processes or _auto_processes(concurrency), concurrency))
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    start_at = time.time() + 0.3 + 0.05 * processes  # every process starts its clients at the same moment
    jobs = [(host, port, request, n, start_at, duration, expect) for n in shares]
    if processes == 1:
        results = [_worker(jobs[0])]
    else:
        with mp.get_context("spawn").Pool(processes) as pool:
            results = pool.map(_worker, jobs)
    latencies = [x for lat, _ in results for x in lat]
    outcomes: Counter = Counter()
    for _, out in results:
        outcomes.update(out)
    lat_ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    errors = sum(v for k, v in outcomes.items() if k != "ok")
    return {
        "url": base_url,
        "route": route,
        "fields": fields,
        "concurrency": concurrency,
        "processes": processes,
        "duration_s": round(duration, 2),
        "requests": int(sum(outcomes.values())),
        "ok": int(outcomes.get("ok", 0)),
        "errors": int(errors),
        "outcomes": dict(outcomes),
        "requests_per_s": round(len(latencies) / duration, 1),
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
    processes: int = 0,
) -> dict[str, Any]:
    """Closed-loop load; ``processes`` = client processes (0: one per 32 clients, at most a quarter of the cores)."""
    result = _load(base_url, route, image, fields or {}, concurrency, duration, expect, processes)
    lat = result["latency_ms"]
    log(
        f"{result['requests']} requests in {result['duration_s']} s with {concurrency} clients "
        f"({result['processes']} processes): {result['requests_per_s']} req/s, p50 {lat['p50']} ms, "
        f"p95 {lat['p95']} ms, p99 {lat['p99']} ms, errors {result['errors']} {result['outcomes']}"
    )
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
    return result


# --- the generator's own ceiling ------------------------------------------------------------------------------


async def _trivial_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            writer.write(answer)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def _serve_trivial(port: int, ready: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        server = await asyncio.start_server(_trivial_handler, "127.0.0.1", port, reuse_port=True, backlog=4096)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def client_ceiling(
    *, image: bytes, concurrency: int, duration: float, server_processes: int = 2, processes: int = 0
) -> dict[str, Any]:
    """The load generator against a server that answers ``{}`` at once (``server_processes`` of them sharing
    the port): the most requests/s this generator can measure with this image and this many clients."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    servers = []
    for _ in range(server_processes):
        ready = ctx.Event()
        proc = ctx.Process(target=_serve_trivial, args=(port, ready), daemon=True)
        proc.start()
        ready.wait(10)
        servers.append(proc)
    try:
        return _load(f"http://127.0.0.1:{port}", "/trivial", image, {}, concurrency, duration, None, processes)
    finally:
        for proc in servers:
            proc.terminate()
