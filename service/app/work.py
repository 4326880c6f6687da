"""Where a worker's heavy request work runs, and how much memory requests may hold at once.

Decoding, reducing, resizing, rendering and PNG encoding run in one bounded thread pool per worker
(:class:`ImageWork`), never on the event loop: Pillow and numpy release the GIL in their loops, so ``/livez`` and
small requests keep being answered while a large image is decoded. Work too small to be worth the hop to a thread
(:data:`INLINE_PIXELS` and the other ``INLINE_*`` below: up to a VGA picture's decoding) stays on the loop.

Memory is bounded by two FIFO byte budgets per worker (:class:`MemoryBudget`), both settings:

- **bodies** (``CNNSERVE_BODY_MEMORY_MB``): a request reserves what its body will cost before it is read (its
  ``Content-Length``, or the route's limit when the body is chunked, times what parsing it costs) and holds it until
  its answer is built;
- **work** (``CNNSERVE_WORK_MEMORY_MB``): an image request reserves its work's peak, computed from the image's
  header before a pixel is decoded (:func:`~service.imaging.decode_bytes` plus the task's
  :meth:`~service.tasks.Task.answer_bytes_per_pixel` times the upload's pixels); a ``/v2`` request reserves a few
  times its tensors' bytes.

A request that does not fit waits its turn; one larger than a whole budget waits until it is alone. A request
never waits for the body budget while holding work, so the two cannot deadlock, and a worker's request memory stays
under the sum of the two budgets.

Memory goes back to the system when a large request is done: glibc's malloc maps large blocks for themselves only
above a threshold that it raises after each large free (up to 32 MB), after which a large request's pictures stay
with the process; :func:`tune_malloc` fixes the threshold (4 MB: above a 640×480 picture, below a large upload's),
and after a large reservation ends the pool runs ``malloc_trim`` to give back what the threads' heaps hold free.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from ..errors import ModelUnavailable
from ..imaging import Preprocess, decode_bytes, load_image, open_image, preprocess_bytes, preprocess_uint8
from .requests import megabytes

__all__ = [
    "INLINE_BYTES",
    "INLINE_JSON_BYTES",
    "INLINE_PIXELS",
    "INLINE_RENDER_PIXELS",
    "Decoded",
    "ImageWork",
    "Lease",
    "MemoryBudget",
    "work_bytes",
]

T = TypeVar("T")
# What stays on the event loop, because handing it to a thread and back costs more than doing it: an upload of at
# most INLINE_BYTES and INLINE_PIXELS (a VGA picture: a few milliseconds to decode; under concurrent load the hop
# measured about 0.3 ms of CPU a request, GIL hand-overs included), an answer that draws or encodes pictures of at
# most INLINE_RENDER_PIXELS (PNG encoding costs far more per pixel than decoding), /v2 JSON of at most
# INLINE_JSON_BYTES. Everything larger goes to the pool.
INLINE_BYTES = 256_000
INLINE_PIXELS = 640 * 480
INLINE_RENDER_PIXELS = 256 * 256
INLINE_JSON_BYTES = 64 * 1024


MMAP_THRESHOLD = 4 * 2**20
TRIM_AFTER = 32 * 2**20  # a reservation at least this large, once given back, is followed by a malloc_trim


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def tune_malloc() -> None:
    """A fixed mmap threshold for glibc's malloc (see the module's docstring); nothing elsewhere."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        m_mmap_threshold, m_trim_threshold = -3, -1
        libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)
        # Fixing the mmap threshold also freezes the trim threshold at 128 KB: every call that frees a batch's
        # buffers would give the heap's top back and fault it in again on the next. Twice the mmap threshold is
        # what glibc's own dynamic rule would settle on; large requests still end with an explicit malloc_trim.
        libc.mallopt(m_trim_threshold, 2 * MMAP_THRESHOLD)


def trim_malloc() -> None:
    """Give the free memory of every malloc heap back to the system (glibc; a few milliseconds, GIL released)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class Lease:
    """Bytes held in a :class:`MemoryBudget`. Released once, when its owner is done *and* every pool job that uses
    the memory has finished (a request cancelled while its image is decoded does not free the budget early)."""

    def __init__(self, budget: MemoryBudget, nbytes: int) -> None:
        self.budget = budget
        self.nbytes = nbytes
        self._users = 1  # the owner
        self._owner_done = False
        self._lock = threading.Lock()

    def pin(self, job: Future) -> None:
        """Keep the lease until ``job`` is done, whatever the owner does."""
        with self._lock:
            self._users += 1
        job.add_done_callback(lambda _: self._drop())

    def release(self) -> None:
        """The owner is done (idempotent)."""
        with self._lock:
            if self._owner_done:
                return
            self._owner_done = True
        self._drop()

    def _drop(self) -> None:
        with self._lock:
            self._users -= 1
            done = self._users == 0
        if done:
            self.budget._give_back(self.nbytes)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class MemoryBudget:
    """A first-come, first-served budget of bytes, shared by a worker's requests (any thread may take and give
    back; waiting happens on the event loop).

    A reservation larger than the budget is clamped to 15/16 of it (it runs alone, leaving a sixteenth for small
    requests), and a small one (at most 1/64 of the budget) that fits goes ahead of larger ones waiting: a large
    upload never holds up the small requests behind it."""

    def __init__(self, capacity: int, name: str = "memory", on_release: Callable[[int], None] | None = None) -> None:
        self.capacity = max(16, int(capacity))
        self.name = name
        self.on_release = on_release  # called with the bytes of every reservation given back
        self.held = 0
        self._small = self.capacity // 64
        self._lock = threading.Lock()
        self._waiters: deque[tuple[int, asyncio.Future, asyncio.AbstractEventLoop]] = deque()

    def _clamp(self, nbytes: int) -> int:
        return min(max(0, int(nbytes)), self.capacity - self.capacity // 16)

    def _fits(self, nbytes: int) -> bool:
        return self.held + nbytes <= self.capacity and (not self._waiters or nbytes <= self._small)

    def try_reserve(self, nbytes: int) -> Lease | None:
        """A lease at once if the bytes are free and nobody is waiting before us (or it is small); else None (never
        blocks)."""
        nbytes = self._clamp(nbytes)
        with self._lock:
            if not self._fits(nbytes):
                return None
            self.held += nbytes
        return Lease(self, nbytes)

    async def reserve(self, nbytes: int) -> Lease:
        """A lease, waiting in line for the bytes if they are not free (cancel the wait to give up)."""
        lease = self.try_reserve(nbytes)
        if lease is not None:
            return lease
        nbytes = self._clamp(nbytes)
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        with self._lock:
            if self._fits(nbytes):  # freed meanwhile
                self.held += nbytes
                return Lease(self, nbytes)
            self._waiters.append((nbytes, future, loop))
        try:
            await future
        except asyncio.CancelledError:
            with self._lock:
                granted = future.done() and not future.cancelled()
                if not granted:
                    self._waiters = deque(w for w in self._waiters if w[1] is not future)
            if granted:
                self._give_back(nbytes)
            else:
                self._grant()  # we may have been the head that blocked the others
            raise
        return Lease(self, nbytes)

    def _give_back(self, nbytes: int) -> None:
        with self._lock:
            self.held -= nbytes
        self._grant()
        if self.on_release is not None:
            self.on_release(nbytes)

    def _grant(self) -> None:
        """Wake the waiters that now fit, in order."""
        woken = []
        with self._lock:
            while self._waiters and self.held + self._waiters[0][0] <= self.capacity:
                nbytes, future, loop = self._waiters.popleft()
                self.held += nbytes
                woken.append((nbytes, future, loop))
        for nbytes, future, loop in woken:
            loop.call_soon_threadsafe(self._wake, nbytes, future)

    def _wake(self, nbytes: int, future: asyncio.Future) -> None:
        if future.cancelled():  # gave up between the grant and now: the bytes go back
            self._give_back(nbytes)
        else:
            future.set_result(None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ImageWork:
    """A worker's image pool (decode, resize, render, encode; ``threads`` at a time) and its two memory budgets. A
    request that waits longer than ``wait_s`` for memory is shed with a 503, like a request queued too long for
    its model."""

    def __init__(self, *, threads: int = 0, body_bytes: int, work_bytes: int, wait_s: float = 10.0) -> None:
        self.threads = threads or min(8, _cores())
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="cnnserve-image")
        for _ in range(self.threads):  # start the threads now: starting one waits for the GIL, during a request
            self._pool.submit(time.sleep, 0.05)
        self.bodies = MemoryBudget(body_bytes, "bodies", on_release=self._released)
        self.work = MemoryBudget(work_bytes, "work", on_release=self._released)
        self.wait_s = wait_s
        self._trim_pending = False

    def _released(self, nbytes: int) -> None:
        """Once large reservations have ended and little is held, give the memory their requests freed back to
        the system (in the pool: the loop never waits for it)."""
        if nbytes >= TRIM_AFTER:
            self._trim_pending = True
        if self._trim_pending and self.work.held + self.bodies.held < TRIM_AFTER:
            self._trim_pending = False
            self._pool.submit(trim_malloc)

    async def hold(self, budget: MemoryBudget, nbytes: int, stack: AsyncExitStack) -> Lease:
        """Reserve ``nbytes`` of ``budget`` until ``stack`` closes (the request's end); 503 after ``wait_s``."""
        lease = budget.try_reserve(nbytes)
        if lease is None:
            try:
                lease = await asyncio.wait_for(budget.reserve(nbytes), self.wait_s)
            except asyncio.TimeoutError:
                raise ModelUnavailable(
                    f"this worker is busy with large requests (waited {self.wait_s:g} s for {megabytes(nbytes)} "
                    f"of {budget.name} memory); retry later"
                ) from None
        return await stack.enter_async_context(lease)

    async def run(self, fn: Callable[..., T], *args: Any, lease: Lease | None = None) -> T:
        """``fn(*args)`` in the pool. ``lease`` (the memory the job uses) is kept until the job has finished, even
        if the request is cancelled while it runs."""
        job = self._pool.submit(fn, *args)
        if lease is not None:
            lease.pin(job)
        return await asyncio.wrap_future(job)

    async def run_leasing(self, fn: Callable[..., tuple[Lease | None, T]], *args: Any) -> tuple[Lease | None, T]:
        """Like :meth:`run` for a job that may take a lease itself (``try_reserve`` in the thread): if the request
        is cancelled before it sees the result, the lease is given back when the job ends."""
        job = self._pool.submit(fn, *args)
        try:
            return await asyncio.shield(asyncio.wrap_future(job))
        except asyncio.CancelledError:
            job.add_done_callback(_release_abandoned)
            raise

    async def decode(
        self,
        data: bytes,
        pre: Preprocess,
        *,
        max_pixels: int,
        draft_for: Preprocess | None,
        draft_ratio: float,
        answer_bytes_per_pixel: int,
        stack: AsyncExitStack,
    ) -> Decoded:
        """An upload → the decoded, reduced upload and the model's uint8 input, with the work's memory reserved
        (held in ``stack`` until the request ends): its peak is computed from the header, before decoding, as
        :func:`work_bytes`. Small uploads on the loop; the others open, reserve and decode in one trip to the pool
        when the budget has room, and wait for it on the loop when it has not."""
        opening = {"max_pixels": max_pixels, "draft_for": draft_for, "draft_ratio": draft_ratio}
        if len(data) <= INLINE_BYTES:
            img = open_image(data, **opening)
            if img.width * img.height <= INLINE_PIXELS:
                lease = await self.hold(self.work, work_bytes(img, pre, answer_bytes_per_pixel), stack)
                return Decoded(lease, *_decode(img, pre))
            lease, result = await self.run_leasing(self._reserve_and_decode, img, pre, answer_bytes_per_pixel)
        else:
            lease, result = await self.run_leasing(self._open_and_decode, data, pre, opening, answer_bytes_per_pixel)
        if lease is None:  # no room: wait for it here, then decode
            img, cost = result
            lease = await self.hold(self.work, cost, stack)
            return Decoded(lease, *await self.run(_decode, img, pre, lease=lease))
        await stack.enter_async_context(lease)
        return Decoded(lease, *result)

    def _open_and_decode(
        self, data: bytes, pre: Preprocess, opening: dict[str, Any], per_pixel: int
    ) -> tuple[Lease | None, Any]:
        return self._reserve_and_decode(open_image(data, **opening), pre, per_pixel)

    def _reserve_and_decode(self, img: Image.Image, pre: Preprocess, per_pixel: int) -> tuple[Lease | None, Any]:
        cost = work_bytes(img, pre, per_pixel)
        lease = self.work.try_reserve(cost)
        if lease is None:
            return None, (img, cost)
        try:
            return lease, _decode(img, pre)
        except BaseException:
            lease.release()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Decoded:
    """A decoded upload: the reservation it holds, the reduced upload, the model's uint8 input, and the seconds
    decoding and pre-processing took (for the stage metrics)."""

    lease: Lease
    upload: Image.Image
    pixels: np.ndarray
    decode_seconds: float
    preprocess_seconds: float


def work_bytes(img: Image.Image, pre: Preprocess, answer_bytes_per_pixel: int) -> int:
    """The peak memory of an image request, from its header: decoding and reducing (:func:`decode_bytes`),
    pre-processing (:func:`preprocess_bytes`) and the answer (the task's bytes per upload pixel)."""
    pixels = img.width * img.height
    return decode_bytes(img) + preprocess_bytes(img.size, pre) + answer_bytes_per_pixel * pixels


def _decode(img: Image.Image, pre: Preprocess) -> tuple[Image.Image, np.ndarray, float, float]:
    start = time.perf_counter()
    upload = load_image(img, reduce=True, background=pre.background)
    decoded = time.perf_counter()
    pixels = preprocess_uint8(upload, pre)
    return upload, pixels, decoded - start, time.perf_counter() - decoded


def _release_abandoned(job: Future) -> None:
    if job.cancelled() or job.exception() is not None:
        return
    lease = job.result()[0]
    if lease is not None:
        lease.release()
