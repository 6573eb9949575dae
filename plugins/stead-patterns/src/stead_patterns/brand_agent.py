"""``BRAND_AGENT``: an event reactor (the catalog's pattern 4) on ``stead.Agent``.

Routes: ``/event`` (body ``{"type", "payload", "timestamp"?}``), ``/state``,
``/decisions`` (the last 20), and the command outbox: ``/commands?limit=``
(``{"commands": [{"id", "type", "payload", "brandId", "emittedAt"}]}``,
oldest first) and ``/commands/ack`` (body ``{"ids": [...]}``). The agent
reacts to ``research.completed``, ``content.published``,
``engagement.report`` and ``competitor.detected`` as the catalog's does,
logs every decision with its reason, and runs an hourly decision cycle
(cron ``*/60 * * * *``, scheduled with the first request).

stead has no queues yet, so the catalog's ``COMMAND_QUEUE.send`` becomes a
durable outbox in the agent's own storage: an emitted command is written in
the same atomic batch as the state change and decision behind it, and the
event is acknowledged only once both are durable; an event answered with an
error writes nothing (no command, no decision), so retrying it duplicates
nothing. A consumer polls ``/commands`` (``limit`` 0 to 1000) and acknowledges
what it has handled.
"""

from __future__ import annotations

import math
import secrets
from typing import Any, ClassVar

import msgspec

import stead
from stead import Request, Response
from stead_patterns._http import BadRequest, decode_body, int_param, now_ms, route

__all__ = ["DEFAULT_BRAND_STATE", "MAX_COMMANDS_LIMIT", "BrandAgent", "stead_bindings"]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
#: The most commands one ``/commands`` call returns (``?limit=``).
MAX_COMMANDS_LIMIT = 1000

DEFAULT_BRAND_STATE: dict[str, Any] = {
    "brandId": "",
    "brandName": "",
    "observations": {
        "lastResearchAt": None,
        "lastPublishAt": None,
        "contentCount": 0,
        "avgEngagement": 0,
        "topKeywords": [],
        "competitorMoves": [],
    },
    "pending": [],
    "decisions": [],
    "lastCycleAt": 0,
    "cycleIntervalMs": HOUR_MS,
}


class DomainEvent(msgspec.Struct):
    type: str
    payload: Any = None
    timestamp: int | float | None = None


class _Research(msgspec.Struct):
    keywords: list[str]
    opportunities: list[str]
    gaps: list[str] = []


class _Published(msgspec.Struct, rename="camel"):
    content_id: str
    keyword: str


class _Engagement(msgspec.Struct, rename="camel"):
    avg_engagement: float
    under_performing: list[str] = []
    top_performing: list[str] = []


class _Competitor(msgspec.Struct):
    competitor: str
    action: str
    details: Any = None


class _Ack(msgspec.Struct):
    ids: list[str]


def _payload(event: DomainEvent, type: type[Any]) -> Any:
    try:
        return msgspec.convert(event.payload, type)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid {event.type} payload: {exc}") from None


def _hours(ms: float) -> str:
    # JavaScript's toFixed(0), which prints Infinity for "never".
    return "Infinity" if math.isinf(ms) else f"{ms / HOUR_MS:.0f}"


class BrandAgent(stead.Agent):
    """One agent per brand (name it ``brand:<id>``): observes, decides, emits commands."""

    initial_state: ClassVar[Any] = DEFAULT_BRAND_STATE
    #: When the decision cycle runs (cron, UTC).
    decision_cycle_cron: ClassVar[str] = "*/60 * * * *"

    async def on_request(self, request: Request) -> Response:
        self._ensure_identity()
        routes = {
            "/event": self._event,
            "/state": self._state,
            "/decisions": self._decisions,
            "/commands": self._commands,
            "/commands/ack": self._ack,
        }
        return await route(request, routes, self.ctx.storage)

    def _ensure_identity(self) -> None:
        if not self.state["brandId"] and self.ctx.id.name:
            self._update(brandId=self.ctx.id.name)
        if not any(s.callback == "decision_cycle" for s in self.get_schedules()):
            self.schedule(self.decision_cycle_cron, "decision_cycle")

    def _update(self, **fields: Any) -> None:
        self.set_state({**self.state, **fields})

    def _observe(self, **fields: Any) -> None:
        self._update(observations={**self.state["observations"], **fields})

    async def _state(self, request: Request) -> Response:
        return Response.json(self.state)

    async def _decisions(self, request: Request) -> Response:
        return Response.json(self.state["decisions"][-20:])

    # -- events --------------------------------------------------------------

    async def _event(self, request: Request) -> Response:
        event = decode_body(request, DomainEvent)
        handlers = {
            "research.completed": self._on_research_completed,
            "content.published": self._on_content_published,
            "engagement.report": self._on_engagement_report,
            "competitor.detected": self._on_competitor_detected,
        }
        handler = handlers.get(event.type)
        if handler is None:
            return Response.json({"accepted": True, "action": "ignored"})
        return Response.json(handler(event))

    def _on_research_completed(self, event: DomainEvent) -> dict[str, Any]:
        research: _Research = _payload(event, _Research)
        self._observe(lastResearchAt=now_ms(), topKeywords=research.keywords[:20])
        emitted = 0
        for opportunity in research.opportunities:
            if self._should_create_content():
                priority = 1 if opportunity in self.state["observations"]["topKeywords"] else 2
                payload = {"brandId": self._brand(), "keyword": opportunity, "priority": priority}
                self._emit("content.create", payload)
                reason = f'Research found opportunity "{opportunity}" — creating content'
                self._log_decision("create-content", reason)
                emitted += 1
        return {"accepted": True, "commands": emitted}

    def _on_content_published(self, event: DomainEvent) -> dict[str, Any]:
        published: _Published = _payload(event, _Published)
        observations = self.state["observations"]
        self._observe(lastPublishAt=now_ms(), contentCount=observations["contentCount"] + 1)
        if published.keyword in observations["topKeywords"]:
            payload = {
                "brandId": self._brand(),
                "contentId": published.content_id,
                "platforms": ["twitter", "linkedin"],
                "timing": "optimal",
            }
            self._emit("social.schedule", payload)
            reason = f'Content "{published.keyword}" published — scheduling social promotion'
            self._log_decision("promote-content", reason)
        return {"accepted": True}

    def _on_engagement_report(self, event: DomainEvent) -> dict[str, Any]:
        report: _Engagement = _payload(event, _Engagement)
        self._observe(avgEngagement=report.avg_engagement)
        if report.avg_engagement < 0.02:
            context = {"underPerforming": report.under_performing}
            focus = "engagement-optimization"
            self._emit(
                "research.request", {"brandId": self._brand(), "focus": focus, "context": context}
            )
            percent = f"{report.avg_engagement * 100:.1f}"
            self._log_decision(
                "engagement-pivot", f"Engagement at {percent}% — triggering research pivot"
            )
        return {"accepted": True}

    def _on_competitor_detected(self, event: DomainEvent) -> dict[str, Any]:
        move: _Competitor = _payload(event, _Competitor)
        observed = {"competitor": move.competitor, "action": move.action, "observedAt": now_ms()}
        moves = [*self.state["observations"]["competitorMoves"], observed][-50:]
        self._observe(competitorMoves=moves)
        if move.action == "new-content" and self._is_high_priority(move.competitor):
            context = {
                "competitor": move.competitor,
                "action": move.action,
                "details": move.details,
            }
            payload = {
                "brandId": self._brand(),
                "focus": "competitive-response",
                "context": context,
            }
            self._emit("research.request", payload)
            reason = f'Competitor "{move.competitor}" published new content — investigating'
            self._log_decision("competitive-response", reason)
        return {"accepted": True}

    # -- the scheduled decision cycle ------------------------------------------

    async def decision_cycle(self, payload: Any = None) -> None:
        """Request routine research after 24 h without any; flag a stall after 48 h
        without publishing (run hourly by the schedule; also callable by RPC)."""
        self._ensure_identity()
        now = now_ms()
        observations = self.state["observations"]
        last_research, last_publish = observations["lastResearchAt"], observations["lastPublishAt"]
        since_research = now - last_research if last_research else math.inf
        since_publish = now - last_publish if last_publish else math.inf
        if since_research > DAY_MS:
            self._emit("research.request", {"brandId": self._brand(), "focus": "routine-discovery"})
            reason = f"No research in {_hours(since_research)}h — requesting routine discovery"
            self._log_decision("routine-research", reason)
        if since_publish > 2 * DAY_MS:
            reason = f"No publishing in {_hours(since_publish)}h — pipeline may be stalled"
            self._log_decision("pipeline-stall", reason)
        self._update(lastCycleAt=now)

    # -- helpers -------------------------------------------------------------

    def _brand(self) -> str:
        brand: str = self.state["brandId"]
        return brand

    def _should_create_content(self) -> bool:
        now = now_ms()
        recent = [
            decision
            for decision in self.state["decisions"]
            if decision["type"] == "create-content" and now - decision["timestamp"] < DAY_MS
        ]
        return len(recent) < 5  # at most five pieces a day

    def _is_high_priority(self, competitor: str) -> bool:
        now = now_ms()
        moves = self.state["observations"]["competitorMoves"]
        recent = [
            m for m in moves if m["competitor"] == competitor and now - m["observedAt"] < 7 * DAY_MS
        ]
        return len(recent) >= 3  # active: three or more moves in a week

    def _log_decision(self, type: str, reason: str, result: str = "pending") -> None:
        now = now_ms()
        decision = {
            "id": f"dec_{now}_{secrets.token_hex(3)}",
            "type": type,
            "reason": reason,
            "result": result,
            "timestamp": now,
        }
        self._update(decisions=[*self.state["decisions"], decision][-100:])

    # -- the command outbox ----------------------------------------------------

    def _emit(self, type: str, payload: Any) -> None:
        storage = self.ctx.storage
        seq: int = storage.get("command-seq", 0) + 1
        command = {
            "id": f"cmd_{seq:012d}",
            "type": type,
            "payload": payload,
            "brandId": self._brand(),
            "emittedAt": now_ms(),
        }
        storage.put_many({"command-seq": seq, f"command:{seq:012d}": command})

    async def _commands(self, request: Request) -> Response:
        limit = int_param(request, "limit", 100, minimum=0, maximum=MAX_COMMANDS_LIMIT)
        commands = self.ctx.storage.list(prefix="command:", limit=limit)
        return Response.json({"commands": list(commands.values())})

    async def _ack(self, request: Request) -> Response:
        ids = decode_body(request, _Ack).ids
        keys = [f"command:{cid.removeprefix('cmd_')}" for cid in ids if cid.startswith("cmd_")]
        try:
            acked = self.ctx.storage.delete_many(keys)
        except stead.LimitError as exc:  # an id far too long to be one of ours
            raise BadRequest(str(exc)) from None
        return Response.json({"acked": acked})


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"BRAND_AGENT": BrandAgent}
