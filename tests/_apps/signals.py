"""``stead serve tests._apps.signals:runtime``: a start that waits, a close that waits.

With ``STEAD_TEST_HOLD_START=1`` the runtime's start prints ``holding start``
and waits for a line on stdin, so a test can signal the process while it starts.
``LINGER.linger()`` leaves an hour-long ``wait_until`` task, which holds
``close()`` for its whole grace period. The data dir is ``STEAD_TEST_DATA_DIR``.
"""

from __future__ import annotations

import asyncio
import os
import sys

import stead


class Linger(stead.DurableObject):
    async def linger(self) -> int:
        count: int = self.ctx.storage.get("count", 0) + 1
        self.ctx.storage.put("count", count)
        self.ctx.wait_until(asyncio.sleep(3600))
        return count


class HeldStart(stead.Runtime):
    async def start(self) -> stead.Runtime:
        if os.environ.get("STEAD_TEST_HOLD_START") == "1":
            print("holding start", file=sys.stderr, flush=True)
            await asyncio.to_thread(sys.stdin.readline)
        return await super().start()


runtime = HeldStart({"LINGER": Linger}, data_dir=os.environ["STEAD_TEST_DATA_DIR"])
