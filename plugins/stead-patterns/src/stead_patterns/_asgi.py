"""Serve an object's ``fetch`` with any ASGI application (a router, a framework app).

The catalog mounts a Hono app inside a Durable Object; in Python the same
role is played by an ASGI app such as a Starlette ``Router``. ``asgi_fetch``
turns the ``stead.Request`` into one ASGI HTTP exchange and collects the
answer into a ``stead.Response``.

The whole answer is collected, a streamed one too: the client of an object's
``fetch`` never goes away, so ``receive`` reports ``http.disconnect`` only
once the response is complete (a disconnect reported earlier makes Starlette's
``StreamingResponse`` stop after its first chunk). A ``stead.Response`` holds
one value per header name: a header the app sends more than once is joined
with ``", "`` (RFC 9110, section 5.3), except ``Set-Cookie``, whose values
cannot be joined (RFC 6265): sending it twice is a ``ValueError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, MutableMapping
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
        self._complete = asyncio.Event()
        self.status = 500
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []

    async def receive(self) -> Message:
        if self._body is None:
            # Nobody disconnects from a fetch: only say so once the answer is whole.
            await self._complete.wait()
            return {"type": "http.disconnect"}
        body, self._body = self._body, None
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = _joined(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete()

    def complete(self) -> None:
        """The answer is whole (or the app has returned): ``receive`` reports the end."""
        self._complete.set()


def _joined(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The ASGI headers as one value per (lowercase) name; repeated ones joined."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name not in headers:
            headers[name] = value
        elif name == "set-cookie":
            raise ValueError(
                "the app sent Set-Cookie twice: a stead.Response carries one value per "
                "header, and cookies cannot be joined into one; set one cookie per response"
            )
        else:
            headers[name] = f"{headers[name]}, {value}"
    return headers


async def asgi_fetch(app: ASGIApp, request: Request) -> Response:
    """Run ``request`` through the ASGI ``app`` and return its whole answer.

    ``ValueError`` if the app sends ``Set-Cookie`` more than once (see the module).
    """
    exchange = _Exchange(request.body)
    try:
        await app(_scope(request), exchange.receive, exchange.send)
    finally:
        exchange.complete()
    return Response(b"".join(exchange.chunks), exchange.status, exchange.headers)
