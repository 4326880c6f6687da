"""The hop between the API workers and the model tier: length-prefixed frames over a Unix socket.

BentoML's own inter-service call (an HTTP request through its client and server stacks for every call) cost more
CPU per call than the whole model-tier run of a small batch, on both sides (``benchmarks/serving-cpu`` has the
figures). The two tiers of a cnnserve service always share a host (one pod, one ``bentoml serve``), so the model
tier also listens on a Unix socket and each API worker keeps one connection to it, with many calls in flight:

    frame  = header (body length u32, call id u32, kind u8, pickle length u32, buffers u16) + body
    body   = buffer lengths (u64 each) + pickle (protocol 5) + the pickle's out-of-band buffers
    kinds: 1 infer, 2 run_graph (requests) · 3 ok, 4 error (replies, with the call's id)

Arrays travel as pickle's out-of-band buffers: the sender hands numpy's memory to the socket as is, and the
receiver reads each frame straight into one buffer (``asyncio.BufferedProtocol``) and unpickles arrays that are
views of it — no copy of the pixels or the outputs in user space on either side. A request body is
``(model name, *arguments)``; a reply body is the value, or ``(status, message)`` for a
:class:`~service.errors.ServeError`, raised again on the API side with the same status. BentoML still starts,
supervises and describes the model tier (its ``describe`` call says where the socket is); if the socket cannot be
reached, the API worker falls back to BentoML's call (``service.app.service``).

Both ends count the CPU they spend on the hop itself — packing, framing, writing, parsing, unpacking — through
``observe(side, seconds)`` (``cnnserve_transport_cpu_seconds_total`` in ``/metrics``), so the benchmark can tell
transport from work.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ModelNotFound, ModelUnavailable, ServeError
from .runner import Runner

__all__ = [
    "TierClient",
    "TierServer",
    "METHODS",
    "answer_payload",
    "decode_call",
    "encode_reply",
    "read_reply",
    "run_call",
]

logger = logging.getLogger("cnnserve.runtime")

_HEADER = struct.Struct("<IIBIH")
METHODS = {"infer": 1, "run_graph": 2}
_OK, _ERROR = 3, 4
_MAX_FRAME = 1 << 31  # a frame past this is a protocol error, not a batch
Observe = Callable[..., None]  # (side: "api" | "model", CPU seconds spent on the hop, calls=n)


def _none(side: str, seconds: float, calls: int = 0) -> None:
    pass


def decode_call(body: bytes | memoryview) -> tuple[str, tuple[Any, ...]]:
    name, *parts = pickle.loads(body)  # noqa: S301 - our own API workers, over a local socket
    return name, tuple(parts)


async def run_call(runners: Mapping[str, Runner], method: str, name: str, parts: tuple[Any, ...]) -> Any:
    """One call on the model tier's side: the named model's local runner (whose batcher merges the calls of every
    API worker)."""
    runner = runners.get(name)
    if runner is None:
        raise ModelNotFound(f"model {name!r} is not served by the model tier")
    if method == "infer":
        images, extra, *rows = parts  # rows: further per-row graph inputs (an inpainting mask), if any
        return await runner.infer(images, extra, rows[0] if rows else None)
    if method == "run_graph":
        names, feed = parts
        return await runner.run_graph(names, feed)
    raise ServeError(f"unknown model-tier method {method!r}", status=500)


def encode_reply(value: Any = None, error: ServeError | None = None) -> tuple[int, bytes]:
    if error is not None:
        return _ERROR, pickle.dumps((error.status, error.message), protocol=5)
    return _OK, pickle.dumps(value, protocol=5)


async def answer_payload(runners: Mapping[str, Runner], method: str, payload: bytes) -> bytes:
    """One call that came another way (BentoML's call, the fallback): a request body → kind byte + reply body."""
    try:
        name, parts = decode_call(payload)
        kind, body = encode_reply(await run_call(runners, method, name, parts))
    except ServeError as exc:
        kind, body = encode_reply(error=exc)
    return bytes([kind]) + body


def read_reply(reply: bytes) -> Any:
    """:func:`answer_payload`'s bytes → the value, or its ServeError raised with the same status."""
    body = memoryview(reply)[1:]
    if reply[0] == _ERROR:
        status, message = pickle.loads(body)  # noqa: S301 - our own model tier
        raise ServeError(message, status=status)
    return pickle.loads(body)  # noqa: S301


def _frame(call_id: int, kind: int, value: Any) -> list[bytes | memoryview]:
    """A frame as the pieces to write: no piece is a copy of an array's data."""
    buffers: list[pickle.PickleBuffer] = []
    meta = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    lengths = struct.pack(f"<{len(raws)}Q", *(r.nbytes for r in raws))
    body = len(lengths) + len(meta) + sum(r.nbytes for r in raws)
    return [_HEADER.pack(body, call_id, kind, len(meta), len(raws)), lengths, meta, *raws]


def _unframe(body: bytearray, meta_length: int, count: int) -> Any:
    """A frame's body → its value; arrays are views of ``body``."""
    view = memoryview(body)
    lengths = struct.unpack_from(f"<{count}Q", view, 0)
    offset = 8 * count + meta_length
    buffers = []
    for length in lengths:
        buffers.append(view[offset : offset + length])
        offset += length
    return pickle.loads(view[8 * count : 8 * count + meta_length], buffers=buffers)  # noqa: S301 - our own tiers


class _FrameReader(asyncio.BufferedProtocol):
    """Reads frames straight into their own buffers: first the fixed header, then the whole body at once."""

    def __init__(self) -> None:
        self._header = bytearray(_HEADER.size)
        self._target: bytearray = self._header
        self._filled = 0
        self._frame: tuple[int, int, int, int] | None = None  # call id, kind, pickle length, buffers

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._target)[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._filled < len(self._target):
            return
        if self._frame is None:
            length, call_id, kind, meta, count = _HEADER.unpack(self._header)
            if length > _MAX_FRAME or meta + 8 * count > length:
                self.bad_frame(f"a frame of {length} bytes")
                return
            self._frame = (call_id, kind, meta, count)
            self._target, self._filled = bytearray(length), 0
            if length:
                return
        call_id, kind, meta, count = self._frame
        body = self._target
        self._frame, self._target, self._filled = None, self._header, 0
        self.frame_received(call_id, kind, body, meta, count)

    def frame_received(self, call_id: int, kind: int, body: bytearray, meta: int, count: int) -> None:
        raise NotImplementedError

    def bad_frame(self, what: str) -> None:
        raise NotImplementedError


# --- the model tier's side ----------------------------------------------------------------------------------------


class _ServerProtocol(_FrameReader):
    def __init__(self, runners: Mapping[str, Runner], observe: Observe) -> None:
        super().__init__()
        self.runners, self.observe = runners, observe
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def bad_frame(self, what: str) -> None:
        logger.error("model tier: closing a connection that sent %s", what)
        if self.transport is not None:
            self.transport.close()

    def frame_received(self, call_id: int, kind: int, body: bytearray, meta: int, count: int) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(call_id, kind, body, meta, count))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, call_id: int, kind: int, body: bytearray, meta: int, count: int) -> None:
        start = time.thread_time()
        method = next((m for m, k in METHODS.items() if k == kind), "?")
        try:
            name, *parts = _unframe(body, meta, count)
            self.observe("model", time.thread_time() - start)
            reply = _OK, await run_call(self.runners, method, name, tuple(parts))
        except ServeError as exc:
            reply = _ERROR, (exc.status, exc.message)
        except Exception as exc:  # a bug on this side: the API worker answers 500, this side keeps serving
            logger.exception("model tier: call %s failed", method)
            reply = _ERROR, (500, f"model tier error: {type(exc).__name__}")
        start = time.thread_time()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(_frame(call_id, *reply))
        self.observe("model", time.thread_time() - start, calls=1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class TierServer:
    """The model tier's socket: every connection's calls go to ``runners``."""

    def __init__(self, runners: Mapping[str, Runner], path: str, observe: Observe = _none) -> None:
        self.runners, self.path, self.observe = runners, path, observe
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _ServerProtocol(self.runners, self.observe), self.path)
        os.chmod(self.path, 0o600)  # this user's processes only
        logger.info("model tier listening on %s", self.path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


# --- an API worker's side -----------------------------------------------------------------------------------------


class _ClientProtocol(_FrameReader):
    def __init__(self, client: TierClient) -> None:
        super().__init__()
        self.client = client

    def bad_frame(self, what: str) -> None:
        self.client._lost(ModelUnavailable(f"the model tier sent {what}; retry later"))

    def frame_received(self, call_id: int, kind: int, body: bytearray, meta: int, count: int) -> None:
        start = time.thread_time()
        future = self.client._pending.pop(call_id, None)
        if future is not None and not future.done():
            value = _unframe(body, meta, count)
            if kind == _ERROR:
                status, message = value
                future.set_exception(ServeError(message, status=status))
            else:
                future.set_result(value)
        self.client.observe("api", time.thread_time() - start)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(ModelUnavailable("the connection to the model tier was lost; retry later"))


class TierClient:
    """One API worker's connection to the model tier, many calls in flight (each frame carries its call's id).
    A lost connection fails the calls in flight with a 503 and is made again by the next call."""

    def __init__(self, path: str, observe: Observe = _none) -> None:
        self.path, self.observe = path, observe
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        async with self._lock:
            if self._transport is not None and not self._transport.is_closing():
                return
            loop = asyncio.get_running_loop()
            try:
                self._transport, _ = await loop.create_unix_connection(lambda: _ClientProtocol(self), self.path)
            except OSError as exc:
                raise ModelUnavailable(f"the model tier is not reachable at {self.path} ({exc}); retry later") from exc

    async def call(self, method: str, name: str, *parts: Any) -> Any:
        """``method`` of model ``name`` on the model tier with ``parts`` → its value (or its ServeError, raised)."""
        if self._transport is None or self._transport.is_closing():
            await self.connect()
        start = time.thread_time()
        call_id = next(self._ids) & 0xFFFFFFFF
        future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        self._transport.writelines(_frame(call_id, METHODS[method], (name, *parts)))
        self.observe("api", time.thread_time() - start, calls=1)
        return await future

    def _lost(self, error: ServeError) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def close(self) -> None:
        self._lost(ModelUnavailable("the API worker is shutting down"))
