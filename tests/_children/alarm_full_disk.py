"""Child process for the alarm tests on a failed engine: a file size limit
(RLIMIT_FSIZE, as in engine_full_disk.py) makes a log write fail for real,
which poisons the engine.

``python -m tests._children.alarm_full_disk DATA_DIR SCENARIO`` prints
``runs N`` (how many times an alarm handler ran) and ``done``:

- ``unacknowledged``: one turn writes a value too big to reach the log and
  sets an alarm due at once; the caller gets StorageError, so the alarm must
  never run.
- ``poisoned``: an alarm durably set earlier becomes due after the engine
  failed; its handler can never commit, so it must not run over and over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
import time

import stead


class Alarmed(stead.DurableObject):
    runs = 0

    def arm(self, when: float) -> None:
        self.ctx.storage.set_alarm(when)

    def store(self, blob: bytes) -> None:
        self.ctx.storage.put("blob", blob)

    def store_and_arm(self, blob: bytes) -> None:
        self.ctx.storage.put("blob", blob)
        self.ctx.storage.set_alarm(time.time())

    async def alarm(self, info: stead.AlarmInfo) -> None:
        Alarmed.runs += 1
        self.ctx.storage.put("ran", Alarmed.runs)


def _limit_file_size(data_dir: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a dead process
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data_dir) for f in fs]
    resource.setrlimit(resource.RLIMIT_FSIZE, (max(sizes) + 4096, resource.RLIM_INFINITY))


async def main(data_dir: str, scenario: str) -> None:
    logging.disable(logging.CRITICAL)
    rt = await stead.Runtime({"A": Alarmed}, data_dir=data_dir).start()
    alarmed = rt.env.A.get_by_name("a")
    if scenario == "poisoned":
        await alarmed.arm(time.time() + 0.3)
    else:
        await alarmed.store(b"warm")
    _limit_file_size(data_dir)
    with contextlib.suppress(stead.StorageError):
        if scenario == "poisoned":
            await rt.env.A.get_by_name("b").store(b"x" * 1_500_000)
        else:
            await alarmed.store_and_arm(b"x" * 1_500_000)
            print("acknowledged", flush=True)
    assert rt.engine.failure is not None
    await asyncio.sleep(1.5)
    print(f"runs {Alarmed.runs}", flush=True)
    with contextlib.suppress(stead.StorageError):
        await rt.close(grace=1)
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
