"""onnxruntime sessions for exported models: provider choice, the file's own contract, and per-model health.

A :class:`LoadedModel` is built from an ONNX file alone: the ``cnnserve.spec`` metadata tells it the task,
input size, channels, labels and weights' source, so nothing here hard-codes an input name or size. A file that
fails to load gives a model that is *not ready* with the reason, instead of an exception that would take the
other models down with it.
"""

from __future__ import annotations

import ctypes
import dataclasses
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
from .session_options import SessionConfig, create_session

__all__ = [
    "LoadedModel",
    "select_providers",
    "with_provider_options",
    "load_model",
    "PROVIDER_NAMES",
    "cuda_driver_present",
]

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


def with_provider_options(
    providers: list[str], *, device_id: int = 0, conv_algo_search: str = "HEURISTIC", tf32: bool = True
) -> list[str | tuple[str, dict[str, str]]]:
    """Provider names → what ``InferenceSession`` takes, with CUDA's options set on purpose.

    ``device_id``: one GPU per worker. ``cudnn_conv_algo_search=HEURISTIC``: measured on an H100
    (benchmarks/gpu/tune/cuda_options.json, ResNet-50 fp16) as fast as ``EXHAUSTIVE`` once warm (9,650 vs 9,696
    images/s at batch 64) and 3.6× faster than ``DEFAULT``; the first run of each new batch shape cost 130–200 ms
    with either, which the warm-up pays at start for every shape the (padding) batcher forms.
    ``use_tf32``: on by default like PyTorch's cuDNN convolutions; parity checks on GPU turn it off."""
    out: list[str | tuple[str, dict[str, str]]] = []
    for name in providers:
        if name == "CUDAExecutionProvider":
            out.append(
                (
                    name,
                    {
                        "device_id": str(device_id),
                        "cudnn_conv_algo_search": conv_algo_search,
                        "use_tf32": "1" if tf32 else "0",
                        "do_copy_in_default_stream": "1",
                    },
                )
            )
        else:
            out.append(name)
    return out


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
    session_cache: str = "off"  # the optimised-graph cache: "hit", "written" or "off" (session_options.py)
    # The graph's tensors, ``{"name", "type", "shape"}`` each (shape entries: int, or a string for dynamic axes).
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    io_binding: bool = False  # CUDA sessions run through io-binding (see _run_with_binding)
    device_id: int = 0
    remote_ready: bool = False  # a model served by the model tier: its readiness as that tier reported it
    batching: dict[str, Any] | None = None  # its batch limit and where it came from (service/batch_tuning.py)

    @property
    def ready(self) -> bool:
        return self.session is not None or self.remote_ready

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
        return self.inputs[0]["name"]

    def require_ready(self) -> ort.InferenceSession | None:
        """The session (``None`` for a model another process runs); 503 when the model is not ready."""
        if not self.ready:
            raise ModelUnavailable(f"model {self.name!r} is not ready: {self.error}")
        return self.session

    @property
    def input_dtype(self) -> np.dtype:
        """float32 [0, 1] by default; ``uint8`` (0–255) for a variant whose graph casts and scales itself."""
        return np.dtype(np.uint8) if self.spec.get("input_dtype") == "uint8" else np.dtype(np.float32)

    def feed_for(self, images: np.ndarray, extra: dict[str, float]) -> dict[str, np.ndarray]:
        """The graph's inputs for a batch given as uint8 (0–255) or float32 ([0, 1]) pixels.

        The service passes uint8 between its processes (4× fewer bytes) and converts only here, to what the file
        takes; a uint8-input variant gets the bytes untouched (its graph casts on the device)."""
        if images.dtype == np.uint8 and self.input_dtype == np.float32:
            images = images.astype(np.float32) / np.float32(255.0)
        elif images.dtype != self.input_dtype:
            if self.input_dtype == np.uint8:
                images = np.clip(np.rint(np.asarray(images, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
            else:
                images = images.astype(np.float32)
        feed = {self.input_name: np.ascontiguousarray(images)}
        for name, default in self.spec.get("extra_inputs", {}).items():
            feed[name] = np.asarray(extra.get(name, default), dtype=np.float32)
        return feed

    def run(self, images: np.ndarray, **extra: float) -> dict[str, np.ndarray]:
        """A batch ``[N, C, H, W]`` (uint8 0–255 or float32 in [0, 1]; plus scalar graph inputs such as
        ``score_threshold``, defaulting to the values recorded at export) → every graph output by name."""
        session = self.require_ready()
        feed = self.feed_for(images, extra)
        names = self.output_names
        if self.io_binding:
            values = _run_with_binding(session, feed, names, self.device_id)
        else:
            values = session.run(names, feed)
        return dict(zip(names, values, strict=True))

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.outputs]

    @property
    def on_cuda(self) -> bool:
        return bool(self.providers) and self.providers[0] == "CUDAExecutionProvider"

    def describe(self) -> dict[str, Any]:
        """Everything the API tier needs to pre- and post-process for this model, as plain JSON-able data."""
        return {
            "name": self.name,
            "version": self.version,
            "spec": self.spec,
            "parity": self.parity,
            "precision": self.precision,
            "error": self.error,
            "load_seconds": self.load_seconds,
            "providers": self.providers,
            "extra": self.extra,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "ready": self.ready,
            "batching": self.batching,
        }

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> LoadedModel:
        """The API tier's view of a model that another process runs (no session here)."""
        model = cls(name=d["name"], path=None)
        for key in ("version", "spec", "parity", "precision", "error", "load_seconds", "providers", "extra"):
            setattr(model, key, d[key])
        model.inputs, model.outputs = d["inputs"], d["outputs"]
        model.remote_ready = bool(d["ready"])
        model.batching = d.get("batching")
        return model

    def warm_up(self, sizes: tuple[int, ...] = (1,)) -> None:
        """One run per batch shape before the first request (CUDA: cuDNN picks its algorithms per shape, once).
        A model that cannot even run zeros is marked not ready with the reason."""
        if self.session is None:
            return
        pre = self.preprocess
        try:
            for size in sizes:
                self.run(np.zeros((size, pre.in_channels, *pre.input_size), dtype=np.uint8))
        except Exception as exc:
            self.session = None
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("model %s failed its warm-up run: %s", self.name, self.error)


def _run_with_binding(
    session: ort.InferenceSession, feed: dict[str, np.ndarray], names: list[str], device_id: int
) -> list[np.ndarray]:
    """CUDA: copy the inputs to the device once, let onnxruntime allocate the outputs there, copy them back once.

    Saves the per-call staging copies of ``session.run``; with a uint8-input variant the host-to-device copy is
    a quarter of float32's."""
    binding = session.io_binding()
    for name, value in feed.items():
        if value.ndim == 0:  # scalar graph inputs (thresholds) stay on the host
            binding.bind_cpu_input(name, value)
        else:
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", device_id))
    for name in names:
        binding.bind_output(name, "cuda", device_id)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


def _tensor_info(arg: Any) -> dict[str, Any]:
    return {"name": arg.name, "type": arg.type, "shape": list(arg.shape)}


def read_metadata(session: ort.InferenceSession) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def load_model(
    name: str,
    path: Path | None,
    *,
    providers: list[str],
    intra_op_threads: int = 0,
    warm_up: bool = True,
    warm_up_batches: tuple[int, ...] = (),
    io_binding: bool = True,
    device_id: int = 0,
    session_config: SessionConfig | None = None,
    strict_providers: bool = False,
) -> LoadedModel:
    """Load one ONNX file; never raises for a bad file — the model comes back not ready, with the reason.

    Sessions are built by :func:`service.session_options.create_session` with ``session_config`` (default: from
    the settings — threads per session matched to the cores and processes, the optimised-graph cache);
    ``intra_op_threads`` overrides its thread count.

    onnxruntime does not fail when the first provider cannot start (a ``device_id`` the machine does not have,
    missing cuDNN): it prints an "EP Error" and quietly builds a CPU session — a GPU service then answers at a
    hundredth of its speed and looks healthy. That is always logged as an error here; with ``strict_providers``
    (the user named the providers or the device) the model is not ready instead, with the reason."""
    model = LoadedModel(name=name, path=path)
    start = time.perf_counter()
    try:
        if path is None or not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist")
        if session_config is None:
            from .settings import get_settings

            session_config = SessionConfig.from_settings(get_settings())
        if intra_op_threads:
            session_config = dataclasses.replace(session_config, intra_op_threads=intra_op_threads)
        session, model.session_cache = create_session(
            path, with_provider_options(providers, device_id=device_id), session_config
        )
        meta = read_metadata(session)
        if "cnnserve.spec" not in meta:
            raise ValueError("the ONNX file has no cnnserve.spec metadata; export it with `cnnserve export`")
        model.spec = json.loads(meta["cnnserve.spec"])
        model.parity = float(meta["cnnserve.parity"]) if "cnnserve.parity" in meta else None
        model.precision = meta.get("cnnserve.precision", "fp32")
        model.extra = {k: v for k, v in meta.items() if k not in ("cnnserve.spec", "cnnserve.parity")}
        model.session = session
        model.providers = list(session.get_providers())
        wanted = providers[0] if providers else "CPUExecutionProvider"
        if model.providers[0] != wanted:
            message = (
                f"{wanted} was asked for (device {device_id}) but onnxruntime fell back to {model.providers[0]}; "
                "its log above says why (a device id this machine lacks, missing CUDA/cuDNN libraries)"
            )
            if strict_providers:
                raise RuntimeError(message)
            logger.error("model %s: %s", name, message)
        model.inputs = [_tensor_info(i) for i in session.get_inputs()]
        model.outputs = [_tensor_info(o) for o in session.get_outputs()]
        model.io_binding = io_binding and model.on_cuda
        model.device_id = device_id
    except Exception as exc:  # one broken file must not stop the others: record why and serve the rest
        model.session = None
        model.error = f"{type(exc).__name__}: {exc}"
        logger.error("model %s could not be loaded from %s: %s", name, path, model.error)
    if warm_up:
        model.warm_up(warm_up_batches or (1,))
    model.load_seconds = time.perf_counter() - start
    if model.ready:
        logger.info(
            "model %s ready: task=%s providers=%s load=%.2fs optimised-graph cache=%s",
            name,
            model.task,
            ",".join(model.providers),
            model.load_seconds,
            model.session_cache,
        )
    return model
