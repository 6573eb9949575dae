"""Requests the server cancels: uvicorn does so at its graceful shutdown deadline.

Such a request gets a JSON ``503 ShuttingDown`` (if its response had not
started) instead of the server's plain-text 500, and its cancellation goes on.
The call it made may still complete: the runtime lets a running event finish
(up to ``close()``'s own grace), and a write it made is then durable.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stead.http.errors import HttpError

__all__ = ["ShutdownAnswerMiddleware", "request_cancelled", "shutting_down"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


def request_cancelled() -> bool:
    """Whether the request's own task is being cancelled (a shutdown, say), as
    opposed to a handler raising ``CancelledError`` or awaiting a cancelled task.
    Python 3.10 cannot tell them apart: there, the cancellation is passed on."""
    if sys.version_info < (3, 11):
        return True
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def shutting_down(what: str) -> HttpError:
    """The answer for a request cancelled while ``what`` ran; logged once, no traceback."""
    logger.warning("%s: the request was cancelled (the server is shutting down)", what)
    message = (
        "the server is shutting down and stopped waiting for this call; the call may still complete"
    )
    return HttpError(503, "ShuttingDown", message, {"Connection": "close"})


class ShutdownAnswerMiddleware:
    """Answers ``503 ShuttingDown`` for a cancelled request that had no response yet
    (the RPC fast path does the same itself), then lets the cancellation go on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if not started and request_cancelled():
                error = shutting_down(f"{scope['method']} {scope['path']}")
                await error.response()(scope, receive, send)
            raise
