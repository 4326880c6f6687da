"""Open Inference Protocol v2 over HTTP/REST (KServe / Triton), so Triton and KServe clients talk to us unchanged.

What the protocol means here — inference through the batcher, the classification extension, refused parameters,
NaN — lives in :mod:`.oip`, shared with gRPC; this module is the wire format. JSON tensors are supported and so is
the binary tensor data extension (``Inference-Header-Content-Length``), which ``tritonclient`` uses by default;
request bodies may be gzip- or deflate-compressed (``Content-Encoding``) and answers are compressed when the client
accepts it, as Triton does. Besides health, metadata and inference: the model configuration (Triton's JSON
``ModelConfig``, from :func:`service.triton.served_config`), statistics (:mod:`.statistics`) and the repository
index. Errors, unknown routes included, are ``{"error": "..."}`` with 400 (bad request), 404 (unknown model,
version or route), 405, 413 or 503 (model not ready).
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from ..errors import BadInput, PayloadTooLarge, ServeError
from ..runtime.runner import Runner
from . import oip
from .state import ServiceState, current
from .statistics import model_statistics

__all__ = ["router", "HEADER_LENGTH"]

HEADER_LENGTH = "Inference-Header-Content-Length"
INFER_ROUTE = "/v2/models/{name}/infer"  # the `route` label of v2 inferences in cnnserve_requests_total

logger = logging.getLogger("cnnserve.v2")

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])


def _error(exc: ServeError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


@router.get("")
async def server_metadata() -> JSONResponse:
    return JSONResponse({"name": "cnnserve", "version": oip.server_version(), "extensions": list(oip.EXTENSIONS)})


@router.get("/health/live")
async def server_live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready")
async def server_ready() -> Response:
    """Ready when at least one model is: one broken model must not take the others out of a load balancer. The
    same rule as ``/readyz`` (``Catalog.readiness``), so the two never disagree."""
    problem = current().catalog.readiness()
    if problem is None:
        return Response(status_code=200)
    return JSONResponse({"error": problem}, status_code=503)


# --- statistics and repository (before /models/{name}, which would take "stats" for a model name) ------------------


@router.get("/models/stats")
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


@router.post("/repository/index")
async def repository_index(request: Request) -> JSONResponse:
    """Every configured model with its state (``READY`` / ``UNAVAILABLE`` and why); ``{"ready": true}`` lists the
    ready ones only. Models are loaded at start (``CNNSERVE_MODELS``): the repository cannot load or unload."""
    try:
        body = await _read_body(request)
        options = json.loads(body) if body.strip() else {}
        if not isinstance(options, dict):
            raise BadInput('the request must be a JSON object such as {"ready": true}')
        ready = options.get("ready", False)
        if not isinstance(ready, bool):
            raise BadInput('"ready" must be true or false')
    except ServeError as exc:
        return _error(exc)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(BadInput("the request is not valid JSON"))
    return JSONResponse(oip.repository_index(current().catalog, ready_only=ready))


# --- one model ------------------------------------------------------------------------------------------------------


async def _metadata(name: str, model_version: str | None) -> JSONResponse:
    try:
        return JSONResponse(oip.model_metadata(oip.find_runner(current().catalog, name, model_version)))
    except ServeError as exc:
        return _error(exc)


async def _ready(name: str, model_version: str | None) -> Response:
    try:
        oip.find_runner(current().catalog, name, model_version).info.require_ready()
    except ServeError as exc:
        return _error(exc)
    return Response(status_code=200)


async def _config(name: str, model_version: str | None) -> JSONResponse:
    service = current()
    try:
        return JSONResponse(oip.model_config(service.settings, oip.find_runner(service.catalog, name, model_version)))
    except ServeError as exc:
        return _error(exc)


# --- inference ------------------------------------------------------------------------------------------------------


def _inflate(body: bytes, encoding: str) -> bytes:
    """gzip / deflate (zlib or raw) request bodies, as tritonclient's ``request_compression_algorithm`` sends."""
    if encoding == "gzip":
        attempts = [16 + zlib.MAX_WBITS]
    elif encoding == "deflate":
        attempts = [zlib.MAX_WBITS, -zlib.MAX_WBITS]  # "deflate" is zlib-wrapped; some clients send it raw
    else:
        raise BadInput(f"unsupported Content-Encoding {encoding!r}; send gzip, deflate or an uncompressed body")
    for wbits in attempts:
        inflater = zlib.decompressobj(wbits)
        try:
            data = inflater.decompress(body, oip.MAX_MESSAGE_BYTES)
        except zlib.error:
            continue
        if inflater.unconsumed_tail:
            raise PayloadTooLarge(f"the request inflates to more than {oip.MAX_MESSAGE_BYTES // 2**20} MB")
        if not inflater.eof:
            raise BadInput(f"the {encoding} body is truncated")
        return data
    raise BadInput(f"the body is not valid {encoding} data")


async def _read_body(request: Request) -> bytes:
    body = await request.body()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    return body if encoding in ("", "identity") else _inflate(body, encoding)


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
        array = np.asarray(item["data"], dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise BadInput(f"input {name!r}: data is not a list of {datatype} values") from None
    if array.size != count:
        raise BadInput(f"input {name!r}: {array.size} values for shape {shape}")
    return array.reshape(shape), offset


def _decode(runner: Runner, header: dict[str, Any], binary: bytes) -> dict[str, np.ndarray]:
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
        total = oip.count_elements(shape, total)
        feed[name], offset = _array(item, name, datatype, dtype, shape, binary, offset)
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
            entry["data"] = output.data.reshape(-1).tolist()
        entries.append(entry)
    answer: dict[str, Any] = {"model_name": runner.info.name, "model_version": oip.MODEL_VERSION, "outputs": entries}
    if "id" in header:
        answer["id"] = header["id"]
    return json.dumps(answer, allow_nan=False).encode(), b"".join(chunks)


def _compressed(request: Request, payload: bytes, headers: dict[str, str], media_type: str) -> Response:
    """The answer, gzip- or deflate-compressed when the client accepts it (tritonclient's
    ``response_compression_algorithm``)."""
    accepted = {part.split(";")[0].strip().lower() for part in request.headers.get("accept-encoding", "").split(",")}
    if "gzip" in accepted:
        payload, headers = gzip.compress(payload, compresslevel=1), {**headers, "Content-Encoding": "gzip"}
    elif "deflate" in accepted:
        payload, headers = zlib.compress(payload, 1), {**headers, "Content-Encoding": "deflate"}
    return Response(payload, media_type=media_type, headers=headers)


async def _answer(service: ServiceState, runner: Runner, request: Request) -> Response:
    name = runner.info.name
    metrics = service.metrics
    with metrics.stage(name, "decode"):
        body = await _read_body(request)
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
        parameters = oip.check_parameters(header.get("parameters"), ("binary_data_output",), "the request")
        binary_default = bool(parameters.get("binary_data_output", False))
        requested = oip.requested_outputs(runner, _requested(header, binary_default), binary=binary_default)
        feed = _decode(runner, header, binary)
    with metrics.stage(name, "inference"):
        outputs = await oip.infer(runner, feed, requested)
    with metrics.stage(name, "postprocess"):
        payload, binary_out = _encode(header, runner, outputs, requested)
        if not binary_out:
            return _compressed(request, payload, {}, "application/json")
        return _compressed(
            request, payload + binary_out, {HEADER_LENGTH: str(len(payload))}, "application/octet-stream"
        )


async def _infer(name: str, model_version: str | None, request: Request) -> Response:
    service = current()
    label = "-"
    try:
        runner = oip.find_runner(service.catalog, name, model_version)
        label = runner.info.name
        runner.info.require_ready()
        response = await _answer(service, runner, request)
    except ServeError as exc:
        response = _error(exc)
    except Exception:  # a bug, not the client's fault: say so without details, log them, keep serving
        logger.exception("unexpected error on %s", INFER_ROUTE)
        response = JSONResponse({"error": "internal error; the server log has the details"}, status_code=500)
    service.metrics.requests.labels(model=label, route=INFER_ROUTE, status=str(response.status_code)).inc()
    return response


# --- routes ---------------------------------------------------------------------------------------------------------


@router.get("/models/{name}/stats")
async def model_statistics_route(name: str) -> JSONResponse:
    return await _statistics(name, None)


@router.get("/models/{name}/versions/{model_version}/stats")
async def model_version_statistics(name: str, model_version: str) -> JSONResponse:
    return await _statistics(name, model_version)


@router.get("/models/{name}")
async def model_metadata(name: str) -> JSONResponse:
    return await _metadata(name, None)


@router.get("/models/{name}/versions/{model_version}")
async def model_version_metadata(name: str, model_version: str) -> JSONResponse:
    return await _metadata(name, model_version)


@router.get("/models/{name}/config")
async def model_configuration(name: str) -> JSONResponse:
    """Triton's model configuration (JSON ``ModelConfig``): the same content ``cnnserve export-repo`` writes as
    ``config.pbtxt``, with this service's batch limit as ``max_batch_size``."""
    return await _config(name, None)


@router.get("/models/{name}/versions/{model_version}/config")
async def model_version_configuration(name: str, model_version: str) -> JSONResponse:
    return await _config(name, model_version)


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
