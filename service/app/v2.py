"""Open Inference Protocol v2 (KServe / Triton HTTP/REST), so Triton and KServe clients talk to us unchanged.

The v2 ``infer`` runs the ONNX graph as exported — the caller sends the ``images`` tensor itself (float32
[N, C, H, W] in [0, 1]) and gets every graph output, exactly what Triton would answer for the same file. JSON
tensors are supported and so is the binary tensor data extension (``Inference-Header-Content-Length``), which
``tritonclient`` uses by default. Errors are ``{"error": "..."}`` with 400 (bad request), 404 (unknown model or
version) or 503 (model not ready).
"""

from __future__ import annotations

import json
import math
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from ..contract import TensorInfo
from ..errors import BadInput, ModelNotFound, ServeError
from ..runtime.model import ModelInfo
from ..runtime.runner import Runner
from .state import current

__all__ = ["router", "V2_DATATYPES", "ORT_TO_V2"]

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
HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_ELEMENTS = 64 * 3 * 1024 * 1024  # one request's input elements: 64 images of 1024² RGB
MODEL_VERSION = "1"

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])


def _error(exc: ServeError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


def _runner(name: str, model_version: str | None = None) -> Runner:
    runner = current().catalog.get(name)
    if runner is None:
        raise ModelNotFound(f"unknown model {name!r}")
    if model_version is not None and model_version not in (MODEL_VERSION, runner.info.version):
        raise ModelNotFound(f"model {name!r} has no version {model_version!r}; versions: {MODEL_VERSION}")
    return runner


def _tensor_meta(tensors: tuple[TensorInfo, ...]) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": ORT_TO_V2.get(t.type, t.type), "shape": list(t.dims)} for t in tensors]


@router.get("")
async def server_metadata() -> JSONResponse:
    try:
        server_version = version("cnnserve")
    except PackageNotFoundError:
        server_version = "unknown"
    return JSONResponse({"name": "cnnserve", "version": server_version, "extensions": ["binary_tensor_data"]})


@router.get("/health/live")
async def server_live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready")
async def server_ready() -> Response:
    """Ready when at least one model is: one broken model must not take the others out of a load balancer."""
    if current().catalog.any_ready:
        return Response(status_code=200)
    return JSONResponse({"error": "no model is ready; see GET /models"}, status_code=503)


async def _metadata(name: str, model_version: str | None) -> JSONResponse:
    try:
        info = _runner(name, model_version).info
        contract = info.require_ready()
    except ServeError as exc:
        return _error(exc)
    return JSONResponse(
        {
            "name": info.name,
            "versions": [MODEL_VERSION],
            "platform": "onnxruntime_onnx",
            "inputs": _tensor_meta(info.inputs),
            "outputs": _tensor_meta(info.outputs),
            "parameters": {"task": info.task, "precision": contract.precision, "source": contract.weights},
        }
    )


async def _ready(name: str, model_version: str | None) -> Response:
    try:
        _runner(name, model_version).info.require_ready()
    except ServeError as exc:
        return _error(exc)
    return Response(status_code=200)


def _decode_inputs(header: dict[str, Any], binary: bytes, info: ModelInfo) -> dict[str, np.ndarray]:
    contract = info.require_ready()
    graph_inputs = {i.name: i for i in info.inputs}
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadInput('"inputs" must be a non-empty list of tensors')
    feed: dict[str, np.ndarray] = {}
    offset = 0
    total = 0
    for item in raw_inputs:
        if not isinstance(item, dict):
            raise BadInput("each input must be an object with name, shape, datatype and data")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if name not in graph_inputs:
            raise BadInput(f"unknown input {name!r}; model {info.name!r} takes {', '.join(graph_inputs)}")
        if datatype not in V2_DATATYPES:
            raise BadInput(f"input {name!r}: unknown datatype {datatype!r}")
        expected_type = ORT_TO_V2.get(graph_inputs[name].type)
        if datatype != expected_type:
            raise BadInput(f"input {name!r} must be {expected_type}, got {datatype}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise BadInput(f"input {name!r}: shape must be a list of non-negative integers")
        expected_shape = list(graph_inputs[name].dims)
        if len(shape) != len(expected_shape) or any(
            e not in (-1, d) for e, d in zip(expected_shape, shape, strict=True)
        ):
            raise BadInput(f"input {name!r}: shape {shape} does not fit the model's {expected_shape}")
        count = math.prod(shape)
        total += count
        if total > MAX_ELEMENTS:
            raise BadInput(f"the request holds more than {MAX_ELEMENTS:,} input elements; send smaller batches")
        dtype = V2_DATATYPES[datatype]
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size != count * dtype.itemsize or offset + size > len(binary):
                raise BadInput(f"input {name!r}: binary_data_size does not match its shape and datatype")
            array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += size
        else:
            if "data" not in item:
                raise BadInput(f"input {name!r} has no data")
            try:
                array = np.asarray(item["data"], dtype=dtype)
            except (TypeError, ValueError):
                raise BadInput(f"input {name!r}: data is not a list of {datatype} values") from None
            if array.size != count:
                raise BadInput(f"input {name!r}: {array.size} values for shape {shape}")
            array = array.reshape(shape)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise BadInput(f"input {name!r} holds NaN or infinite values")
        feed[name] = array
    missing = [n for n in graph_inputs if n not in feed and n not in contract.extra_inputs]
    if missing:
        raise BadInput(f"missing input(s): {', '.join(missing)}")
    for name, default in contract.extra_inputs.items():
        feed.setdefault(name, np.asarray(default, dtype=np.float32))
    return feed


async def _infer(name: str, model_version: str | None, request: Request) -> Response:
    try:
        runner = _runner(name, model_version)
        info = runner.info
        info.require_ready()
        body = await request.body()
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is not None:
            if not header_length.isdigit() or int(header_length) > len(body):
                raise BadInput(f"{HEADER_LENGTH} does not fit the body")
            header_bytes, binary = body[: int(header_length)], body[int(header_length) :]
        else:
            header_bytes, binary = body, b""
        try:
            header = json.loads(header_bytes)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadInput("the inference request is not valid JSON") from None
        if not isinstance(header, dict):
            raise BadInput("the inference request must be a JSON object")
        feed = _decode_inputs(header, binary, info)
        names = info.output_names
        requested = header.get("outputs") or [{"name": n} for n in names]
        if not isinstance(requested, list) or any(
            not isinstance(o, dict) or o.get("name") not in names for o in requested
        ):
            raise BadInput(f"outputs must name graph outputs: {', '.join(names)}")
        results = await runner.run_graph([o["name"] for o in requested], feed)
    except ServeError as exc:
        return _error(exc)

    default_binary = bool((header.get("parameters") or {}).get("binary_data_output", False))
    outputs, chunks = [], []
    for spec, value in zip(requested, results, strict=True):
        value = np.ascontiguousarray(value)
        entry: dict[str, Any] = {
            "name": spec["name"],
            "datatype": ORT_TO_V2.get(f"tensor({_ort_name(value.dtype)})", "FP32"),
            "shape": list(value.shape),
        }
        if (spec.get("parameters") or {}).get("binary_data", default_binary):
            raw = value.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = value.reshape(-1).tolist()
        outputs.append(entry)
    answer = {"model_name": info.name, "model_version": MODEL_VERSION, "outputs": outputs}
    if "id" in header:
        answer["id"] = header["id"]
    if "parameters" in header:
        answer["parameters"] = header["parameters"]
    payload = json.dumps(answer, allow_nan=False).encode()
    if not chunks:
        return Response(payload, media_type="application/json")
    return Response(
        payload + b"".join(chunks),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(payload))},
    )


def _ort_name(dtype: np.dtype) -> str:
    return {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}.get(np.dtype(dtype), np.dtype(dtype).name)


@router.get("/models/{name}")
async def model_metadata(name: str) -> JSONResponse:
    return await _metadata(name, None)


@router.get("/models/{name}/versions/{model_version}")
async def model_version_metadata(name: str, model_version: str) -> JSONResponse:
    return await _metadata(name, model_version)


@router.get("/models/{name}/ready")
async def model_ready(name: str) -> Response:
    return await _ready(name, None)


@router.get("/models/{name}/versions/{model_version}/ready")
async def model_version_ready(name: str, model_version: str) -> Response:
    return await _ready(name, model_version)


@router.post("/models/{name}/infer")
async def infer(name: str, request: Request) -> Response:
    return await _infer(name, None, request)


@router.post("/models/{name}/versions/{model_version}/infer")
async def infer_version(name: str, model_version: str, request: Request) -> Response:
    return await _infer(name, model_version, request)
