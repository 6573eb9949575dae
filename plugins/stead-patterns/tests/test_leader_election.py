"""LEADER_ELECTION: acquire/heartbeat/release/leader, 403 for non-leaders, TTL expiry."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from patterns_harness import MakePatterns, Patterns, Reply, eventually

pytestmark = pytest.mark.anyio

B = "LEADER_ELECTION"


async def call(patterns: Patterns, path: str, body: Any = None) -> Reply:
    return await patterns.post(B, "nightly-job", path, body)


async def leader(patterns: Patterns) -> Any:
    return (await patterns.fetch(B, "nightly-job", "/leader")).json()


async def test_election_round(patterns: Patterns) -> None:
    assert await leader(patterns) == {"leader": None, "acquiredAt": None}
    before = int(time.time() * 1000)
    first = await call(patterns, "/acquire", {"candidateId": "w1", "ttlMs": 60_000})
    assert first.json() == {"acquired": True, "renewed": False}
    again = await call(patterns, "/acquire", {"candidateId": "w1"})
    assert again.json() == {"acquired": True, "renewed": True}

    other = (await call(patterns, "/acquire", {"candidateId": "w2"})).json()
    assert other["acquired"] is False and other["currentLeader"] == "w1"
    assert 0 < other["retryAfterMs"] <= 60_000

    current = await leader(patterns)
    assert current["leader"] == "w1" and current["acquiredAt"] >= before

    beat = await call(patterns, "/heartbeat", {"leaderId": "w1"})
    assert beat.status == 200
    assert beat.json()["valid"] is True
    assert beat.json()["nextHeartbeatBefore"] >= before + 60_000

    denied = await call(patterns, "/heartbeat", {"leaderId": "w2"})
    assert (denied.status, denied.json()) == (403, {"valid": False, "error": "Not the leader"})
    denied = await call(patterns, "/release", {"leaderId": "w2"})
    assert (denied.status, denied.json()) == (403, {"released": False, "error": "Not the leader"})

    released = await call(patterns, "/release", {"leaderId": "w1"})
    assert (released.status, released.json()) == (200, {"released": True})
    assert await leader(patterns) == {"leader": None, "acquiredAt": None}
    assert (await call(patterns, "/acquire", {"candidateId": "w2"})).json()["acquired"] is True


async def test_lease_expires_by_ttl(patterns: Patterns) -> None:
    await call(patterns, "/acquire", {"candidateId": "w1", "ttlMs": 300})

    async def no_leader() -> bool:
        return (await leader(patterns))["leader"] is None

    elapsed = await eventually(no_leader)
    assert elapsed >= 0.25
    assert (await call(patterns, "/heartbeat", {"leaderId": "w1"})).status == 403
    taken = await call(patterns, "/acquire", {"candidateId": "w2", "ttlMs": 60_000})
    assert taken.json() == {"acquired": True, "renewed": False}


async def test_heartbeats_keep_the_lease(patterns: Patterns) -> None:
    await call(patterns, "/acquire", {"candidateId": "w1", "ttlMs": 1_000})
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert (await call(patterns, "/heartbeat", {"leaderId": "w1"})).status == 200
        await anyio.sleep(0.2)
    assert (await leader(patterns))["leader"] == "w1"


async def test_lease_survives_a_restart_and_still_expires(patterns: Patterns) -> None:
    await call(patterns, "/acquire", {"candidateId": "w1", "ttlMs": 1_500})
    await patterns.restart()
    assert (await leader(patterns))["leader"] == "w1"
    assert (await call(patterns, "/acquire", {"candidateId": "w2"})).json()["acquired"] is False

    async def no_leader() -> bool:
        return (await leader(patterns))["leader"] is None

    await eventually(no_leader)


@pytest.mark.parametrize(
    ("path", "body"),
    [("/acquire", {}), ("/acquire", {"candidateId": 3}), ("/heartbeat", None), ("/release", {})],
)
async def test_bad_bodies_are_400(patterns: Patterns, path: str, body: Any) -> None:
    assert (await call(patterns, path, body)).status == 400


# Past the year 9999; over ten years; negative (a lease already gone when granted).
@pytest.mark.parametrize("ttl_ms", [2**63, 315_360_000_001, -100, -1])
async def test_out_of_range_ttl_is_400_and_elects_no_one(patterns: Patterns, ttl_ms: int) -> None:
    refused = await call(patterns, "/acquire", {"candidateId": "w1", "ttlMs": ttl_ms})
    assert refused.status == 400
    assert await leader(patterns) == {"leader": None, "acquiredAt": None}
    taken = await call(patterns, "/acquire", {"candidateId": "w2", "ttlMs": 60_000})
    assert taken.json() == {"acquired": True, "renewed": False}


async def test_a_zero_ttl_is_the_default(patterns: Patterns) -> None:
    taken = await call(patterns, "/acquire", {"candidateId": "w1", "ttlMs": 0})
    assert taken.json() == {"acquired": True, "renewed": False}
    beat = (await call(patterns, "/heartbeat", {"leaderId": "w1"})).json()
    assert beat["valid"] and beat["nextHeartbeatBefore"] - time.time() * 1000 > 25_000


async def test_a_refused_acquire_leaves_no_leader(make_patterns: MakePatterns) -> None:
    patterns = await make_patterns(max_value_bytes=10_000)
    refused = await call(patterns, "/acquire", {"candidateId": "w" * 20_000})
    assert refused.status == 400  # the lease does not fit the value limit
    assert await leader(patterns) == {"leader": None, "acquiredAt": None}
    taken = await call(patterns, "/acquire", {"candidateId": "w2"})
    assert taken.json() == {"acquired": True, "renewed": False}
    await patterns.restart()
    assert (await leader(patterns))["leader"] == "w2"


async def test_unknown_path_is_404(patterns: Patterns) -> None:
    assert (await patterns.fetch(B, "nightly-job", "/nope")).status == 404


async def test_current_leader_by_rpc(patterns: Patterns) -> None:
    assert await patterns.rpc(B, "nightly-job", "current") == {"leader": None, "acquiredAt": None}
    await call(patterns, "/acquire", {"candidateId": "w1"})
    assert await patterns.rpc(B, "nightly-job", "current") == await leader(patterns)
