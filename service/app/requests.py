"""Reading a request, whatever its shape, within limits: bodies, JSON and image requests.

Image requests come as multipart form data (file field ``image`` plus form fields), JSON with ``image`` as base64
(or a ``data:`` URL; line breaks allowed, as ``base64`` prints them), or a raw image body with the fields as query
parameters. Query parameters work with every body type. Every malformed request is a
:class:`~service.errors.ServeError` (a 4xx with ``{"error": ...}``), never an exception from a parser.

The limits are small functions every route calls (the image routes, ``/v2``, tasks that take a second file or no
image at all):

- :func:`check_declared_length` refuses a body from its ``Content-Length`` before any of it is read;
- :func:`counted` counts a body as it arrives and stops it at the limit (chunked bodies have no length), and
  :func:`drain_refused_body` reads the rest of a refused body so that simple clients see the 413;
- :func:`body_cost` is what holding and parsing a body will cost, reserved in the worker's memory budget before it
  is read (service.app.work);
- :func:`parse_json` bounds JSON: nesting depth, digits of an integer, and the parser's own errors (a recursion
  error, Python's integer-string limit) all become a 400.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from ..errors import BadInput, PayloadTooLarge, ServeError
from ..tasks import FileField

__all__ = [
    "IMAGE_ONLY",
    "ImageRequest",
    "MAX_INT_DIGITS",
    "body_cost",
    "check_declared_length",
    "counted",
    "declared_length",
    "decode_base64",
    "drain_refused_body",
    "json_depth",
    "megabytes",
    "parse_image_request",
    "parse_json",
    "read_body",
]

MAX_INT_DIGITS = 64  # an integer in a JSON body longer than this is refused (Python's own limit is 4,300 digits)
_MULTIPART_SLACK = 65536  # form boundaries, headers and small fields around the image
IMAGE_ONLY = (FileField("image"),)


@dataclass(frozen=True)
class ImageRequest:
    """The files and the other fields of one request, however they were sent: strings from a form or the query,
    JSON values from a JSON body (the task's options type them)."""

    files: dict[str, bytes]
    fields: dict[str, Any]

    @property
    def image(self) -> bytes:
        return self.files.get("image", b"")


# --- bodies -----------------------------------------------------------------------------------------------------


def megabytes(size: int) -> str:
    """A byte count for people, in the unit of ``CNNSERVE_MAX_UPLOAD_MB``: MB = 10⁶ bytes (one unit system)."""
    return f"{size / 1e6:.1f} MB" if size % 100_000 else f"{size / 1e6:g} MB"


def declared_length(request: Request) -> int | None:
    """The body's ``Content-Length``, or None for a chunked body."""
    length = request.headers.get("content-length")
    return int(length) if length is not None and length.isdigit() else None


def check_declared_length(request: Request, limit: int, what: str = "request", shown: str = "") -> None:
    """A 413 for a body whose ``Content-Length`` is over ``limit``, before any of it is read. ``shown`` names the
    limit in the message, when it is not the body's own (the image routes name their upload limit)."""
    length = declared_length(request)
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the {what} is {megabytes(length)}, over the {shown or f'limit of {megabytes(limit)}'}")


class _Body:
    """How much of a request body has arrived, refused with a 413 as soon as it passes ``limit``, and whether it is
    complete (so that a refused body can be drained: :func:`drain_refused_body`). Kept in the request's scope, so
    it holds no reference back to the connection (a cycle only the garbage collector would free)."""

    def __init__(self, limit: int, what: str, shown: str = "") -> None:
        self.limit = limit
        self.what = what
        self.shown = shown or f"limit of {megabytes(limit)}"
        self.received = 0
        self.complete = False

    def count(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
            if self.received > self.limit:
                raise PayloadTooLarge(f"the {self.what} is over the {self.shown}")
        else:  # http.disconnect
            self.complete = True


def counted(request: Request, limit: int, what: str = "request", shown: str = "") -> Request:
    """The same request, its body stopped with a 413 once more than ``limit`` bytes arrived (and drainable)."""
    body = request.scope["cnnserve.body"] = _Body(limit, what, shown)
    receive = request.receive

    async def counting_receive() -> dict[str, Any]:
        message = await receive()
        body.count(message)
        return message

    return Request(request.scope, counting_receive)


async def read_body(request: Request, limit: int, what: str = "request") -> bytes:
    """The whole body, at most ``limit`` bytes (413 from ``Content-Length`` first, then while it arrives)."""
    check_declared_length(request, limit, what)
    return await counted(request, limit, what).body()


def body_cost(request: Request, limit: int, factor: float = 1.0) -> int:
    """The memory a body will take while held and parsed: its declared length (a chunked body: ``limit``) times
    ``factor`` (what parsing it adds: a JSON body with a base64 image holds the text, the string and the bytes)."""
    length = declared_length(request)
    return int(min(limit, length if length is not None else limit) * factor)


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
        body = _Body(limit=2**62, what="request")
    drained = 0
    deadline = time.monotonic() + DRAIN_SECONDS
    try:
        while not body.complete and drained < DRAIN_BYTES:
            message = await asyncio.wait_for(request.receive(), max(0.01, deadline - time.monotonic()))
            drained += len(message.get("body", b""))
            body.complete = message["type"] != "http.request" or not message.get("more_body", False)
    except (asyncio.TimeoutError, OSError):
        return


# --- JSON -------------------------------------------------------------------------------------------------------

_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{}"')  # translate(None, this) keeps []{}"
_OPENERS = np.zeros(256, dtype=np.int8)
_OPENERS[list(b"[{")] = 1
_OPENERS[list(b"]}")] = -1


def json_depth(data: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text, without parsing it (C-speed passes over the bytes):
    escapes are dropped, strings cut out, and the brackets left are summed."""
    if b"\\" in data:
        data = _ESCAPE.sub(b"", data)
    structure = data.translate(None, _NOT_STRUCTURE)
    outside = b"".join(structure.split(b'"')[::2])  # with escapes gone, quotes pair up: even pieces are outside
    if not outside:
        return 0
    return int(np.cumsum(_OPENERS[np.frombuffer(outside, dtype=np.uint8)], dtype=np.int64).max())


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadInput(f"a number in the JSON body has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _parse_float(text: str) -> float:
    # A Python-level hook: the parser calls back into the interpreter for every number, so a large tensor's parse
    # lets other threads (the event loop) run in between instead of holding the GIL for the whole document.
    return float(text)


def parse_json(data: bytes, *, max_depth: int, what: str = "the JSON body") -> Any:
    """JSON bytes → Python values, or a 400 that says what is wrong: not JSON, nested deeper than ``max_depth``,
    an integer longer than :data:`MAX_INT_DIGITS` digits."""
    depth = json_depth(data)
    if depth > max_depth:
        raise BadInput(f"{what} nests {depth} levels deep; at most {max_depth} are allowed")
    try:
        return json.loads(data, parse_int=_parse_int, parse_float=_parse_float)
    except (ValueError, UnicodeDecodeError, RecursionError):  # JSONDecodeError is a ValueError
        raise BadInput(f"{what} is not valid JSON") from None


# --- image requests ---------------------------------------------------------------------------------------------

_B64_CHUNK = 4 * 2**20  # characters decoded between two yields to the event loop (a multiple of 4)


async def decode_base64(text: str, limit: int, name: str = "image") -> bytes:
    """Base64 (or a ``data:`` URL) → bytes, at most ``limit`` of them. Whitespace and line breaks are allowed
    (what ``base64`` prints without ``-w0``); decoded in pieces, yielding to the event loop between them."""
    text = text.strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if any(c in text for c in " \t\r\n"):
        text = "".join(text.split())
    if len(text) * 3 // 4 > limit:
        raise PayloadTooLarge(f"the {name} is over the upload limit of {megabytes(limit)}")
    if len(text) % 4:
        raise BadInput(f"in a JSON body, `{name}` must be the image file encoded as base64 (its length is not whole)")
    pieces = []
    try:
        for start in range(0, len(text), _B64_CHUNK):
            pieces.append(base64.b64decode(text[start : start + _B64_CHUNK], validate=True))
            if start + _B64_CHUNK < len(text):
                await asyncio.sleep(0)
    except (binascii.Error, ValueError):
        raise BadInput(f"in a JSON body, `{name}` must be the image file encoded as base64") from None
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _form_parts(form: FormData, files: tuple[str, ...]) -> tuple[dict[str, UploadFile], dict[str, str]]:
    """A parsed form → its file parts (only those named in ``files``) and text fields; a part sent twice is a 400
    (which of two images would be meant?)."""
    found: dict[str, UploadFile] = {}
    fields: dict[str, str] = {}
    for key, value in form.multi_items():
        if key in found or key in fields:
            raise BadInput(f"the form has more than one `{key}` part; send it once")
        if key in files:
            if not isinstance(value, UploadFile):
                raise BadInput(f"`{key}` must be a file upload (-F {key}=@photo.jpg), not a text field")
            found[key] = value
        elif isinstance(value, UploadFile):
            raise BadInput(
                f"`{key}` must be a form field, not a file" + ("" if files else "; this endpoint takes none")
            )
        else:
            fields[key] = value
    return found, fields


Hold = Callable[[int], Awaitable[object]]  # reserve this many bytes of body memory until the request ends


async def parse_image_request(
    request: Request,
    limit: int,
    files: tuple[FileField, ...] = IMAGE_ONLY,
    *,
    max_json_depth: int = 32,
    hold: Hold | None = None,
) -> ImageRequest:
    """multipart / JSON / raw body → :class:`ImageRequest` with the task's ``files``; :class:`ServeError` for
    anything malformed (a missing required file, a file where a field belongs, a field where a file belongs).

    ``limit`` is the files' (together); the body may be larger by room for the form's other parts (and a JSON body
    by base64's third). ``hold`` reserves the memory the body will cost (:func:`body_cost`) before it is read."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    is_json = content_type == "application/json"
    body_limit = (limit * 4 // 3 if is_json else limit) + _MULTIPART_SLACK  # base64 is a third longer
    shown = f"limit of {megabytes(limit)}"  # the limit as set, whatever room the body has around the image
    check_declared_length(request, body_limit, "upload", shown)
    if hold is not None:
        await hold(body_cost(request, body_limit, 3.0 if is_json else 1.0))
    request = counted(request, body_limit, "upload", shown)
    fields: dict[str, Any] = dict(request.query_params.items())
    wanted = tuple(f.name for f in files)
    data: dict[str, bytes] = {}
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=4, max_fields=32, max_part_size=1024 * 1024)
        except ServeError:
            raise
        except Exception as exc:  # python-multipart / starlette raise several types for broken bodies
            raise BadInput(f"the {content_type.partition('/')[2]} body could not be parsed ({exc})") from None
        try:
            parts, form_fields = _form_parts(form, wanted)
            fields.update(form_fields)
            for name, part in parts.items():
                data[name] = await part.read()
        finally:
            await form.close()
    elif is_json:
        body = parse_json(await request.body(), max_depth=max_json_depth)
        if not isinstance(body, dict):
            raise BadInput(f"a JSON body must be an object with {_json_shape(files)}")
        for name in wanted:
            if body.get(name) is not None:
                if not isinstance(body[name], str):
                    raise BadInput(f"in a JSON body, `{name}` must be a base64 string")
                data[name] = await decode_base64(body.pop(name), limit, name)
        fields.update({k: v for k, v in body.items() if v is not None and k not in wanted})
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        if not files:
            raise BadInput("this endpoint takes no image; send its fields as JSON, a form or query parameters")
        data[files[0].name] = await request.body()
    elif not any(f.required for f in files) and not await request.body():
        pass  # nothing but query parameters (POST /generate?count=4)
    else:
        raise BadInput(
            f"unsupported content type {content_type or '(none)'!r}; send multipart/form-data with "
            f"{_form_shape(files)}, JSON with {_json_shape(files)}"
            + (", or the raw image bytes with an image/* content type" if files else ", or query parameters")
        )
    for f in files:
        if f.required and f.name not in data:
            if is_json:
                raise BadInput(f"a JSON body must be an object with {_json_shape(files)}")
            raise BadInput(f"the form has no `{f.name}` file field; send it as -F {f.name}=@photo.jpg")
    total = sum(len(v) for v in data.values())
    if total > limit:
        raise PayloadTooLarge(f"the upload is {megabytes(total)}, over the {shown}")
    return ImageRequest(data, fields)


def _form_shape(files: tuple[FileField, ...]) -> str:
    names = [f"`{f.name}`" for f in files if f.required]
    return f"the {' and '.join(names)} file{'s' if len(names) > 1 else ''}" if names else "its fields"


def _json_shape(files: tuple[FileField, ...]) -> str:
    required = [f'"{f.name}" (base64)' for f in files if f.required]
    optional = [f'"{f.name}"' for f in files if not f.required]
    parts = [", ".join(required)] if required else []
    parts.append("optional fields" + (f" ({', '.join(optional)} among them)" if optional else ""))
    return " and ".join(parts)
