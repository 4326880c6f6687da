"""The BentoML service: ONNX models from the store, run by onnxruntime, behind the contract's HTTP API.

``bentoml serve`` (see ``bentofile.yaml``) starts :class:`CNNServe`. BentoML owns the processes: workers, the
model store, ``/livez``, ``/readyz``, ``/metrics``, ``/docs``. A model whose file is missing or broken is reported
not ready in ``/models`` and answers 503 while the others serve.

Two tiers, in BentoML's own terms (``CNNSERVE_TIERS``, default: two when a GPU is there):

- **API tier** (:class:`CNNServe`, ``CNNSERVE_API_WORKERS`` processes): HTTP, decoding, validation, resizing,
  answers. This is the CPU-heavy part of serving images, so it scales out over processes.
- **Model tier** (:class:`ModelTier`, one process, a ``bentoml.depends`` dependency): owns the onnxruntime
  sessions (one per model, on the GPU when there is one) and batches across *all* API workers. Each API worker
  first groups its own concurrent requests (``service.batching``), so the model tier gets a few calls carrying
  many images; pixels travel as uint8 (a quarter of float32's bytes), pickled with out-of-band buffers over
  BentoML's Unix-socket transport.

With one tier, :class:`CNNServe` loads the sessions itself and batches in-process: no hop between processes, the
better trade on a 2-core machine. The request path is the same code either way: decode → preprocess (shared with
the batch scorer) → batched inference → answer.

The image endpoints are routes of a mounted Starlette app (``service.http``) rather than ``@bentoml.api``
methods, because BentoML 1.4's request parsing answers 500 to some malformed multipart bodies, cannot take a
base64 image in JSON, and wraps 4xx bodies in a list; the contract promises ``{"error": ...}`` and never a 5xx
for bad input.

No torch here: the serving image is torch-free.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bentoml

with bentoml.importing():
    import aiohttp
    import anyio
    import numpy as np
    import onnxruntime as ort
    from cnnserve.service.batch_tuning import limit_for_model, load_family_defaults
    from cnnserve.service.batching import ModelBatcher, RunBatch
    from cnnserve.service.errors import BadInput, ModelNotFound, ModelUnavailable, ServeError
    from cnnserve.service.http import routes_app
    from cnnserve.service.imaging import decode_image, preprocess_uint8
    from cnnserve.service.metrics import Metrics
    from cnnserve.service.runtime import LoadedModel, load_model, select_providers
    from cnnserve.service.schemas import Batching, ModelsResponse, ModelStatus, quality_of
    from cnnserve.service.settings import Settings, get_settings
    from cnnserve.service.store import StoreEntry, find_entry, list_entries
    from PIL import Image

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


def _resolve_entries(settings: Settings) -> list[StoreEntry]:
    """The configured tags, or every cnnserve model in the store; an unknown tag becomes a not-ready entry."""
    if not settings.models:
        return list_entries()
    entries = []
    for tag in settings.models:
        try:
            entries.append(find_entry(tag))
        except ModelNotFound as exc:
            entries.append(StoreEntry(tag, tag.split(":")[0], None, exc.message))
    return entries


def _load_all(settings: Settings) -> dict[str, LoadedModel]:
    providers = select_providers(settings.providers, ort.get_available_providers())
    entries = _resolve_entries(settings)
    if not entries:
        logger.warning("no models to serve: the store has none; run `cnnserve export --defaults`")

    def load(entry: StoreEntry) -> LoadedModel:
        if entry.path is None:
            return LoadedModel(name=entry.name, path=None, error=entry.error)
        model = load_model(
            entry.name,
            entry.path,
            providers=providers,
            intra_op_threads=settings.intra_op_threads,
            warm_up=False,
            device_id=settings.device_id,
            io_binding=settings.io_binding,
            # named providers or a named device must be what serves, not a silent CPU fallback
            strict_providers=bool(settings.providers) or "device_id" in settings.model_fields_set,
        )
        model.version = entry.tag.partition(":")[2]
        return model

    # Loading is mostly file I/O and graph optimisation in C++ (the GIL is released): threads overlap it.
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(entries)))) as pool:
        loaded = list(pool.map(load, entries))
    # Then one model at a time (a measured curve must not share the device with another model's): its batch
    # limit from measurements (service/batch_tuning.py), and a warm-up of every batch shape it will see — on CUDA
    # the powers of two up to the limit, since the batcher pads to those and cuDNN tunes per shape.
    defaults = load_family_defaults()
    for model in loaded:
        if model.ready:
            limit = limit_for_model(model, settings, family_defaults=defaults)
            model.batching = limit.to_json()
            model.warm_up(limit.warm_sizes if model.on_cuda else (1,))
    return {m.name: m for m in loaded}


def _batch_limit(model: LoadedModel, settings: Settings) -> tuple[int, int]:
    """(largest batch of one onnxruntime run, ms after which a queued request is shed) for a model."""
    if model.batching:
        return int(model.batching["max_batch_size"]), int(model.batching["shed_after_ms"])
    return settings.batch_limit_setting() or 16, settings.max_latency_ms


def _local_runner(model: LoadedModel, threads: int = 1) -> RunBatch:
    """Runs go to a few long-lived threads owned by this model (as many as batches may be in flight), not to a
    shared pool that starts and ends threads: onnxruntime's CUDA provider keeps per-thread state (streams, cuDNN
    and cuBLAS handles) that a new thread pays for again. onnxruntime releases the GIL while it runs, so the event
    loop keeps accepting requests meanwhile."""
    executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix=f"ort-{model.name}")

    async def run(batch: np.ndarray, extra: dict[str, float]) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, lambda: model.run(batch, **extra))

    return run


def _pack_error(exc: ServeError) -> bytes:
    return pickle.dumps(("error", exc.status, exc.message))


def _unpack(reply: bytes) -> Any:
    """A model-tier reply → its value, or the :class:`ServeError` it carried, raised here with the same status."""
    kind, *rest = pickle.loads(reply)  # noqa: S301 - our own model-tier process, over BentoML's Unix socket
    if kind == "error":
        status, message = rest
        raise ServeError(message, status=status)
    return rest[0]


def _batch_observer(metrics: Metrics, name: str) -> Callable[[int, float], None]:
    def observe(size: int, seconds: float) -> None:
        metrics.batch_size.labels(model=name).observe(size)
        metrics.batch_seconds.labels(model=name).observe(seconds)

    return observe


_SETTINGS = get_settings()
TWO_TIER = _SETTINGS.two_tier()


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
        self.models = _load_all(self.settings)
        self.batchers = {
            name: ModelBatcher(
                name,
                _local_runner(model, self.settings.model_inflight_limit(model.on_cuda)),
                max_batch_size=_batch_limit(model, self.settings)[0],
                max_latency_ms=_batch_limit(model, self.settings)[1],
                observe=_batch_observer(self.metrics, name),
                pad_batches=model.on_cuda,
                max_inflight=self.settings.model_inflight_limit(model.on_cuda),
            )
            for name, model in self.models.items()
            if model.ready
        }

    @bentoml.api
    async def describe(self) -> list[dict[str, Any]]:
        """Every configured model as the API tier needs it: spec, readiness, providers, graph inputs/outputs."""
        return [model.describe() for model in self.models.values()]

    @bentoml.api
    async def infer(self, request: bytes) -> bytes:
        """pickled (model name, uint8 images [n, C, H, W], scalar inputs) → pickled ("ok", outputs) or error."""
        name, images, extra = pickle.loads(request)  # noqa: S301 - only our API tier reaches this socket
        try:
            batcher = self.batchers.get(name)
            if batcher is None:
                raise ModelNotFound(f"model {name!r} is not ready in the model tier")
            outputs = await batcher.infer(images, **extra)
        except ServeError as exc:
            return _pack_error(exc)
        return pickle.dumps(("ok", outputs), protocol=5)

    @bentoml.api
    async def run_graph(self, request: bytes) -> bytes:
        """pickled (model name, output names, feed) → pickled ("ok", outputs): the raw graph for ``/v2``."""
        name, names, feed = pickle.loads(request)  # noqa: S301 - only our API tier reaches this socket
        try:
            model = self.models.get(name)
            if model is None:
                raise ModelNotFound(f"model {name!r} is not served here")
            session = model.require_ready()
            values = await anyio.to_thread.run_sync(lambda: session.run(names, feed))
        except ServeError as exc:
            return _pack_error(exc)
        return pickle.dumps(("ok", values), protocol=5)


class _ApiBase:
    """What both tiers' API side share: model lookup, the request path, ``/models``."""

    settings: Settings
    metrics: Metrics
    models: dict[str, LoadedModel]
    batchers: dict[str, ModelBatcher]

    def model_for(self, name: str | None, tasks: tuple[str, ...]) -> LoadedModel:
        """The named model (404 unknown, 503 not ready, 400 wrong task) or the first ready one of ``tasks``
        (in the order given: /segment prefers semantic models, then instance models)."""
        wanted = " or ".join(tasks)
        if not name:
            for task in tasks:
                for model in self.models.values():
                    if model.task == task and model.ready:
                        return model
            raise ModelNotFound(f"no {wanted} model is loaded; export one with `cnnserve export` and restart")
        model = self.models.get(name)
        if model is None:
            known = ", ".join(self.models) or "none"
            raise ModelNotFound(f"model {name!r} is not served here; served models: {known}")
        model.require_ready()
        if model.task not in tasks:
            raise BadInput(f"model {name!r} is a {model.task} model; this route needs a {wanted} model")
        return model

    async def predict(
        self, model: LoadedModel, data: bytes, **extra: float
    ) -> tuple[dict[str, np.ndarray], Image.Image, np.ndarray]:
        """Image bytes (+ scalar graph inputs such as thresholds) → (that image's graph outputs, the decoded upload,
        the model input as uint8 pixels ``[C, H, W]``), batched with other requests."""
        draft = model.preprocess if model.task == "classification" else None
        with self.metrics.stage(model.name, "decode"):
            img = decode_image(
                data, max_pixels=self.settings.max_pixels, draft_for=draft, draft_ratio=self.settings.jpeg_draft
            )
        with self.metrics.stage(model.name, "preprocess"):
            pixels = preprocess_uint8(img, model.preprocess)
        with self.metrics.stage(model.name, "inference"):
            outputs = await self.batchers[model.name].infer_one(pixels, **extra)
        return outputs, img, pixels

    async def run_graph(self, model: LoadedModel, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The raw graph (``/v2``): the named outputs for a feed of graph inputs, no batching."""
        session = model.require_ready()
        assert session is not None
        return await anyio.to_thread.run_sync(lambda: session.run(names, feed))

    def models_status(self) -> ModelsResponse:
        return ModelsResponse(
            models=[
                ModelStatus(
                    name=m.name,
                    task=m.task,
                    input_size=list(m.spec["input_size"]) if "input_size" in m.spec else None,
                    precision=m.precision,
                    source=m.source,
                    ready=m.ready,
                    providers=m.providers,
                    error=m.error,
                    parity=m.parity,
                    quality=quality_of(m.extra),
                    labels=len(m.labels) if m.labels else None,
                    batching=Batching(**m.batching) if m.batching else None,
                )
                for m in self.models.values()
            ]
        )


async def _wait_for_tier(tier: Any, timeout_s: float) -> list[dict[str, Any]]:
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


@bentoml.service(
    name="cnnserve",
    workers=_SETTINGS.api_worker_count(TWO_TIER),
    traffic={"timeout": 60},
    logging=_NO_BENTOML_ACCESS_LOG,
)
@bentoml.asgi_app(routes_app, path="/")
class CNNServe(_ApiBase):
    if TWO_TIER:
        model_tier = bentoml.depends(ModelTier)

    def __init__(self) -> None:
        _configure_logging()
        self.settings = get_settings()
        self.metrics = Metrics()
        self.two_tier = TWO_TIER
        self.models, self.batchers = {}, {}
        if not self.two_tier:
            self.models = _load_all(self.settings)
            runners = {
                name: _local_runner(model, self.settings.model_inflight_limit(model.on_cuda))
                for name, model in self.models.items()
            }
            limits = {name: _batch_limit(m, self.settings)[0] for name, m in self.models.items()}
            self._make_batchers(runners, limits)

    @bentoml.on_startup
    async def _connect_model_tier(self) -> None:
        """Two tiers: learn the models from the model tier (async: the dependency's client needs the loop)."""
        if not self.two_tier:
            return
        described = await _wait_for_tier(self.model_tier, self.settings.tier_start_timeout_s)
        self.models = {d["name"]: LoadedModel.from_description(d) for d in described}
        runners = {name: self._remote_runner(name) for name in self.models}
        # Gathering this worker's requests pays only in calls saved; the model tier forms the real batches.
        self._make_batchers(runners, {name: self.settings.max_batch_size for name in self.models})

    def _make_batchers(self, runners: dict[str, RunBatch], limits: dict[str, int]) -> None:
        self.batchers = {
            name: ModelBatcher(
                name,
                runners[name],
                max_batch_size=limits[name],
                max_latency_ms=_batch_limit(model, self.settings)[1],
                observe=None if self.two_tier else _batch_observer(self.metrics, name),
                pad_batches=model.on_cuda and not self.two_tier,
                max_inflight=self.settings.api_inflight
                if self.two_tier
                else self.settings.model_inflight_limit(model.on_cuda),
            )
            for name, model in self.models.items()
            if model.ready
        }

    async def _call_tier(self, method: str, payload: bytes) -> Any:
        """One call to the model tier. BentoML's client pools connections and the model tier's server closes idle
        ones; a call that lands on a connection closed under it fails with a disconnect before the tier saw it.
        The calls are pure inference, so that one is retried once; a second failure is a 503, not a 500."""
        for attempt in (1, 2):
            try:
                return _unpack(await getattr(self.model_tier, method)(payload))
            except aiohttp.ClientConnectionError as exc:
                if attempt == 2:
                    raise ModelUnavailable(f"the model tier did not answer ({exc}); retry later") from exc
                logger.debug("model tier connection dropped, retrying: %r", exc)

    def _remote_runner(self, name: str) -> RunBatch:
        async def run(batch: np.ndarray, extra: dict[str, float]) -> dict[str, np.ndarray]:
            return await self._call_tier("infer", pickle.dumps((name, batch, extra), protocol=5))

        return run

    async def run_graph(self, model: LoadedModel, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.two_tier:
            return await super().run_graph(model, names, feed)
        model.require_ready()
        return await self._call_tier("run_graph", pickle.dumps((model.name, names, feed), protocol=5))
