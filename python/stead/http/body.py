"""The request body limit (pure ASGI): 413 before the app reads too much."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stead.http.errors import HttpError

__all__ = ["BodyLimitMiddleware", "BodyTooLargeError", "read_body"]


class BodyTooLargeError(Exception):
    """Raised from ``receive`` when a streamed body passes the limit."""


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes``: by ``Content-Length`` up front, or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        started = False
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _too_large(self.max_bytes).response()(scope, receive, send)


async def read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    """The whole request body, or ``HttpError`` 413 once it passes ``max_bytes``."""
    declared = _content_length(scope)
    if declared is not None and declared > max_bytes:
        raise _too_large(max_bytes)
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False) and message["type"] == "http.request":
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
        return body  # the usual case: one message
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    if message["type"] == "http.disconnect":
        raise HttpError(400, "Disconnected", "the client went away before sending the body")
    return b"".join(chunks)


def _too_large(max_bytes: int) -> HttpError:
    message = f"request body is over the limit of {max_bytes} bytes"
    return HttpError(413, "PayloadTooLarge", message, {"Connection": "close"})


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
