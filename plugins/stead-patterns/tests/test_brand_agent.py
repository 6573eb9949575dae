"""BRAND_AGENT: events → state, decisions and commands in the outbox; the decision cycle."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from patterns_harness import MakePatterns, Patterns, Reply, eventually

from stead_patterns import BrandAgent

pytestmark = pytest.mark.anyio

B = "BRAND_AGENT"
NAME = "brand:acme"


async def event(patterns: Patterns, type: str, payload: Any) -> Reply:
    return await patterns.post(B, NAME, "/event", {"type": type, "payload": payload})


async def state(patterns: Patterns) -> Any:
    return (await patterns.fetch(B, NAME, "/state")).json()


async def commands(patterns: Patterns) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = (await patterns.fetch(B, NAME, "/commands")).json()["commands"]
    return result


async def test_research_creates_content_at_most_five_a_day(patterns: Patterns) -> None:
    research = {
        "keywords": ["durable objects", "actors"],
        "gaps": [],
        "opportunities": ["actors", "sagas", "alarms", "queues", "caches", "locks", "leases"],
    }
    reply = await event(patterns, "research.completed", research)
    assert reply.json() == {"accepted": True, "commands": 5}
    observed = (await state(patterns))["observations"]
    assert observed["topKeywords"] == ["durable objects", "actors"]
    assert observed["lastResearchAt"] > 0
    emitted = await commands(patterns)
    assert [c["type"] for c in emitted] == ["content.create"] * 5
    assert emitted[0]["payload"] == {"brandId": NAME, "keyword": "actors", "priority": 1}
    assert emitted[1]["payload"]["priority"] == 2
    assert emitted[0]["brandId"] == NAME and emitted[0]["emittedAt"] > 0
    decisions = (await patterns.fetch(B, NAME, "/decisions")).json()
    assert [d["type"] for d in decisions] == ["create-content"] * 5
    assert decisions[0]["reason"] == 'Research found opportunity "actors" — creating content'
    assert decisions[0]["result"] == "pending" and decisions[0]["id"].startswith("dec_")
    # The daily cap holds across events.
    again = await event(patterns, "research.completed", research)
    assert again.json() == {"accepted": True, "commands": 0}


async def test_publishing_a_top_keyword_schedules_promotion(patterns: Patterns) -> None:
    research = {"keywords": ["actors"], "opportunities": []}
    await event(patterns, "research.completed", research)
    await event(patterns, "content.published", {"contentId": "c1", "keyword": "other"})
    assert await commands(patterns) == []
    reply = await event(patterns, "content.published", {"contentId": "c2", "keyword": "actors"})
    assert reply.json() == {"accepted": True}
    [command] = await commands(patterns)
    assert command["type"] == "social.schedule"
    assert command["payload"] == {
        "brandId": NAME,
        "contentId": "c2",
        "platforms": ["twitter", "linkedin"],
        "timing": "optimal",
    }
    assert (await state(patterns))["observations"]["contentCount"] == 2


async def test_low_engagement_triggers_a_research_pivot(patterns: Patterns) -> None:
    await event(patterns, "engagement.report", {"avgEngagement": 0.05, "underPerforming": []})
    assert await commands(patterns) == []
    report = {"avgEngagement": 0.015, "topPerforming": ["a"], "underPerforming": ["b"]}
    await event(patterns, "engagement.report", report)
    [command] = await commands(patterns)
    assert command["payload"] == {
        "brandId": NAME,
        "focus": "engagement-optimization",
        "context": {"underPerforming": ["b"]},
    }
    decision = (await patterns.fetch(B, NAME, "/decisions")).json()[-1]
    assert decision["reason"] == "Engagement at 1.5% — triggering research pivot"
    assert (await state(patterns))["observations"]["avgEngagement"] == 0.015


async def test_an_active_competitor_gets_a_response(patterns: Patterns) -> None:
    move = {"competitor": "globex", "action": "new-content", "details": {"url": "u"}}
    for _ in range(2):
        await event(patterns, "competitor.detected", move)
    assert await commands(patterns) == []  # two moves in a week: not yet active
    await event(patterns, "competitor.detected", move)
    [command] = await commands(patterns)
    assert command["payload"]["focus"] == "competitive-response"
    assert command["payload"]["context"] == move
    assert len((await state(patterns))["observations"]["competitorMoves"]) == 3


async def test_unknown_events_are_ignored_and_bad_ones_rejected(patterns: Patterns) -> None:
    reply = await event(patterns, "weather.changed", {"sunny": True})
    assert reply.json() == {"accepted": True, "action": "ignored"}
    bad = await event(patterns, "content.published", {"contentId": 1})
    assert bad.status == 400
    assert (await patterns.post(B, NAME, "/event", {"payload": {}})).status == 400
    assert (await state(patterns))["observations"]["contentCount"] == 0


async def test_commands_are_acknowledged_and_survive_restarts(patterns: Patterns) -> None:
    await event(patterns, "engagement.report", {"avgEngagement": 0.0})
    await event(patterns, "engagement.report", {"avgEngagement": 0.01})
    await patterns.restart()
    first, second = await commands(patterns)
    acked = await patterns.post(B, NAME, "/commands/ack", {"ids": [first["id"], "cmd_nope"]})
    assert acked.json() == {"acked": 1}
    assert await commands(patterns) == [second]
    limited = (await patterns.fetch(B, NAME, "/commands?limit=0")).json()
    assert limited == {"commands": []}


@pytest.mark.parametrize("limit", ["99999999999999999999999", "1001", "-1", "ten", "²"])
async def test_out_of_range_commands_limit_is_400(patterns: Patterns, limit: str) -> None:
    reply = await patterns.fetch(B, NAME, f"/commands?limit={limit}")
    assert reply.status == 400
    assert "limit" in reply.json()["error"]
    assert (await patterns.fetch(B, NAME, "/commands?limit=1000")).status == 200


async def test_a_refused_event_emits_nothing_so_a_retry_does_not_duplicate(
    make_patterns: MakePatterns,
) -> None:
    patterns = await make_patterns(max_value_bytes=10_000)
    # Each command fits the value limit; the decision log with both reasons does not.
    opportunities = ["a" * 6_000, "b" * 6_000]
    research = {"keywords": ["k"], "opportunities": opportunities}
    refused = await event(patterns, "research.completed", research)
    assert refused.status == 400
    assert await commands(patterns) == []
    current = await state(patterns)
    assert current["observations"]["lastResearchAt"] is None and current["decisions"] == []
    # The client shortens its event and retries: exactly its commands are emitted.
    retried = {"keywords": ["k"], "opportunities": ["a", "b"]}
    assert (await event(patterns, "research.completed", retried)).json()["commands"] == 2
    assert [c["payload"]["keyword"] for c in await commands(patterns)] == ["a", "b"]


async def test_decision_cycle_requests_routine_research(patterns: Patterns) -> None:
    await patterns.rpc(B, NAME, "decision_cycle", None)
    current = await state(patterns)
    assert current["lastCycleAt"] > 0 and current["brandId"] == NAME
    reasons = [d["reason"] for d in current["decisions"]]
    assert reasons == [
        "No research in Infinityh — requesting routine discovery",
        "No publishing in Infinityh — pipeline may be stalled",
    ]
    [command] = await commands(patterns)
    assert command["payload"] == {"brandId": NAME, "focus": "routine-discovery"}
    # Fresh research and publishing: the next cycle has nothing to say.
    await event(patterns, "research.completed", {"keywords": [], "opportunities": []})
    await event(patterns, "content.published", {"contentId": "c", "keyword": "k"})
    await patterns.rpc(B, NAME, "decision_cycle", None)
    assert len((await state(patterns))["decisions"]) == 2


class _EverySecond(BrandAgent):
    decision_cycle_cron: ClassVar[str] = "* * * * * *"


async def test_decision_cycle_runs_on_its_schedule(make_patterns: MakePatterns) -> None:
    patterns = await make_patterns({B: _EverySecond})
    assert (await state(patterns))["lastCycleAt"] == 0  # the first request schedules it

    async def cycled() -> bool:
        return bool((await state(patterns))["lastCycleAt"] > 0)

    await eventually(cycled)
    assert (await commands(patterns))[0]["payload"]["focus"] == "routine-discovery"
