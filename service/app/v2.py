"""Open Inference Protocol v2 over HTTP/REST (KServe / Triton), so Triton and KServe clients talk to us unchanged.

What the protocol means here — inference through the batcher, the classification extension, refused parameters,
NaN — lives in :mod:`.oip`, shared with gRPC; this module is the wire format. JSON tensors are supported and so is
the binary tensor data extension (``Inference-Header-Content-Length``), which ``tritonclient`` uses by default;
request bodies may be gzip- or deflate-compressed (``Content-Encoding``) and answers are compressed when the client
accepts it, as Triton does. Besides health, metadata and inference: the model configuration (Triton's JSON
``ModelConfig``, from :func:`service.triton.served_config`), statistics (:mod:`.statistics`) and the repository
index. Errors, unknown routes included, are ``{"error": "..."}`` with 400 (bad request), 404 (unknown model,
version or route), 405, 413 or 503 (model not ready).

Limits, each checked before the work it guards: the body against the model's limit (:func:`.oip.request_limits`)
from ``Content-Length`` before it is read, while it arrives and once inflated; its memory reserved in the worker's
budget (service.app.work); the JSON's depth and integers (:func:`.requests.parse_json`); every field's type
(:class:`InferRequest`, also the OpenAPI request body); shapes and elements (:mod:`.oip`); no bytes after the
declared binary tensors. Large JSON is parsed, converted and written in the worker's pool, off the event loop.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import traceback
import zlib
from contextlib import AsyncExitStack
from functools import partial
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from ..errors import BadInput, PayloadTooLarge, ServeError
from ..runtime.runner import Runner
from . import oip
from .requests import (
    body_cost,
    check_declared_length,
    counted,
    declared_length,
    drain_refused_body,
    megabytes,
    parse_json,
)
from .schemas import ErrorResponse
from .state import ServiceState, current
from .statistics import model_statistics
from .work import INLINE_JSON_BYTES

__all__ = ["router", "HEADER_LENGTH", "InferRequest"]

HEADER_LENGTH = "Inference-Header-Content-Length"
INFER_ROUTE = "/v2/models/{name}/infer"  # the `route` label of v2 inferences in cnnserve_requests_total

logger = logging.getLogger("cnnserve.v2")

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
_JSON_COST = 10  # bytes of memory per byte of a JSON tensor body while it is parsed (Python numbers, then numpy)
_CHUNK = 65536  # values converted or written at a time, between two chances for the event loop to run
_SMALL_BODY = 64 * 2**10  # the most a repository-index request body may hold


# --- the request's types: checked on every request, and the OpenAPI document's request body ---------------------

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"
]
Parameter = StrictBool | StrictInt | float | str


class InferInput(BaseModel):
    name: str
    shape: list[StrictInt] = Field(description="every dimension ≥ 1 (the first is the batch)")
    datatype: Datatype
    parameters: dict[str, Parameter] | None = Field(
        None, description="`binary_data_size`: the tensor's bytes in the binary part of the body"
    )
    data: Any = Field(None, description="the values, flat or nested row-major (absent with `binary_data_size`)")


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Parameter] | None = Field(
        None, description="`binary_data`: this output in binary; `classification`: its top k classes"
    )


class InferRequest(BaseModel):
    """A v2 inference request (the JSON part, when the binary tensor extension is used)."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    parameters: dict[str, Parameter] | None = Field(None, description="`binary_data_output`: every output in binary")
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Parameter] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


def _validated(header: Any) -> dict[str, Any]:
    """The parsed JSON header, checked against :class:`InferRequest` (a 400 naming the first wrong field)."""
    if not isinstance(header, dict):
        raise BadInput("the inference request must be a JSON object")
    try:
        InferRequest.model_validate(header)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
        raise BadInput(f"bad inference request: {where or 'the request'}: {error['msg'].lower()}") from None
    return header


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    why = {
        400: "bad request: a field's type or value, a shape the model cannot take",
        404: "unknown model or version",
        413: "the body or its tensors are over the model's limits",
        503: "model not ready, or the worker too busy",
    }
    return {status: {"model": ErrorResponse, "description": why[status]} for status in statuses}


def _error(exc: ServeError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


@router.get("", responses={200: {"description": "name, version and protocol extensions"}})
async def server_metadata() -> JSONResponse:
    return JSONResponse({"name": "cnnserve", "version": oip.server_version(), "extensions": list(oip.EXTENSIONS)})


@router.get("/health/live", response_model=Live)
async def server_live() -> JSONResponse:
    return JSONResponse({"live": True})


@router.get("/health/ready", response_model=Ready, responses={503: {"model": ErrorResponse}})
async def server_ready() -> JSONResponse:
    """Ready when at least one model is: one broken model must not take the others out of a load balancer. The
    same rule as ``/readyz`` (``Catalog.readiness``), so the two never disagree."""
    problem = current().catalog.readiness()
    if problem is None:
        return JSONResponse({"ready": True})
    return JSONResponse({"error": problem}, status_code=503)


# --- statistics and repository (before /models/{name}, which would take "stats" for a model name) ------------------


@router.get("/models/stats", responses={200: {"description": "Triton's statistics of every ready model"}})
async def all_statistics() -> JSONResponse:
    """Triton's statistics of every ready model (success / fail counts, inference and execution counts, cumulative
    queue and compute times), from the service's stage timings across all its processes."""
    return JSONResponse(model_statistics(current().catalog))


async def _statistics(name: str, model_version: str | None) -> JSONResponse:
    try:
        runner = oip.find_runner(current().catalog, name, model_version)
        runner.info.require_ready()
        return JSONResponse(model_statistics(current().catalog, [name]))
    except ServeError as exc:
        return _error(exc)


@router.post("/repository/index", responses=_errors(400, 413))
async def repository_index(request: Request) -> JSONResponse:
    """Every configured model with its state (``READY`` / ``UNAVAILABLE`` and why); ``{"ready": true}`` lists the
    ready ones only. Models are loaded at start (``CNNSERVE_MODELS``): the repository cannot load or unload."""
    try:
        body = await _read_body(request, _SMALL_BODY)
        options = parse_json(body, max_depth=current().settings.max_json_depth) if body.strip() else {}
        if not isinstance(options, dict):
            raise BadInput('the request must be a JSON object such as {"ready": true}')
        ready = options.get("ready", False)
        if not isinstance(ready, bool):
            raise BadInput('"ready" must be true or false')
    except ServeError as exc:
        if exc.status == 413:
            await drain_refused_body(request)
        return _error(exc)
    return JSONResponse(oip.repository_index(current().catalog, ready_only=ready))


# --- one model ------------------------------------------------------------------------------------------------------


async def _metadata(name: str, model_version: str | None) -> JSONResponse:
    try:
        return JSONResponse(oip.model_metadata(oip.find_runner(current().catalog, name, model_version)))
    except ServeError as exc:
        return _error(exc)


async def _ready(name: str, model_version: str | None) -> JSONResponse:
    try:
        oip.find_runner(current().catalog, name, model_version).info.require_ready()
    except ServeError as exc:
        return _error(exc)
    return JSONResponse({"name": name, "ready": True})


async def _config(name: str, model_version: str | None) -> JSONResponse:
    service = current()
    try:
        return JSONResponse(oip.model_config(service.settings, oip.find_runner(service.catalog, name, model_version)))
    except ServeError as exc:
        return _error(exc)


# --- inference ------------------------------------------------------------------------------------------------------


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """gzip / deflate (zlib or raw) request bodies, as tritonclient's ``request_compression_algorithm`` sends; at
    most ``limit`` bytes once inflated (413 beyond: a small compressed body can claim any size)."""
    if encoding == "gzip":
        attempts = [16 + zlib.MAX_WBITS]
    elif encoding == "deflate":
        attempts = [zlib.MAX_WBITS, -zlib.MAX_WBITS]  # "deflate" is zlib-wrapped; some clients send it raw
    else:
        raise BadInput(f"unsupported Content-Encoding {encoding!r}; send gzip, deflate or an uncompressed body")
    for wbits in attempts:
        inflater = zlib.decompressobj(wbits)
        try:
            data = inflater.decompress(body, limit)
        except zlib.error:
            continue
        if inflater.unconsumed_tail:
            raise PayloadTooLarge(f"the request inflates to more than its limit of {megabytes(limit)}")
        if not inflater.eof:
            raise BadInput(f"the {encoding} body is truncated")
        return data
    raise BadInput(f"the body is not valid {encoding} data")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes as sent and once inflated (413 from Content-Length, then as it arrives)."""
    check_declared_length(request, limit, "inference request")
    body = await counted(request, limit, "inference request").body()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    return body if encoding in ("", "identity") else _inflate(body, encoding, limit)


def _to_array(data: Any, dtype: np.dtype) -> np.ndarray:
    """JSON values → a flat array, a chunk (or a row) at a time: one call over a long list would hold the GIL, and
    with it the event loop, throughout."""
    if isinstance(data, list) and len(data) > _CHUNK and not isinstance(data[0], list):
        return np.concatenate([np.asarray(data[i : i + _CHUNK], dtype=dtype) for i in range(0, len(data), _CHUNK)])
    if isinstance(data, list) and len(data) > 1 and isinstance(data[0], list):
        return np.concatenate([_to_array(row, dtype).reshape(-1) for row in data])
    return np.asarray(data, dtype=dtype).reshape(-1)


def _array(item: dict[str, Any], name: str, datatype: str, dtype: np.dtype, shape: list[int], binary: bytes,
           offset: int) -> tuple[np.ndarray, int]:  # fmt: skip
    """One input's values: from the binary section (``binary_data_size``) or from JSON ``data``."""
    count = int(np.prod(shape, dtype=np.int64))
    size = item["parameters"].get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size != count * dtype.itemsize:
            raise BadInput(f"input {name!r}: binary_data_size does not match its shape and datatype")
        if offset + size > len(binary):
            raise BadInput(f"input {name!r}: the body holds fewer bytes than its binary_data_size")
        return np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape), offset + size
    if "data" not in item:
        raise BadInput(f"input {name!r} has no data")
    try:
        array = _to_array(item["data"], dtype)
    except (TypeError, ValueError, OverflowError):
        raise BadInput(f"input {name!r}: data is not a list of {datatype} values") from None
    if array.size != count:
        raise BadInput(f"input {name!r}: {array.size} values for shape {shape}")
    return array.reshape(shape), offset


def _decode(runner: Runner, header: dict[str, Any], binary: bytes, max_elements: int) -> dict[str, np.ndarray]:
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadInput('"inputs" must be a non-empty list of tensors')
    feed: dict[str, np.ndarray] = {}
    offset = total = 0
    for item in raw_inputs:
        if not isinstance(item, dict):
            raise BadInput("each input must be an object with name, shape, datatype and data")
        name, datatype = item.get("name"), item.get("datatype")
        item = {
            **item,
            "parameters": oip.check_parameters(item.get("parameters"), ("binary_data_size",), f"input {name!r}"),
        }
        dtype, shape = oip.check_input(runner, name, datatype, item.get("shape"))
        if name in feed:
            raise BadInput(f"input {name!r} is given twice")
        total = oip.count_elements(shape, total, max_elements)
        feed[name], offset = _array(item, name, datatype, dtype, shape, binary, offset)
    if offset != len(binary):
        raise BadInput(f"the body has {len(binary) - offset} bytes after the declared binary tensors")
    return oip.complete_feed(runner, feed)


def _requested(header: dict[str, Any], default_binary: bool) -> list[oip.Requested] | None:
    outputs = header.get("outputs")
    if outputs is None:
        return None
    if not isinstance(outputs, list) or any(not isinstance(o, dict) for o in outputs):
        raise BadInput('"outputs" must be a list of objects with a name')
    requested = []
    for item in outputs:
        name = item.get("name")
        params = oip.check_parameters(item.get("parameters"), ("binary_data", "classification"), f"output {name!r}")
        requested.append(
            oip.Requested(name, params.get("classification", 0), bool(params.get("binary_data", default_binary)))
        )
    return requested


def _encode(header: dict[str, Any], runner: Runner, outputs: list[oip.Output], requested: list[oip.Requested]
            ) -> tuple[bytes, bytes]:  # fmt: skip
    """The answer's JSON header and its binary section."""
    entries, chunks = [], []
    for item, output in zip(requested, outputs, strict=True):
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(output.data.shape)}
        if item.binary:
            raw = oip.serialize_bytes(output.data) if output.datatype == "BYTES" else output.data.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif output.datatype == "BYTES":
            entry["data"] = [value.decode() for value in output.data.reshape(-1)]
        else:
            entries.append(json.dumps(entry).encode()[:-1] + b',"data":' + _json_values(output.data) + b"}")
            continue
        entries.append(json.dumps(entry).encode())
    answer: dict[str, Any] = {"model_name": runner.info.name, "model_version": oip.MODEL_VERSION}
    if "id" in header:
        answer["id"] = header["id"]
    return json.dumps(answer).encode()[:-1] + b',"outputs":[' + b",".join(entries) + b"]}", b"".join(chunks)


def _json_values(value: np.ndarray) -> bytes:
    """A numeric tensor's values as a JSON array, a chunk at a time (NaN and infinity as Python's json writes them:
    the graph made them, refusing would hide its answer)."""
    flat = value.reshape(-1)
    parts = [json.dumps(flat[i : i + _CHUNK].tolist())[1:-1] for i in range(0, flat.size, _CHUNK)]
    return ("[" + ",".join(part for part in parts if part) + "]").encode()


def _compressed(request: Request, payload: bytes, headers: dict[str, str], media_type: str) -> Response:
    """The answer, gzip- or deflate-compressed when the client accepts it (tritonclient's
    ``response_compression_algorithm``)."""
    accepted = {part.split(";")[0].strip().lower() for part in request.headers.get("accept-encoding", "").split(",")}
    if "gzip" in accepted:
        payload, headers = gzip.compress(payload, compresslevel=1), {**headers, "Content-Encoding": "gzip"}
    elif "deflate" in accepted:
        payload, headers = zlib.compress(payload, 1), {**headers, "Content-Encoding": "deflate"}
    return Response(payload, media_type=media_type, headers=headers)


def _parse_header(header_bytes: bytes, max_depth: int) -> dict[str, Any]:
    return _validated(parse_json(header_bytes, max_depth=max_depth, what="the inference request"))


def _encoded_answer(request: Request, header: dict[str, Any], runner: Runner, outputs: list[oip.Output],
                    requested: list[oip.Requested]) -> Response:  # fmt: skip
    payload, binary_out = _encode(header, runner, outputs, requested)
    if not binary_out:
        return _compressed(request, payload, {}, "application/json")
    return _compressed(request, payload + binary_out, {HEADER_LENGTH: str(len(payload))}, "application/octet-stream")


async def _answer(service: ServiceState, runner: Runner, request: Request, stack: AsyncExitStack) -> Response:
    """One inference request, its memory held in ``stack`` until the request ends: the body's (reserved from its
    length before it is read), then the tensors' (from their declared shapes, before any value is converted)."""
    name = runner.info.name
    metrics, settings, work = service.metrics, service.settings, service.work
    limits = oip.request_limits(runner.info, settings)
    with metrics.stage(name, "decode"):
        check_declared_length(request, limits.body_bytes, "inference request")
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is not None and not header_length.isdigit():
            raise BadInput(f"{HEADER_LENGTH} must be the length in bytes of the body's JSON part")
        length = declared_length(request)
        if header_length is not None and length is not None and int(header_length) > length:
            raise BadInput(f"{HEADER_LENGTH} ({header_length}) is longer than the body ({length})")
        cost = body_cost(request, limits.body_bytes, 1.0 if header_length is not None else _JSON_COST)
        body_lease = await work.hold(work.bodies, cost, stack)
        body = await _read_body(request, limits.body_bytes)
        split = int(header_length) if header_length is not None else len(body)
        if split > len(body):
            raise BadInput(f"{HEADER_LENGTH} ({split}) is longer than the body ({len(body)})")
        header_bytes, binary = body[:split], memoryview(body)[split:]
        parse = partial(_parse_header, header_bytes, settings.max_json_depth)
        header = await work.run(parse, lease=body_lease) if len(header_bytes) > INLINE_JSON_BYTES else parse()
        del header_bytes
        parameters = oip.check_parameters(header.get("parameters"), ("binary_data_output",), "the request")
        binary_default = bool(parameters.get("binary_data_output", False))
        requested = oip.requested_outputs(runner, _requested(header, binary_default), binary=binary_default)
        work_lease = await work.hold(work.work, 3 * _declared_bytes(header), stack)
        decode = partial(_decode, runner, header, binary, limits.elements)
        feed = await work.run(decode, lease=work_lease) if len(body) > INLINE_JSON_BYTES else decode()
        del body, binary
    with metrics.stage(name, "inference"):
        outputs = await oip.infer(runner, feed, requested)
        del feed
    with metrics.stage(name, "postprocess"):
        encode = partial(_encoded_answer, request, header, runner, outputs, requested)
        if sum(output.data.size for output in outputs) > _CHUNK:
            return await work.run(encode, lease=work_lease)
        return encode()


def _declared_bytes(header: dict[str, Any]) -> int:
    """The input tensors' bytes from their declared shapes (checked against the model's limits while decoding)."""
    total = 0
    for item in header.get("inputs") or []:
        shape = [d for d in item.get("shape") or [] if isinstance(d, int) and d > 0]
        dtype = oip.V2_DATATYPES.get(item.get("datatype"), np.dtype(np.float64))
        total += min(int(np.prod(shape, dtype=np.float64)), oip.MAX_ELEMENTS) * dtype.itemsize
    return total


async def _infer(name: str, model_version: str | None, request: Request) -> Response:
    service = current()
    label = "-"
    try:
        runner = oip.find_runner(service.catalog, name, model_version)
        label = runner.info.name
        runner.info.require_ready()
        async with AsyncExitStack() as stack:
            response = await _answer(service, runner, request, stack)
    except asyncio.CancelledError as exc:  # the server's timeout: let go of the request's tensors now
        traceback.clear_frames(exc.__traceback__)
        raise
    except ServeError as exc:
        traceback.clear_frames(exc.__traceback__)  # the request's tensors, held by the traceback in a cycle
        if exc.status == 413:
            await drain_refused_body(request)
        response = _error(exc)
    except Exception as exc:  # a bug, not the client's fault: say so without details, log them, keep serving
        logger.exception("unexpected error on %s", INFER_ROUTE)
        traceback.clear_frames(exc.__traceback__)
        response = JSONResponse({"error": "internal error; the server log has the details"}, status_code=500)
    service.metrics.requests.labels(model=label, route=INFER_ROUTE, status=str(response.status_code)).inc()
    return response


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` written in place (an OpenAPI request body cannot point into them)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inlined(InferRequest.model_json_schema())},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"the binary tensor data extension: the JSON request (its length in {HEADER_LENGTH}) "
                "followed by the tensors' bytes",
            },
        },
    }
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": f"the outputs (binary outputs: the JSON answer, its length in {HEADER_LENGTH}, then the "
        "tensors' bytes)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **_errors(400, 404, 413, 503),
}


# --- routes ---------------------------------------------------------------------------------------------------------


@router.get("/models/{name}/stats", responses=_errors(404, 503))
async def model_statistics_route(name: str) -> JSONResponse:
    return await _statistics(name, None)


@router.get("/models/{name}/versions/{model_version}/stats", responses=_errors(404, 503))
async def model_version_statistics(name: str, model_version: str) -> JSONResponse:
    return await _statistics(name, model_version)


@router.get("/models/{name}", responses=_errors(404, 503))
async def model_metadata(name: str) -> JSONResponse:
    return await _metadata(name, None)


@router.get("/models/{name}/versions/{model_version}", responses=_errors(404, 503))
async def model_version_metadata(name: str, model_version: str) -> JSONResponse:
    return await _metadata(name, model_version)


@router.get("/models/{name}/config", responses=_errors(404, 503))
async def model_configuration(name: str) -> JSONResponse:
    """Triton's model configuration (JSON ``ModelConfig``): the same content ``cnnserve export-repo`` writes as
    ``config.pbtxt``, with this service's batch limit as ``max_batch_size``."""
    return await _config(name, None)


@router.get("/models/{name}/versions/{model_version}/config", responses=_errors(404, 503))
async def model_version_configuration(name: str, model_version: str) -> JSONResponse:
    return await _config(name, model_version)


@router.get("/models/{name}/ready", response_model=ModelReady, responses=_errors(404, 503))
async def model_ready(name: str) -> JSONResponse:
    return await _ready(name, None)


@router.get("/models/{name}/versions/{model_version}/ready", response_model=ModelReady, responses=_errors(404, 503))
async def model_version_ready(name: str, model_version: str) -> JSONResponse:
    return await _ready(name, model_version)


@router.post(
    "/models/{name}/infer", response_model=InferResponse, responses=_INFER_RESPONSES, openapi_extra=_INFER_BODY
)
async def infer(name: str, request: Request) -> Response:
    return await _infer(name, None, request)


@router.post(
    "/models/{name}/versions/{model_version}/infer",
    response_model=InferResponse,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_BODY,
)
async def infer_version(name: str, model_version: str, request: Request) -> Response:
    return await _infer(name, model_version, request)


@router.api_route(
    "/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"], include_in_schema=False
)
async def unknown_route(path: str, request: Request) -> JSONResponse:
    """Anything else under /v2: 405 when the path exists with other methods, else 404 — JSON like every error."""
    allowed = sorted(
        method
        for route in router.routes
        if route.endpoint is not unknown_route and route.matches(request.scope)[0] == Match.PARTIAL
        for method in getattr(route, "methods", ())
    )
    if allowed:
        return JSONResponse(
            {"error": f"{request.method} is not allowed on /v2/{path}; use {', '.join(allowed)}"},
            status_code=405,
            headers={"Allow": ", ".join(allowed)},
        )
    return JSONResponse(
        {"error": f"no such route: {request.method} /v2/{path} (the Open Inference Protocol routes are under /v2)"},
        status_code=404,
    )
