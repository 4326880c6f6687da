"""A loaded model's batch policy: measured here (``cnnserve tune``, ``CNNSERVE_TUNE_AT_START``) or resolved from
what was measured before (:mod:`.policy` has the rules), with the settings that bear on it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..settings import Settings
from .model import OnnxModel
from .policy import (
    BatchPolicy,
    ProfileStore,
    default_profile_path,
    device_identity,
    load_family_defaults,
    measure_curve,
    profile_entry,
    random_batch,
    resolve_batch_policy,
    with_buckets,
)
from .sessions import SessionConfig, file_digest

__all__ = ["model_identity", "policy_for_model", "tune_model"]

logger = logging.getLogger("cnnserve.batching")


def model_identity(model: OnnxModel, settings: Settings) -> dict[str, Any]:
    provider = model.info.providers[0] if model.info.providers else "CPUExecutionProvider"
    threads = SessionConfig.from_settings(settings).threads()[0]
    return device_identity(provider, threads=threads, device_id=model.device_id)


def tune_model(
    model: OnnxModel,
    settings: Settings,
    *,
    profiles: ProfileStore | None = None,
    budget_ms: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure a loaded model's curve the way the service runs it (``model.run``: same session, same feed
    conversion, io-binding on CUDA) and store it for this file on this machine; returns the stored entry."""
    contract = model.contract
    budget_ms = budget_ms or settings.batch_budget_ms
    (_, shape), *others = model.info.row_shapes.items()
    sample = random_batch(shape)

    def run(batch: np.ndarray) -> object:  # further per-row inputs (an inpainting mask) as zeros
        return model.run(batch, rows={name: np.zeros((len(batch), *s), dtype=np.float32) for name, s in others})

    curve = measure_curve(run, sample, budget_ms=budget_ms, log=log)
    entry = profile_entry(
        sha256=file_digest(model.path),
        model=model.info.name,
        identity=model_identity(model, settings),
        curve=curve,
        budget_ms=budget_ms,
    )
    entry.update(family=contract.family, registered=contract.name, precision=contract.precision)
    (profiles or ProfileStore(_profile_path(settings))).save(entry)
    return entry


def _profile_path(settings: Settings) -> Path:
    return Path(settings.batch_profiles) if settings.batch_profiles else default_profile_path()


def policy_for_model(
    model: OnnxModel,
    settings: Settings,
    *,
    profiles: ProfileStore | None = None,
    family_defaults: list[dict[str, Any]] | None = None,
) -> BatchPolicy:
    """The batch policy the service uses for a loaded model (see :func:`resolve_batch_policy` and
    :func:`with_buckets`); with ``tune_at_start`` a model with no curve of its own here is measured first."""
    contract = model.contract
    profiles = profiles or ProfileStore(_profile_path(settings))
    family_defaults = load_family_defaults() if family_defaults is None else family_defaults
    identity = model_identity(model, settings)
    sha256 = file_digest(model.path) if model.path is not None and model.path.is_file() else None

    def resolve() -> BatchPolicy:
        return resolve_batch_policy(
            family=contract.family,
            name=contract.name,
            precision=contract.precision,
            sha256=sha256,
            identity=identity,
            setting=settings.batch_limit_setting(),
            budget_ms=settings.batch_budget_ms,
            tolerance=settings.batch_tolerance,
            max_latency_ms=settings.max_latency_ms,
            profiles=profiles,
            family_defaults=family_defaults,
        )

    policy = resolve()
    if settings.tune_at_start and policy.source in ("family default", "built-in"):
        logger.info("model %s: measuring its batch curve (CNNSERVE_TUNE_AT_START)", model.info.name)
        tune_model(model, settings, profiles=profiles)
        policy = resolve()
    on_cuda = model.info.on_cuda
    policy = with_buckets(
        policy, on_cuda=on_cuda, setting=settings.batch_buckets, inflight=settings.model_inflight_limit(on_cuda)
    )
    logger.info(
        "model %s: batch limit %d (%s%s), %s, shed after %.0f ms",
        model.info.name,
        policy.max_batch_size,
        policy.source,
        f", measured on {policy.measured_on}" if policy.measured_on else "",
        f"buckets {policy.buckets} × {policy.sessions // len(policy.buckets)} sessions"
        if policy.buckets
        else "one session, any batch",
        policy.shed_after_ms,
    )
    return policy
