"""Throughput of the catalog patterns, each side by side with a raw durable RPC increment.

Run: pytest plugins/stead-patterns/benches/bench_patterns.py

No issue sets a target for the patterns; each line prints calls/s and the ratio
to ``RPC_COUNTER.increment`` (one durable write per call) measured in the same
run on the same data dir, so the cost of a pattern's own work (HTTP-style
``fetch`` parsing, JSON, its storage) is visible.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import stead
import stead_patterns

CALLS = 20_000
OBJECTS = 200
CALLERS = 200

Call = Callable[[Any, int], Awaitable[Any]]
Report = Callable[[str], None]


async def _rpc_increment(stub: Any, n: int) -> None:
    await stub.increment()


async def _rate_limit(stub: Any, n: int) -> None:
    response = await stub.fetch("/check?limit=100000&window=60000")  # the largest limit
    assert response.status == 200


async def _flag(stub: Any, n: int) -> None:
    body = {"flag": "beta", "entityId": f"user-{n}"}
    response = await stub.fetch("/evaluate", method="POST", json=body)
    assert response.status == 200


async def _buffered(stub: Any, n: int) -> None:
    await stub.fetch("/increment", method="POST", json={"key": f"k{n % 10}"})


async def _sidecar_append(stub: Any, n: int) -> None:
    # Appends to one of many keys: arrays stay small, each call is one durable write.
    await stub.fetch(f"/?key=k{n % 100}", method="POST", json={"n": n})


CASES: list[tuple[str, str, Call]] = [
    ("RPC_COUNTER increment() [baseline]", "RPC_COUNTER", _rpc_increment),
    ("RATE_LIMITER /check", "RATE_LIMITER", _rate_limit),
    ("FEATURE_FLAGS /evaluate (read-only)", "FEATURE_FLAGS", _flag),
    ("COUNTER /increment (buffered)", "COUNTER", _buffered),
    ("STORAGE_SIDECAR POST append", "STORAGE_SIDECAR", _sidecar_append),
]


async def _measure(rt: stead.Runtime, binding: str, call: Call) -> float:
    stubs = [rt.namespace(binding).get_by_name(f"{binding.lower()}-{i}") for i in range(OBJECTS)]
    rng = random.Random(7)
    plan = [[rng.randrange(OBJECTS) for _ in range(CALLS // CALLERS)] for _ in range(CALLERS)]

    async def caller(targets: list[int]) -> None:
        for n, target in enumerate(targets):
            await call(stubs[target], n)

    start = time.perf_counter()
    await asyncio.gather(*(caller(targets) for targets in plan))
    return CALLS / (time.perf_counter() - start)


async def _run_all(data_dir: str) -> dict[str, float]:
    async with stead.Runtime(stead_patterns.bindings(), data_dir=data_dir) as rt:
        flags = rt.env.FEATURE_FLAGS
        for i in range(OBJECTS):
            flag = {"name": "beta", "enabled": True, "rolloutPercent": 50}
            await flags.get_by_name(f"feature_flags-{i}").fetch("/set", method="POST", json=flag)
        return {label: await _measure(rt, binding, call) for label, binding, call in CASES}


def test_pattern_throughput(benchmark: Any, tmp_path: Path, report: Report) -> None:
    results = asyncio.run(_run_all(str(tmp_path / "data")))
    baseline = results[CASES[0][0]]
    lines = [f"\n[patterns] {CALLS:,} calls over {OBJECTS} objects, {CALLERS} callers, fsync"]
    for label, rate in results.items():
        lines.append(
            f"[patterns] {label:<40} {rate:>10,.0f} calls/s  "
            f"ratio to durable RPC increment {rate / baseline:.2f} (no target)"
        )
    report("\n".join(lines))
    benchmark.extra_info.update(results)
    benchmark.pedantic(lambda: None, rounds=1)


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
