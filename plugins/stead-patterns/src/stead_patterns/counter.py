"""``COUNTER``: the catalog's buffered aggregator counter.

Routes: ``/increment`` (body ``{"key", "amount"?}``), ``/get`` (all counts) or
``/get?key=k``, ``/flush``. Increments are added to an in-memory buffer (no
storage write), and the buffer is merged into the stored counts by an alarm
``flush_interval_ms`` (10 s) after the first buffered increment, or by
``/flush``. Reads merge stored and buffered counts. Each count is stored under
its own key (``count:<key>``), so no number of counters outgrows stead's value
limit; keys are at most 500 characters, and amounts and counts stay within
±(2**53 - 1), so every flush can be stored.

Buffered increments are **not durable**: until a flush they live only in this
instance's memory, so a crash, a restart, or an eviction of the instance
(``max_resident``, or ``idle_timeout``: run with ``idle_timeout`` well above
the flush interval) before the flush loses them. That is the catalog's
trade-off (throughput over durability); an acknowledged ``/flush`` is durable.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

import stead
from stead import AlarmInfo, Request, Response
from stead_patterns._http import (
    MAX_NAME_LENGTH,
    MAX_SAFE_INTEGER,
    BadRequest,
    SafeNumber,
    decode_body,
    now_ms,
    route,
)

__all__ = ["AggregatorCounter", "stead_bindings"]

Number = int | float
_PREFIX = "count:"
#: A counter's name (it becomes part of a storage key); may be empty, as in the catalog.
CounterKey = Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH)]


class _IncrementBody(msgspec.Struct):
    key: CounterKey
    amount: SafeNumber | None = None


class AggregatorCounter(stead.DurableObject):
    """Named counters that buffer increments in memory and flush them periodically."""

    #: How long after the first buffered increment the flush alarm fires.
    flush_interval_ms: ClassVar[int] = 10_000

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self._buffer: dict[str, Number] = {}

    async def fetch(self, request: Request) -> Response:
        routes = {"/increment": self._increment, "/get": self._get, "/flush": self._flush}
        # No transaction: /increment checks its input before it changes anything and
        # flush() is all-or-nothing by itself, while a transaction would copy the read
        # cache (one entry per counter) on every increment.
        return await route(request, routes, None)

    async def _increment(self, request: Request) -> Response:
        body = decode_body(request, _IncrementBody)
        amount = body.amount or 1
        if abs(self._count(body.key) + amount) > MAX_SAFE_INTEGER:
            raise BadRequest(f"the count would leave the range of ±{MAX_SAFE_INTEGER}")
        self._buffer[body.key] = self._buffer.get(body.key, 0) + amount
        self._ensure_flush_scheduled()
        return Response.json({"buffered": True})

    async def _get(self, request: Request) -> Response:
        key = request.query.get("key")
        if not key:
            return Response.json(self._merged())
        return Response.json({"key": key, "count": self._count(key)})

    async def _flush(self, request: Request) -> Response:
        self.flush()
        return Response.json({"flushed": True})

    def _count(self, key: str) -> Number:
        """One count, stored and buffered."""
        if len(key) > MAX_NAME_LENGTH:
            return 0  # never counted (and no storage key)
        stored: Number = self.ctx.storage.get(_PREFIX + key, 0, type=Number)
        return stored + self._buffer.get(key, 0)

    def _merged(self) -> dict[str, Number]:
        stored = self.ctx.storage.list(prefix=_PREFIX)
        merged: dict[str, Number] = {
            key.removeprefix(_PREFIX): count for key, count in stored.items()
        }
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
        storage = self.ctx.storage
        keys = [_PREFIX + key for key in self._buffer]
        stored = storage.get_many(keys, type=Number)
        # All counts or none: the buffer is kept until they are written.
        with storage.transaction():
            storage.put_many(
                {
                    _PREFIX + key: stored.get(_PREFIX + key, 0) + amount
                    for key, amount in self._buffer.items()
                }
            )
        self._buffer = {}

    async def alarm(self, info: AlarmInfo) -> None:
        self.flush()


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"COUNTER": AggregatorCounter}
