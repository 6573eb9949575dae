"""Child process for the read-after-failed-write test: a file size limit
(RLIMIT_FSIZE) makes the engine's log write fail for real while an object
deposits, then the object is read again.

Prints ``ack <balance>`` per acknowledged deposit, ``failed`` when a deposit
gets ``StorageError``, then ``read <balance>`` or ``read refused`` for the
read-only call that follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import sys

import stead
from stead.errors import StorageError

LIMIT = 256 * 1024


class Account(stead.DurableObject):
    def deposit(self, amount: int) -> int:
        balance: int = self.ctx.storage.get("balance", 0) + amount
        self.ctx.storage.put("balance", balance)
        self.ctx.storage.put("padding", b"x" * 20_000)  # reach the limit in a few batches
        return balance

    def balance(self) -> int:
        balance: int = self.ctx.storage.get("balance", 0)
        return balance


async def main(data_dir: str) -> None:
    runtime = await stead.Runtime({"A": Account}, data_dir=data_dir).start()
    account = runtime.env.A.get_by_name("account")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a dead process
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
    try:
        while True:
            print("ack", await account.deposit(1), flush=True)
    except StorageError:
        print("failed", flush=True)
    try:
        print("read", await account.balance(), flush=True)
    except StorageError:
        print("read refused", flush=True)
    with contextlib.suppress(StorageError):
        await runtime.close()  # reports the engine's failure again


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
