"""``BUDGET_GOVERNOR``: distributes a budget across weighted processors (the catalog's pattern 3).

Routes: ``/configure`` (``{"processors": [...]}``, enabled weights must sum to
1), ``/start-cycle`` (``{"totalBudget"}``), ``/execute`` (dispatch each
enabled processor to ``POST {PROCESSOR_API}/process``, phase by phase, the
processors of one phase concurrently), ``/report-usage`` (the data plane
reports ``{"processorId", "cost", "items", "errors", "avgLatencyMs"}``),
``/status``. ``PROCESSOR_API`` is a runtime var.

The governor is ``reentrant``: while ``/execute`` waits for the data plane,
other requests (above all the processors' own ``/report-usage`` calls) are
served, as Cloudflare's input gate allows; a second ``/execute`` meanwhile
gets 409. A processor that cannot be reached or answers an error is reported
in its result (``"error"``) and the cycle goes on.

Weights are 0 to 1; budgets, costs, item and error counts and latencies are 0
to 2**53 - 1 (JavaScript's safe integers), and so are a processor's usage
totals; anything else is answered with 400.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Annotated, Any, ClassVar, Literal

import httpx
import msgspec

import stead
from stead import Request, Response
from stead_patterns._http import (
    MAX_SAFE_INTEGER,
    BadRequest,
    SafeInt,
    decode_body,
    error,
    now_ms,
    route,
)

__all__ = ["BudgetGovernor", "GovernorState", "ProcessorConfig", "stead_bindings"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

ModelTier = Literal["premium", "standard", "economy"]
_MAX_HISTORY = 50
Weight = Annotated[float, msgspec.Meta(ge=0, le=1)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INTEGER)]
Amount = Annotated[float, msgspec.Meta(ge=0, le=MAX_SAFE_INTEGER)]


class ProcessorConfig(msgspec.Struct, rename="camel"):
    """One processor type: its share of the budget, phase and model tier."""

    id: str
    name: str
    weight: Weight
    phase: SafeInt
    model_tier: ModelTier
    enabled: bool


class BudgetAllocation(msgspec.Struct, rename="camel"):
    allocated: float
    spent: float = 0.0
    items: int = 0
    errors: int = 0
    avg_latency_ms: float = 0.0


class BudgetCycle(msgspec.Struct, rename="camel"):
    cycle_id: str
    total_budget: float
    started_at: int
    allocations: dict[str, BudgetAllocation]


class CycleSummary(msgspec.Struct, rename="camel"):
    cycle_id: str
    total_budget: float
    total_spent: float
    completed_at: int


class ModelRoute(msgspec.Struct, rename="camel"):
    model: str
    cost_per_call: float
    max_concurrency: int


def _default_routing() -> dict[str, ModelRoute]:
    return {
        "premium": ModelRoute("gpt-4o", 0.03, 5),
        "standard": ModelRoute("gpt-4o-mini", 0.005, 20),
        "economy": ModelRoute("gemini-2.0-flash", 0.001, 50),
    }


class GovernorState(msgspec.Struct, rename="camel"):
    """The stored state (and the JSON ``/status`` answers)."""

    processors: list[ProcessorConfig] = []
    current_cycle: BudgetCycle | None = None
    cycle_history: list[CycleSummary] = []
    model_routing: dict[str, ModelRoute] = msgspec.field(default_factory=_default_routing)


class _ConfigureBody(msgspec.Struct):
    processors: list[ProcessorConfig]


class _StartBody(msgspec.Struct, rename="camel"):
    total_budget: Amount


class _UsageReport(msgspec.Struct, rename="camel"):
    processor_id: str
    cost: Amount
    items: Count
    errors: Count
    avg_latency_ms: Amount


class BudgetGovernor(stead.DurableObject):
    """Allocates, routes to model tiers and tracks spend; never does the work itself."""

    reentrant: ClassVar[bool] = True
    #: Seconds one ``/process`` call may take.
    process_timeout: ClassVar[float] = 30.0

    governor: GovernorState
    #: The cycle a running ``/execute`` dispatches (``None``: not executing). Usage
    #: reports update it in place while it runs, as in the catalog.
    _executing: BudgetCycle | None = None

    async def on_start(self) -> None:
        self._load()

    def _load(self) -> None:
        stored = self.ctx.storage.get("governor", type=GovernorState)
        self.governor = stored if stored is not None else GovernorState()

    def _reload(self) -> None:
        """The state as stored, after a request that failed (see ``route``): new objects,
        so a running ``/execute`` follows its cycle to the one reports now update."""
        self._load()
        current, executing = self.governor.current_cycle, self._executing
        if current is not None and executing is not None and current.cycle_id == executing.cycle_id:
            self._executing = current

    async def fetch(self, request: Request) -> Response:
        if request.path == "/execute":
            # Not in a transaction: other events run (and write) while it waits for
            # the data plane, and a rollback would take their writes with it.
            return await route(request, {"/execute": self._execute}, None, reload=self._reload)
        routes = {
            "/configure": self._configure,
            "/start-cycle": self._start_cycle,
            "/report-usage": self._report_usage,
            "/status": self._status,
        }
        return await route(request, routes, self.ctx.storage, reload=self._reload)

    def _save(self) -> None:
        self.ctx.storage.put("governor", self.governor)

    async def _status(self, request: Request) -> Response:
        return Response.json(self.governor)

    def status(self) -> GovernorState:
        """The governor state as ``/status`` answers (also callable by RPC)."""
        return self.governor

    async def _configure(self, request: Request) -> Response:
        processors = decode_body(request, _ConfigureBody).processors
        total = sum(p.weight for p in processors if p.enabled)
        if abs(total - 1.0) > 0.01:
            return error(f"Weights sum to {total}, must equal 1.0", 400)
        self.governor.processors = processors
        self._save()
        return Response.json({"configured": True, "processors": len(processors)})

    async def _start_cycle(self, request: Request) -> Response:
        total = decode_body(request, _StartBody).total_budget
        now = now_ms()
        allocations = {
            p.id: BudgetAllocation(total * p.weight) for p in self.governor.processors if p.enabled
        }
        cycle = BudgetCycle(f"cycle_{now}", total, now, allocations)
        self.governor.current_cycle = cycle
        self._save()
        listed = [{"processor": pid, "allocated": a.allocated} for pid, a in allocations.items()]
        return Response.json({"cycleId": cycle.cycle_id, "allocations": listed})

    async def _report_usage(self, request: Request) -> Response:
        report = decode_body(request, _UsageReport)
        cycle = self.governor.current_cycle
        if cycle is None:
            return error("No active cycle", 400)
        allocation = cycle.allocations.get(report.processor_id)
        if allocation is None:
            return error("Unknown processor", 400)
        _apply_usage(allocation, report)
        self._save()
        return Response.json(
            {
                "processorId": report.processor_id,
                "remaining": allocation.allocated - allocation.spent,
                "overBudget": allocation.spent > allocation.allocated,
            }
        )

    async def _execute(self, request: Request) -> Response:
        cycle = self.governor.current_cycle
        if cycle is None:
            return error("No active cycle", 400)
        if self._executing is not None:
            return error("Cycle already executing", 409)
        self._executing = cycle
        try:
            results = await self._run_phases()
            self._archive(self._executing_cycle())
        finally:
            self._executing = None
        return Response.json({"cycleId": cycle.cycle_id, "results": results})

    def _executing_cycle(self) -> BudgetCycle:
        cycle = self._executing
        assert cycle is not None, "only while /execute runs"
        return cycle

    async def _run_phases(self) -> dict[str, Any]:
        phases: dict[int, list[ProcessorConfig]] = {}
        for processor in self.governor.processors:
            if processor.enabled:
                phases.setdefault(processor.phase, []).append(processor)
        results: dict[str, Any] = {}
        async with httpx.AsyncClient(timeout=self.process_timeout) as client:
            for phase in sorted(phases):
                runs = (self._dispatch(client, p) for p in phases[phase])
                done = await asyncio.gather(*runs)
                # Filed by the processor's id, not the result's "processor" field, which
                # an answer of the data plane with its own "processor" field replaces.
                results.update(zip((p.id for p in phases[phase]), done, strict=True))
        return results

    async def _dispatch(
        self, client: httpx.AsyncClient, processor: ProcessorConfig
    ) -> dict[str, Any]:
        cycle = self._executing_cycle()
        allocation = cycle.allocations.get(processor.id)
        if allocation is None or allocation.spent >= allocation.allocated:
            return {"processor": processor.id, "skipped": True, "reason": "budget exhausted"}
        head = {"processor": processor.id, "phase": processor.phase}
        routing = self.governor.model_routing.get(processor.model_tier)
        if routing is None:
            return {**head, "error": f"no model routing for tier {processor.model_tier!r}"}
        # As the catalog's Math.floor(remaining / cost): 0.03 // 0.005 would give 5, not 6.
        max_items = math.floor((allocation.allocated - allocation.spent) / routing.cost_per_call)
        job = {
            "processorId": processor.id,
            "model": routing.model,
            "maxItems": min(max_items, routing.max_concurrency),
            "cycleId": cycle.cycle_id,
        }
        try:
            answer = await self._post_process(client, job)
        except (httpx.HTTPError, httpx.InvalidURL, KeyError, ValueError) as exc:
            logger.warning("processor %r failed: %s", processor.id, exc)
            return {**head, "error": f"{type(exc).__name__}: {exc}"}
        return {**head, **answer} if isinstance(answer, dict) else {**head, "result": answer}

    async def _post_process(self, client: httpx.AsyncClient, job: dict[str, Any]) -> Any:
        base = str(self.env.PROCESSOR_API).rstrip("/")  # KeyError if the var is not set
        response = await client.post(f"{base}/process", json=job)
        response.raise_for_status()
        return response.json()

    def _archive(self, cycle: BudgetCycle) -> None:
        spent = sum(a.spent for a in cycle.allocations.values())
        summary = CycleSummary(cycle.cycle_id, cycle.total_budget, spent, now_ms())
        history = [*self.governor.cycle_history, summary][-_MAX_HISTORY:]
        self.governor.cycle_history = history
        if self.governor.current_cycle is cycle:
            self.governor.current_cycle = None
        self._save()


def _apply_usage(allocation: BudgetAllocation, report: _UsageReport) -> None:
    totals = (allocation.spent + report.cost, allocation.items + report.items)
    if max(*totals, allocation.errors + report.errors) > MAX_SAFE_INTEGER:
        raise BadRequest(f"usage totals of {report.processor_id!r} would exceed {MAX_SAFE_INTEGER}")
    previous_items = allocation.items
    allocation.spent += report.cost
    allocation.items += report.items
    allocation.errors += report.errors
    if allocation.items > 0:  # a running average weighted by items
        total_latency = allocation.avg_latency_ms * previous_items
        total_latency += report.avg_latency_ms * report.items
        allocation.avg_latency_ms = total_latency / allocation.items


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"BUDGET_GOVERNOR": BudgetGovernor}
