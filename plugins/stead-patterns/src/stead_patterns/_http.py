"""What the patterns share: JSON bodies, the catalog's 404, a path router and a clock.

The catalog's objects answer unknown paths with a plain ``Not found`` (404)
and report their own errors as ``{"error": "..."}``. A body that is not the
JSON a route expects is answered with 400 (the catalog's code would throw and
answer 500), and a request answered with 400 changes nothing (see ``route``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import msgspec

from stead import LimitError, Request, Response, SerializationError, Storage

__all__ = [
    "MAX_DURATION_MS",
    "MAX_NAME_LENGTH",
    "MAX_SAFE_INTEGER",
    "REFUSED",
    "BadRequest",
    "Duration",
    "Handler",
    "KeyName",
    "SafeInt",
    "SafeNumber",
    "decode_body",
    "error",
    "int_param",
    "json_safe",
    "not_found",
    "now_ms",
    "route",
]

T = TypeVar("T")

#: The longest name that becomes part of a storage key: with any prefix it stays
#: within stead's 2048-byte key limit even in 4-byte UTF-8.
MAX_NAME_LENGTH = 500
#: The longest TTL or window, in ms: ten years. Every alarm a pattern sets is at
#: most this far ahead, well inside what an alarm can say (the year 9999).
MAX_DURATION_MS = 10 * 365 * 24 * 3_600_000
#: JavaScript's ``Number.MAX_SAFE_INTEGER``: counts, amounts and other numbers a
#: pattern adds up stay within ± this, so they are exact in the catalog's
#: JavaScript clients and fit a 64-bit integer in storage however often added.
MAX_SAFE_INTEGER = 2**53 - 1

#: A name that becomes part of a storage key: 1-500 characters. RPC arguments
#: outside it are answered with 400 by the HTTP frontend.
KeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
#: A TTL or window in ms: 1 ms to ten years.
Duration = Annotated[int, msgspec.Meta(ge=1, le=MAX_DURATION_MS)]
#: An integer within ± ``MAX_SAFE_INTEGER``.
SafeInt = Annotated[int, msgspec.Meta(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]
#: A number (integer or float) within ± ``MAX_SAFE_INTEGER``.
SafeNumber = SafeInt | Annotated[float, msgspec.Meta(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]
Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    """The request is not what the route expects; answered with 400 ``{"error": message}``."""


#: What a handler raises for a request it refuses (400): a bad request, a key or
#: value over stead's limits, or a value the codec cannot store (an integer
#: beyond 64 bits in a JSON body).
REFUSED = (BadRequest, LimitError, SerializationError)


def now_ms() -> int:
    """Milliseconds since the epoch, like JavaScript's ``Date.now()``."""
    return time.time_ns() // 1_000_000


def decode_body(request: Request, type: type[T]) -> T:
    """The request body decoded as JSON into ``type``; ``BadRequest`` if it does not fit."""
    try:
        return msgspec.json.decode(request.body, type=type)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        raise BadRequest(f"invalid JSON body: {exc}") from None


def int_param(request: Request, name: str, default: int, *, minimum: int = 1, maximum: int) -> int:
    """An integer query parameter (``default`` when absent); ``BadRequest`` if it is
    not an integer from ``minimum`` to ``maximum``."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise BadRequest(f"query parameter {name!r} must be >= {minimum}, not {value}")
    if value > maximum:
        raise BadRequest(f"query parameter {name!r} must be <= {maximum}, not {value}")
    return value


def error(message: str, status: int) -> Response:
    """The catalog's error shape: ``{"error": message}``."""
    return Response.json({"error": message}, status=status)


def not_found() -> Response:
    """The catalog's answer to an unknown path."""
    return Response("Not found", status=404)


async def route(
    request: Request,
    routes: Mapping[str, Handler],
    storage: Storage | None,
    *,
    reload: Callable[[], None] | None = None,
) -> Response:
    """Call the handler for ``request.path`` (any method, as in the catalog).

    A request either completes or changes nothing, so a client that gets a 400
    (or a 500) can retry it without duplicating anything. The handler runs in
    ``storage.transaction()``: if it raises, every write it made is rolled
    back, even those before the write that failed. Then ``reload`` rebuilds
    the object's in-memory copy of its state from the (rolled back) storage,
    undoing whatever the handler changed in memory before that write.

    ``storage=None`` runs the handler outside a transaction, for a handler
    with nothing to roll back (a block copies the object's read cache when it
    opens), or one that must not roll back: a ``reentrant`` object's handler
    that awaits, since its block would also take back the writes of the events
    that run while it waits.
    """
    handler = routes.get(request.path)
    if handler is None:
        return not_found()
    try:
        with _all_or_nothing(storage, reload):
            return await handler(request)
    except REFUSED as exc:
        return error(str(exc), 400)


@contextmanager
def _all_or_nothing(storage: Storage | None, reload: Callable[[], None] | None) -> Iterator[None]:
    try:
        if storage is None:
            yield
        else:
            with storage.transaction():
                yield
    except BaseException:
        if reload is not None:
            reload()
        raise


def json_safe(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without ``UNSET`` values (JavaScript's ``JSON.stringify`` drops ``undefined``)."""
    return {key: value for key, value in data.items() if value is not msgspec.UNSET}
