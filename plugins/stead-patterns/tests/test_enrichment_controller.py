"""ENRICHMENT_CONTROLLER: the alarm heartbeat against a real data plane, and adaptation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import anyio
import pytest
from patterns_harness import MakePatterns, Patterns, eventually, serving
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from stead_patterns import EnrichmentController

pytestmark = pytest.mark.anyio

B = "ENRICHMENT_CONTROLLER"


class _Fast(EnrichmentController):
    """The catalog's controller with a 0.1 s heartbeat (capped at 0.4 s)."""

    base_interval_ms: ClassVar[int] = 100
    max_interval_ms: ClassVar[int] = 400


class DataPlane:
    """Pending items, an enrichment API and the write-back endpoint, all real HTTP."""

    def __init__(self) -> None:
        self.limits: list[int] = []
        self.written: dict[str, Any] = {}
        self.enrich_fails = False
        self.pending_fails = False
        self.auth: set[str] = set()
        self._next_id = 0
        self.app = Starlette(
            routes=[
                Route("/items/pending", self._pending, methods=["GET"]),
                Route("/items/{id}", self._write_back, methods=["PATCH"]),
                Route("/enrich", self._enrich, methods=["POST"]),
            ]
        )
        self.base = ""

    async def _pending(self, request: Request) -> JSONResponse:
        self.auth.add(request.headers.get("authorization", ""))
        if self.pending_fails:
            return JSONResponse({"error": "down"}, status_code=503)
        limit = int(request.query_params["limit"])
        self.limits.append(limit)
        items = [{"id": f"item-{self._next_id + n}", "url": "x"} for n in range(limit)]
        self._next_id += limit
        return JSONResponse(items)

    async def _enrich(self, request: Request) -> JSONResponse:
        item = await request.json()
        if self.enrich_fails:
            return JSONResponse({"error": "overloaded"}, status_code=500)
        return JSONResponse({"score": len(item["id"])})

    async def _write_back(self, request: Request) -> JSONResponse:
        self.written[request.path_params["id"]] = await request.json()
        return JSONResponse({"ok": True})


@pytest.fixture
async def data_plane() -> AsyncIterator[DataPlane]:
    plane = DataPlane()
    async with serving(plane.app) as base:
        plane.base = base
        yield plane


async def controller(make_patterns: MakePatterns, plane: DataPlane) -> Patterns:
    env = {"API_BASE": plane.base, "API_KEY": "secret", "ENRICHMENT_API": plane.base}
    return await make_patterns({B: _Fast}, vars=env)


async def status(patterns: Patterns) -> Any:
    return (await patterns.fetch(B, "enrichment-controller", "/status")).json()


async def post(patterns: Patterns, path: str) -> Any:
    return (await patterns.post(B, "enrichment-controller", path)).json()


async def test_healthy_downstream_grows_the_batch(
    make_patterns: MakePatterns, data_plane: DataPlane
) -> None:
    patterns = await controller(make_patterns, data_plane)
    initial = await status(patterns)
    assert (initial["batchSize"], initial["intervalMs"], initial["status"]) == (10, 100, "running")
    assert await post(patterns, "/start") == {"status": "started", "batchSize": 10}

    async def three_runs() -> bool:
        return len(data_plane.limits) >= 3

    await eventually(three_runs)
    assert data_plane.limits[:3] == [10, 15, 23]  # x1.5, rounded up, per healthy run
    assert data_plane.auth == {"Bearer secret"}
    assert data_plane.written["item-0"] == {"enriched": True, "data": {"score": 6}}
    state = await status(patterns)
    assert state["totalProcessed"] >= 25 and state["totalErrors"] == 0
    assert state["metrics"]["successRate"] == 1.0
    assert len(state["metrics"]["results"]) == min(state["totalProcessed"], 100)

    assert await post(patterns, "/pause") == {"status": "paused"}
    runs = len(data_plane.limits)
    await anyio.sleep(0.5)  # five heartbeats' worth of time: none may run
    assert len(data_plane.limits) == runs
    assert (await status(patterns))["status"] == "paused"


async def test_failing_downstream_backs_off_and_keeps_its_heartbeat(
    make_patterns: MakePatterns, data_plane: DataPlane
) -> None:
    data_plane.enrich_fails = True
    patterns = await controller(make_patterns, data_plane)
    await post(patterns, "/start")

    async def circuit_broken() -> bool:
        return bool((await status(patterns))["status"] == "backoff")

    await eventually(circuit_broken)
    state = await status(patterns)
    assert state["batchSize"] == 5
    assert state["intervalMs"] == 400  # x1.5 per critical run, x2 on the break, capped
    assert state["metrics"]["consecutiveErrors"] >= 5
    assert data_plane.limits[:2] == [10, 5]

    # The heartbeat goes on in backoff; a healthy run resets the error streak.
    data_plane.enrich_fails = False
    runs = len(data_plane.limits)

    async def healthy_run() -> bool:
        return bool((await status(patterns))["metrics"]["consecutiveErrors"] == 0)

    await eventually(healthy_run)
    assert len(data_plane.limits) > runs


async def test_unreachable_work_list_counts_as_a_failed_run(
    make_patterns: MakePatterns, data_plane: DataPlane
) -> None:
    data_plane.pending_fails = True
    patterns = await controller(make_patterns, data_plane)
    await post(patterns, "/start")

    async def two_failures() -> bool:
        return bool((await status(patterns))["metrics"]["consecutiveErrors"] >= 2)

    await eventually(two_failures)
    assert (await status(patterns))["totalProcessed"] == 0


async def test_reset_and_restart(make_patterns: MakePatterns, data_plane: DataPlane) -> None:
    patterns = await controller(make_patterns, data_plane)
    await post(patterns, "/start")

    async def ran() -> bool:
        return len(data_plane.limits) >= 1

    await eventually(ran)
    await patterns.restart()  # the heartbeat is a durable alarm: it continues
    runs = len(data_plane.limits)

    async def ran_again() -> bool:
        return len(data_plane.limits) > runs

    await eventually(ran_again)
    assert await post(patterns, "/reset") == {"status": "reset"}
    state = await status(patterns)
    assert (state["batchSize"], state["totalProcessed"], state["metrics"]["results"]) == (10, 0, [])


async def test_unknown_path_is_404(patterns: Patterns) -> None:
    assert (await patterns.fetch(B, "c", "/nope")).status == 404


async def test_status_by_rpc(patterns: Patterns) -> None:
    by_rpc = await patterns.rpc(B, "c", "status")
    assert by_rpc == (await patterns.fetch(B, "c", "/status")).json()
    assert by_rpc["batchSize"] == 10
