"""Instructions per durable call, counted by valgrind (callgrind): a figure the
noise of a shared machine cannot move, for comparing changes to the hot path.

Run: python benches/instructions_per_call.py   (needs valgrind; about 6 minutes)

Each side runs the workload of benches/bench_runtime.py twice, with 10 and with
40 calls per caller (1,000 callers over 1,000 objects); the difference divided
by the extra 30,000 calls removes start-up and object-creation costs. Counts
vary by a few percent with how commits group (the flusher thread runs
serialized under valgrind); the in-memory row is exact.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Coroutine
from typing import Any

import bench_runtime  # the script's directory is on sys.path

SIDES = {
    "stead, fsync": "fsync",
    "stead, in-memory engine": "memory",
    "asyncio baseline": "baseline",
}
SHORT, LONG = 10, 40


def _worker(side: str, per_caller: int, loop: str) -> None:
    # The throughput benchmark's own workload, scaled down: the same seeded plan
    # and the same stead and baseline runners.
    bench_runtime.CALLS = per_caller * bench_runtime.CALLERS
    plan = bench_runtime._plan()
    main: Coroutine[Any, Any, float]
    if side == "baseline":
        main = bench_runtime._baseline(plan)
    else:
        data_dir = None if side == "memory" else tempfile.mkdtemp() + "/data"
        main = bench_runtime._stead(plan, data_dir)
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
