"""One exception type for everything a client can get wrong, mapped to an HTTP status.

The served path raises :class:`ServeError` (or a subclass) with a message a person can act on; the service turns
it into ``{"error": message}`` with the status below. The batch scorer writes the same message into its JSONL.
"""

from __future__ import annotations

__all__ = ["ServeError", "BadInput", "ModelNotFound", "PayloadTooLarge", "ModelUnavailable"]


class ServeError(Exception):
    status: int = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadInput(ServeError):
    status = 400


class ModelNotFound(ServeError):
    status = 404


class PayloadTooLarge(ServeError):
    status = 413


class ModelUnavailable(ServeError):
    status = 503
