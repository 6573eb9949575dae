"""Issue 4 benchmark: 1M pending alarms set from Python in batches.

Prints the set rate (target >= 300k/s) and the wheel's memory per alarm
(target <= 64 B), beside the pure-Rust figures of
`cargo bench -p stead-core --bench wheel`.
Run: pytest benches/bench_wheel.py
"""

from __future__ import annotations

import random
import time

from conftest import Report
from stead._core import TimerWheel

ALARMS = 1_000_000
BATCH = 10_000


def test_set_one_million_alarms_from_python(benchmark: object, report: Report) -> None:
    now = int(time.time() * 1000)
    rng = random.Random(5)
    batches = [
        [(token, now + rng.randrange(3_600_000)) for token in range(start, start + BATCH)]
        for start in range(0, ALARMS, BATCH)
    ]
    wheel = TimerWheel(now)
    started = time.perf_counter()
    for batch in batches:
        wheel.set_many(batch)
    elapsed = time.perf_counter() - started
    assert len(wheel) == ALARMS
    rate = ALARMS / elapsed
    per_alarm = wheel.memory_bytes() / ALARMS
    report(
        f"\n[wheel/python] set {ALARMS:,} alarms in batches of {BATCH:,}: {rate:,.0f}/s "
        f"(target >= 300,000/s; ratio {rate / 300_000:.2f})\n"
        f"[wheel/python] memory per pending alarm: {per_alarm:.1f} B "
        f"(target <= 64 B; ratio {per_alarm / 64:.2f})"
    )
    due = wheel.advance(now + 3_600_000)
    assert len(due) == ALARMS and len(wheel) == 0
    benchmark.extra_info.update({"set_per_s": rate, "bytes_per_alarm": per_alarm})  # type: ignore[attr-defined]
    benchmark.pedantic(lambda: None, rounds=1)  # type: ignore[attr-defined]
