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
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["http_protocol"]

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
