"""Child for the turn-atomicity test: a turn that is halfway through its writes
while the object's wait_until work calls another object; SIGKILLed there."""

from __future__ import annotations

import asyncio
import sys

import stead


class Ledger(stead.DurableObject):
    def ping(self) -> int:
        return 1


class Account(stead.DurableObject):
    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self.halfway = asyncio.Event()
        self.never = asyncio.Event()

    def start_reporting(self) -> None:
        async def report() -> None:
            await self.halfway.wait()  # while transfer() is halfway
            await self.env.LEDGER.get_by_name("books").ping()
            print("reported", flush=True)

        self.ctx.wait_until(report())

    async def transfer(self, amount: int) -> None:
        storage = self.ctx.storage
        storage.put("out", storage.get("out", 0) + amount)
        self.halfway.set()
        await self.never.wait()  # killed here, before the turn's second write
        storage.put("in", storage.get("in", 0) + amount)

    def books(self) -> dict[str, int]:
        return dict(self.ctx.storage.list())


async def main(data_dir: str) -> None:
    async with stead.Runtime({"A": Account, "LEDGER": Ledger}, data_dir=data_dir) as rt:
        account = rt.env.A.get_by_name("acct")
        await account.start_reporting()
        transfer = asyncio.ensure_future(account.transfer(10))
        await asyncio.sleep(3600)  # SIGKILLed long before
        await transfer


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
