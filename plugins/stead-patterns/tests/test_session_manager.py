"""SESSION_MANAGER: create/get/set/destroy, touch on access, expiry by alarm."""

from __future__ import annotations

import time

import anyio
import pytest
from patterns_harness import MakePatterns, Patterns, eventually

import stead
from stead_patterns import SessionManager

pytestmark = pytest.mark.anyio

B = "SESSION_MANAGER"


async def test_session_lifecycle(patterns: Patterns) -> None:
    before = int(time.time() * 1000)
    created = await patterns.post(B, "s1", "/create", {"userId": "u1", "data": {"theme": "dark"}})
    assert created.status == 200
    body = created.json()
    assert body["created"] is True
    assert before + 3_600_000 <= body["expiresAt"] <= int(time.time() * 1000) + 3_600_000

    session = (await patterns.fetch(B, "s1", "/get")).json()
    assert set(session) == {"userId", "createdAt", "lastAccessedAt", "data", "ttlMs"}
    assert session["userId"] == "u1"
    assert session["data"] == {"theme": "dark"}
    assert session["ttlMs"] == 3_600_000
    assert session["createdAt"] <= session["lastAccessedAt"]

    updated = await patterns.post(B, "s1", "/set", {"cart": [1, 2], "theme": "light"})
    assert updated.json() == {"updated": True}
    assert (await patterns.fetch(B, "s1", "/get")).json()["data"] == {
        "theme": "light",
        "cart": [1, 2],
    }

    assert (await patterns.post(B, "s1", "/destroy")).json() == {"destroyed": True}
    missing = await patterns.fetch(B, "s1", "/get")
    assert (missing.status, missing.json()) == (404, {"error": "No session"})
    assert await patterns.names(B) == []


async def test_get_and_set_without_a_session_are_404(patterns: Patterns) -> None:
    assert (await patterns.fetch(B, "none", "/get")).status == 404
    reply = await patterns.post(B, "none", "/set", {"a": 1})
    assert (reply.status, reply.json()) == (404, {"error": "No session"})


async def test_get_touches_the_session(patterns: Patterns) -> None:
    await patterns.post(B, "s", "/create", {"userId": "u", "ttlMs": 60_000})
    first = (await patterns.fetch(B, "s", "/get")).json()["lastAccessedAt"]
    await anyio.sleep(0.01)
    second = (await patterns.fetch(B, "s", "/get")).json()["lastAccessedAt"]
    assert second > first


async def test_session_expires_by_alarm(patterns: Patterns) -> None:
    created = await patterns.post(B, "short", "/create", {"userId": "u", "ttlMs": 300})
    assert created.status == 200
    await patterns.post(B, "long", "/create", {"userId": "v"})

    async def short_expired() -> bool:
        # Listing objects does not touch the session (a /get would extend it).
        return await patterns.names(B) == ["long"]

    elapsed = await eventually(short_expired)
    assert elapsed >= 0.25  # never early
    assert (await patterns.fetch(B, "short", "/get")).status == 404
    assert (await patterns.fetch(B, "long", "/get")).status == 200


async def test_access_extends_the_expiry(patterns: Patterns) -> None:
    await patterns.post(B, "s", "/create", {"userId": "u", "ttlMs": 1_000})
    deadline = time.monotonic() + 2.5  # two and a half TTLs
    while time.monotonic() < deadline:
        assert (await patterns.fetch(B, "s", "/get")).status == 200
        await anyio.sleep(0.2)
    assert (await patterns.post(B, "s", "/set", {"k": 1})).status == 200

    async def expired() -> bool:
        return await patterns.names(B) == []

    await eventually(expired)


async def test_session_survives_a_restart(patterns: Patterns) -> None:
    await patterns.post(B, "s", "/create", {"userId": "u", "data": {"n": 1}})
    await patterns.restart()
    session = (await patterns.fetch(B, "s", "/get")).json()
    assert (session["userId"], session["data"]) == ("u", {"n": 1})


async def test_expiry_alarm_survives_a_restart(patterns: Patterns) -> None:
    await patterns.post(B, "s", "/create", {"userId": "u", "ttlMs": 400})
    await patterns.restart()

    async def expired() -> bool:
        return await patterns.names(B) == []

    await eventually(expired)
    assert (await patterns.fetch(B, "s", "/get")).status == 404


class _LateAlarm(SessionManager):
    """A session manager whose expiry alarm never gets to run (as if it were late)."""

    async def alarm(self, info: stead.AlarmInfo) -> None:
        pass


async def test_an_expired_session_is_gone_even_before_its_alarm_runs(
    make_patterns: MakePatterns,
) -> None:
    patterns = await make_patterns({B: _LateAlarm})
    await patterns.post(B, "s", "/create", {"userId": "u", "ttlMs": 200})
    await anyio.sleep(0.3)  # lets the TTL run out; not synchronisation
    assert await patterns.rpc(B, "s", "peek") is None
    assert (await patterns.post(B, "s", "/set", {"k": 1})).status == 404
    missing = await patterns.fetch(B, "s", "/get")
    assert (missing.status, missing.json()) == (404, {"error": "No session"})
    assert await patterns.names(B) == []  # deleted, as its alarm would have


async def test_a_session_that_expired_while_the_server_was_down_is_not_served(
    make_patterns: MakePatterns,
) -> None:
    patterns = await make_patterns({B: _LateAlarm})
    await patterns.post(B, "s", "/create", {"userId": "u", "ttlMs": 200})
    await patterns.close()
    await anyio.sleep(0.3)  # the server is down while the TTL runs out
    await patterns.start()
    assert (await patterns.fetch(B, "s", "/get")).status == 404


async def test_a_refused_set_leaves_the_session_unchanged(make_patterns: MakePatterns) -> None:
    patterns = await make_patterns(max_value_bytes=20_000)
    await patterns.post(B, "s", "/create", {"userId": "alice", "data": {"cart": 1}})
    assert (await patterns.post(B, "s", "/set", {"notes": "x" * 12_000})).status == 200
    # A second one does not fit the value limit: 400, and nothing changes.
    refused = await patterns.post(B, "s", "/set", {"more": "y" * 12_000})
    assert refused.status == 400
    assert "limit" in refused.json()["error"]
    huge_int = b'{"n": 18446744073709551616}'  # not storable in 64 bits
    assert (await patterns.fetch(B, "s", "/set", method="POST", body=huge_int)).status == 400
    session = (await patterns.fetch(B, "s", "/get")).json()
    assert set(session["data"]) == {"cart", "notes"}
    assert (await patterns.post(B, "s", "/set", {"cart": 2})).json() == {"updated": True}
    await patterns.restart()
    data = (await patterns.fetch(B, "s", "/get")).json()["data"]
    assert (data["cart"], set(data)) == (2, {"cart", "notes"})


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"{}",
        b'{"userId": 5}',
        b'{"userId": "u", "ttlMs": -1}',
        b'{"userId": "u", "ttlMs": 9223372036854775808}',  # 2**63 ms: past the year 9999
        b'{"userId": "u", "ttlMs": 315360000001}',  # over ten years
    ],
)
async def test_bad_create_body_is_400(patterns: Patterns, body: bytes) -> None:
    reply = await patterns.fetch(B, "s", "/create", method="POST", body=body)
    assert reply.status == 400
    assert "error" in reply.json()
    assert await patterns.names(B) == []


async def test_set_needs_a_json_object(patterns: Patterns) -> None:
    await patterns.post(B, "s", "/create", {"userId": "u"})
    assert (await patterns.post(B, "s", "/set", [1, 2])).status == 400


async def test_unknown_path_is_404(patterns: Patterns) -> None:
    reply = await patterns.fetch(B, "s", "/nope")
    assert (reply.status, reply.text()) == (404, "Not found")


async def test_peek_does_not_touch(patterns: Patterns) -> None:
    assert await patterns.rpc(B, "s", "peek") is None
    await patterns.post(B, "s", "/create", {"userId": "u", "ttlMs": 60_000})
    first = await patterns.rpc(B, "s", "peek")
    await anyio.sleep(0.01)
    second = await patterns.rpc(B, "s", "peek")
    assert first == second and first["userId"] == "u"
    assert (await patterns.fetch(B, "s", "/get")).json()["lastAccessedAt"] > first["lastAccessedAt"]
