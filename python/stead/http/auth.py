"""Bearer-token authentication for every route but ``/healthz`` (pure ASGI)."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from stead.http.errors import HttpError

__all__ = ["BearerAuthMiddleware", "BearerToken", "route_path"]

_OPEN_PATHS = frozenset({"/healthz"})
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="stead"'}


def route_path(scope: Scope) -> str:
    """The request path relative to where the app is mounted."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


class BearerToken:
    """Checks ``Authorization: Bearer <token>`` in constant time."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def refusal(self, scope: Scope) -> HttpError | None:
        """``None`` if the request may pass, else the 401 to answer."""
        for key, value in scope["headers"]:
            if key == b"authorization":
                if hmac.compare_digest(bytes(value), self._expected):
                    return None
                return HttpError(401, "Unauthorized", "wrong bearer token", _CHALLENGE)
        return HttpError(401, "Unauthorized", "missing bearer token", _CHALLENGE)


class BearerAuthMiddleware:
    """Answers 401 unless the token matches; ``/healthz`` is open."""

    def __init__(self, app: ASGIApp, token: BearerToken) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope) not in _OPEN_PATHS:
            refusal = self.token.refusal(scope)
            if refusal is not None:
                await refusal.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
