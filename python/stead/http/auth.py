"""Bearer-token authentication for every route but ``/healthz`` (pure ASGI)."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from stead.http.errors import HttpError

__all__ = ["BearerAuthMiddleware", "BearerToken", "route_path"]

_OPEN_PATHS = frozenset({"/healthz"})
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="stead"'}
# Close code "policy violation": a WebSocket refused before the handshake completes.
_WS_POLICY_VIOLATION = 1008


def route_path(scope: Scope) -> str:
    """The request path relative to where the app is mounted."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


class BearerToken:
    """Checks ``Authorization: Bearer <token>`` in constant time.

    The scheme is case-insensitive (RFC 9110 §11.1): ``bearer <token>`` passes too.
    """

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def refusal(self, scope: Scope) -> HttpError | None:
        """``None`` if the request may pass, else the 401 to answer."""
        for key, value in scope["headers"]:
            if key == b"authorization":
                if self._matches(bytes(value)):
                    return None
                return HttpError(401, "Unauthorized", "wrong bearer token", _CHALLENGE)
        return HttpError(401, "Unauthorized", "missing bearer token", _CHALLENGE)

    def _matches(self, value: bytes) -> bool:
        scheme, _, credentials = value.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(
            credentials.lstrip(b" "), self._expected
        )


class BearerAuthMiddleware:
    """Answers 401 unless the token matches; ``/healthz`` is open.

    HTTP requests and WebSocket connections (plugin routes may add them) alike:
    an unauthenticated WebSocket is refused before it is accepted.
    """

    def __init__(self, app: ASGIApp, token: BearerToken) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind in ("http", "websocket") and route_path(scope) not in _OPEN_PATHS:
            refusal = self.token.refusal(scope)
            if refusal is not None:
                if kind == "http":
                    await refusal.response()(scope, receive, send)
                else:
                    await _refuse_websocket(refusal, scope, send)
                return
        await self.app(scope, receive, send)


async def _refuse_websocket(error: HttpError, scope: Scope, send: Send) -> None:
    """Refuse a WebSocket handshake: with ``error`` as an HTTP response where the
    server supports that (the ASGI denial-response extension), else by closing
    with code 1008 (which servers answer with 403)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = error.body()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            *error.raw_headers(),
        ]
        await send(
            {"type": "websocket.http.response.start", "status": error.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.close", "code": _WS_POLICY_VIOLATION, "reason": error.message})
