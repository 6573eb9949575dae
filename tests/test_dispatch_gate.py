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
    # Before Python 3.12 the call back's task starts once the block has begun
    # (it waits for the block); from 3.12 it starts at once, before the block.
    assert Ledger.log in (
        ["block start", "block end", "entry"],
        ["entry", "block start", "block end"],
    )


class Catalog(stead.DurableObject):
    """Loads an index under the closed input from its constructor; on_start
    migrates the schema first (and fails for the object named "broken")."""

    log: ClassVar[list[str]] = []

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        ctx.wait_until(ctx.block_concurrency_while(self._load_index))

    async def _load_index(self) -> None:
        Catalog.log.append("load start")
        await asyncio.sleep(0.02)
        Catalog.log.append("load end")

    async def on_start(self) -> None:
        Catalog.log.append("on_start start")
        await asyncio.sleep(0.02)
        if self.ctx.id.name == "broken":
            raise ValueError("schema migration failed")
        Catalog.log.append("on_start end")

    async def lookup(self) -> str:
        Catalog.log.append("lookup")
        return "found"


class ReentrantCatalog(Catalog):
    reentrant = True


@pytest.mark.parametrize("binding", ["T", "R"])
async def test_on_start_runs_before_a_block_the_constructor_started(
    data_dir: str, binding: str
) -> None:
    # A reentrant object ran the block first: its task, created by the
    # constructor, started before the task of the event that runs on_start.
    Catalog.log = []
    classes = {"T": Catalog, "R": ReentrantCatalog}
    async with stead.Runtime(classes, data_dir=data_dir) as rt:
        catalog = rt.namespace(binding).get_by_name("c")
        assert await asyncio.wait_for(catalog.lookup(), 5) == "found"
        await asyncio.sleep(0.1)  # the block ends
    assert Catalog.log[:2] == ["on_start start", "on_start end"]
    assert sorted(Catalog.log[2:]) == ["load end", "load start", "lookup"]
    assert Catalog.log.index("load start") + 1 == Catalog.log.index("load end")


@pytest.mark.parametrize("binding", ["T", "R"])
async def test_a_block_the_constructor_started_fails_if_on_start_fails(
    data_dir: str, binding: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The caller gets on_start's error; the block never runs on the reset instance.
    Catalog.log = []
    classes = {"T": Catalog, "R": ReentrantCatalog}
    async with stead.Runtime(classes, data_dir=data_dir) as rt:
        with pytest.raises(ValueError, match="schema migration failed"):
            await asyncio.wait_for(rt.namespace(binding).get_by_name("broken").lookup(), 5)
        await asyncio.sleep(0.05)
    assert Catalog.log == ["on_start start"]
    assert "wait_until task" in caplog.text and "StorageError" in caplog.text
