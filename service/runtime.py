"""onnxruntime sessions for exported models: provider choice, the file's own contract, and per-model health.

A :class:`LoadedModel` is built from an ONNX file alone: the ``cnnserve.spec`` metadata tells it the task,
input size, channels, labels and weights' source, so nothing here hard-codes an input name or size. A file that
fails to load gives a model that is *not ready* with the reason, instead of an exception that would take the
other models down with it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .errors import ModelUnavailable
from .imaging import Preprocess

__all__ = ["LoadedModel", "select_providers", "load_model", "PROVIDER_NAMES", "cuda_driver_present"]

logger = logging.getLogger("cnnserve.runtime")

PROVIDER_NAMES = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def cuda_driver_present() -> bool:
    """onnxruntime-gpu lists CUDA as available even on a machine with no GPU; the driver library says the truth."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def select_providers(requested: list[str], available: list[str], *, has_cuda_driver: bool | None = None) -> list[str]:
    """Short names (``cuda``, ``cpu``) or full provider names → the onnxruntime providers to ask for, in order.

    With nothing requested: CUDA when onnxruntime has it and a driver is present, then CPU. CPU is always
    appended last so a model never ends up with no provider; a requested provider onnxruntime lacks is skipped
    with a warning (the session then reports what it really got).
    """
    if not requested:
        if has_cuda_driver is None:
            has_cuda_driver = cuda_driver_present()
        requested = ["cuda", "cpu"] if has_cuda_driver else ["cpu"]
    chosen: list[str] = []
    for item in requested:
        name = PROVIDER_NAMES.get(item.strip().lower(), item.strip())
        if name not in available:
            logger.warning("provider %s is not available in this onnxruntime build (%s)", item, ", ".join(available))
            continue
        if name not in chosen:
            chosen.append(name)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


@dataclass
class LoadedModel:
    """One served model: its session (``None`` when not ready), its contract and its health."""

    name: str
    path: Path | None
    version: str = ""  # the store version, when loaded from the store
    session: ort.InferenceSession | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    parity: float | None = None
    precision: str = "fp32"
    error: str | None = None
    load_seconds: float = 0.0
    providers: list[str] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.session is not None

    @property
    def task(self) -> str:
        return self.spec.get("task", "unknown")

    @property
    def labels(self) -> list[str] | None:
        return self.spec.get("labels")

    @property
    def num_classes(self) -> int:
        return int(self.spec.get("num_classes", len(self.labels or [])))

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_spec(self.spec)

    @property
    def source(self) -> str:
        return self.spec.get("weights", "unknown")

    @property
    def input_name(self) -> str:
        assert self.session is not None
        return self.session.get_inputs()[0].name

    def require_ready(self) -> ort.InferenceSession:
        if self.session is None:
            raise ModelUnavailable(f"model {self.name!r} is not ready: {self.error}")
        return self.session

    def run(self, images: np.ndarray, **extra: float) -> dict[str, np.ndarray]:
        """A batch ``[N, C, H, W]`` float32 in [0, 1] (plus scalar graph inputs such as ``score_threshold``,
        defaulting to the values recorded at export) → every graph output by name."""
        session = self.require_ready()
        feed = {self.input_name: np.ascontiguousarray(images, dtype=np.float32)}
        for name, default in self.spec.get("extra_inputs", {}).items():
            feed[name] = np.asarray(extra.get(name, default), dtype=np.float32)
        outputs = session.run(None, feed)
        return {meta.name: value for meta, value in zip(session.get_outputs(), outputs, strict=True)}


def read_metadata(session: ort.InferenceSession) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def load_model(
    name: str,
    path: Path | None,
    *,
    providers: list[str],
    intra_op_threads: int = 0,
    warm_up: bool = True,
) -> LoadedModel:
    """Load one ONNX file; never raises for a bad file — the model comes back not ready, with the reason."""
    model = LoadedModel(name=name, path=path)
    start = time.perf_counter()
    try:
        if path is None or not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        meta = read_metadata(session)
        if "cnnserve.spec" not in meta:
            raise ValueError("the ONNX file has no cnnserve.spec metadata; export it with `cnnserve export`")
        model.spec = json.loads(meta["cnnserve.spec"])
        model.parity = float(meta["cnnserve.parity"]) if "cnnserve.parity" in meta else None
        model.precision = meta.get("cnnserve.precision", "fp32")
        model.extra = {k: v for k, v in meta.items() if k not in ("cnnserve.spec", "cnnserve.parity")}
        model.session = session
        model.providers = list(session.get_providers())
        if warm_up:
            pre = model.preprocess
            model.run(np.zeros((1, pre.in_channels, *pre.input_size), dtype=np.float32))
    except Exception as exc:  # one broken file must not stop the others: record why and serve the rest
        model.session = None
        model.error = f"{type(exc).__name__}: {exc}"
        logger.error("model %s could not be loaded from %s: %s", name, path, model.error)
    model.load_seconds = time.perf_counter() - start
    if model.ready:
        logger.info(
            "model %s ready: task=%s providers=%s load=%.2fs",
            name,
            model.task,
            ",".join(model.providers),
            model.load_seconds,
        )
    return model
