"""``COUNTER``: the catalog's buffered aggregator counter.

Routes: ``/increment`` (body ``{"key", "amount"?}``), ``/get`` (all counts) or
``/get?key=k``, ``/flush``. Increments are added to an in-memory buffer (no
storage write), and the buffer is merged into the stored ``counts`` by an alarm
``flush_interval_ms`` (10 s) after the first buffered increment, or by
``/flush``. Reads merge stored and buffered counts.

Buffered increments are **not durable**: until a flush they live only in this
instance's memory, so a crash, a restart, or an eviction of the instance
(``max_resident``, or ``idle_timeout``: run with ``idle_timeout`` well above
the flush interval) before the flush loses them. That is the catalog's
trade-off (throughput over durability); an acknowledged ``/flush`` is durable.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

import stead
from stead import AlarmInfo, Request, Response
from stead_patterns._http import decode_body, now_ms, route

__all__ = ["AggregatorCounter", "stead_bindings"]

Number = int | float


class _IncrementBody(msgspec.Struct):
    key: str
    amount: Number | None = None


class AggregatorCounter(stead.DurableObject):
    """Named counters that buffer increments in memory and flush them periodically."""

    #: How long after the first buffered increment the flush alarm fires.
    flush_interval_ms: ClassVar[int] = 10_000

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self._buffer: dict[str, Number] = {}

    async def fetch(self, request: Request) -> Response:
        routes = {"/increment": self._increment, "/get": self._get, "/flush": self._flush}
        return await route(request, routes)

    async def _increment(self, request: Request) -> Response:
        body = decode_body(request, _IncrementBody)
        self._buffer[body.key] = self._buffer.get(body.key, 0) + (body.amount or 1)
        self._ensure_flush_scheduled()
        return Response.json({"buffered": True})

    async def _get(self, request: Request) -> Response:
        key = request.query.get("key")
        counts = self._merged()
        if not key:
            return Response.json(counts)
        return Response.json({"key": key, "count": counts.get(key, 0)})

    async def _flush(self, request: Request) -> Response:
        self.flush()
        return Response.json({"flushed": True})

    def _stored(self) -> dict[str, Number]:
        counts: dict[str, Number] = self.ctx.storage.get("counts", {}, type=dict[str, Number])
        return counts

    def _merged(self) -> dict[str, Number]:
        merged = self._stored()
        for key, amount in self._buffer.items():
            merged[key] = merged.get(key, 0) + amount
        return merged

    def counts(self) -> dict[str, Number]:
        """Every count, stored and buffered, as ``/get`` answers (also callable by RPC)."""
        return self._merged()

    def _ensure_flush_scheduled(self) -> None:
        if self.ctx.storage.get_alarm() is None:
            self.ctx.storage.set_alarm((now_ms() + self.flush_interval_ms) / 1000)

    def flush(self) -> None:
        """Merge the buffer into the stored counts (also callable by RPC)."""
        if not self._buffer:
            return
        self.ctx.storage.put("counts", self._merged())
        self._buffer = {}

    async def alarm(self, info: AlarmInfo) -> None:
        self.flush()


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"COUNTER": AggregatorCounter}
