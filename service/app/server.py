"""What the service changes in the server under it (BentoML's app, uvicorn's HTTP protocol, the C allocator), each
at the one place that decides it (the JSON error bodies are :mod:`.json_errors`'s):

- :func:`templated_traffic_metrics`: BentoML's HTTP metrics (``bentoml_*_request_total``, ``…_duration_seconds``,
  ``…_in_progress``) label each request with its raw URL path, so every distinct path a client makes up is a new
  time series that lives until a restart. The middleware BentoML builds is replaced (``install``) by this subclass,
  which labels with the route's template (``/v2/models/{name}/ready``) and folds every unknown path into one
  value.
- :func:`header_timeout_protocol`: uvicorn's HTTP protocols close a kept-alive connection after
  ``timeout_keep_alive`` but wait forever for a request's headers; this subclass of uvicorn's chosen protocol closes
  a connection whose headers have not arrived within ``CNNSERVE_HEADER_TIMEOUT_S`` (with a 408), which is what
  uvicorn's ``auto`` protocol becomes (``install``).
- :func:`without_idle_tracing`: BentoML wraps every request in OpenTelemetry's ASGI middleware, which makes a
  span and two more per message sent or received even when no exporter is configured and nothing is ever recorded
  (``tracing.sample_rate`` defaults to 0). That was a measurable share of the API tier's CPU per request
  (``cnnserve bench serving-cpu``); with no exporter configured the middleware is left out. Configure
  ``tracing.exporter_type`` in BentoML's configuration and it is there as before.
- :func:`~service.app.work.tune_malloc` (memory given back after large requests; see there).
- Pillow's limit on the text a PNG's header may inflate (64 MB by default, on the event loop when a small upload is
  opened there) is lowered to 4 MB: text metadata is never used here, and a few kB of compressed text must not cost
  a long pause; a PNG with more is refused with a 400.
"""

from __future__ import annotations

import asyncio
import json
import re
from functools import lru_cache
from typing import Any

from starlette.routing import Mount, compile_path

from .work import tune_malloc

__all__ = [
    "header_timeout_protocol",
    "install",
    "route_template",
    "templated_traffic_metrics",
    "tracing_configured",
    "without_idle_tracing",
]

# --- metrics labelled by route template ---------------------------------------------------------------------------

UNKNOWN_ROUTE = "(unknown)"


def _route_patterns(app: Any, prefix: str = "") -> list[tuple[re.Pattern[str], str]]:
    """Every route template of a Starlette app and the apps mounted in it, with the pattern matching its paths. A
    FastAPI app's templates are its OpenAPI paths (its routers' own route objects are FastAPI's internals) plus its
    plain routes (the page, static files)."""
    patterns: list[tuple[re.Pattern[str], str]] = []

    def add(template: str) -> None:
        patterns.append((compile_path(template)[0], template.replace(":path}", "}")))

    if hasattr(app, "openapi"):
        for template in app.openapi().get("paths", {}):
            add(prefix + template)
    for route in getattr(app, "routes", []):
        if isinstance(route, Mount):
            inner = _route_patterns(route.app, prefix + route.path) if hasattr(route.app, "routes") else []
            patterns.extend(
                inner or [(compile_path(prefix + route.path + "/{path:path}")[0], prefix + route.path + "/{path}")]
            )
        elif isinstance(getattr(route, "path", None), str):
            add(prefix + route.path)
    return patterns


_PATTERNS: dict[int, list[tuple[re.Pattern[str], str]]] = {}
_FIXED: dict[str, str] = {}  # paths without parameters, once matched (the hot ones)


def route_template(app: Any, path: str) -> str:
    """The template of the route that answers ``path`` (``/v2/models/{name}/ready``), or ``(unknown)``: a bounded
    set of values, whatever paths clients send."""
    template = _FIXED.get(path)
    if template is not None:
        return template
    patterns = _PATTERNS.get(id(app))
    if patterns is None:
        patterns = _PATTERNS[id(app)] = _route_patterns(app)
    template = next((t for pattern, t in patterns if pattern.match(path)), UNKNOWN_ROUTE)
    if template == path and len(_FIXED) < 4096:
        _FIXED[path] = template
    return template


@lru_cache(maxsize=1)
def templated_traffic_metrics() -> type:
    """The subclass of BentoML's traffic-metrics middleware that labels by route template (built on first use:
    BentoML's class is imported late)."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    class TemplatedTrafficMetrics(RunnerTrafficMetricsMiddleware):
        """BentoML's traffic metrics, labelled by route template (see the module's docstring)."""

        def __init__(self, app: Any, **options: Any) -> None:
            super().__init__(_RestorePath(app), **options)

        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"] != "/metrics" and "app" in scope:
                scope["cnnserve.raw_path"] = scope["path"]
                scope["path"] = route_template(scope["app"], scope["path"])
            await super().__call__(scope, receive, send)

    return TemplatedTrafficMetrics


class _RestorePath:
    """Inside the metrics middleware: the request's real path back, for everything that routes it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raw = scope.pop("cnnserve.raw_path", None)
        if raw is not None:
            scope["path"] = raw
        await self.app(scope, receive, send)


# --- a header-read timeout for uvicorn ------------------------------------------------------------------------------

_TIMEOUT_BODY = json.dumps({"error": "the request's headers did not arrive in time"}).encode()
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


def header_timeout_protocol(base: type, timeout_s: float) -> type:
    """``base`` (uvicorn's h11 or httptools protocol) with a deadline for each request's headers: armed when the
    connection opens and when bytes of a next request arrive, cancelled once the request's headers are parsed."""

    class HeaderTimeoutProtocol(base):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._awaiting_headers():
                if self._header_timer is None:
                    self._arm_header_timer()
            else:
                self._cancel_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is None or cycle.response_complete

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self._awaiting_headers() and not self.transport.is_closing():
                self.transport.write(_TIMEOUT_RESPONSE)
                self.transport.close()

    HeaderTimeoutProtocol.__name__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeoutProtocol


class _PassThrough:
    """Stands in for OpenTelemetry's ASGI middleware: the same constructor, no spans."""

    def __init__(self, app: Any, **_options: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def tracing_configured() -> bool:
    """Whether BentoML's configuration names a trace exporter (spans would then go somewhere)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return bool(BentoMLContainer.config.tracing.exporter_type.get())


def without_idle_tracing() -> bool:
    """Leave OpenTelemetry's middleware out of the app BentoML builds when no exporter is configured (BentoML imports
    the class when it builds the app, after this runs). Returns whether it was left out."""
    if tracing_configured():
        return False
    from opentelemetry.instrumentation import asgi

    asgi.OpenTelemetryMiddleware = _PassThrough
    return True


_installed = False


def install(header_timeout_s: float) -> None:
    """Put the pieces above where BentoML and uvicorn pick them up (once per process, before the server starts)."""
    global _installed
    if _installed:
        return
    _installed = True
    tune_malloc()
    from PIL import PngImagePlugin

    PngImagePlugin.MAX_TEXT_MEMORY = min(PngImagePlugin.MAX_TEXT_MEMORY, 4 * 2**20)
    from bentoml._internal.server.http import instruments
    from uvicorn import config as uvicorn_config
    from uvicorn.importer import import_from_string

    instruments.RunnerTrafficMetricsMiddleware = templated_traffic_metrics()
    without_idle_tracing()
    auto = import_from_string(uvicorn_config.HTTP_PROTOCOLS["auto"])
    uvicorn_config.HTTP_PROTOCOLS["auto"] = header_timeout_protocol(auto, header_timeout_s)
