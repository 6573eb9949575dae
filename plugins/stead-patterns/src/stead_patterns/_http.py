"""What the patterns share: JSON bodies, the catalog's 404, a path router and a clock.

The catalog's objects answer unknown paths with a plain ``Not found`` (404)
and report their own errors as ``{"error": "..."}``. A body that is not the
JSON a route expects is answered with 400 (the catalog's code would throw and
answer 500).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, TypeVar

import msgspec

from stead import LimitError, Request, Response

__all__ = [
    "BadRequest",
    "Handler",
    "KeyName",
    "Positive",
    "decode_body",
    "error",
    "int_param",
    "json_safe",
    "not_found",
    "now_ms",
    "route",
]

T = TypeVar("T")

#: A name that becomes part of a storage key: 1-500 characters, so that with any
#: prefix it stays within stead's 2048-byte key limit even in 4-byte UTF-8. RPC
#: arguments outside it are answered with 400 by the HTTP frontend.
KeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
#: A positive integer argument.
Positive = Annotated[int, msgspec.Meta(ge=1)]
Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    """The request is not what the route expects; answered with 400 ``{"error": message}``."""


def now_ms() -> int:
    """Milliseconds since the epoch, like JavaScript's ``Date.now()``."""
    return time.time_ns() // 1_000_000


def decode_body(request: Request, type: type[T]) -> T:
    """The request body decoded as JSON into ``type``; ``BadRequest`` if it does not fit."""
    try:
        return msgspec.json.decode(request.body, type=type)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        raise BadRequest(f"invalid JSON body: {exc}") from None


def int_param(request: Request, name: str, default: int, *, minimum: int = 1) -> int:
    """An integer query parameter (``default`` when absent); ``BadRequest`` if invalid."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise BadRequest(f"query parameter {name!r} must be >= {minimum}, not {value}")
    return value


def error(message: str, status: int) -> Response:
    """The catalog's error shape: ``{"error": message}``."""
    return Response.json({"error": message}, status=status)


def not_found() -> Response:
    """The catalog's answer to an unknown path."""
    return Response("Not found", status=404)


async def route(request: Request, routes: Mapping[str, Handler]) -> Response:
    """Call the handler for ``request.path`` (any method, as in the catalog)."""
    handler = routes.get(request.path)
    if handler is None:
        return not_found()
    try:
        return await handler(request)
    except (BadRequest, LimitError) as exc:  # LimitError: a key or value over stead's limits
        return error(str(exc), 400)


def json_safe(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without ``UNSET`` values (JavaScript's ``JSON.stringify`` drops ``undefined``)."""
    return {key: value for key, value in data.items() if value is not msgspec.UNSET}
