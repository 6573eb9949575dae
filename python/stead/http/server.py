"""How ``stead serve`` runs the app under uvicorn: one socket write per response.

uvicorn's httptools protocol writes a response's status line and headers in
one ``transport.write`` and its body in another; with ``TCP_NODELAY`` each is
its own ``send()`` and its own packet, and on a busy machine the second
syscall costs as much as the rest of a small RPC response. The protocol below
is uvicorn's own with a transport that gathers the writes made in one event
loop iteration and sends them together at the end of it. Everything else
(parsing, keep-alive, flow control, shutdown) is uvicorn's.

This uses uvicorn's public ``http=`` setting (a protocol class); the class it
extends lives in uvicorn's internals, so without httptools, or if that class
moves, ``http_protocol()`` falls back to uvicorn's ``"auto"``.

``StopSignals`` handles SIGINT and SIGTERM for the whole of ``stead serve``
(starting the runtime, serving, closing it); ``uvicorn_server()`` is a server
that leaves them to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stead.runtime import Runtime

__all__ = ["StopSignals", "http_protocol", "uvicorn_server"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


class _GatheringTransport:
    """Delegates to a transport, but sends the writes of one loop iteration as one."""

    __slots__ = ("_chunks", "_loop", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._chunks: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        self._chunks.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def http_protocol() -> Any:
    """The protocol class for ``uvicorn.Config(http=...)``, or ``"auto"``."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is not installed: uvicorn picks h11
        return "auto"

    class GatheringHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            gathering = _GatheringTransport(transport, asyncio.get_running_loop())
            self.transport = gathering  # type: ignore[assignment]

    return GatheringHttpToolsProtocol


def uvicorn_server(config: Any) -> Any:
    """A ``uvicorn.Server`` for ``config`` that leaves SIGINT and SIGTERM to ``StopSignals``."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn would install its own handlers for the duration of serve() and
            # raise the signal again after it; StopSignals covers start and close too.
            yield

    return Server(config)


class StopSignals:
    """SIGINT and SIGTERM while ``stead serve`` starts, serves and closes a runtime.

    Handled through ``loop.add_signal_handler``, so a handler never raises (under
    uvloop, an exception raised by a ``signal.signal`` handler while the loop waits
    is logged and lost). The first signal stops uvicorn gracefully, or skips
    serving if the runtime is still starting. A second one, or one while the
    runtime closes, closes it now: the events still running are cancelled
    (``close(grace=0)``), and their requests answered. ``say`` tells the user.
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, runtime: Runtime, server: Any, *, say: Callable[[str], None]) -> None:
        self._runtime = runtime
        self._server = server
        self._say = say
        self._count = 0
        self._last = signal.SIGTERM
        self._started = False  # the runtime: closing it early would race start()
        self._closing = False
        self._hurry: asyncio.Future[None] | None = None

    @property
    def requested(self) -> bool:
        """Whether a signal arrived."""
        return self._count > 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The handlers, on the running loop; the previous ones are back after."""
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in self._SIGNALS}
        for sig in self._SIGNALS:
            loop.add_signal_handler(sig, self._received, sig)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                if handler is not None:  # None: not set from Python; leave the default
                    signal.signal(sig, handler)

    def started(self) -> None:
        """The runtime started: a second signal may close it from now on."""
        self._started = True
        if self._count > 1:
            self._hurry_close()

    async def close(self, close: Callable[[], Awaitable[None]]) -> None:
        """Run ``close`` (which closes the runtime), hurried as the signals say."""
        self._closing = True
        try:
            await close()
        finally:
            if self._hurry is not None:
                with contextlib.suppress(Exception):  # ``close`` reports the same error
                    await self._hurry

    def _received(self, sig: signal.Signals) -> None:
        self._count += 1
        self._last = sig
        self._server.should_exit = True  # also if serve() is about to begin
        if not self._started and self._count == 1:
            self._say(f"{signal.Signals(sig).name} while starting: stopping once started")
        if self._started and (self._count > 1 or self._closing):
            self._hurry_close()

    def _hurry_close(self) -> None:
        if self._hurry is None:
            name = signal.Signals(self._last).name
            self._say(f"{name}: closing now, cancelling the events still running")
            self._hurry = asyncio.ensure_future(self._runtime.close(grace=0))
