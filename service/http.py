"""The contract's HTTP routes, as a FastAPI app mounted into the BentoML service.

Request parsing is ours so that every malformed request is a 4xx with ``{"error": ...}``: multipart form data
(file field ``image`` plus form fields), JSON with ``image`` as base64 (or a ``data:`` URL), or a raw image body
with the fields as query parameters. Query parameters work with every body type. The upload limit is checked
against ``Content-Length`` before the body is read. FastAPI is used for its OpenAPI: BentoML merges a mounted
FastAPI app's paths into its own ``/docs.json``, and the app serves Swagger UI at ``/docs``; the request body is
documented with ``openapi_extra`` because it is parsed here, not by FastAPI.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bentoml
from fastapi import FastAPI
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles

from .answers import AnswerOptions, answer_for, denoised_image
from .codecs import png_bytes
from .errors import BadInput, PayloadTooLarge, ServeError
from .postprocess import check_top_k
from .runtime import LoadedModel
from .schemas import (
    AnomalyResponse,
    ClassifyResponse,
    DetectResponse,
    ErrorResponse,
    ModelsResponse,
    SegmentResponse,
)
from .v2 import router as v2_router

if TYPE_CHECKING:
    from .service import CNNServe

__all__ = ["routes_app", "parse_image_request", "handle_image_request", "ImageRequest"]

logger = logging.getLogger("cnnserve.http")
access_log = logging.getLogger("cnnserve.access")


class ImageRequest:
    """The image bytes and the string fields of one request, however they were sent."""

    def __init__(self, image: bytes, fields: dict[str, str]) -> None:
        self.image = image
        self.fields = fields

    def text(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)

    def integer(self, name: str, default: int) -> int:
        raw = self.fields.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise BadInput(f"`{name}` must be an integer, got {raw!r}") from None

    def number(self, name: str, default: float, *, low: float, high: float) -> float:
        """A float field in [low, high]; NaN, infinities and text are refused with the field's name."""
        raw = self.fields.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise BadInput(f"`{name}` must be a number, got {raw!r}") from None
        if not low <= value <= high:  # also False for NaN
            raise BadInput(f"`{name}` must be between {low:g} and {high:g}, got {raw!r}")
        return value

    def flag(self, name: str) -> bool:
        raw = self.fields.get(name, "").strip().lower()
        if raw in ("", "0", "false", "no", "off"):
            return raw == "" and name in self.fields  # a bare `?overlay` means yes
        if raw in ("1", "true", "yes", "on"):
            return True
        raise BadInput(f"`{name}` must be true or false, got {raw!r}")


def _service() -> CNNServe:
    return bentoml.get_current_service()


def _decode_base64(text: str, limit: int) -> bytes:
    text = text.strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) * 3 // 4 > limit:
        raise PayloadTooLarge(f"the image is over the upload limit of {limit / 2**20:g} MB")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("in a JSON body, `image` must be the image file encoded as base64") from None


def _field_text(value: Any, name: str) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise BadInput(f"`{name}` must be a string or a number")


def _byte_limited(request: Request, limit: int) -> Request:
    """The same request, whose body stops with a 413 as soon as more than ``limit`` bytes have arrived."""
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise PayloadTooLarge(f"the upload is over the limit of {limit / 2**20:.0f} MB")
        return message

    return Request(request.scope, receive)


async def parse_image_request(request: Request, limit: int) -> ImageRequest:
    """multipart / JSON / raw body → :class:`ImageRequest`; :class:`ServeError` for anything malformed."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit * 4 // 3 + 65536:
        raise PayloadTooLarge(
            f"the request is {int(length) / 2**20:.1f} MB, over the upload limit of {limit / 2**20:g} MB"
        )
    request = _byte_limited(request, limit * 4 // 3 + 65536)  # chunked bodies have no Content-Length to check
    fields = {k: v for k, v in request.query_params.items()}
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=4, max_fields=32, max_part_size=1024 * 1024)
        except ServeError:
            raise
        except Exception as exc:  # python-multipart / starlette raise several types for broken bodies
            raise BadInput(f"the multipart body could not be parsed ({exc})") from None
        image = form.get("image")
        for key, value in form.multi_items():
            if key != "image":
                if isinstance(value, UploadFile):
                    raise BadInput(f"`{key}` must be a form field, not a file")
                fields[key] = value
        if image is None:
            raise BadInput("the form has no `image` file field; send it as -F image=@photo.jpg")
        if not isinstance(image, UploadFile):
            raise BadInput("`image` must be a file upload (-F image=@photo.jpg), not a text field")
        data = await image.read()
        await form.close()
    elif content_type == "application/json":
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadInput("the JSON body could not be parsed") from None
        if not isinstance(body, dict) or "image" not in body:
            raise BadInput('a JSON body must be an object with "image" (base64) and optional fields')
        if not isinstance(body["image"], str):
            raise BadInput("in a JSON body, `image` must be a base64 string")
        data = _decode_base64(body.pop("image"), limit)
        fields.update({k: _field_text(v, k) for k, v in body.items() if v is not None})
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        data = await request.body()
    else:
        raise BadInput(
            f"unsupported content type {content_type or '(none)'!r}; send multipart/form-data with an `image` file, "
            "JSON with a base64 `image`, or the raw image bytes with an image/* content type"
        )
    if len(data) > limit:
        raise PayloadTooLarge(f"the upload is {len(data) / 2**20:.1f} MB, over the limit of {limit / 2**20:g} MB")
    return ImageRequest(data, fields)


def _error(exc: ServeError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


Answer = Callable[["CNNServe", LoadedModel, ImageRequest], Awaitable[Response]]


async def handle_image_request(request: Request, route: str, tasks: tuple[str, ...], answer: Answer) -> Response:
    """The one request path of every image endpoint: parse → pick the model → answer; errors → {"error"}.

    Counts every request by model/route/status and logs one line per request (never the image bytes).
    """
    service = _service()
    start = time.perf_counter()
    model_name = "-"
    try:
        req = await parse_image_request(request, service.settings.max_upload_bytes)
        model = service.model_for(req.text("model"), tasks)
        model_name = model.name
        response = await answer(service, model, req)
    except ServeError as exc:
        model_name = model_name if model_name != "-" else _safe_label(request.query_params.get("model", "-"))
        response = _error(exc)
    except Exception:  # a bug, not the client's fault: say so without details, log them, keep serving
        logger.exception("unexpected error on %s", route)
        response = JSONResponse({"error": "internal error; the server log has the details"}, status_code=500)
    service.metrics.requests.labels(model=model_name, route=route, status=str(response.status_code)).inc()
    if service.settings.access_log:
        access_log.info(
            json.dumps(
                {
                    "route": route,
                    "model": model_name,
                    "status": response.status_code,
                    "latency_ms": round((time.perf_counter() - start) * 1000, 2),
                    "bytes": int(request.headers.get("content-length", 0) or 0),
                }
            )
        )
    return response


def _safe_label(value: str) -> str:
    """Metric labels from client input are bounded: unknown names are not echoed into the time series."""
    return "-" if len(value) > 64 else value


def _image_body(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """OpenAPI for a body we parse ourselves: multipart with an `image` file, or JSON with base64 `image`."""
    properties = {"image": {"type": "string", "format": "binary", "description": "the image file"}, **fields}
    json_properties = {**properties, "image": {"type": "string", "format": "byte", "description": "base64"}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": properties}},
                "application/json": {
                    "schema": {"type": "object", "required": ["image"], "properties": json_properties}
                },
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
_MODEL_FIELD = {"model": {"type": "string", "description": "served model name; default: the first of the task"}}
_RENDER_FIELD = {
    "render": {
        "type": "boolean",
        "default": False,
        "description": "also answer `rendered`: a base64 PNG of the upload with the boxes, labels, scores and "
        "instance masks drawn (semantic /segment: the colour overlay with a key)",
    }
}

app = FastAPI(title="cnnserve", docs_url="/docs", openapi_url="/openapi.json", redoc_url=None)


@app.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=_ERRORS,
    openapi_extra=_image_body(
        {
            **_MODEL_FIELD,
            "top_k": {"type": "integer", "default": 5, "minimum": 1, "description": "classes to return"},
        }
    ),
)
async def classify(request: Request) -> Response:
    """Top-k classes of one image, probabilities best first."""

    async def answer(service: CNNServe, model: LoadedModel, req: ImageRequest) -> Response:
        top_k = check_top_k(req.integer("top_k", 5), model.num_classes, model.name)  # before any decoding work
        outputs, upload, tensor = await service.predict(model, req.image)
        with service.metrics.stage(model.name, "postprocess"):
            answer = answer_for(model, outputs, upload=upload, tensor=tensor, options=AnswerOptions(top_k=top_k))
            body = ClassifyResponse(**answer)
        return JSONResponse(body.model_dump())

    return await handle_image_request(request, "/classify", ("classification",), answer)


_THRESHOLDS = {
    "score_threshold": {"type": "number", "minimum": 0, "maximum": 1, "description": "default: the model's"},
    "iou_threshold": {"type": "number", "minimum": 0, "maximum": 1, "description": "NMS IoU; default: the model's"},
    "max_detections": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
}


def _graph_thresholds(model: LoadedModel, req: ImageRequest) -> dict[str, float]:
    """The request's thresholds for the graph's scalar inputs, defaulting to the values recorded at export."""
    defaults = model.spec.get("extra_inputs", {})
    return {name: req.number(name, float(default), low=0.0, high=1.0) for name, default in defaults.items()}


def _detection_options(req: ImageRequest) -> AnswerOptions:
    limit = req.integer("max_detections", 100)
    if not 1 <= limit <= 1000:
        raise BadInput(f"`max_detections` must be between 1 and 1000, got {limit}")
    return AnswerOptions(max_detections=limit, render=req.flag("render"))


@app.post(
    "/detect",
    response_model=DetectResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_image_body({**_MODEL_FIELD, **_THRESHOLDS, **_RENDER_FIELD}),
)
async def detect(request: Request) -> Response:
    """Objects in one image: boxes in the upload's pixels, labels and scores, best first.

    With `render=true` the answer also has `rendered`: a base64 PNG of the upload with every box drawn in its class's
    colour and a `label score` tag above it, for people who would rather look.
    """

    async def answer(service: CNNServe, model: LoadedModel, req: ImageRequest) -> Response:
        options, thresholds = _detection_options(req), _graph_thresholds(model, req)
        outputs, upload, tensor = await service.predict(model, req.image, **thresholds)
        with service.metrics.stage(model.name, "postprocess"):
            body = DetectResponse(**answer_for(model, outputs, upload=upload, tensor=tensor, options=options))
        return JSONResponse(body.model_dump(exclude_none=True))

    return await handle_image_request(request, "/detect", ("detection",), answer)


@app.post(
    "/segment",
    response_model=SegmentResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_image_body(
        {
            **_MODEL_FIELD,
            "score_threshold": _THRESHOLDS["score_threshold"],
            "overlay": {"type": "boolean", "default": False, "description": "semantic: add a colour overlay PNG"},
            "max_detections": _THRESHOLDS["max_detections"],
            **_RENDER_FIELD,
        }
    ),
)
async def segment(request: Request) -> Response:
    """Per-pixel classes (semantic models) or per-object masks (instance models), at the upload's size.

    With `render=true` the answer also has `rendered`, a base64 PNG for people who would rather look: instance models
    draw every mask, box and `label score` tag on the upload; semantic models give the colour overlay with a key.
    """

    async def answer(service: CNNServe, model: LoadedModel, req: ImageRequest) -> Response:
        options = dataclasses.replace(_detection_options(req), overlay=req.flag("overlay"))
        outputs, upload, tensor = await service.predict(model, req.image, **_graph_thresholds(model, req))
        with service.metrics.stage(model.name, "postprocess"):
            body = SegmentResponse(**answer_for(model, outputs, upload=upload, tensor=tensor, options=options))
        return JSONResponse(body.model_dump(exclude_none=True))

    return await handle_image_request(request, "/segment", ("semantic_segmentation", "instance_segmentation"), answer)


@app.post(
    "/denoise",
    responses={200: {"content": {"image/png": {}}, "description": "the cleaned image, the upload's size"}, **_ERRORS},
    response_class=Response,
    openapi_extra=_image_body(dict(_MODEL_FIELD)),
)
async def denoise(request: Request) -> Response:
    """The image as the autoencoder reconstructs it (noise removed): a PNG of the upload's size and mode family."""

    async def answer(service: CNNServe, model: LoadedModel, req: ImageRequest) -> Response:
        outputs, upload, _ = await service.predict(model, req.image)
        with service.metrics.stage(model.name, "postprocess"):
            png = png_bytes(denoised_image(outputs["reconstruction"], upload))
        return Response(png, media_type="image/png")

    return await handle_image_request(request, "/denoise", ("autoencoder",), answer)


@app.post(
    "/anomaly",
    response_model=AnomalyResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_image_body(
        {**_MODEL_FIELD, "heatmap": {"type": "boolean", "default": False, "description": "add a per-pixel error PNG"}}
    ),
)
async def anomaly(request: Request) -> Response:
    """How unlike the training data the image is: reconstruction error against the calibrated threshold."""

    async def answer(service: CNNServe, model: LoadedModel, req: ImageRequest) -> Response:
        options = AnswerOptions(heatmap=req.flag("heatmap"))
        outputs, upload, tensor = await service.predict(model, req.image)
        with service.metrics.stage(model.name, "postprocess"):
            body = AnomalyResponse(
                **answer_for(model, outputs, upload=upload, tensor=tensor, route="/anomaly", options=options)
            )
        return JSONResponse(body.model_dump(exclude_none=True))

    return await handle_image_request(request, "/anomaly", ("autoencoder",), answer)


@app.get("/models", response_model=ModelsResponse)
async def list_models() -> JSONResponse:
    """Every configured model with task, input size, precision, weights' source, readiness and providers."""
    return JSONResponse(_service().models_status().model_dump())


# The page to try every model (`GET /`, files in service/static). This route wins over BentoML's own index page
# because BentoML matches a mounted app's routes before it adds `/`. The page uses only the routes above, from the
# same origin; the policy below keeps any text from model metadata from ever running as script.
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
