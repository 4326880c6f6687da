"""Every error the service answers is JSON ``{"error": ...}`` — also the few that BentoML answers itself.

Our routes answer errors as ``{"error"}`` (``http.py``'s handlers, including FastAPI's own 404, 405 and 422), and
BentoML's timeout and concurrency limits already do. What is left are BentoML's plain-text answers, chiefly
``/readyz``'s 503 ("Service is not ready because .__is_ready__() returns False."). This ASGI middleware, added to
the service with ``add_asgi_middleware``, rewrites an error response that is not JSON into ``{"error": <its
text>}``, and gives ``/readyz``'s 503 the reason (the same one ``/v2/health/ready`` gives). Successful answers and
JSON errors pass through untouched and unbuffered.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from starlette.datastructures import Headers, MutableHeaders

__all__ = ["JSONErrors", "not_found"]

logger = logging.getLogger("cnnserve.errors")


def not_found(path: str) -> str:
    return f"there is no {path}; the routes are listed at /docs"


def _message(scope: dict[str, Any], status: int, text: str) -> str:
    if scope.get("path") == "/readyz" and status == 503:
        from .state import current

        try:
            reason = current().catalog.readiness()
        except Exception:  # the service instance is not there yet (still starting)
            reason = None
        return reason or "not ready yet: the models are still loading"
    if status == 404:  # a path no route matched: BentoML's router answers those before our app sees them
        return not_found(scope.get("path", ""))
    if text:
        return text
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


class JSONErrors:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] | None = None  # the start of an error response being rewritten
        started = False
        chunks: list[bytes] = []

        async def _send(message: dict[str, Any]) -> None:
            nonlocal held, started
            if message["type"] == "http.response.start":
                started = True
                content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
                if message["status"] >= 400 and not content_type.startswith("application/json"):
                    held = message
                    return
            elif held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                text = b"".join(chunks).decode("utf-8", "replace").strip()
                body = json.dumps({"error": _message(scope, held["status"], text)}, separators=(",", ":")).encode()
                headers = MutableHeaders(raw=list(held.get("headers", [])))
                headers["content-type"] = "application/json"
                headers["content-length"] = str(len(body))
                await send({**held, "headers": headers.raw})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        try:
            await self.app(scope, receive, _send)
        except Exception:
            if started:
                raise
            logger.exception("unexpected error on %s", scope.get("path"))
            body = json.dumps({"error": "internal error; the server log has the details"}, separators=(",", ":"))
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": body.encode()})
