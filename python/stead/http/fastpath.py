"""The RPC fast path: ``POST /objects/{binding}/{name}/rpc/{method}`` as raw ASGI.

``FastRpc`` is a middleware that ``SteadApp`` places just above stead's own
middleware (bearer auth, body limit) and the router, and below the
middleware a user adds with ``app.add_middleware()``: the user's middleware
(auth, CORS, logging) sees RPC calls like every other request, while the hot
path skips Starlette's routing and request objects.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from stead.http.auth import BearerToken, route_path
from stead.http.errors import HttpError, error_response
from stead.http.routes import ObjectRoutes

__all__ = ["FastRpc"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


class FastRpc:
    """Serves RPC calls with ``objects`` (checking ``bearer`` first if given);
    passes every other request on to ``app``.

    It also refuses, for every route, paths that are not UTF-8 once
    percent-decoded.
    """

    def __init__(
        self,
        app: ASGIApp,
        objects: ObjectRoutes,
        bearer: BearerToken | None,
        *,
        outermost: bool = False,
    ) -> None:
        self.app = app
        self._objects = objects
        self._bearer = bearer
        self._outermost = outermost  # no user middleware above: ``send`` is the server's

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if "\ufffd" in scope["path"] and not _utf8_path(scope):
                # Servers decode the path with errors="replace": %FF and %FE would both
                # become U+FFFD and address one object under two names.
                message = "the path is not valid UTF-8 once percent-decoded"
                await HttpError(400, "InvalidName", message).response()(scope, receive, send)
                return
            if scope["method"] == "POST":
                parts = route_path(scope).split("/")
                # ["", "objects", binding, name, "rpc", method], with a non-empty name
                if len(parts) == 6 and parts[1] == "objects" and parts[4] == "rpc" and parts[3]:
                    await self._rpc(scope, receive, send, parts)
                    return
        await self.app(scope, receive, send)

    async def _rpc(self, scope: Scope, receive: Receive, send: Send, parts: list[str]) -> None:
        refusal = None if self._bearer is None else self._bearer.refusal(scope)
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        try:
            await self._objects.rpc(
                scope, receive, send, parts[2], parts[3], parts[5], outermost=self._outermost
            )
        except Exception as exc:  # a bug of ours: still no traceback for the client
            logger.error("RPC %s failed", route_path(scope), exc_info=exc)
            await error_response(500, "InternalServerError", "internal server error")(
                scope, receive, send
            )


def _utf8_path(scope: Scope) -> bool:
    """Whether the request path, as sent, percent-decodes to valid UTF-8."""
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        return True  # the server gave no raw path: nothing else to go by
    try:
        unquote_to_bytes(raw.partition(b"?")[0]).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
