"""Loading the served set: every configured model opened, its batch policy resolved once, its sessions planned
and warmed — the one place the service turns settings into runnable models."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import onnxruntime as ort

from ..settings import Settings
from ..store import StoreEntry, served_entries
from .model import ExecutionPlan, ModelInfo, OnnxModel, load_model
from .policy import load_family_defaults
from .sessions import select_providers
from .tuning import policy_for_model

__all__ = ["load_served_models", "plan_model"]

logger = logging.getLogger("cnnserve.runtime")


def plan_model(model: OnnxModel, settings: Settings, family_defaults: list | None = None) -> None:
    """Resolve the model's batch policy, give it the sessions that policy asks for, warm every shape."""
    if not model.info.ready:
        return
    policy = policy_for_model(model, settings, family_defaults=family_defaults)
    model.info = model.info.model_copy(update={"batching": policy})
    if policy.buckets is not None:
        cuda_graph = settings.cuda_graph and model.info.on_cuda and not model.contract.extra_inputs
        if settings.cuda_graph and not cuda_graph:
            logger.warning(
                "model %s: CUDA graphs need CUDA and no scalar graph inputs; running without", model.info.name
            )
        sessions = max(1, policy.sessions // len(policy.buckets))
        model.set_plan(ExecutionPlan(tuple(policy.buckets), sessions=sessions, cuda_graph=cuda_graph))
    model.warm_up()


def load_served_models(settings: Settings) -> dict[str, OnnxModel]:
    """The configured store tags (or every cnnserve model in the store), loaded; a tag that is missing or broken
    becomes a not-ready model with the reason, and the others serve."""
    providers = select_providers(settings.providers, ort.get_available_providers())
    entries = served_entries(settings.models)
    if not entries:
        logger.warning("no models to serve: the store has none; run `cnnserve export --defaults`")

    def load(entry: StoreEntry) -> OnnxModel:
        if entry.path is None:  # a tag not in the store (a typo in CNNSERVE_MODELS?) or a broken entry
            logger.error("model %s is not served: %s", entry.name, entry.error)
            return OnnxModel(ModelInfo(name=entry.name, error=entry.error), None)
        return load_model(
            entry.name,
            entry.path,
            providers=providers,
            version=entry.tag.partition(":")[2],
            intra_op_threads=settings.intra_op_threads,
            device_id=settings.device_id,
            io_binding=settings.io_binding,
            # named providers or a named device must be what serves, not a silent CPU fallback
            strict_providers=bool(settings.providers) or "device_id" in settings.model_fields_set,
            cuda_graph=settings.cuda_graph,
        )

    # Opening is mostly file I/O and graph optimisation in C++ (the GIL is released): threads overlap it.
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(entries)))) as pool:
        models = list(pool.map(load, entries))
    # Then one model at a time (a measured curve must not share the device with another model's).
    defaults = load_family_defaults()
    for model in models:
        plan_model(model, settings, defaults)
    return {model.info.name: model for model in models}
