"""One exported file, loaded: its typed contract, its graph's tensors, and the onnxruntime sessions that run it.

:class:`ModelInfo` is what every part of the service knows of a served model — the same plain, typed data in the
process that runs it and in an API worker of the two-tier service that only asks for it. :class:`OnnxModel` adds
the sessions, in the one process that holds them.

**One input shape per CUDA session.** onnxruntime's CUDA convolutions (the cuDNN-frontend path) keep one plan per
Conv node and rebuild it whenever a run's input shape differs from the previous run's on that session: a session
that alternates between two batch sizes pays the plan build on every run (upstream microsoft/onnxruntime#23006).
So on CUDA a model runs on a few fixed batch *buckets* (:class:`ExecutionPlan`: e.g. 1, 8, 32, 128, chosen from its
measured curve by :func:`.policy.choose_buckets`), each with its own sessions — as many as runs may be in flight —
and a batch is padded up to the smallest bucket that holds it; the padded rows are cut from every output before
anyone sees them. Every bucket is warmed at start. On the CPU shapes cost nothing, so the plan there is explicit
too: one session, any batch, no padding.

A file that fails to load gives a model that is *not ready* with the reason, instead of an exception that would
take the other models down with it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict

from ..contract import ContractError, ModelContract, TensorInfo
from ..errors import ModelUnavailable
from .policy import BatchPolicy
from .sessions import SessionConfig, create_session, with_provider_options

__all__ = ["ExecutionPlan", "ModelInfo", "OnnxModel", "load_model", "read_metadata"]

logger = logging.getLogger("cnnserve.runtime")


class ModelInfo(BaseModel):
    """A served model as every tier sees it: contract, graph tensors, health, batch policy."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str = ""
    contract: ModelContract | None = None  # None when the file could not be read at all
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    providers: tuple[str, ...] = ()
    ready: bool = False
    error: str | None = None
    load_seconds: float = 0.0
    session_cache: str = "off"  # the optimised-graph cache: "hit", "written" or "off"
    batching: BatchPolicy | None = None

    @property
    def task(self) -> str:
        return self.contract.task if self.contract is not None else "unknown"

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def row_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every per-row graph input (the images first; an inpainting ``mask``; a generator's ``latent``) → its shape
        without the batch axis: the graph's own where static, the contract's input size where H and W are dynamic.
        What a warm-up or a measurement feeds."""
        contract = self.require_ready()
        shapes: dict[str, tuple[int, ...]] = {}
        for tensor in self.inputs:
            if tensor.name in contract.extra_inputs:
                continue  # a scalar (detection thresholds)
            dims = list(tensor.dims[1:])
            if len(dims) == 3 and (dims[1] < 0 or dims[2] < 0):
                dims[1:] = contract.input_size
            if dims and dims[0] < 0:
                dims[0] = contract.in_channels
            shapes[tensor.name] = tuple(dims)
        return shapes

    def zero_rows(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``n`` rows of zeros for every per-row input: (the first input as uint8, the others as float32)."""
        (_, shape), *others = self.row_shapes.items()
        return np.zeros((n, *shape), dtype=np.uint8), {k: np.zeros((n, *s), dtype=np.float32) for k, s in others}

    @property
    def on_cuda(self) -> bool:
        return bool(self.providers) and self.providers[0] == "CUDAExecutionProvider"

    def require_ready(self) -> ModelContract:
        """The contract of a ready model; 503 with the reason otherwise."""
        if not self.ready or self.contract is None:
            raise ModelUnavailable(f"model {self.name!r} is not ready: {self.error}")
        return self.contract


@dataclass(frozen=True)
class ExecutionPlan:
    """Which batch shapes a model's sessions run, and how many sessions each shape has.

    ``buckets=None``: one session takes any batch as it comes (the CPU plan). Otherwise every run is padded to the
    smallest bucket that holds it and runs on a session of that bucket only (``sessions`` per bucket, one per run
    that may be in flight), so no session ever sees a second shape."""

    buckets: tuple[int, ...] | None = None
    sessions: int = 1
    cuda_graph: bool = False

    def bucket_for(self, rows: int) -> int | None:
        if self.buckets is None:
            return None
        for bucket in self.buckets:
            if rows <= bucket:
                return bucket
        raise ValueError(f"a batch of {rows} is larger than the largest bucket ({self.buckets[-1]})")

    @property
    def session_count(self) -> int:
        return 1 if self.buckets is None else len(self.buckets) * self.sessions


def _pad(batch: np.ndarray, rows: int) -> np.ndarray:
    if len(batch) == rows:
        return batch
    out = np.zeros((rows, *batch.shape[1:]), dtype=batch.dtype)
    out[: len(batch)] = batch
    return out


class GraphBinding:
    """A CUDA-graph session's fixed buffers: the input lives at one device address for the session's life and the
    outputs too, as CUDA graph replay requires; a run copies the batch in, replays, and copies the outputs out."""

    def __init__(self, session: ort.InferenceSession, feed: dict[str, np.ndarray], names: list[str], device_id: int):
        self.session = session
        self.names = names
        self.binding = session.io_binding()
        self.inputs = {
            name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), "cuda", device_id)
            for name, value in feed.items()
        }
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        for name in names:
            self.binding.bind_output(name, "cuda", device_id)
        session.run_with_iobinding(self.binding)  # the capture run: allocates the outputs once
        self.outputs = self.binding.get_outputs()

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, value in feed.items():
            self.inputs[name].update_inplace(np.ascontiguousarray(value))
        self.session.run_with_iobinding(self.binding)
        return [value.numpy() for value in self.outputs]


class _Slots:
    """The sessions of one bucket; a run takes a free one and gives it back (a thread waits when all are busy)."""

    def __init__(self, sessions: list[Any]) -> None:
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for session in sessions:
            self._free.put(session)

    @contextmanager
    def take(self):
        session = self._free.get()
        try:
            yield session
        finally:
            self._free.put(session)


class OnnxModel:
    """A loaded file: :attr:`info` plus the sessions. :meth:`run` is thread-safe; it pads, runs and trims."""

    def __init__(
        self,
        info: ModelInfo,
        path: Path | None,
        *,
        make_session: Callable[[], Any] | None = None,
        plan: ExecutionPlan | None = None,
        io_binding: bool = False,
        device_id: int = 0,
    ) -> None:
        self.info = info
        self.path = path
        self.io_binding = io_binding
        self.device_id = device_id
        self._make_session = make_session
        self._plan = ExecutionPlan()
        self._slots: dict[int | None, _Slots] = {}
        self._graphs: dict[int, GraphBinding] = {}  # CUDA graphs: one fixed binding per session
        self._lock = threading.Lock()
        if make_session is not None:
            self.set_plan(plan or ExecutionPlan())

    # --- the plan ------------------------------------------------------------------------------------------------

    @property
    def plan(self) -> ExecutionPlan:
        return self._plan

    def set_plan(self, plan: ExecutionPlan, first: Any | None = None) -> None:
        """Build the sessions ``plan`` needs (``first``, an already open session, is used once)."""
        if self._make_session is None:
            raise ModelUnavailable(f"model {self.info.name!r} has no sessions here")
        spare = [first] if first is not None else []

        def session() -> Any:
            return spare.pop() if spare else self._make_session()

        if plan.buckets is None:
            slots = {None: _Slots([session()])}
        else:
            slots = {bucket: _Slots([session() for _ in range(plan.sessions)]) for bucket in plan.buckets}
        with self._lock:
            self._plan, self._slots, self._graphs = plan, slots, {}

    # --- running -------------------------------------------------------------------------------------------------

    @property
    def contract(self) -> ModelContract:
        return self.info.require_ready()

    def feed_for(
        self, images: np.ndarray, extra: Mapping[str, float], rows: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """The graph's inputs for a batch given as uint8 (0–255) or float32 ([0, 1]) pixels, its scalar inputs and
        its further per-row inputs (float32, by name).

        The service passes uint8 between its processes (4× fewer bytes) and converts only here, to what the file
        takes; a uint8-input variant gets the bytes untouched (its graph casts on the device)."""
        contract = self.contract
        wants = np.dtype(np.uint8) if contract.input_dtype == "uint8" else np.dtype(np.float32)
        if images.dtype == np.uint8 and wants == np.float32:
            images = images.astype(np.float32) / np.float32(255.0)
        elif images.dtype != wants:
            if wants == np.uint8:
                images = np.clip(np.rint(np.asarray(images, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
            else:
                images = images.astype(np.float32)
        feed = {self.info.input_name: np.ascontiguousarray(images)}
        for name, value in (rows or {}).items():
            feed[name] = np.ascontiguousarray(value, dtype=np.float32)
        for name, default in contract.extra_inputs.items():
            feed[name] = np.asarray(extra.get(name, default), dtype=np.float32)
        return feed

    def run(
        self,
        images: np.ndarray,
        extra: Mapping[str, float] | None = None,
        rows: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """A batch ``[N, C, H, W]`` (uint8 0–255 or float32 in [0, 1]; plus scalar graph inputs such as
        ``score_threshold``, defaulting to the values recorded at export; plus further per-row inputs such as an
        inpainting ``mask``) → every graph output by name, N rows."""
        names = self.info.output_names
        return dict(zip(names, self.run_graph(names, self.feed_for(images, extra or {}, rows)), strict=True))

    def run_graph(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The named outputs for a feed of graph inputs (``/v2`` sends the graph's own tensors). With buckets every
        per-row input is padded to the bucket (split first if larger than the largest) and every output is trimmed
        back to the batch's rows; scalar inputs (0-d) go as they are."""
        rows = len(feed[self.info.input_name])
        plan = self._plan
        if plan.buckets is not None and rows > plan.buckets[-1]:
            step = plan.buckets[-1]
            parts = [
                self.run_graph(names, {k: v[i : i + step] if v.ndim else v for k, v in feed.items()})
                for i in range(0, rows, step)
            ]
            return [np.concatenate(values) for values in zip(*parts, strict=True)]
        bucket = plan.bucket_for(rows)
        if bucket is not None:
            feed = {k: _pad(v, bucket) if v.ndim else v for k, v in feed.items()}
        with self._slots[bucket].take() as session:
            values = self._run_session(session, bucket, feed, names)
        return values if bucket is None else [value[:rows] for value in values]

    def _run_session(self, session: Any, bucket: int | None, feed: dict[str, np.ndarray], names: list[str]) -> list:
        if self._plan.cuda_graph and bucket is not None and names == self.info.output_names:
            graph = self._graphs.get(id(session))
            if graph is None:
                graph = self._graphs[id(session)] = GraphBinding(session, feed, names, self.device_id)
            return graph.run(feed)
        if self.io_binding:
            return _run_with_binding(session, feed, names, self.device_id)
        return session.run(names, feed)

    def warm_up(self) -> None:
        """One run per bucket (and per session of it) before the first request: CUDA builds its plans per shape,
        once. A model that cannot even run zeros is marked not ready with the reason."""
        if not self.info.ready:
            return
        try:
            for bucket in self._plan.buckets or (1,):
                images, rows = self.info.zero_rows(bucket)
                for _ in range(self._plan.sessions if self._plan.buckets else 1):  # each session builds its plans
                    self.run(images, rows=rows)
        except Exception as exc:
            self.fail(f"{type(exc).__name__}: {exc}")
            logger.error("model %s failed its warm-up run: %s", self.info.name, self.info.error)

    def fail(self, error: str) -> None:
        self.info = self.info.model_copy(update={"ready": False, "error": error})
        self._slots = {}

    def describe_plan(self) -> dict[str, Any]:
        return {
            "buckets": list(self._plan.buckets) if self._plan.buckets is not None else None,
            "sessions": self._plan.session_count,
            "cuda_graph": self._plan.cuda_graph,
        }


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


def _tensor_info(arg: Any) -> TensorInfo:
    return TensorInfo(name=arg.name, type=arg.type, shape=tuple(arg.shape))


def read_metadata(session: ort.InferenceSession) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def load_model(
    name: str,
    path: Path | None,
    *,
    providers: list[str],
    version: str = "",
    intra_op_threads: int = 0,
    io_binding: bool = True,
    device_id: int = 0,
    session_config: SessionConfig | None = None,
    strict_providers: bool = False,
    cuda_graph: bool = False,
) -> OnnxModel:
    """Open one ONNX file with one session (the CPU plan); never raises for a bad file — the model comes back not
    ready, with the reason. The caller sets the model's real plan (:meth:`OnnxModel.set_plan`) once its batch
    policy is known, then warms it up.

    onnxruntime does not fail when the first provider cannot start (a ``device_id`` the machine does not have,
    missing cuDNN): it prints an "EP Error" and quietly builds a CPU session — a GPU service then answers at a
    hundredth of its speed and looks healthy. That is always logged as an error here; with ``strict_providers``
    (the user named the providers or the device) the model is not ready instead, with the reason."""
    start = time.perf_counter()
    try:
        if path is None or not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist")
        if session_config is None:
            from ..settings import get_settings

            session_config = SessionConfig.from_settings(get_settings())
        if intra_op_threads:
            session_config = session_config.with_threads(intra_op_threads)
        options = with_provider_options(providers, device_id=device_id, cuda_graph=cuda_graph)

        def make_session() -> ort.InferenceSession:
            return create_session(path, options, session_config)[0]

        session, cache = create_session(path, options, session_config)
        contract = ModelContract.from_metadata(read_metadata(session))
        got = tuple(session.get_providers())
        wanted = providers[0] if providers else "CPUExecutionProvider"
        if got[0] != wanted:
            message = (
                f"{wanted} was asked for (device {device_id}) but onnxruntime fell back to {got[0]}; "
                "its log above says why (a device id this machine lacks, missing CUDA/cuDNN libraries)"
            )
            if strict_providers:
                raise RuntimeError(message)
            logger.error("model %s: %s", name, message)
        info = ModelInfo(
            name=name,
            version=version,
            contract=contract,
            inputs=tuple(_tensor_info(i) for i in session.get_inputs()),
            outputs=tuple(_tensor_info(o) for o in session.get_outputs()),
            providers=got,
            ready=True,
            session_cache=cache,
        )
        model = OnnxModel(info, path, io_binding=io_binding and info.on_cuda, device_id=device_id)
        model._make_session = make_session
        model.set_plan(ExecutionPlan(), first=session)
    except Exception as exc:  # one broken file must not stop the others: record why and serve the rest
        error = exc.message if isinstance(exc, ContractError) else f"{type(exc).__name__}: {exc}"
        logger.error("model %s could not be loaded from %s: %s", name, path, error)
        model = OnnxModel(ModelInfo(name=name, version=version, error=error), path)
    model.info = model.info.model_copy(update={"load_seconds": time.perf_counter() - start})
    if model.info.ready:
        logger.info(
            "model %s ready: task=%s providers=%s load=%.2fs optimised-graph cache=%s",
            name,
            model.info.task,
            ",".join(model.info.providers),
            model.info.load_seconds,
            model.info.session_cache,
        )
    return model
