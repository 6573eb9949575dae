"""The request body limit (pure ASGI): 413 before the app reads too much."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stead.http.errors import error_response

__all__ = ["BodyLimitMiddleware", "BodyTooLargeError"]


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
        message = f"request body is over the limit of {self.max_bytes} bytes"
        response = error_response(413, "PayloadTooLarge", message, {"Connection": "close"})
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
