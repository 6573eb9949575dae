"""Serve an object's ``fetch`` with any ASGI application (a router, a framework app).

The catalog mounts a Hono app inside a Durable Object; in Python the same
role is played by an ASGI app such as a Starlette ``Router``. ``asgi_fetch``
turns the ``stead.Request`` into one ASGI HTTP exchange and collects the
answer into a ``stead.Response``.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit

from starlette.types import ASGIApp

from stead import Request, Response

__all__ = ["asgi_fetch"]

Message = MutableMapping[str, Any]


def _scope(request: Request) -> dict[str, Any]:
    parts = urlsplit(request.url)
    raw_path = parts.path or "/"
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": parts.query.encode(),
        "root_path": "",
        "headers": [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in request.headers.items()
        ],
        "client": None,
        "server": None,
    }


class _Exchange:
    """The receive and send callables of one request."""

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body
        self.status = 500
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []

    async def receive(self) -> Message:
        if self._body is None:
            return {"type": "http.disconnect"}
        body, self._body = self._body, None
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {
                name.decode("latin-1"): value.decode("latin-1")
                for name, value in message.get("headers", [])
            }
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))


async def asgi_fetch(app: ASGIApp, request: Request) -> Response:
    """Run ``request`` through the ASGI ``app`` and return its answer."""
    exchange = _Exchange(request.body)
    await app(_scope(request), exchange.receive, exchange.send)
    return Response(b"".join(exchange.chunks), exchange.status, exchange.headers)
