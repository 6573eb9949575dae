"""FEATURE_FLAGS: set/list/delete/evaluate, allowlist, blocklist and the catalog's buckets."""

from __future__ import annotations

from typing import Any

import pytest
from patterns_harness import Patterns

from stead_patterns.feature_flags import rollout_bucket

pytestmark = pytest.mark.anyio

B = "FEATURE_FLAGS"

# (entityId, flag, bucket) computed by the catalog's own `hashId` (Web Crypto
# SHA-256, first four bytes as an unsigned 32-bit integer) under Node.js, % 100.
CATALOG_BUCKETS = [
    ("user-1", "beta", 12),
    ("user-2", "beta", 85),
    ("alice", "new-ui", 85),
    ("bob", "new-ui", 2),
    ("ü-42", "flag", 48),
]


def flag(name: str = "beta", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "enabled": True,
        "rolloutPercent": 0,
        "allowlist": [],
        "blocklist": [],
    }
    return {**base, **fields}


async def evaluate(patterns: Patterns, flag_name: str, entity: str) -> dict[str, Any]:
    reply = await patterns.post(B, "global", "/evaluate", {"flag": flag_name, "entityId": entity})
    assert reply.status == 200
    result: dict[str, Any] = reply.json()
    return result


@pytest.mark.parametrize(("entity", "flag_name", "bucket"), CATALOG_BUCKETS)
def test_buckets_match_the_catalogs_javascript(entity: str, flag_name: str, bucket: int) -> None:
    assert rollout_bucket(entity, flag_name) == bucket


async def test_unknown_flag_is_off(patterns: Patterns) -> None:
    assert await evaluate(patterns, "nope", "u") == {
        "flag": "nope",
        "enabled": False,
        "reason": "not-found",
    }


async def test_disabled_flag_is_off_even_for_the_allowlist(patterns: Patterns) -> None:
    await patterns.post(B, "global", "/set", flag(enabled=False, allowlist=["u"]))
    assert await evaluate(patterns, "beta", "u") == {
        "flag": "beta",
        "enabled": False,
        "reason": "disabled",
    }


async def test_blocklist_wins_over_allowlist_and_rollout(patterns: Patterns) -> None:
    await patterns.post(
        B, "global", "/set", flag(rolloutPercent=100, allowlist=["u", "v"], blocklist=["u"])
    )
    assert (await evaluate(patterns, "beta", "u"))["reason"] == "blocklisted"
    assert await evaluate(patterns, "beta", "v") == {
        "flag": "beta",
        "enabled": True,
        "reason": "allowlisted",
    }


async def test_rollout_uses_the_catalog_buckets(patterns: Patterns) -> None:
    # user-1 is in bucket 12 and user-2 in bucket 85 for "beta".
    await patterns.post(B, "global", "/set", flag(rolloutPercent=13))
    assert await evaluate(patterns, "beta", "user-1") == {
        "flag": "beta",
        "enabled": True,
        "reason": "rollout-included",
        "rolloutPercent": 13,
    }
    assert (await evaluate(patterns, "beta", "user-2"))["reason"] == "rollout-excluded"
    await patterns.post(B, "global", "/set", flag(rolloutPercent=12))
    assert (await evaluate(patterns, "beta", "user-1"))["enabled"] is False
    await patterns.post(B, "global", "/set", flag(rolloutPercent=12.5))
    assert await evaluate(patterns, "beta", "user-1") == {
        "flag": "beta",
        "enabled": True,
        "reason": "rollout-included",
        "rolloutPercent": 12.5,
    }


async def test_rollout_is_deterministic_and_roughly_proportional(patterns: Patterns) -> None:
    await patterns.post(B, "global", "/set", flag(rolloutPercent=30))
    results = [(await evaluate(patterns, "beta", f"e{i}"))["enabled"] for i in range(200)]
    again = [(await evaluate(patterns, "beta", f"e{i}"))["enabled"] for i in range(200)]
    assert results == again
    assert 40 <= sum(results) <= 80  # 30% of 200, loosely


async def test_set_list_delete(patterns: Patterns) -> None:
    assert (await patterns.post(B, "global", "/set", flag("a"))).json() == {"set": True}
    await patterns.post(B, "global", "/set", flag("b", enabled=False))
    listed = (await patterns.fetch(B, "global", "/list")).json()
    assert sorted(listed) == ["flag:a", "flag:b"]
    assert listed["flag:b"]["enabled"] is False
    assert listed["flag:a"]["updatedAt"] > 0
    assert set(listed["flag:a"]) == {
        "name",
        "enabled",
        "rolloutPercent",
        "allowlist",
        "blocklist",
        "updatedAt",
    }
    deleted = await patterns.post(B, "global", "/delete", {"name": "a"})
    assert deleted.json() == {"deleted": True}
    assert sorted((await patterns.fetch(B, "global", "/list")).json()) == ["flag:b"]
    assert (await evaluate(patterns, "a", "u"))["reason"] == "not-found"


async def test_flags_survive_a_restart(patterns: Patterns) -> None:
    await patterns.post(B, "global", "/set", flag(allowlist=["u"]))
    await patterns.restart()
    assert (await evaluate(patterns, "beta", "u"))["reason"] == "allowlisted"


async def test_evaluate_is_also_an_rpc_method(patterns: Patterns) -> None:
    await patterns.post(B, "global", "/set", flag(allowlist=["u"]))
    result = await patterns.rpc(B, "global", "evaluate", "beta", "u")
    assert result == {"flag": "beta", "enabled": True, "reason": "allowlisted"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/set", {"enabled": True}),
        ("/set", {"name": "x", "enabled": "yes"}),
        ("/set", {"name": "x", "enabled": True, "rolloutPercent": -5}),
        ("/set", {"name": "x", "enabled": True, "rolloutPercent": 500}),
        ("/set", {"name": "x", "enabled": True, "rolloutPercent": 100.5}),
        ("/evaluate", {"flag": "x"}),
        ("/delete", {}),
    ],
)
async def test_bad_bodies_are_400(patterns: Patterns, path: str, body: Any) -> None:
    reply = await patterns.post(B, "global", path, body)
    assert reply.status == 400
    assert (await patterns.fetch(B, "global", "/list")).json() == {}


async def test_over_long_flag_names_are_400(patterns: Patterns) -> None:
    assert (await patterns.post(B, "global", "/set", flag("f" * 600))).status == 400
    evaluate_long = {"flag": "f" * 600, "entityId": "u"}
    assert (await patterns.post(B, "global", "/evaluate", evaluate_long)).status == 400
    assert (await patterns.fetch(B, "global", "/list")).json() == {}
