"""The JSON error shape of the HTTP frontend and the mapping from stead errors.

Every error response is ``{"error": {"type": ..., "message": ...}}``; tracebacks
never leave the process (they go to the log).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from stead.errors import OverloadedError, RemoteError, StorageError

__all__ = [
    "RETRY_AFTER_SECONDS",
    "HttpError",
    "error_response",
    "handler_error",
    "http_exception_handler",
    "server_error_handler",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: ``Retry-After`` sent with 429 when an object's queue is full.
RETRY_AFTER_SECONDS = 1

_encoder = msgspec.json.Encoder()

# Starlette's own HTTP errors (routing 404/405, ...) get a type name per status.
_STATUS_TYPES = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
}


class HttpError(Exception):
    """An error answered with ``status`` and the JSON error shape."""

    def __init__(
        self,
        status: int,
        type_name: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type_name = type_name
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> Response:
        """This error as a JSON response."""
        return error_response(self.status, self.type_name, self.message, self.headers)

    def body(self) -> bytes:
        """The JSON body of the error response."""
        return _encoder.encode({"error": {"type": self.type_name, "message": self.message}})

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The extra headers, encoded for ASGI."""
        return [(name.lower().encode(), value.encode()) for name, value in self.headers.items()]


def error_response(
    status: int, type_name: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """``{"error": {"type": type_name, "message": message}}`` with ``status``."""
    body = HttpError(status, type_name, message).body()
    return Response(body, status, headers=dict(headers or {}), media_type="application/json")


def handler_error(exc: Exception) -> HttpError:
    """What a client sees when delivering to an object or running its handler raised."""
    if isinstance(exc, OverloadedError):
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return HttpError(429, "OverloadedError", str(exc), headers)
    if isinstance(exc, StorageError):
        return HttpError(503, "StorageError", str(exc))
    if isinstance(exc, RemoteError):
        return HttpError(500, exc.type_name, exc.message)
    return HttpError(500, type(exc).__name__, str(exc))


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Starlette's routing errors (404, 405, ...) in the JSON error shape."""
    assert isinstance(exc, HTTPException)
    type_name = _STATUS_TYPES.get(exc.status_code, "HTTPError")
    return error_response(exc.status_code, type_name, exc.detail, exc.headers)


async def server_error_handler(request: Request, exc: Exception) -> Response:
    """An unexpected error outside any handler: 500, traceback only in the log."""
    logger.error("unhandled error serving %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "InternalServerError", "internal server error")
