"""The BentoML service: ONNX models from the store, run by onnxruntime, behind the contract's HTTP API.

``bentoml serve`` (see ``bentofile.yaml``) starts :class:`CNNServe`. BentoML owns the process: workers, the
model store, ``/livez``, ``/readyz``, ``/metrics``, ``/docs``. Sessions are created once in ``__init__`` (in
parallel, each warmed up once); a model whose file is missing or broken is reported not ready in ``/models`` and
answers 503 while the others serve. Inference goes through BentoML's adaptive batching dispatcher, one per model
(``service.batching``).

The image endpoints are routes of a mounted Starlette app (``service.http``) rather than ``@bentoml.api``
methods, because BentoML 1.4's request parsing answers 500 to some malformed multipart bodies, cannot take a
base64 image in JSON, and wraps 4xx bodies in a list; the contract promises ``{"error": ...}`` and never a 5xx
for bad input. The routes stay thin: decode → validate → preprocess (shared with the batch scorer) → batched
inference → answer.

No torch here: the serving image is torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import bentoml

with bentoml.importing():
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    from service.batching import ModelBatcher
    from service.errors import BadInput, ModelNotFound
    from service.http import routes_app
    from service.imaging import decode_image, preprocess
    from service.metrics import Metrics
    from service.runtime import LoadedModel, load_model, select_providers
    from service.schemas import ModelsResponse, ModelStatus, quality_of
    from service.settings import Settings, get_settings
    from service.store import StoreEntry, find_entry, list_entries

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
        model = load_model(entry.name, entry.path, providers=providers, intra_op_threads=settings.intra_op_threads)
        model.version = entry.tag.partition(":")[2]
        return model

    # Loading is mostly file I/O and graph optimisation in C++ (the GIL is released): threads overlap it.
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(entries)))) as pool:
        loaded = list(pool.map(load, entries))
    return {m.name: m for m in loaded}


@bentoml.service(name="cnnserve", traffic={"timeout": 60})
@bentoml.asgi_app(routes_app, path="/")
class CNNServe:
    def __init__(self) -> None:
        _configure_logging()
        self.settings = get_settings()
        self.metrics = Metrics()
        self.models = _load_all(self.settings)
        self.batchers = {
            name: ModelBatcher(
                model,
                max_batch_size=self.settings.max_batch_size,
                max_latency_ms=self.settings.max_latency_ms,
                observe=self._batch_observer(name),
            )
            for name, model in self.models.items()
            if model.ready
        }

    def _batch_observer(self, name: str) -> Callable[[int, float], None]:
        def observe(size: int, seconds: float) -> None:
            self.metrics.batch_size.labels(model=name).observe(size)
            self.metrics.batch_seconds.labels(model=name).observe(seconds)

        return observe

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
        the model input tensor), batched with other requests."""
        with self.metrics.stage(model.name, "decode"):
            img = decode_image(data, max_pixels=self.settings.max_pixels)
        with self.metrics.stage(model.name, "preprocess"):
            tensor = preprocess(img, model.preprocess)
        with self.metrics.stage(model.name, "inference"):
            outputs = await self.batchers[model.name].infer(tensor, **extra)
        return outputs, img, tensor

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
                )
                for m in self.models.values()
            ]
        )
