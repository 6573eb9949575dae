"""``ENRICHMENT_CONTROLLER``: a self-tuning batch processor (the catalog's pattern 1).

Routes: ``/start``, ``/pause``, ``/status``, ``/reset``. While running, the
alarm is a heartbeat: fetch up to ``batchSize`` items from
``GET {API_BASE}/items/pending?limit=N`` (``Authorization: Bearer
{API_KEY}``), enrich each concurrently (``POST {ENRICHMENT_API}/enrich``,
then ``PATCH {API_BASE}/items/{id}`` with ``{"enriched": true, "data"}``),
record the results in a rolling window of 100, adapt the batch size and
interval to the success rate, and set the next alarm. API_BASE, API_KEY and
ENRICHMENT_API are runtime vars.

Adaptation (the catalog's thresholds): success > 95 % → batch x1.5 (cap 50);
80-95 % → keep; 50-80 % → batch x0.5 (floor 5); < 50 % → batch 5 and interval
x1.5 (cap 5 min); 5 consecutive failed runs → circuit break: batch 5, interval
x2, status ``backoff``. Unlike the catalog (whose alarm does nothing unless the
status is ``running``, so a controller in backoff would never run again), the
heartbeat continues in ``backoff`` and recovers (status ``running``, interval
back to 1 min) once success is above 80 %; only ``/pause`` stops it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, ClassVar, Literal

import httpx
import msgspec

import stead
from stead import AlarmInfo, Request, Response
from stead_patterns._http import now_ms, route

__all__ = ["ControllerState", "EnrichmentController", "stead_bindings"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_WINDOW = 100


class RunResult(msgspec.Struct, rename="camel"):
    success: bool
    latency_ms: int
    timestamp: int = 0


class Metrics(msgspec.Struct, rename="camel"):
    success_rate: float = 1.0
    avg_latency_ms: float = 0.0
    consecutive_errors: int = 0
    results: list[RunResult] = []


class ControllerState(msgspec.Struct, rename="camel"):
    """The stored state (and the JSON ``/status`` answers)."""

    batch_size: int
    interval_ms: int
    metrics: Metrics
    status: Literal["running", "paused", "backoff"] = "running"
    last_run_at: int = 0
    total_processed: int = 0
    total_errors: int = 0


class _WorkItem(msgspec.Struct):
    id: str | int


class EnrichmentController(stead.DurableObject):
    """Processes pending items in batches whose size follows the downstream's health."""

    initial_batch_size: ClassVar[int] = 10
    base_interval_ms: ClassVar[int] = 60_000
    max_interval_ms: ClassVar[int] = 300_000
    min_batch_size: ClassVar[int] = 5
    max_batch_size: ClassVar[int] = 50
    circuit_break_errors: ClassVar[int] = 5
    #: Seconds one outbound call may take.
    request_timeout: ClassVar[float] = 30.0

    controller: ControllerState

    def _default(self) -> ControllerState:
        return ControllerState(self.initial_batch_size, self.base_interval_ms, Metrics())

    async def on_start(self) -> None:
        self._load()

    def _load(self) -> None:
        stored = self.ctx.storage.get("controller", type=ControllerState)
        self.controller = stored if stored is not None else self._default()

    async def fetch(self, request: Request) -> Response:
        routes = {
            "/start": self._start,
            "/pause": self._pause,
            "/status": self._status,
            "/reset": self._reset,
        }
        return await route(request, routes, self.ctx.storage, reload=self._load)

    async def _start(self, request: Request) -> Response:
        self.controller.status = "running"
        self._schedule_next()
        self._save()
        return Response.json({"status": "started", "batchSize": self.controller.batch_size})

    async def _pause(self, request: Request) -> Response:
        self.controller.status = "paused"
        self.ctx.storage.delete_alarm()
        self._save()
        return Response.json({"status": "paused"})

    async def _status(self, request: Request) -> Response:
        return Response.json(self.controller)

    def status(self) -> ControllerState:
        """The controller state as ``/status`` answers (also callable by RPC)."""
        return self.controller

    async def _reset(self, request: Request) -> Response:
        self.controller = self._default()
        self.ctx.storage.delete_alarm()
        self._save()
        return Response.json({"status": "reset"})

    def _save(self) -> None:
        self.ctx.storage.put("controller", self.controller)

    def _schedule_next(self) -> None:
        self.ctx.storage.set_alarm((now_ms() + self.controller.interval_ms) / 1000)

    # -- the heartbeat -------------------------------------------------------

    async def alarm(self, info: AlarmInfo) -> None:
        if self.controller.status == "paused":
            return
        try:
            await self._run_batch()
        except (httpx.HTTPError, httpx.InvalidURL, KeyError, ValueError) as exc:
            # The whole batch failed (no work list, a var missing): one more failed run.
            self.controller.metrics.consecutive_errors += 1
            self._adapt()
            logger.warning("enrichment run failed: %s: %s", type(exc).__name__, exc)
        self._schedule_next()  # always, even after errors
        self._save()

    async def _run_batch(self) -> None:
        async with httpx.AsyncClient(timeout=self.request_timeout) as client:
            items = await self._fetch_pending(client, self.controller.batch_size)
            if not items:
                return
            results = await asyncio.gather(*(self._enrich(client, item) for item in items))
        self._record(results)
        self._adapt()
        controller = self.controller
        controller.last_run_at = now_ms()
        controller.total_processed += sum(1 for r in results if r.success)
        controller.total_errors += sum(1 for r in results if not r.success)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.env.API_KEY}"}

    async def _fetch_pending(self, client: httpx.AsyncClient, limit: int) -> list[dict[str, Any]]:
        base = str(self.env.API_BASE).rstrip("/")
        url = f"{base}/items/pending"
        response = await client.get(url, params={"limit": limit}, headers=self._auth())
        response.raise_for_status()
        items = msgspec.json.decode(response.content, type=list[dict[str, Any]])
        msgspec.convert(items, list[_WorkItem])  # every item has an id (ValidationError if not)
        return items

    async def _enrich(self, client: httpx.AsyncClient, item: dict[str, Any]) -> RunResult:
        started = time.monotonic()
        try:
            await self._enrich_item(client, item)
            success = True
        except (httpx.HTTPError, httpx.InvalidURL, KeyError, ValueError) as exc:
            logger.info("enriching item %r failed: %s", item.get("id"), exc)
            success = False
        return RunResult(success, round((time.monotonic() - started) * 1000))

    async def _enrich_item(self, client: httpx.AsyncClient, item: dict[str, Any]) -> None:
        enrichment = str(self.env.ENRICHMENT_API).rstrip("/")
        response = await client.post(f"{enrichment}/enrich", json=item)
        response.raise_for_status()
        base = str(self.env.API_BASE).rstrip("/")
        update = {"enriched": True, "data": response.json()}
        written = await client.patch(
            f"{base}/items/{item['id']}", json=update, headers=self._auth()
        )
        written.raise_for_status()

    # -- metrics and adaptation ----------------------------------------------

    def _record(self, results: list[RunResult]) -> None:
        metrics = self.controller.metrics
        now = now_ms()
        window = [*metrics.results, *(RunResult(r.success, r.latency_ms, now) for r in results)]
        metrics.results = window[-_WINDOW:]
        metrics.success_rate = sum(1 for r in metrics.results if r.success) / len(metrics.results)
        metrics.avg_latency_ms = sum(r.latency_ms for r in metrics.results) / len(metrics.results)
        if all(not r.success for r in results):
            metrics.consecutive_errors += 1
        else:
            metrics.consecutive_errors = 0

    def _adapt(self) -> None:
        controller = self.controller
        rate = controller.metrics.success_rate
        if controller.metrics.consecutive_errors >= self.circuit_break_errors:
            controller.batch_size = self.min_batch_size
            controller.interval_ms = min(controller.interval_ms * 2, self.max_interval_ms)
            controller.status = "backoff"
            logger.info(
                "circuit break: batch %d, interval %d ms",
                controller.batch_size,
                controller.interval_ms,
            )
            return
        if controller.status == "backoff" and rate > 0.8:
            controller.status = "running"
            controller.interval_ms = self.base_interval_ms
            logger.info("recovered from backoff")
        if rate > 0.95:
            grown = math.ceil(controller.batch_size * 1.5)
            controller.batch_size = min(grown, self.max_batch_size)
        elif rate >= 0.8:
            pass  # good enough: keep the settings
        elif rate >= 0.5:
            shrunk = math.floor(controller.batch_size * 0.5)
            controller.batch_size = max(shrunk, self.min_batch_size)
        else:
            controller.batch_size = self.min_batch_size
            slower = math.floor(controller.interval_ms * 1.5)
            controller.interval_ms = min(slower, self.max_interval_ms)


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"ENRICHMENT_CONTROLLER": EnrichmentController}
