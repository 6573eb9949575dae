"""Child process for the output-gate crash test.

Serves durable increments on 200 objects from 50 concurrent callers and prints
``name value`` only after each call has returned (i.e. was acknowledged).
Runs until killed.
"""

from __future__ import annotations

import asyncio
import random
import sys

import stead

OBJECTS = 200


class Counter(stead.DurableObject):
    def increment(self) -> int:
        count: int = self.ctx.storage.get("count", 0) + 1
        self.ctx.storage.put("count", count)
        return count


async def caller(rt: stead.Runtime, rng: random.Random) -> None:
    out = sys.stdout
    while True:
        name = f"c{rng.randrange(OBJECTS)}"
        value = await rt.env.C.get_by_name(name).increment()
        out.write(f"{name} {value}\n")
        out.flush()


async def main(data_dir: str) -> None:
    async with stead.Runtime({"C": Counter}, data_dir=data_dir, durability="fsync") as rt:
        print("ready", flush=True)
        rng = random.Random()
        await asyncio.gather(*(caller(rt, rng) for _ in range(50)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
