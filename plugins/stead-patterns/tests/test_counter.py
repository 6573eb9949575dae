"""COUNTER: the buffered aggregator: buffer, merge on read, flush by alarm and /flush."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest
from patterns_harness import MakePatterns, Patterns

import stead
from stead_patterns import AggregatorCounter

pytestmark = pytest.mark.anyio

B = "COUNTER"


async def increment(patterns: Patterns, key: str, amount: int | None = None) -> None:
    body = {"key": key} if amount is None else {"key": key, "amount": amount}
    reply = await patterns.post(B, "page-views", "/increment", body)
    assert reply.json() == {"buffered": True}


async def count(patterns: Patterns, key: str) -> int:
    reply = await patterns.fetch(B, "page-views", f"/get?key={key}")
    assert reply.json()["key"] == key
    value: int = reply.json()["count"]
    return value


async def test_reads_merge_buffered_and_stored_counts(patterns: Patterns) -> None:
    await increment(patterns, "home")
    await increment(patterns, "home", 5)
    await increment(patterns, "about")
    assert await count(patterns, "home") == 6
    assert await count(patterns, "never") == 0
    assert (await patterns.post(B, "page-views", "/flush")).json() == {"flushed": True}
    await increment(patterns, "home", 2)
    assert await count(patterns, "home") == 8
    assert (await patterns.fetch(B, "page-views", "/get")).json() == {"home": 8, "about": 1}


async def test_amount_zero_counts_as_one_as_in_the_catalog(patterns: Patterns) -> None:
    await increment(patterns, "k", 0)
    assert await count(patterns, "k") == 1


async def test_flushed_counts_are_durable(patterns: Patterns) -> None:
    await increment(patterns, "home", 3)
    await patterns.post(B, "page-views", "/flush")
    await patterns.restart()
    assert await count(patterns, "home") == 3


async def test_buffered_increments_are_not_durable(patterns: Patterns) -> None:
    # The documented trade-off: an increment that was never flushed is lost on restart.
    await increment(patterns, "home", 3)
    await patterns.post(B, "page-views", "/flush")
    await increment(patterns, "home", 4)
    await patterns.restart()
    assert await count(patterns, "home") == 3


class _FastCounter(AggregatorCounter):
    """The catalog's counter with a 0.3 s flush interval, reporting each alarm."""

    flush_interval_ms: ClassVar[int] = 300
    flushed: ClassVar[asyncio.Event]

    async def alarm(self, info: stead.AlarmInfo) -> None:
        await super().alarm(info)
        type(self).flushed.set()


async def test_the_alarm_flushes_the_buffer(make_patterns: MakePatterns) -> None:
    _FastCounter.flushed = asyncio.Event()
    patterns = await make_patterns({B: _FastCounter})
    await increment(patterns, "home", 2)
    await increment(patterns, "home", 3)
    with pytest.raises(asyncio.TimeoutError):  # not before the interval
        await asyncio.wait_for(_FastCounter.flushed.wait(), 0.1)
    await asyncio.wait_for(_FastCounter.flushed.wait(), 10)
    await patterns.restart()
    assert await count(patterns, "home") == 5


@pytest.mark.parametrize("body", [{}, {"key": 1}, {"key": "k", "amount": "x"}])
async def test_bad_increment_is_400(patterns: Patterns, body: object) -> None:
    reply = await patterns.post(B, "page-views", "/increment", body)
    assert reply.status == 400
    assert (await patterns.fetch(B, "page-views", "/get")).json() == {}


@pytest.mark.parametrize(
    "body",
    [
        {"key": "x", "amount": 2**63},  # past int64 once added up
        {"key": "x", "amount": 2**53},  # past JavaScript's safe integers
        {"key": "x", "amount": -1e300},
        {"key": "k" * 501},  # too long to be part of a storage key
    ],
)
async def test_out_of_range_increments_are_400_and_valid_counts_still_flush(
    patterns: Patterns, body: object
) -> None:
    for _ in range(3):
        await increment(patterns, "page-views")
    assert (await patterns.post(B, "page-views", "/increment", body)).status == 400
    assert (await patterns.post(B, "page-views", "/flush")).json() == {"flushed": True}
    await patterns.restart()
    assert (await patterns.fetch(B, "page-views", "/get")).json() == {"page-views": 3}


async def test_a_count_stays_within_javascripts_safe_integers(patterns: Patterns) -> None:
    most = 2**53 - 1
    await increment(patterns, "big", most - 1)
    await patterns.post(B, "page-views", "/flush")
    await increment(patterns, "big")  # buffered: the stored and buffered counts add up
    refused = await patterns.post(B, "page-views", "/increment", {"key": "big"})
    assert refused.status == 400
    await increment(patterns, "big", -5)
    await patterns.post(B, "page-views", "/flush")
    assert await count(patterns, "big") == most - 5


async def test_any_number_of_counters_can_be_flushed(make_patterns: MakePatterns) -> None:
    # Together the counts are far over the value limit; each one is far under it.
    patterns = await make_patterns(max_value_bytes=4_096)
    keys = [f"/products/{n:03d}/" + "p" * 400 for n in range(40)]
    for n, key in enumerate(keys):
        await increment(patterns, key, n + 1)
    assert (await patterns.post(B, "page-views", "/flush")).json() == {"flushed": True}
    await patterns.restart()
    assert await patterns.rpc(B, "page-views", "counts") == {
        key: n + 1 for n, key in enumerate(keys)
    }


async def test_unknown_path_is_404(patterns: Patterns) -> None:
    assert (await patterns.fetch(B, "page-views", "/nope")).status == 404


async def test_counts_by_rpc(patterns: Patterns) -> None:
    await increment(patterns, "home", 2)
    await patterns.post(B, "page-views", "/flush")
    await increment(patterns, "about")
    assert await patterns.rpc(B, "page-views", "counts") == {"home": 2, "about": 1}
