"""The layer guide's counters: RAW_COUNTER, SERVER_COUNTER, RPC_COUNTER, AGENT_COUNTER."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from patterns_harness import MakePatterns, Patterns, eventually

from stead_patterns import AgentCounter

pytestmark = pytest.mark.anyio


async def test_raw_counter(patterns: Patterns) -> None:
    assert (await patterns.fetch("RAW_COUNTER", "c", "/get")).json() == {"count": 0}
    assert (await patterns.fetch("RAW_COUNTER", "c", "/increment")).json() == {"count": 1}
    assert (await patterns.fetch("RAW_COUNTER", "c", "/increment")).json() == {"count": 2}
    assert (await patterns.fetch("RAW_COUNTER", "c", "/get")).json() == {"count": 2}
    missing = await patterns.fetch("RAW_COUNTER", "c", "/nope")
    assert (missing.status, missing.text()) == (404, "Not found")
    await patterns.restart()
    assert (await patterns.fetch("RAW_COUNTER", "c", "/get")).json() == {"count": 2}


async def test_server_counter_routes(patterns: Patterns) -> None:
    b = "SERVER_COUNTER"
    assert (await patterns.fetch(b, "c", "/count")).json() == {"count": 0}
    assert (await patterns.post(b, "c", "/increment")).json() == {"count": 1}
    assert (await patterns.post(b, "c", "/increment")).json() == {"count": 2}
    assert (await patterns.fetch(b, "c", "/count")).json() == {"count": 2}
    assert (await patterns.post(b, "c", "/reset")).json() == {"count": 0}
    assert (await patterns.fetch(b, "c", "/count")).json() == {"count": 0}
    wrong_method = await patterns.fetch(b, "c", "/increment")
    assert wrong_method.status == 405
    assert (await patterns.fetch(b, "c", "/count")).json() == {"count": 0}
    assert (await patterns.fetch(b, "c", "/nope")).status == 404


async def test_server_counter_sees_query_and_headers(patterns: Patterns) -> None:
    reply = await patterns.fetch("SERVER_COUNTER", "c", "/count?x=1")
    assert reply.json() == {"count": 0}
    assert reply.headers["content-type"] == "application/json"


async def test_rpc_counter(patterns: Patterns) -> None:
    b = "RPC_COUNTER"
    assert await patterns.rpc(b, "c", "increment") == 1
    assert await patterns.rpc(b, "c", "increment") == 2
    assert await patterns.rpc(b, "c", "get_count") == 2
    assert await patterns.rpc(b, "c", "reset") is None
    assert await patterns.rpc(b, "c", "get_count") == 0
    assert await patterns.rpc(b, "other", "get_count") == 0


async def test_agent_counter_state_and_history(patterns: Patterns) -> None:
    b = "AGENT_COUNTER"
    initial = (await patterns.fetch(b, "c", "/")).json()
    assert initial == {"count": 0, "lastIncrementAt": 0, "history": []}
    for n in range(1, 4):
        assert (await patterns.fetch(b, "c", "/increment")).json() == {"count": n}
    state = (await patterns.fetch(b, "c", "/state")).json()
    assert state["count"] == 3
    assert [entry["value"] for entry in state["history"]] == [1, 2, 3]
    assert state["lastIncrementAt"] == state["history"][-1]["timestamp"] > 0
    await patterns.restart()
    assert (await patterns.fetch(b, "c", "/")).json()["count"] == 3


async def test_agent_counter_history_is_capped_at_100(patterns: Patterns) -> None:
    b = "AGENT_COUNTER"
    for _ in range(105):
        await patterns.fetch(b, "c", "/increment")
    state = (await patterns.fetch(b, "c", "/")).json()
    assert state["count"] == 105
    assert len(state["history"]) == 100
    assert state["history"][0]["value"] == 6 and state["history"][-1]["value"] == 105


async def test_agent_counter_reset_by_rpc(patterns: Patterns) -> None:
    b = "AGENT_COUNTER"
    await patterns.fetch(b, "c", "/increment")
    assert await patterns.rpc(b, "c", "reset_daily") is None
    state = (await patterns.fetch(b, "c", "/")).json()
    assert (state["count"], state["history"]) == (0, [])
    assert state["lastIncrementAt"] > 0  # kept, as the catalog's reset keeps it


class _EverySecondCounter(AgentCounter):
    reset_schedule: ClassVar[str] = "* * * * * *"  # croniter's seconds field


async def test_agent_counter_resets_on_its_schedule(make_patterns: MakePatterns) -> None:
    patterns = await make_patterns({"AGENT_COUNTER": _EverySecondCounter})
    for _ in range(3):
        await patterns.fetch("AGENT_COUNTER", "c", "/increment")

    async def reset() -> bool:
        state: Any = (await patterns.fetch("AGENT_COUNTER", "c", "/")).json()
        return bool(state["count"] == 0 and state["history"] == [])

    await eventually(reset)
    assert (await patterns.fetch("AGENT_COUNTER", "c", "/increment")).json() == {"count": 1}
