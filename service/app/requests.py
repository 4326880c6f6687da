"""Reading an image request, whatever its shape: multipart form data (file field ``image`` plus form fields), JSON
with ``image`` as base64 (or a ``data:`` URL), or a raw image body with the fields as query parameters. Query
parameters work with every body type. Every malformed request is a :class:`~service.errors.ServeError` (a 4xx with
``{"error": ...}``), never an exception from a parser. The upload limit is checked against ``Content-Length``
before the body is read, and counted while it arrives for bodies without one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from ..errors import BadInput, PayloadTooLarge, ServeError

__all__ = ["ImageRequest", "drain_refused_body", "parse_image_request"]


@dataclass(frozen=True)
class ImageRequest:
    """The image bytes and the other fields of one request, however they were sent: strings from a form or the
    query, JSON values from a JSON body (the task's options type them)."""

    image: bytes
    fields: dict[str, Any]


def megabytes(size: int) -> str:
    """A byte count for people, in the unit of ``CNNSERVE_MAX_UPLOAD_MB``: MB = 10⁶ bytes (one unit system)."""
    return f"{size / 1e6:.1f} MB" if size % 100_000 else f"{size / 1e6:g} MB"


def _decode_base64(text: str, limit: int) -> bytes:
    text = text.strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) * 3 // 4 > limit:
        raise PayloadTooLarge(f"the image is over the upload limit of {megabytes(limit)}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("in a JSON body, `image` must be the image file encoded as base64") from None


class _Body:
    """A request body counted as it arrives: refused with a 413 as soon as it passes ``limit``, and remembered as
    complete or not, so that a refused body can be drained (:func:`drain_refused_body`)."""

    def __init__(self, request: Request, limit: int, upload_limit: int | None = None) -> None:
        self._receive = request.receive
        self.limit = limit
        self.upload_limit = upload_limit or limit  # the limit as the user set it (``limit`` adds base64's share)
        self.received = 0
        self.complete = False

    async def receive(self) -> dict[str, Any]:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
            if self.received > self.limit:
                raise PayloadTooLarge(f"the upload is over the limit of {megabytes(self.upload_limit)}")
        else:  # http.disconnect
            self.complete = True
        return message


DRAIN_BYTES = 64 * 2**20  # the most of a refused body read and dropped before closing…
DRAIN_SECONDS = 10.0  # …and for how long


async def drain_refused_body(request: Request) -> None:
    """Read and drop the rest of a body the service refused (413), as nginx does before closing: a client that
    sends its whole body before reading (Python's urllib, most simple clients) otherwise gets "connection reset by
    peer" instead of the 413. Capped in bytes and time; a client that asked ``Expect: 100-continue`` has not sent
    its body and gets the 413 at once."""
    if request.headers.get("expect", "").lower() == "100-continue":
        return
    body = request.scope.get("cnnserve.body")
    if body is None:  # refused from its Content-Length, before any of it was read
        body = _Body(request, limit=2**62)
    drained = 0
    deadline = time.monotonic() + DRAIN_SECONDS
    try:
        while not body.complete and drained < DRAIN_BYTES:
            message = await asyncio.wait_for(body._receive(), max(0.01, deadline - time.monotonic()))
            drained += len(message.get("body", b""))
            body.complete = message["type"] != "http.request" or not message.get("more_body", False)
    except (asyncio.TimeoutError, OSError):
        return


async def parse_image_request(request: Request, limit: int) -> ImageRequest:
    """multipart / JSON / raw body → :class:`ImageRequest`; :class:`ServeError` for anything malformed."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit * 4 // 3 + 65536:
        raise PayloadTooLarge(f"the request is {megabytes(int(length))}, over the upload limit of {megabytes(limit)}")
    body = request.scope["cnnserve.body"] = _Body(request, limit * 4 // 3 + 65536, limit)  # chunked: no Content-Length
    request = Request(request.scope, body.receive)
    fields: dict[str, Any] = dict(request.query_params.items())
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
        fields.update({k: v for k, v in body.items() if v is not None})
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        data = await request.body()
    else:
        raise BadInput(
            f"unsupported content type {content_type or '(none)'!r}; send multipart/form-data with an `image` file, "
            "JSON with a base64 `image`, or the raw image bytes with an image/* content type"
        )
    if len(data) > limit:
        raise PayloadTooLarge(f"the upload is {megabytes(len(data))}, over the limit of {megabytes(limit)}")
    return ImageRequest(data, fields)
