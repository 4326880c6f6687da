"""The contract's HTTP routes, as a FastAPI app mounted into the BentoML service — one route per registered task.

Every endpoint is the same request path (:func:`handle`), given its :class:`~service.tasks.Task`:

    parse the body (requests.py, the task's files) → the task's typed options → the model (Catalog.pick) → decode
    and preprocess (work.py: imaging.py in the image pool; or the task's own decode and prepare) → the model's runner
    (batched) → the task's answer

so a new task needs no code here (docs/architecture.md). FastAPI is used for its OpenAPI: BentoML merges a mounted
FastAPI app's paths into its own ``/docs.json``, and the app serves Swagger UI at ``/docs``; the request body is
documented with ``openapi_extra`` because it is parsed here, not by FastAPI.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import time
import traceback
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles

from ... import __version__
from ..errors import ServeError
from ..imaging import open_image
from ..tasks import DecodeLimits, ImageAnswer, Inputs, Task, all_tasks
from ..tasks.base import FileField
from .json_errors import not_found
from .requests import drain_refused_body, parse_image_request
from .schemas import ErrorResponse, ModelsResponse, models_response
from .state import ServiceState, current
from .v2 import router as v2_router
from .work import INLINE_RENDER_PIXELS, work_bytes

__all__ = ["routes_app", "handle"]

logger = logging.getLogger("cnnserve.http")
access_log = logging.getLogger("cnnserve.access")


def _error(exc: ServeError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


_PIECE = 4 * 2**20  # bytes per piece of a large response body


def _pieces(data: bytes) -> list[bytes]:
    return [data[i : i + _PIECE] for i in range(0, len(data), _PIECE)] if len(data) > _PIECE else [data]


def _encoded(answer: BaseModel | ImageAnswer, pictures_inside: bool = True) -> tuple[list[bytes], str]:
    """An answer → its body, in pieces, and its media type.

    A JSON answer's pictures (``pictures_inside``: the task has ``png_fields``) are long base64 strings: they are
    cut out before ``json.dumps`` and spliced back as ASCII a piece at a time (base64 needs no escaping), so neither
    the encoder nor one long copy holds the GIL, and at most two copies of a picture exist at once."""
    if isinstance(answer, ImageAnswer):
        return _pieces(answer.png), answer.media_type
    payload = answer.model_dump(exclude_none=True)
    del answer
    if not pictures_inside:
        return [json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()], (
            "application/json"
        )
    pictures: list[str] = []
    placeholder = uuid.uuid4().hex  # stands for each picture in the text json.dumps writes
    text = json.dumps(
        _cut_pictures(payload, pictures, placeholder), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )
    del payload
    parts = text.split(f'"{placeholder}"')
    body = [parts[0].encode("utf-8")]
    for picture, after in zip(pictures, parts[1:], strict=True):
        body.append(b'"')
        body.extend(picture[i : i + _PIECE].encode("ascii") for i in range(0, len(picture), _PIECE))
        body.append(b'"' + after.encode("utf-8"))
    return body, "application/json"


def _cut_pictures(value: Any, pictures: list[str], placeholder: str) -> Any:
    """``value`` with every long plain-ASCII string moved to ``pictures`` and replaced by ``placeholder``."""
    if isinstance(value, str) and len(value) > _PIECE and _plain_ascii(value):
        pictures.append(value)
        return placeholder
    if isinstance(value, dict):
        return {k: _cut_pictures(v, pictures, placeholder) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_pictures(v, pictures, placeholder) for v in value]
    return value


def _plain_ascii(text: str) -> bool:
    """Text JSON writes as it is (base64): ASCII, printable, no quote or backslash."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


class _PiecesResponse(Response):
    """A response whose body is sent in pieces (no copy of a large answer into one buffer)."""

    def __init__(self, pieces: list[bytes], media_type: str) -> None:
        super().__init__(b"", media_type=media_type)
        self.pieces = pieces
        self.headers["content-length"] = str(sum(len(p) for p in pieces))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        last = len(self.pieces) - 1
        for i, piece in enumerate(self.pieces):
            await send({"type": "http.response.body", "body": piece, "more_body": i < last})


def _respond_and_encode(task: Task, name: str, contract: Any, outputs: Any, inputs: Inputs, options: Any):
    return _encoded(task.respond(name, contract, outputs, inputs, options), bool(task.png_fields))


def _one_image(task: Task) -> bool:
    """Whether the task's request is one image through the default hooks: then the service's budgeted decode runs
    it (work.decode); other tasks (an image and a mask, no image at all) run their own decode and prepare."""
    kind = type(task)
    return task.files == (FileField("image"),) and kind.decode is Task.decode and kind.prepare is Task.prepare


async def _answer(
    service: ServiceState, task: Task, request: Request, seen: dict[str, str], stack: AsyncExitStack
) -> Response:
    """The request path of every endpoint (``seen["model"]``: the model, once picked). Raises ServeError.
    Memory reservations (body, then image work) are held in ``stack`` until the request ends."""
    settings, metrics, work = service.settings, service.metrics, service.work

    async def hold(nbytes: int) -> None:
        await work.hold(work.bodies, nbytes, stack)

    req = await parse_image_request(
        request, settings.max_upload_bytes, task.files, max_json_depth=settings.max_json_depth, hold=hold
    )
    options = task.parse_options(req.fields)
    runner = service.catalog.pick(task, options.model)
    name = seen["model"] = runner.info.name
    contract = runner.info.require_ready()
    task.check(contract, options)  # before any decoding work
    per_pixel = task.answer_bytes_per_pixel(options)
    lease = None
    if _one_image(task):
        decoded = await work.decode(
            req.image,
            contract.preprocess,
            max_pixels=settings.max_pixels,
            draft_for=contract.preprocess if task.draft_decode else None,
            draft_ratio=settings.jpeg_draft,
            answer_bytes_per_pixel=per_pixel,
            stack=stack,
        )
        del req
        metrics.observe(name, "decode", decoded.decode_seconds)
        metrics.observe(name, "preprocess", decoded.preprocess_seconds)
        inputs = Inputs(images=decoded.pixels[None], upload=decoded.upload, pixels=decoded.pixels)
        lease = decoded.lease
    else:
        files, limits = req.files, DecodeLimits(settings.max_pixels, settings.jpeg_draft)
        del req
        if files:  # the work's memory from the headers (a 400 for an unreadable file before any is decoded)
            opened = [open_image(data, max_pixels=settings.max_pixels) for data in files.values()]
            cost = sum(work_bytes(img, contract.preprocess, per_pixel) for img in opened)
            del opened
            lease = await work.hold(work.work, cost, stack)
            with metrics.stage(name, "decode"):
                uploads = await work.run(task.decode, contract, files, limits, lease=lease)
            with metrics.stage(name, "preprocess"):
                inputs = await work.run(task.prepare, contract, uploads, options, lease=lease)
        else:
            with metrics.stage(name, "preprocess"):
                inputs = task.prepare(contract, {}, options)
    with metrics.stage(name, "inference"):
        batch = await runner.infer(inputs.images, task.graph_inputs(contract, options), inputs.rows)
    with metrics.stage(name, "postprocess"):
        job = (task, name, contract, batch, inputs, options)
        upload_pixels = inputs.upload.width * inputs.upload.height if inputs.upload is not None else 0
        if per_pixel and upload_pixels > INLINE_RENDER_PIXELS:  # drawing or encoding pictures: off the loop
            pieces, media_type = await work.run(_respond_and_encode, *job, lease=lease)
        else:
            pieces, media_type = _respond_and_encode(*job)
        if len(pieces) == 1:
            return Response(pieces[0], media_type=media_type)
        return _PiecesResponse(pieces, media_type)


async def handle(task: Task, request: Request) -> Response:
    """One image request: the answer, or ``{"error"}`` with the error's status; counted and logged either way (one
    access line per request, never the image bytes)."""
    service = current()
    start = time.perf_counter()
    seen = {"model": "-"}
    try:
        async with AsyncExitStack() as stack:
            response = await _answer(service, task, request, seen, stack)
    except asyncio.CancelledError as exc:  # the server's timeout: let go of the request's pictures now
        traceback.clear_frames(exc.__traceback__)
        raise
    except ServeError as exc:
        # The traceback's frames hold the request's bytes and pictures, in a cycle through the exit stack's frame
        # that only the garbage collector would break: free them now.
        traceback.clear_frames(exc.__traceback__)
        if seen["model"] == "-":
            seen["model"] = _model_label(service, request.query_params.get("model", "-"))
        if exc.status == 413:
            await drain_refused_body(request)
        response = _error(exc)
    except Exception as exc:  # a bug, not the client's fault: say so without details, log them, keep serving
        logger.exception("unexpected error on %s", task.route)
        traceback.clear_frames(exc.__traceback__)
        response = JSONResponse({"error": "internal error; the server log has the details"}, status_code=500)
    model_name = seen["model"]
    service.metrics.requests.labels(model=model_name, route=task.route, status=str(response.status_code)).inc()
    if service.settings.access_log:
        access_log.info(
            json.dumps(
                {
                    "route": task.route,
                    "model": model_name,
                    "status": response.status_code,
                    "latency_ms": round((time.perf_counter() - start) * 1000, 2),
                    "bytes": int(request.headers.get("content-length", 0) or 0),
                }
            )
        )
    return response


def _model_label(service: ServiceState, value: str) -> str:
    """Metric labels from client input are bounded: a name is a label only if it is a served model."""
    return value if service.catalog.get(value) is not None else "-"


def _field_schema(task: Task) -> dict[str, dict[str, Any]]:
    """The task's options as OpenAPI properties (from its pydantic model)."""
    schema = task.Options.model_json_schema()
    return schema.get("properties", {})


def _image_body(task: Task) -> dict[str, Any]:
    """OpenAPI for a body we parse ourselves: multipart with the task's files (``image``; ``mask``), or JSON with
    them as base64; a task without files takes its fields only."""
    fields = _field_schema(task)
    files = {f.name: {"type": "string", "format": "binary", "description": f.description} for f in task.files}
    properties = {**files, **fields}
    json_properties = {
        **properties,
        **{f.name: {"type": "string", "format": "byte", "description": f"{f.description}, base64"} for f in task.files},
    }
    required = [f.name for f in task.files if f.required]
    return {
        "requestBody": {
            "required": bool(required),
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": required, "properties": properties}},
                "application/json": {"schema": {"type": "object", "required": required, "properties": json_properties}},
            },
        }
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": why}
    for status, why in (
        (400, "bad input: undecodable image, wrong field"),
        (404, "unknown model"),
        (413, "upload or image over the limits"),
        (503, "model not ready or overloaded"),
    )
}

app = FastAPI(
    title="cnnserve",
    version=__version__,
    description="Classic vision networks exported to ONNX, served on onnxruntime. Every error is "
    '`{"error": "..."}`; the page to try the models is at `/`.',
    docs_url=None,  # ours below: Swagger UI from local files, never a CDN
    openapi_url="/openapi.json",
    redoc_url=None,
)

# Swagger UI from the files the BentoML wheel ships (Swagger UI 5, which reads OpenAPI 3.1), served by this app:
# `/docs` works offline and under the page's policy of nothing from a CDN.
_SWAGGER_UI = Path(importlib.util.find_spec("bentoml._internal.server").origin).parent / "static_content"


@app.get("/docs", include_in_schema=False)
async def docs() -> Response:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"cnnserve {__version__} — API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon-light-32x32.png",
    )


app.mount("/docs/assets", StaticFiles(directory=_SWAGGER_UI), name="docs-assets")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own 404 and 405 in the contract's shape, saying what to do instead."""
    if exc.status_code == 404:
        message = not_found(request.url.path)
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}" + (f"; use {allowed}" if allowed else "")
    else:
        message = str(exc.detail)
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return JSONResponse({"error": problems or "the request does not match the API"}, status_code=422)


def _add_route(task: Task) -> None:
    async def endpoint(request: Request) -> Response:
        return await handle(task, request)

    endpoint.__name__ = task.name
    endpoint.__doc__ = f"{task.summary}\n\n{task.description}".strip()
    if task.Response is None:
        responses = {200: {"content": {"image/png": {}}, "description": "the answer as a PNG"}, **_ERRORS}
        app.add_api_route(
            task.route,
            endpoint,
            methods=["POST"],
            responses=responses,
            response_class=Response,
            openapi_extra=_image_body(task),
            summary=task.title,
        )
    else:
        app.add_api_route(
            task.route,
            endpoint,
            methods=["POST"],
            response_model=task.Response,
            response_model_exclude_none=True,
            responses=_ERRORS,
            openapi_extra=_image_body(task),
            summary=task.title,
        )


for _task in all_tasks():
    _add_route(_task)


@app.get("/models", response_model=ModelsResponse)
async def list_models() -> JSONResponse:
    """Every configured model with task, input size, precision, weights' source, readiness, providers and batch
    policy, and every endpoint with the model tasks it serves (what the page builds its menus from)."""
    return JSONResponse(models_response(current().catalog).model_dump(mode="json"))


# The page to try every model (`GET /`, files in service/app/static). This route wins over BentoML's own index
# page because BentoML matches a mounted app's routes before it adds `/`. The page uses only the routes above, from
# the same origin; the policy below keeps any text from model metadata from ever running as script.
_STATIC = Path(__file__).parent / "static"
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


@app.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(_STATIC / "index.html", headers=_PAGE_HEADERS)


app.mount("/static", StaticFiles(directory=_STATIC), name="static")
app.include_router(v2_router)
routes_app = app
