"""The Open Inference Protocol (KServe v2 / Triton) once, for both of its transports: HTTP/REST (:mod:`.v2`) and
gRPC (:mod:`.grpc_server`). Each transport only turns its wire format into the plain values here and back.

* **Inference** runs the ONNX graph as exported: the caller sends the graph's own input tensor (float32
  ``[N, C, H, W]`` in [0, 1], or uint8 0–255 for a ``--input-dtype uint8`` export) and gets its outputs, what Triton
  answers for the same file. The images go through the model's runner like ``/classify``'s
  (:meth:`~service.runtime.runner.Runner.infer`), so concurrent v2 clients, and v2 and ``/classify`` clients,
  share batches.
* **Classification extension**: an output asked for with ``classification = k`` comes back as BYTES ``[N, k]``,
  ``"score:index:label"`` best first, ranked by ``/classify``'s own :func:`~service.tasks.classify.rank_classes`.
* **Parameters** this server does not implement (sequence ids, priority, timeouts, shared memory, custom ones)
  are refused with a 400 naming them: a request that asked for something must not get a silently different answer.
* **NaN and infinity** in a float input are refused with a 400 (Triton passes them to the model): no image holds
  them, and the answer would be NaN probabilities. ``perf_analyzer``'s default random data for FP32 inputs is
  random bytes, which hold NaN; the README shows ``--input-data zero`` (or a uint8 export, where any byte is a
  pixel).
* **Limits** (:func:`request_limits`): a request holds at most a full batch of the model's own input (its batch
  limit × channels × input size; for models of any size, the size recorded at export), and a body or message at most
  that in binary FP32 plus 1 MB (``CNNSERVE_V2_MAX_BODY_MB`` sets it by hand); every dimension is at least 1, and a
  model of any size takes only sizes it can (U-Net: multiples of its ``size_multiple``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import __version__
from ..catalog import Catalog
from ..contract import TensorInfo
from ..errors import BadInput, ModelNotFound, PayloadTooLarge
from ..runtime.runner import Runner
from ..settings import Settings
from ..tasks.classify import rank_classes
from ..triton import label_output, served_config

__all__ = [
    "EXTENSIONS",
    "HEADER_SLACK",
    "Limits",
    "MAX_ELEMENTS",
    "MAX_MESSAGE_BYTES",
    "MODEL_VERSION",
    "ORT_TO_V2",
    "V2_DATATYPES",
    "Output",
    "Requested",
    "check_input",
    "check_parameters",
    "complete_feed",
    "find_runner",
    "infer",
    "model_config",
    "model_metadata",
    "repository_index",
    "request_limits",
    "serialize_bytes",
    "server_version",
    "tensor_metadata",
]

V2_DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_DTYPE_TO_V2 = {dtype: name for name, dtype in V2_DATATYPES.items()}
ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}
MAX_ELEMENTS = 64 * 3 * 1024 * 1024  # one request's input elements at most, whatever the model (64 images of 1024² RGB)
# The largest request either transport takes in at most (an HTTP body once inflated, a gRPC message); each model's
# own limit (request_limits) is usually far lower.
MAX_MESSAGE_BYTES = 256 * 2**20
HEADER_SLACK = 1_000_000  # the JSON around binary tensors (and a JSON request's own keys) in a model's body limit
MODEL_VERSION = "1"
# Triton's names for the protocol extensions implemented here (GET /v2, gRPC ServerMetadata).
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "statistics")


@dataclass(frozen=True)
class Limits:
    """What one inference request to a model may hold: its body's (or message's) bytes, its input elements."""

    body_bytes: int
    elements: int


def request_limits(info: Any, settings: Settings) -> Limits:
    """A full batch of the model's own input (see the module's docstring): its elements, and their bytes in binary
    FP32 plus :data:`HEADER_SLACK` as the body limit, unless ``CNNSERVE_V2_MAX_BODY_MB`` says otherwise."""
    contract = info.require_ready()
    batch = info.batching.max_batch_size if info.batching is not None else settings.max_batch_size
    elements = min(MAX_ELEMENTS, batch * contract.in_channels * contract.input_size[0] * contract.input_size[1])
    if settings.v2_max_body_mb > 0:
        body = int(settings.v2_max_body_mb * 1_000_000)
        return Limits(body, min(MAX_ELEMENTS, max(elements, (body - HEADER_SLACK) // 4)))
    return Limits(min(MAX_MESSAGE_BYTES, elements * 4 + HEADER_SLACK), elements)


@dataclass(frozen=True)
class Requested:
    """One output a request asked for: ``classification`` > 0 asks for the top classes instead of the tensor;
    ``binary`` (HTTP) for the binary tensor extension."""

    name: str
    classification: int = 0
    binary: bool = False


@dataclass(frozen=True)
class Output:
    """One output of an answer: a numeric array, or for BYTES an object array of ``bytes``."""

    name: str
    datatype: str
    data: np.ndarray


def server_version() -> str:
    """The package's version (``cnnserve.__version__``: also there in a bento, which has no installed wheel)."""
    return __version__


# --- models ---------------------------------------------------------------------------------------------------------


def find_runner(catalog: Catalog, name: str, model_version: str | None = None) -> Runner:
    """The served model (404 unknown model or version). ``""`` or None: the one version there is."""
    runner = catalog.get(name)
    if runner is None:
        raise ModelNotFound(f"unknown model {name!r}")
    if model_version and model_version not in (MODEL_VERSION, runner.info.version):
        raise ModelNotFound(f"model {name!r} has no version {model_version!r}; versions: {MODEL_VERSION}")
    return runner


def tensor_metadata(tensors: Sequence[TensorInfo]) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": ORT_TO_V2.get(t.type, t.type), "shape": list(t.dims)} for t in tensors]


def model_metadata(runner: Runner) -> dict[str, Any]:
    info = runner.info
    contract = info.require_ready()
    return {
        "name": info.name,
        "versions": [MODEL_VERSION],
        "platform": "onnxruntime_onnx",
        "inputs": tensor_metadata(info.inputs),
        "outputs": tensor_metadata(info.outputs),
        "parameters": {"task": info.task, "precision": contract.precision, "source": contract.weights},
    }


def model_config(settings: Settings, runner: Runner) -> dict[str, Any]:
    """Triton's JSON configuration of a served model (:func:`service.triton.served_config`)."""
    on_cuda = runner.info.on_cuda
    return served_config(runner.info, instances=settings.model_inflight_limit(on_cuda), device_id=settings.device_id)


def repository_index(catalog: Catalog, *, ready_only: bool = False) -> list[dict[str, str]]:
    """Triton's repository index: every configured model with its state (and why it is unavailable)."""
    index = []
    for info in catalog:
        if ready_only and not info.ready:
            continue
        entry = {"name": info.name, "version": MODEL_VERSION, "state": "READY" if info.ready else "UNAVAILABLE"}
        if not info.ready:
            entry["reason"] = info.error or "not loaded"
        index.append(entry)
    return index


# --- requests -------------------------------------------------------------------------------------------------------


def check_parameters(parameters: Any, implemented: Sequence[str], where: str) -> dict[str, Any]:
    """A request's (or one tensor's) ``parameters``; a 400 naming the first one this server does not implement."""
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise BadInput(f"{where}: parameters must be an object")
    for key, value in parameters.items():
        if not isinstance(value, (bool, int, float, str)):
            raise BadInput(f"{where}: parameter {key!r} must be a boolean, a number or a string")
    unknown = sorted(str(key) for key in parameters if key not in implemented)
    if unknown:
        known = ", ".join(implemented) or "none"
        names = ", ".join(repr(key) for key in unknown)
        verb = "is" if len(unknown) == 1 else "are"
        raise BadInput(
            f"{where}: parameter{'s' if len(unknown) > 1 else ''} {names} {verb} not implemented by this server "
            f"(implemented here: {known})"
        )
    return dict(parameters)


def check_input(runner: Runner, name: Any, datatype: Any, shape: Any) -> tuple[np.dtype, list[int]]:
    """One input's header against the graph: known name, the graph's datatype, a shape that fits its dims."""
    info = runner.info
    graph_inputs = {i.name: i for i in info.inputs}
    if not isinstance(name, str) or name not in graph_inputs:
        raise BadInput(f"unknown input {name!r}; model {info.name!r} takes {', '.join(graph_inputs)}")
    if datatype not in V2_DATATYPES:
        raise BadInput(f"input {name!r}: unknown datatype {datatype!r}")
    expected_type = ORT_TO_V2.get(graph_inputs[name].type)
    if datatype != expected_type:
        raise BadInput(f"input {name!r} must be {expected_type}, got {datatype}")
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadInput(f"input {name!r}: shape must be a list of non-negative integers")
    expected_shape = list(graph_inputs[name].dims)
    if len(shape) != len(expected_shape) or any(e not in (-1, d) for e, d in zip(expected_shape, shape, strict=True)):
        raise BadInput(f"input {name!r}: shape {list(shape)} does not fit the model's {expected_shape}")
    if expected_shape and expected_shape[0] == -1 and shape[0] == 0:
        raise BadInput(f"input {name!r}: the batch is empty")
    if 0 in shape:
        raise BadInput(f"input {name!r}: shape {list(shape)} has an empty dimension; every dimension is at least 1")
    contract = info.require_ready()
    dynamic = [i for i in (2, 3) if len(expected_shape) == 4 and expected_shape[i] == -1]
    step = contract.size_multiple
    if name == info.input_name and dynamic and step > 1 and any(shape[i] % step for i in dynamic):
        h, w = contract.input_size
        raise BadInput(
            f"input {name!r}: model {info.name!r} takes images whose height and width are multiples of {step} "
            f"(e.g. {h}×{w}), got {shape[2]}×{shape[3]}"
        )
    return V2_DATATYPES[datatype], list(shape)


def count_elements(shape: Sequence[int], total: int, limit: int = MAX_ELEMENTS) -> int:
    """Elements of one more input, added to the request's running ``total`` (413 past ``limit``: the model's
    :func:`request_limits`)."""
    total += math.prod(shape)
    if total > limit:
        raise PayloadTooLarge(
            f"the request holds more than {limit:,} input elements, a full batch of this model's input; send "
            "smaller batches"
        )
    return total


def complete_feed(runner: Runner, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every graph input present (scalar inputs default to the file's values), no NaN or infinity in any."""
    info = runner.info
    contract = info.require_ready()
    for name, array in feed.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise BadInput(
                f"input {name!r} holds NaN or infinite values; send finite pixels (perf_analyzer: "
                "--input-data zero or a data file, or serve the uint8-input export)"
            )
    missing = [i.name for i in info.inputs if i.name not in feed and i.name not in contract.extra_inputs]
    if missing:
        raise BadInput(f"missing input(s): {', '.join(missing)}")
    for name, default in contract.extra_inputs.items():
        feed.setdefault(name, np.asarray(default, dtype=np.float32))
    return feed


def requested_outputs(
    runner: Runner, requested: Sequence[Requested] | None, *, binary: bool = False
) -> list[Requested]:
    """The outputs to answer (every graph output when none were named, ``binary`` as the request's default); 400
    for an unknown one or a bad k."""
    names = runner.info.output_names
    if not requested:
        return [Requested(name, binary=binary) for name in names]
    for item in requested:
        if item.name not in names:
            raise BadInput(f"unknown output {item.name!r}; outputs must name graph outputs: {', '.join(names)}")
        k = item.classification
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise BadInput(f"output {item.name!r}: classification must be a positive integer, got {k!r}")
    return list(requested)


# --- running --------------------------------------------------------------------------------------------------------


async def _run(runner: Runner, feed: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    """The named outputs for a feed, batched with concurrent requests when the feed is what the batcher takes: the
    images tensor in the file's own pixel type plus scalar inputs (anything else runs the graph as it comes)."""
    info = runner.info
    contract = info.require_ready()
    images = feed[info.input_name]
    pixels = np.dtype(np.uint8) if contract.input_dtype == "uint8" else np.dtype(np.float32)
    scalars = {name: value for name, value in feed.items() if name != info.input_name}
    if (
        images.dtype == pixels
        and images.ndim == 4
        and all(name in contract.extra_inputs and value.ndim == 0 for name, value in scalars.items())
    ):
        outputs = await runner.infer(images, {name: float(value) for name, value in scalars.items()})
        return [outputs[name] for name in names]
    return await runner.run_graph(names, feed)


def _classes(runner: Runner, name: str, values: np.ndarray, k: int) -> np.ndarray:
    """Triton's classification of one output: per batch item (the whole tensor when the output has no batch axis),
    the top k as ``b"score:index:label"``, best first."""
    info = runner.info
    tensor = next(t for t in info.outputs if t.name == name)
    if values.dtype.kind not in "fiu":
        raise BadInput(f"output {name!r} is not numeric; it cannot be classified")
    labels = info.require_ready().labels
    if name != label_output(info.outputs, labels):
        labels = None
    batched = bool(tensor.dims) and tensor.dims[0] == -1 and values.ndim >= 1
    rows = values.reshape(len(values), -1) if batched else values.reshape(1, -1)
    k = min(k, rows.shape[1])
    ranked = [[f"{p.score:f}:{p.index}:{p.label}".encode() for p in rank_classes(row, k, labels)] for row in rows]
    out = np.empty((len(rows), k), dtype=object)
    out[:] = ranked
    return out if batched else out[0]


async def infer(runner: Runner, feed: dict[str, np.ndarray], requested: Sequence[Requested]) -> list[Output]:
    """Run a checked feed (:func:`complete_feed`) and answer the requested outputs."""
    values = await _run(runner, feed, [item.name for item in requested])
    outputs = []
    for item, value in zip(requested, values, strict=True):
        if item.classification:
            outputs.append(Output(item.name, "BYTES", _classes(runner, item.name, value, item.classification)))
        else:
            value = np.ascontiguousarray(value)
            outputs.append(Output(item.name, _DTYPE_TO_V2.get(value.dtype, "FP32"), value))
    return outputs


def serialize_bytes(data: np.ndarray) -> bytes:
    """A BYTES tensor on the wire (binary tensor extension, gRPC raw contents): each element, row-major, as a
    4-byte little-endian length and its bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in data.reshape(-1))
