"""Child process for the alarm restart test: sets alarms and prints each
acknowledged one as ``name when``; runs until killed."""

from __future__ import annotations

import asyncio
import random
import sys
import time

import stead


class Reminder(stead.DurableObject):
    def remind_at(self, when: float) -> None:
        self.ctx.storage.set_alarm(when)
        self.ctx.storage.put("due", when)

    async def alarm(self, info: stead.AlarmInfo) -> None:
        self.ctx.storage.put("fired_at", time.time())

    def status(self) -> dict[str, float | None]:
        storage = self.ctx.storage
        return {"due": storage.get("due"), "fired_at": storage.get("fired_at")}


async def main(data_dir: str) -> None:
    async with stead.Runtime({"R": Reminder}, data_dir=data_dir) as rt:
        print("ready", flush=True)
        rng = random.Random()
        i = 0
        while True:
            name = f"r{i}"
            # Far enough ahead that most fire only after the kill and restart.
            when = time.time() + rng.uniform(0.5, 2.0)
            await rt.env.R.get_by_name(name).remind_at(when)
            print(f"{name} {when}", flush=True)
            i += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
