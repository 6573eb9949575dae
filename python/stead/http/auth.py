"""Bearer-token authentication for every route but ``/healthz`` (pure ASGI)."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from stead.http.errors import error_response

__all__ = ["BearerAuthMiddleware", "route_path"]

_OPEN_PATHS = frozenset({"/healthz"})
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="stead"'}


def route_path(scope: Scope) -> str:
    """The request path relative to where the app is mounted."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


class BearerAuthMiddleware:
    """Answers 401 unless ``Authorization: Bearer <token>`` matches."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"authorization")
        if given is None:
            response = error_response(401, "Unauthorized", "missing bearer token", _CHALLENGE)
        elif not hmac.compare_digest(given, self._expected):
            response = error_response(401, "Unauthorized", "wrong bearer token", _CHALLENGE)
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
