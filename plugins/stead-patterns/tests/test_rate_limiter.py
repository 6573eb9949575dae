"""RATE_LIMITER: the catalog's sliding window, its 429 answer and its JSON."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from patterns_harness import Patterns, Reply, eventually

pytestmark = pytest.mark.anyio

B = "RATE_LIMITER"


async def check(patterns: Patterns, key: str, query: str = "limit=3&window=60000") -> Reply:
    return await patterns.fetch(B, key, f"/check?{query}")


async def test_allows_up_to_the_limit_then_answers_429_with_retry_after(
    patterns: Patterns,
) -> None:
    for n in (1, 2, 3):
        reply = await check(patterns, "api-key-1")
        assert reply.status == 200
        assert reply.json() == {"allowed": True, "current": n, "limit": 3, "remaining": 3 - n}
    denied = await check(patterns, "api-key-1")
    assert denied.status == 429
    body = denied.json()
    assert set(body) == {"allowed", "current", "limit", "retryAfterMs"}
    assert body["allowed"] is False and body["current"] == 3 and body["limit"] == 3
    assert 59_000 < body["retryAfterMs"] <= 60_000
    assert denied.headers["retry-after"] == "60"  # ceil(retryAfterMs / 1000)
    assert denied.headers["content-type"].startswith("application/json")


async def test_keys_are_independent(patterns: Patterns) -> None:
    for _ in range(3):
        await check(patterns, "user:a")
    assert (await check(patterns, "user:a")).status == 429
    assert (await check(patterns, "user:b")).json()["current"] == 1


async def test_defaults_are_100_per_minute(patterns: Patterns) -> None:
    reply = await patterns.fetch(B, "k", "/check")
    assert reply.json() == {"allowed": True, "current": 1, "limit": 100, "remaining": 99}


async def test_window_slides(patterns: Patterns) -> None:
    query = "limit=2&window=600"
    assert (await check(patterns, "k", query)).status == 200
    await anyio.sleep(0.3)  # spaces the two requests apart in time; not synchronisation
    assert (await check(patterns, "k", query)).status == 200
    denied = await check(patterns, "k", query)
    assert denied.status == 429
    assert denied.headers["retry-after"] == "1"
    assert 0 < denied.json()["retryAfterMs"] <= 300

    async def allowed_again() -> bool:
        return (await check(patterns, "k", query)).status == 200

    await eventually(allowed_again, interval=0.02)
    # Only the first request left the window; the second still holds its slot.
    assert (await check(patterns, "k", query)).status == 429


async def test_denied_requests_are_not_counted(patterns: Patterns) -> None:
    for _ in range(5):
        await check(patterns, "k", "limit=1&window=60000")
    assert (await check(patterns, "k", "limit=2&window=60000")).json()["current"] == 2


async def test_count_survives_a_restart(patterns: Patterns) -> None:
    await check(patterns, "k")
    await check(patterns, "k")
    await patterns.restart()
    assert (await check(patterns, "k")).json()["current"] == 3
    assert (await check(patterns, "k")).status == 429


async def test_storage_is_deleted_a_window_after_the_last_request(patterns: Patterns) -> None:
    await check(patterns, "short", "limit=5&window=300")
    await check(patterns, "long", "limit=5&window=600000")
    assert sorted(await patterns.names(B)) == ["long", "short"]

    async def short_gone() -> bool:
        return await patterns.names(B) == ["long"]

    await eventually(short_gone)
    # A fresh window starts from zero.
    assert (await check(patterns, "short", "limit=5&window=300")).json()["current"] == 1


@pytest.mark.parametrize("query", ["limit=abc", "window=1.5", "limit=0", "window=-1"])
async def test_bad_parameters_get_400(patterns: Patterns, query: str) -> None:
    reply = await check(patterns, "k", query)
    assert reply.status == 400
    assert "error" in reply.json()


@pytest.mark.parametrize(
    "query",
    [
        "limit=100&window=10000000000000000000",  # past the year 9999
        "limit=100&window=315360000001",  # over ten years
        "limit=100001&window=60000",  # more timestamps than one value holds
    ],
)
async def test_out_of_range_parameters_get_400_and_the_key_keeps_working(
    patterns: Patterns, query: str
) -> None:
    reply = await check(patterns, "api-key-1", query)
    assert reply.status == 400
    assert "must be <=" in reply.json()["error"]
    assert await patterns.names(B) == []  # nothing was written
    allowed = await check(patterns, "api-key-1", "limit=100&window=60000")
    assert allowed.json() == {"allowed": True, "current": 1, "limit": 100, "remaining": 99}


async def test_unknown_path_is_404(patterns: Patterns) -> None:
    reply = await patterns.fetch(B, "k", "/nope")
    assert (reply.status, reply.text()) == (404, "Not found")


async def test_check_is_also_an_rpc_method(patterns: Patterns) -> None:
    result = await patterns.rpc(B, "k", "check", 1, 60_000)
    assert result == {"allowed": True, "current": 1, "limit": 1, "remaining": 0}
    denied = await patterns.rpc(B, "k", "check", 1, 60_000)
    assert denied["allowed"] is False


async def test_rpc_arguments_are_validated_over_http(tmp_path: Path) -> None:
    # The HTTP frontend checks RPC arguments against the type hints (limit 1-100 000,
    # window 1 ms to ten years).
    patterns = await Patterns(tmp_path / "data", "http").start()
    try:
        for args in ([0, 1], [1, 10**19], [100_001, 1]):
            response = await patterns.client.post(f"/objects/{B}/k/rpc/check", json={"args": args})
            assert response.status_code == 400, args
            assert response.json()["error"]["type"] == "InvalidArguments"
    finally:
        await patterns.close()
