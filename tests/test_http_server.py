"""``stead serve``'s uvicorn protocol: a response leaves in one write, in order."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from stead.http.server import _GatheringTransport, http_protocol

pytestmark = pytest.mark.anyio


async def test_writes_of_one_loop_iteration_leave_as_one_send() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    gathering = _GatheringTransport(transport, loop)  # type: ignore[arg-type]
    try:
        gathering.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        gathering.write(b"ok")
        with pytest.raises(BlockingIOError):  # nothing is sent during this loop iteration...
            theirs.recv(1024)
        assert await loop.sock_recv(theirs, 1024) == (  # ...then both writes, as one
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        )
        gathering.write(b"second")
        gathering.close()  # flushes before closing
        assert await loop.sock_recv(theirs, 1024) == b"second"
        assert await loop.sock_recv(theirs, 1024) == b""  # closed
        assert gathering.is_closing()  # delegated to the real transport
    finally:
        theirs.close()


def test_falls_back_to_auto_without_httptools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn.protocols.http.httptools_impl", None)
    assert http_protocol() == "auto"


def test_uses_the_gathering_protocol_with_httptools() -> None:
    pytest.importorskip("httptools")
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    protocol = http_protocol()
    assert isinstance(protocol, type) and issubclass(protocol, HttpToolsProtocol)
