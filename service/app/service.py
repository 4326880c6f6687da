"""The BentoML service: exported ONNX models from the store, run by onnxruntime, behind the contract's HTTP API.

``bentoml serve`` (see ``bentofile.yaml``) starts :class:`CNNServe`. BentoML owns the processes: workers, the
model store, ``/livez``, ``/readyz``, ``/metrics``, ``/docs``. A model whose file is missing or broken is reported
not ready in ``/models`` and answers 503 while the others serve.

Two tiers, in BentoML's own terms (``CNNSERVE_TIERS``, default: two when a GPU is there):

- **API tier** (:class:`CNNServe`, ``CNNSERVE_API_WORKERS`` processes): HTTP, decoding, validation, resizing,
  answers — the CPU-heavy part of serving images, so it scales out over processes. Each model is a
  :class:`~service.runtime.runner.RemoteRunner`.
- **Model tier** (:class:`ModelTier`, one process, a ``bentoml.depends`` dependency): owns the onnxruntime
  sessions (on the GPU when there is one) and batches across *all* API workers, each model a
  :class:`~service.runtime.runner.LocalRunner`. BentoML starts and supervises it and answers its ``describe``
  call; the calls themselves go over its Unix socket (:mod:`service.runtime.tier`), which costs a fraction of
  BentoML's HTTP call per message, and fall back to BentoML's call if the socket cannot be reached.

With one tier, :class:`CNNServe` holds the sessions itself (``LocalRunner``): no hop between processes, the better
trade on a small CPU machine. Everything above the runners is the same code either way (``service.app.http``).
No torch here: the serving image is torch-free.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import tempfile
import time
import uuid
from typing import Any

import bentoml

from .json_errors import JSONErrors  # starlette only, which BentoML itself needs

with bentoml.importing():
    import aiohttp
    import anyio

    from ..catalog import Catalog
    from ..errors import ModelUnavailable
    from ..runtime.loading import load_served_models
    from ..runtime.model import ModelInfo
    from ..runtime.runner import LocalRunner, RemoteRunner
    from ..runtime.tier import TierClient, TierServer, answer_payload, read_reply
    from ..settings import Settings, get_settings
    from .grpc_server import start_grpc_server
    from .http import routes_app
    from .metrics import Metrics
    from .server import install
    from .work import ImageWork

logger = logging.getLogger("cnnserve.service")


def _configure_logging() -> None:
    """BentoML configures only its own loggers; ours (model loading, one access line per request) go to stderr."""
    root = logging.getLogger("cnnserve")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] [%(name)s] %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def _local_catalog(settings: Settings, metrics: Metrics) -> Catalog:
    """Every configured model loaded here, each behind a :class:`LocalRunner` (its batcher and run threads)."""
    runners = {}
    for name, model in load_served_models(settings).items():
        runners[name] = LocalRunner(
            model,
            max_inflight=settings.model_inflight_limit(model.info.on_cuda),
            observe=metrics.observe_batch(name),
            observe_queue=metrics.observe_queue(name),
        )
    return Catalog(runners)


_SETTINGS = get_settings()
TWO_TIER = _SETTINGS.two_tier()
# Metrics labelled by route template, a header-read timeout in uvicorn, memory given back after large requests
# (service/app/server.py); before BentoML builds the app and uvicorn its protocol, which happen after this import.
install(header_timeout_s=_SETTINGS.header_timeout_s)

# BentoML's own access log is off on both tiers: the model tier's calls are internal, and the API tier writes one
# richer JSON line per request itself (``cnnserve.access``); two lines per request cost CPU at thousands a second.
_NO_BENTOML_ACCESS_LOG = {"access": {"enabled": False}}


@bentoml.service(name="cnnserve-models", workers=1, traffic={"timeout": 60}, logging=_NO_BENTOML_ACCESS_LOG)
class ModelTier:
    """The model tier: one process, the onnxruntime sessions, batching across every API worker's calls.

    Its methods take and return pickled bytes rather than typed fields: BentoML would answer a typed dict of
    arrays as JSON (slow for [64, 1000] probabilities), and the bytes carry numpy buffers out of band."""

    def __init__(self) -> None:
        _configure_logging()
        self.settings = get_settings()
        self.metrics = Metrics()
        self.catalog = _local_catalog(self.settings, self.metrics)
        socket_path = os.path.join(tempfile.gettempdir(), f"cnnserve-tier-{os.getpid()}-{uuid.uuid4().hex[:8]}.sock")
        self.socket = TierServer(self.catalog.runners, socket_path, self.metrics.observe_transport)

    @bentoml.on_startup
    async def _listen(self) -> None:
        try:
            await self.socket.start()
        except OSError as exc:  # the API workers fall back to BentoML's call
            logger.warning("model tier: no Unix socket (%s); the API workers use BentoML's call", exc)
            self.socket.path = ""

    @bentoml.on_shutdown
    async def _close(self) -> None:
        await self.socket.close()

    @bentoml.api
    async def describe(self) -> dict[str, Any]:
        """Every configured model as the API tier needs it (``ModelInfo`` as JSON), and where the socket is."""
        return {"socket": self.socket.path, "models": [info.model_dump(mode="json") for info in self.catalog]}

    @bentoml.api
    async def infer(self, request: bytes) -> bytes:
        """The fallback call: pickled (model name, uint8 images [n, C, H, W], scalar inputs, further per-row
        inputs) → a reply."""
        return await answer_payload(self.catalog.runners, "infer", request)

    @bentoml.api
    async def run_graph(self, request: bytes) -> bytes:
        """The fallback call: pickled (model name, output names, feed) → a reply (the raw graph for ``/v2``)."""
        return await answer_payload(self.catalog.runners, "run_graph", request)


async def _wait_for_tier(tier: Any, timeout_s: float) -> dict[str, Any]:
    """The model tier's model list, once it has loaded them (it starts alongside the API workers)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with anyio.fail_after(10):
                # BentoML sets a dependency's client up (its endpoints, from the tier's schema) only once the
                # API worker has started; startup hooks run before that, so set it up here (idempotent).
                await tier.__aenter__()
                return await tier.describe()
        except Exception as exc:  # not listening yet, or still loading its models
            logger.debug("waiting for the model tier: %r", exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the model tier did not answer within {timeout_s:.0f} s: {exc}") from exc
            await anyio.sleep(0.5)


class _BentoTransport:
    """The fallback: an API worker's calls to the model tier over BentoML's client. BentoML pools connections and
    the model tier's server closes idle ones; a call that lands on a connection closed under it fails with a
    disconnect before the tier saw it. The calls are pure inference, so that one is retried once; a second failure
    is a 503."""

    def __init__(self, tier: Any) -> None:
        self.tier = tier

    async def call(self, method: str, name: str, *parts: Any) -> Any:
        payload = pickle.dumps((name, *parts), protocol=5)
        for attempt in (1, 2):
            try:
                return read_reply(await getattr(self.tier, method)(payload))
            except aiohttp.ClientConnectionError as exc:
                if attempt == 2:
                    raise ModelUnavailable(f"the model tier did not answer ({exc}); retry later") from exc
                logger.debug("model tier connection dropped, retrying: %r", exc)
        raise AssertionError("unreachable")


@bentoml.service(
    name="cnnserve",
    workers=_SETTINGS.api_worker_count(TWO_TIER),
    traffic={"timeout": 60},
    logging=_NO_BENTOML_ACCESS_LOG,
)
@bentoml.asgi_app(routes_app, path="/")
class CNNServe:
    """The API side: HTTP routes over a :class:`~service.catalog.Catalog` of runners (local with one tier, remote
    with two)."""

    if TWO_TIER:
        model_tier = bentoml.depends(ModelTier)

    def __init__(self) -> None:
        _configure_logging()
        self.settings = get_settings()
        self.metrics = Metrics()
        self.two_tier = TWO_TIER
        self.catalog = Catalog() if self.two_tier else _local_catalog(self.settings, self.metrics)
        self.grpc_server: Any = None
        self.work = ImageWork(
            threads=self.settings.image_threads,
            body_bytes=int(self.settings.body_memory_mb * 1_000_000),
            work_bytes=int(self.settings.work_memory_mb * 1_000_000),
            wait_s=self.settings.max_latency_ms / 1000,
        )

    async def __is_ready__(self) -> bool:
        """BentoML's ``/readyz``: ready once at least one model is (``Catalog.readiness``, the rule
        ``/v2/health/ready`` uses too). With no model ready every request could only get a 503, so a load
        balancer must not send any; ``/models`` and the start-up log say why."""
        return self.catalog.readiness() is None

    @bentoml.on_startup
    async def _start(self) -> None:
        """In this order: the models (two tiers: from the model tier), then gRPC beside HTTP. Then everything
        loaded so far, which lives as long as the process, leaves the garbage collector's full passes: they
        otherwise walk it all, holding the GIL (and with it ``/livez``) for a quarter of a second and more."""
        await self._connect_model_tier()
        await self._start_grpc()
        gc.freeze()

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=5)

    async def _start_grpc(self) -> None:
        """The KServe v2 gRPC service on this worker's event loop (BentoML 1.4 cannot host a gRPC servicer for a
        ``@bentoml.service``: service/app/grpc_server.py). Several API workers share the port (SO_REUSEPORT)."""
        if not self.settings.grpc_port:
            return
        workers = self.settings.api_worker_count(self.two_tier)
        self.grpc_server = await start_grpc_server(
            self, self.settings.grpc_host, self.settings.grpc_port, reuse_port=workers > 1
        )

    async def _connect_model_tier(self) -> None:
        """Two tiers: learn the models from the model tier (async: the dependency's client needs the loop)."""
        if not self.two_tier:
            return
        described = await _wait_for_tier(self.model_tier, self.settings.tier_start_timeout_s)
        transport: Any = _BentoTransport(self.model_tier)
        if described["socket"]:
            client = TierClient(described["socket"], self.metrics.observe_transport)
            try:
                await client.connect()
                transport = client
            except ModelUnavailable as exc:
                logger.warning("%s; using BentoML's call instead", exc.message)
        # Gathering this worker's requests pays only in calls saved; the model tier forms the real batches.
        self.catalog = Catalog(
            {
                d["name"]: RemoteRunner(
                    ModelInfo.model_validate(d),
                    transport,
                    max_batch_size=self.settings.max_batch_size,
                    max_inflight=self.settings.api_inflight,
                )
                for d in described["models"]
            }
        )


# BentoML and Starlette answer a few errors themselves in plain text (``/readyz``'s 503, an unknown path, a method a
# route does not take, an exception that escaped); the contract's shape is {"error": ...}.
CNNServe.add_asgi_middleware(JSONErrors)
