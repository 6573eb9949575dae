"""Issue 4 benchmark: alarm lateness with 10,000 objects.

Each object sets an alarm at a random time 0.5-3 s ahead; every alarm must
fire, none early. Prints lateness p50/p99 (target p99 <= 20 ms).
Run: pytest benches/bench_alarms.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import stead
from conftest import Report, record
from disk import percentile

OBJECTS = 10_000
fired: dict[str, tuple[float, float]] = {}
all_fired = asyncio.Event()


class Alarmed(stead.DurableObject):
    def arm_in(self, delay: float) -> None:
        self.ctx.storage.set_alarm(time.time() + delay)

    async def alarm(self, info: stead.AlarmInfo) -> None:
        fired[self.ctx.id.name or ""] = (info.scheduled_time, time.time())
        if len(fired) == OBJECTS:
            all_fired.set()


async def _run(data_dir: str) -> list[float]:
    fired.clear()
    all_fired.clear()
    rng = random.Random(3)
    async with stead.Runtime({"A": Alarmed}, data_dir=data_dir) as rt:
        delays = [rng.uniform(0.5, 3.0) for _ in range(OBJECTS)]

        async def arm(worker: int) -> None:
            # 100 concurrent clients; each object computes "ahead" from its own turn.
            for i in range(worker, OBJECTS, 100):
                await rt.env.A.get_by_name(f"a{i}").arm_in(delays[i])

        await asyncio.gather(*(arm(worker) for worker in range(100)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_fired.wait(), 30)
    assert len(fired) == OBJECTS, f"only {len(fired)} of {OBJECTS} alarms fired"
    lateness = [(at - scheduled) * 1000 for scheduled, at in fired.values()]
    assert min(lateness) >= -1.0, "an alarm fired early"  # ms resolution of stored times
    return lateness


def _lateness_in_a_fresh_process(data_dir: str) -> list[float]:
    """Run the measurement in a fresh interpreter, as a server starts: after
    other benchmarks in this process allocated and freed hundreds of thousands
    of objects, the heap is fragmented and a full GC pass during the alarm
    storm took 99 ms instead of 37 ms (p99 rose to 90-130 ms)."""
    child = subprocess.run(
        [sys.executable, __file__, data_dir],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lateness: list[float] = json.loads(child.stdout)
    return lateness


def test_alarm_lateness(benchmark: object, tmp_path: Path, report: Report) -> None:
    lateness = _lateness_in_a_fresh_process(str(tmp_path / "data"))
    p50, p99 = percentile(lateness, 0.5), percentile(lateness, 0.99)
    report(
        f"\n[alarms] {OBJECTS:,} alarms 0.5-3 s ahead: all fired, none early; lateness "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(lateness):.1f} ms "
        f"(target p99 <= 20 ms; ratio {p99 / 20:.2f})"
    )
    record(benchmark, {"p50_ms": p50, "p99_ms": p99})


if __name__ == "__main__":
    # The child of _lateness_in_a_fresh_process: lateness in ms as JSON on stdout.
    print(json.dumps(asyncio.run(_run(sys.argv[1]))))
