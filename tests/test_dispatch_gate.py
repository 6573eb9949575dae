"""A reentrant object's input gate: while a ``block_concurrency_while`` block runs,
no other event of the object starts, whatever the task-start timing (before
Python 3.12 a task starts an event-loop iteration after it is created)."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest

import stead

pytestmark = pytest.mark.anyio


class Ledger(stead.DurableObject):
    """Reentrant: ``reconcile`` closes the input while it rewrites the books;
    ``audit`` calls back into the ledger, through B or straight to itself."""

    reentrant = True
    log: ClassVar[list[str]] = []
    go: ClassVar[asyncio.Event]

    async def audit(self, through: str) -> None:
        if through == "B":
            await self.env.B.get_by_name("b").check()
        else:  # a call to itself: a call back along its own chain
            await self.go.wait()
            await self.env.LEDGER.get_by_name("l").entry()

    async def entry(self) -> None:
        Ledger.log.append("entry")

    async def reconcile(self) -> None:
        await self.go.wait()  # woken in the same iteration as the call back's caller

        async def rewrite() -> None:
            Ledger.log.append("block start")
            await asyncio.sleep(0.05)
            Ledger.log.append("block end")

        await self.ctx.block_concurrency_while(rewrite)


class Auditor(stead.DurableObject):
    async def check(self) -> None:
        await Ledger.go.wait()
        await self.env.LEDGER.get_by_name("l").entry()  # a call back into the ledger


@pytest.mark.parametrize("through", ["B", "self"])
async def test_a_call_back_does_not_start_inside_another_events_block(
    data_dir: str, through: str
) -> None:
    # The call back passed the (open) gate in its caller's task; the block closed
    # the gate before the call back's task started, and it ran inside the block.
    Ledger.log, Ledger.go = [], asyncio.Event()
    async with stead.Runtime({"LEDGER": Ledger, "B": Auditor}, data_dir=data_dir) as rt:
        ledger = rt.env.LEDGER.get_by_name("l")
        audit = asyncio.ensure_future(ledger.audit(through))
        await asyncio.sleep(0.02)  # waits for `go` first: it resumes first
        reconcile = asyncio.ensure_future(ledger.reconcile())
        await asyncio.sleep(0.02)
        Ledger.go.set()
        await asyncio.wait_for(asyncio.gather(audit, reconcile), 5)
    assert Ledger.log == ["block start", "block end", "entry"]
