"""A small app for the HTTP/CLI tests: typed RPC methods, a fetch handler, failure cases.

``runtime`` is the TARGET of ``stead serve tests._apps.counter:runtime``; its data
dir and durability come from ``STEAD_TEST_DATA_DIR`` / ``STEAD_TEST_DURABILITY``.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

import stead


class Point(msgspec.Struct):
    x: int
    y: int


class Counter(stead.DurableObject):
    """A counter with every kind of RPC signature the HTTP layer must handle."""

    gate: asyncio.Event | None = None  # set by tests to hold a turn open

    async def increment(self, by: int = 1) -> int:
        count: int = self.ctx.storage.get("count", 0) + by
        self.ctx.storage.put("count", count)
        return count

    def get(self) -> int:
        count: int = self.ctx.storage.get("count", 0)
        return count

    def label(self, text: str, *, upper: bool = False) -> str:
        return text.upper() if upper else text

    def weekday(self, day: datetime) -> str:
        return day.strftime("%A")

    def shift(self, point: Point, dx: Annotated[int, msgspec.Meta(ge=0)] = 1) -> Point:
        return Point(point.x + dx, point.y)

    def pick(self, mode: Literal["a", "b"], *rest: int, **extra: float) -> dict[str, Any]:
        return {"mode": mode, "rest": list(rest), "extra": extra}

    def echo(self, value: Any) -> Any:
        return value

    def by_rank(self, ranks: dict[int, str]) -> list[str]:
        return [ranks[rank] for rank in sorted(ranks)]

    def fail(self, message: str) -> None:
        raise ValueError(message)

    def unencodable(self) -> Any:
        return object()

    async def hold(self) -> str:
        if Counter.gate is not None:
            await Counter.gate.wait()
        return "released"

    def _private(self) -> str:
        return "never over HTTP"

    async def fetch(self, request: stead.Request) -> stead.Response:
        if request.path == "/count" and request.method == "GET":
            return stead.Response.json({"count": self.ctx.storage.get("count", 0)})
        if request.path == "/echo":
            return stead.Response.json(
                {
                    "method": request.method,
                    "path": request.path,
                    "query": request.query,
                    "body": request.text(),
                    "header": request.headers.get("x-test"),
                    "authorization": request.headers.get("authorization"),
                },
                status=201,
                headers={"x-from-object": "yes"},
            )
        if request.path == "/headers":
            return stead.Response.json(dict(request.headers))
        if request.path == "/hold":
            return stead.Response.json(await self.hold())
        if request.path == "/boom":
            raise RuntimeError("fetch exploded")
        return stead.Response(b"not here", status=404, headers={"content-type": "text/plain"})


class Plain(stead.DurableObject):
    """No fetch handler, one method."""

    def ping(self) -> str:
        return "pong"

    def var(self, name: str) -> str | None:
        """The var ``name`` of the runtime's env (``stead serve --var``), or None."""
        value = getattr(self.env, name, None)
        return value if isinstance(value, str) else None


# Responses no HTTP server can send as they are: a handler's bug.
INVALID_RESPONSES = {
    "/status-999": lambda: stead.Response(b"x", status=999),
    "/status-0": lambda: stead.Response(b"x", status=0),
    "/int-header": lambda: stead.Response(b"x", headers={"x-count": 5}),  # type: ignore[dict-item]
    "/crlf-header": lambda: stead.Response(b"x", headers={"x-a": "1\r\nset-cookie: evil=1"}),
    "/wrong-length": lambda: stead.Response(b"hello", headers={"content-length": "100"}),
    "/no-content-with-body": lambda: stead.Response(b"x", status=204),
}


class Faulty(stead.DurableObject):
    """Handlers with bugs the HTTP frontend must answer with a JSON 500 (not in ``runtime``)."""

    async def cancelled(self) -> None:
        raise asyncio.CancelledError

    async def awaits_a_cancelled_task(self) -> None:
        task = asyncio.ensure_future(asyncio.sleep(3600))
        await asyncio.sleep(0)
        task.cancel()
        await task

    async def fetch(self, request: stead.Request) -> stead.Response:
        if request.path == "/cancelled":
            raise asyncio.CancelledError
        return INVALID_RESPONSES[request.path]()


runtime = stead.Runtime(
    {"COUNTER": Counter, "PLAIN": Plain},
    data_dir=os.environ.get("STEAD_TEST_DATA_DIR"),
    durability=os.environ.get("STEAD_TEST_DURABILITY", "os"),
)
