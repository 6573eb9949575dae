"""BUDGET_GOVERNOR: weights, cycles, phase-ordered dispatch to a real data plane, usage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from patterns_harness import MakePatterns, Patterns, Reply, serving
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

pytestmark = pytest.mark.anyio

B = "BUDGET_GOVERNOR"
# The catalog's allocation-flow example.
PROCESSORS = [
    {
        "id": "keywords",
        "name": "Keyword Enrichment",
        "weight": 0.5,
        "phase": 1,
        "modelTier": "standard",
        "enabled": True,
    },
    {
        "id": "competitors",
        "name": "Competitor Analysis",
        "weight": 0.3,
        "phase": 1,
        "modelTier": "premium",
        "enabled": True,
    },
    {
        "id": "backlinks",
        "name": "Backlink Discovery",
        "weight": 0.2,
        "phase": 2,
        "modelTier": "economy",
        "enabled": True,
    },
]

NEGATIVE_WEIGHT = {**PROCESSORS[1], "weight": -1}


class DataPlane:
    """A real processor service; ``keywords`` reports its usage back while it runs,
    after sending the governor the ``meanwhile`` requests (path, body, expected status)."""

    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []
        self.finished: list[str] = []
        self.patterns: Patterns | None = None
        self.meanwhile: list[tuple[str, Any, int]] = []
        self.app = Starlette(routes=[Route("/process", self._process, methods=["POST"])])
        self.base = ""

    async def _process(self, request: Request) -> JSONResponse:
        job = await request.json()
        self.jobs.append(job)
        if job["processorId"] == "keywords" and self.patterns is not None:
            # Calls back into the governor while its /execute is still waiting for us.
            for path, body, expected in self.meanwhile:
                sent = await self.patterns.post(B, "gov", path, body)
                assert sent.status == expected, (path, sent.body)
            usage = {
                "processorId": "keywords",
                "cost": 0.1,
                "items": 20,
                "errors": 1,
                "avgLatencyMs": 150,
            }
            reply = await self.patterns.post(B, "gov", "/report-usage", usage)
            assert reply.status == 200, reply.body
        await asyncio.sleep(0.05)  # both phase-1 jobs are in flight together
        self.finished.append(job["processorId"])
        return JSONResponse({"processed": job["maxItems"]})


@pytest.fixture
async def data_plane() -> AsyncIterator[DataPlane]:
    plane = DataPlane()
    async with serving(plane.app) as base:
        plane.base = base
        yield plane


async def call(patterns: Patterns, path: str, body: Any = None) -> Reply:
    return await patterns.post(B, "gov", path, body)


async def test_weights_must_sum_to_one(patterns: Patterns) -> None:
    reply = await call(patterns, "/configure", {"processors": PROCESSORS[:2]})
    assert (reply.status, reply.json()) == (400, {"error": "Weights sum to 0.8, must equal 1.0"})
    disabled = [*PROCESSORS[:2], {**PROCESSORS[2], "enabled": False}]
    assert (await call(patterns, "/configure", {"processors": disabled})).status == 400
    configured = await call(patterns, "/configure", {"processors": PROCESSORS})
    assert configured.json() == {"configured": True, "processors": 3}


async def test_cycle_is_allocated_by_weight(patterns: Patterns) -> None:
    await call(patterns, "/configure", {"processors": PROCESSORS})
    started = (await call(patterns, "/start-cycle", {"totalBudget": 1.0})).json()
    assert started["cycleId"].startswith("cycle_")
    assert started["allocations"] == [
        {"processor": "keywords", "allocated": 0.5},
        {"processor": "competitors", "allocated": 0.3},
        {"processor": "backlinks", "allocated": 0.2},
    ]
    status = (await patterns.fetch(B, "gov", "/status")).json()
    assert status["currentCycle"]["cycleId"] == started["cycleId"]
    assert status["modelRouting"]["premium"] == {
        "model": "gpt-4o",
        "costPerCall": 0.03,
        "maxConcurrency": 5,
    }


async def test_execute_runs_phases_in_order_and_takes_usage_reports_meanwhile(
    make_patterns: MakePatterns, data_plane: DataPlane
) -> None:
    patterns = await make_patterns(vars={"PROCESSOR_API": data_plane.base})
    data_plane.patterns = patterns
    await call(patterns, "/configure", {"processors": PROCESSORS})
    cycle_id = (await call(patterns, "/start-cycle", {"totalBudget": 1.0})).json()["cycleId"]
    reply = await call(patterns, "/execute")
    assert reply.status == 200
    body = reply.json()
    assert body["cycleId"] == cycle_id
    # maxItems = min(floor(remaining / costPerCall), maxConcurrency) per tier.
    assert body["results"] == {
        "keywords": {"processor": "keywords", "phase": 1, "processed": 20},
        "competitors": {"processor": "competitors", "phase": 1, "processed": 5},
        "backlinks": {"processor": "backlinks", "phase": 2, "processed": 50},
    }
    assert {job["processorId"]: job["model"] for job in data_plane.jobs} == {
        "keywords": "gpt-4o-mini",
        "competitors": "gpt-4o",
        "backlinks": "gemini-2.0-flash",
    }
    assert data_plane.jobs[-1]["processorId"] == "backlinks"  # phase 2 after phase 1
    assert set(data_plane.finished[:2]) == {"keywords", "competitors"}
    status = (await patterns.fetch(B, "gov", "/status")).json()
    assert status["currentCycle"] is None
    [summary] = status["cycleHistory"]
    assert summary["cycleId"] == cycle_id
    assert summary["totalSpent"] == pytest.approx(0.1)  # the report made during /execute
    await patterns.restart()
    assert (await patterns.fetch(B, "gov", "/status")).json()["cycleHistory"][0] == summary


async def test_max_items_is_the_floor_of_remaining_budget_over_cost(
    make_patterns: MakePatterns, data_plane: DataPlane
) -> None:
    patterns = await make_patterns(vars={"PROCESSOR_API": data_plane.base})
    only = {**PROCESSORS[0], "id": "solo", "weight": 1.0}  # standard tier: 0.005 a call
    await call(patterns, "/configure", {"processors": [only]})
    for budget, expected in [(0.03, 6), (0.06, 12), (0.09, 18)]:  # Math.floor(budget / 0.005)
        await call(patterns, "/start-cycle", {"totalBudget": budget})
        assert (await call(patterns, "/execute")).status == 200
        assert data_plane.jobs[-1]["maxItems"] == expected, budget


async def test_a_refused_request_during_execute_changes_nothing(
    make_patterns: MakePatterns, data_plane: DataPlane
) -> None:
    patterns = await make_patterns(vars={"PROCESSOR_API": data_plane.base}, max_value_bytes=10_000)
    data_plane.patterns = patterns
    await call(patterns, "/configure", {"processors": PROCESSORS})
    cycle_id = (await call(patterns, "/start-cycle", {"totalBudget": 1.0})).json()["cycleId"]
    too_big = [{**PROCESSORS[0], "weight": 1.0, "name": "n" * 20_000}]  # over the value limit
    data_plane.meanwhile = [("/configure", {"processors": too_big}, 400)]
    reply = await call(patterns, "/execute")
    assert reply.status == 200
    status = (await patterns.fetch(B, "gov", "/status")).json()
    assert status["processors"] == PROCESSORS
    assert status["currentCycle"] is None
    [summary] = status["cycleHistory"]
    assert summary["cycleId"] == cycle_id
    assert summary["totalSpent"] == pytest.approx(0.1)  # the report made after the refusal


async def test_a_refused_configure_keeps_the_processors(make_patterns: MakePatterns) -> None:
    patterns = await make_patterns(max_value_bytes=10_000)
    await call(patterns, "/configure", {"processors": PROCESSORS})
    too_big = [{**PROCESSORS[0], "weight": 1.0, "name": "n" * 20_000}]
    refused = await call(patterns, "/configure", {"processors": too_big})
    assert refused.status == 400  # the processors do not fit the value limit
    assert (await patterns.rpc(B, "gov", "status"))["processors"] == PROCESSORS
    started = (await call(patterns, "/start-cycle", {"totalBudget": 1.0})).json()
    assert [a["processor"] for a in started["allocations"]] == [p["id"] for p in PROCESSORS]


async def test_out_of_range_usage_is_400_and_changes_nothing(patterns: Patterns) -> None:
    await call(patterns, "/configure", {"processors": PROCESSORS})
    await call(patterns, "/start-cycle", {"totalBudget": 1.0})
    usage = {"processorId": "keywords", "cost": 0.1, "items": 1, "errors": 0, "avgLatencyMs": 1}

    async def current_cycle() -> Any:
        return (await patterns.fetch(B, "gov", "/status")).json()["currentCycle"]

    before = await current_cycle()
    for bad in ({"items": 2**63}, {"cost": 1e300}, {"errors": -1}):
        assert (await call(patterns, "/report-usage", {**usage, **bad})).status == 400, bad
    assert await current_cycle() == before
    # In range, but a second one would take the item total past 2**53 - 1.
    most = {**usage, "items": 2**53 - 1}
    assert (await call(patterns, "/report-usage", most)).status == 200
    before = await current_cycle()
    assert (await call(patterns, "/report-usage", most)).status == 400
    assert await current_cycle() == before


async def test_usage_reports(patterns: Patterns) -> None:
    usage = {"processorId": "keywords", "cost": 0.2, "items": 10, "errors": 0, "avgLatencyMs": 100}
    no_cycle = await call(patterns, "/report-usage", usage)
    assert (no_cycle.status, no_cycle.json()) == (400, {"error": "No active cycle"})
    await call(patterns, "/configure", {"processors": PROCESSORS})
    await call(patterns, "/start-cycle", {"totalBudget": 1.0})
    first = (await call(patterns, "/report-usage", usage)).json()
    assert first["processorId"] == "keywords" and first["overBudget"] is False
    assert first["remaining"] == pytest.approx(0.3)
    second = await call(patterns, "/report-usage", {**usage, "cost": 0.4, "avgLatencyMs": 300})
    assert second.json()["overBudget"] is True
    allocation = (await patterns.fetch(B, "gov", "/status")).json()["currentCycle"]["allocations"]
    assert allocation["keywords"]["items"] == 20
    assert allocation["keywords"]["avgLatencyMs"] == pytest.approx(200)
    unknown = await call(patterns, "/report-usage", {**usage, "processorId": "nope"})
    assert (unknown.status, unknown.json()) == (400, {"error": "Unknown processor"})


async def test_exhausted_budget_is_skipped_and_dead_processors_do_not_stop_the_cycle(
    make_patterns: MakePatterns,
) -> None:
    patterns = await make_patterns(vars={"PROCESSOR_API": "http://127.0.0.1:9"})
    await call(patterns, "/configure", {"processors": PROCESSORS})
    await call(patterns, "/start-cycle", {"totalBudget": 1.0})
    usage = {"processorId": "keywords", "cost": 0.5, "items": 1, "errors": 0, "avgLatencyMs": 1}
    await call(patterns, "/report-usage", usage)
    results = (await call(patterns, "/execute")).json()["results"]
    assert results["keywords"] == {
        "processor": "keywords",
        "skipped": True,
        "reason": "budget exhausted",
    }
    assert results["competitors"]["error"].startswith("ConnectError")
    assert results["backlinks"]["phase"] == 2 and "error" in results["backlinks"]
    no_cycle = await call(patterns, "/execute")
    assert (no_cycle.status, no_cycle.json()) == (400, {"error": "No active cycle"})


@pytest.mark.parametrize(
    "own_field", ["keyword-enricher-v2", {"name": "enricher", "version": 2}], ids=["str", "dict"]
)
async def test_results_are_filed_by_processor_id_whatever_the_answer_says(
    make_patterns: MakePatterns, own_field: Any
) -> None:
    # A data plane whose answer has a "processor" field of its own (its name, say).
    async def process(request: Request) -> JSONResponse:
        jobs.append((await request.json())["processorId"])
        return JSONResponse({"processed": 3, "processor": own_field})

    jobs: list[str] = []
    two = [{**PROCESSORS[0], "weight": 0.5}, {**PROCESSORS[1], "weight": 0.5}]
    async with serving(Starlette(routes=[Route("/process", process, methods=["POST"])])) as base:
        patterns = await make_patterns(vars={"PROCESSOR_API": base})
        await call(patterns, "/configure", {"processors": two})
        await call(patterns, "/start-cycle", {"totalBudget": 1.0})
        reply = await call(patterns, "/execute")
        assert reply.status == 200, reply.body
        results = reply.json()["results"]
        assert set(results) == {"keywords", "competitors"}  # one result each, none lost
        # The body is the catalog's: the answer's own fields come last.
        assert results["keywords"] == {"processor": own_field, "phase": 1, "processed": 3}
        status = (await patterns.fetch(B, "gov", "/status")).json()
        assert status["currentCycle"] is None and len(status["cycleHistory"]) == 1
        assert sorted(jobs) == ["competitors", "keywords"]  # dispatched once each


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/configure", {"processors": [{"id": "x"}]}),
        ("/configure", {"processors": [{**PROCESSORS[0], "modelTier": "gold"}]}),
        ("/start-cycle", {}),
        ("/start-cycle", {"totalBudget": 1e300}),
        # Weights that sum to 1, but are not shares.
        ("/configure", {"processors": [{**PROCESSORS[0], "weight": 2}, NEGATIVE_WEIGHT]}),
        ("/report-usage", {"processorId": "x"}),
    ],
)
async def test_bad_bodies_are_400(patterns: Patterns, path: str, body: Any) -> None:
    assert (await call(patterns, path, body)).status == 400


async def test_status_by_rpc(patterns: Patterns) -> None:
    await call(patterns, "/configure", {"processors": PROCESSORS})
    assert (
        await patterns.rpc(B, "gov", "status") == (await patterns.fetch(B, "gov", "/status")).json()
    )
