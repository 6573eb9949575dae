"""Requests the server cancels: uvicorn does so at its graceful shutdown deadline.

Such a request gets a JSON ``503 ShuttingDown`` (if its response had not
started) instead of the server's plain-text 500. The call it made may still
complete: the runtime lets a running event finish (up to ``close()``'s own
grace), and a write it made is then durable.

The layer that answers the server directly (the outermost one) then ends the
request normally once that answer is sent, on Python 3.11+: the server
cancelled the request's task only to stop waiting for it, and a cancellation
that escapes the app is logged by uvicorn as an ERROR with a traceback, once
per request. Inner layers (below user middleware, which may run them in a task
of its own) let the cancellation go on.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stead.http.errors import HttpError

__all__ = ["ShutdownAnswerMiddleware", "request_cancelled", "settle_cancelled", "shutting_down"]

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


def settle_cancelled() -> bool:
    """After the ``503`` was sent in full: withdraw the server's one cancellation
    request of the current task and tell the caller to return, not re-raise.
    ``False`` (re-raise) on Python 3.10 or if more than one cancellation is pending."""
    if sys.version_info < (3, 11):
        return False
    task = asyncio.current_task()
    if task is None or task.cancelling() != 1:
        return False
    task.uncancel()
    return True


_LOGGED = "stead.cut_logged"  # scope key: the warning below was logged for this request


def shutting_down(what: str, scope: Scope) -> HttpError:
    """The answer for a request cancelled while ``what`` ran; logged once per
    request (an inner and an outer layer may both answer it), no traceback."""
    if not scope.get(_LOGGED):
        scope[_LOGGED] = True
        logger.warning("%s: the request was cancelled (the server is shutting down)", what)
    message = (
        "the server is shutting down and stopped waiting for this call; the call may still complete"
    )
    return HttpError(503, "ShuttingDown", message, {"Connection": "close"})


class ShutdownAnswerMiddleware:
    """Answers ``503 ShuttingDown`` for a cancelled request that had no response yet
    (the RPC fast path does the same itself), then lets the cancellation go on,
    or, with ``outermost``, ends the request once its response was sent in full."""

    def __init__(self, app: ASGIApp, *, outermost: bool = False) -> None:
        self.app = app
        self.outermost = outermost

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = finished = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, finished
            kind = message["type"]
            started = started or kind == "http.response.start"
            await send(message)
            finished = finished or (kind == "http.response.body" and not message.get("more_body"))

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if not request_cancelled():
                raise
            if not started:
                error = shutting_down(f"{scope['method']} {scope['path']}", scope)
                await error.response()(scope, receive, tracking_send)
            if self.outermost and finished and settle_cancelled():
                return
            raise
