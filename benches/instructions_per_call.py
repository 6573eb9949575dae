"""Instructions per durable call, counted by valgrind (callgrind): a figure the
noise of a shared machine cannot move, for comparing changes to the hot path.

Run: python benches/instructions_per_call.py   (needs valgrind; about 6 minutes)

Each side runs twice, with 10 and with 40 calls per caller (1,000 callers over
1,000 objects); the difference divided by the extra 30,000 calls removes start-up
costs. Counts vary by a few percent with how commits group (the flusher thread
runs serialized under valgrind); the in-memory row is exact.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Coroutine
from typing import Any

import bench_runtime  # the script's directory is on sys.path
import stead

SIDES = {
    "stead, fsync": "fsync",
    "stead, in-memory engine": "memory",
    "asyncio baseline": "baseline",
}
SHORT, LONG = 10, 40


def _plan(per_caller: int) -> list[list[int]]:
    rng = random.Random(7)
    return [
        [rng.randrange(bench_runtime.OBJECTS) for _ in range(per_caller)]
        for _ in range(bench_runtime.CALLERS)
    ]


async def _stead(plan: list[list[int]], data_dir: str | None) -> None:
    async with stead.Runtime(
        {"C": bench_runtime.Counter}, data_dir=data_dir, durability="fsync"
    ) as rt:
        stubs = [rt.env.C.get_by_name(f"c{i}") for i in range(bench_runtime.OBJECTS)]
        for stub in stubs:
            await stub.increment()

        async def caller(targets: list[int]) -> None:
            for target in targets:
                await stubs[target].increment()

        await asyncio.gather(*(caller(targets) for targets in plan))


def _worker(side: str, per_caller: int, loop: str) -> None:
    plan = _plan(per_caller)
    bench_runtime.CALLS = per_caller * bench_runtime.CALLERS
    main: Coroutine[Any, Any, object]
    if side == "baseline":
        main = bench_runtime._baseline(plan)
    else:
        data_dir = None if side == "memory" else tempfile.mkdtemp() + "/data"
        main = _stead(plan, data_dir)
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def _instructions(side: str, per_caller: int, loop: str) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--worker",
        side,
        str(per_caller),
        loop,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    collected = [line for line in output.splitlines() if "Collected" in line]
    return int(collected[-1].split(":")[-1].strip())


def main() -> None:
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt install valgrind)")
    loops = ["asyncio"]
    try:
        import uvloop  # noqa: F401

        loops.append("uvloop")
    except ImportError:
        pass
    extra = (LONG - SHORT) * bench_runtime.CALLERS
    for loop in loops:
        counts = {}
        for label, side in SIDES.items():
            long, short = _instructions(side, LONG, loop), _instructions(side, SHORT, loop)
            counts[label] = (long - short) / extra
            print(f"[instructions] {loop}: {label}: {counts[label]:,.0f} per call", flush=True)
        ratio = counts["asyncio baseline"] / counts["stead, fsync"]
        print(f"[instructions] {loop}: baseline / stead (fsync): {ratio:.2f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        os.environ.setdefault("PYTHONHASHSEED", "0")
        main()
