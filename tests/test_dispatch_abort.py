"""``ctx.abort()`` resets the object wherever it is called: in a task a handler
spawned too, which nobody awaits (DESIGN §2-3, docs/objects.md "Lifecycle")."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

import stead
from stead.context import ObjectAborted

pytestmark = pytest.mark.anyio


class Inventory(stead.DurableObject):
    """``restock`` spawns a consistency check that writes, then finds the books
    corrupt and aborts, after the turn (``"after"``) or while it still runs."""

    built: ClassVar[int] = 0
    checks: ClassVar[list[asyncio.Future[None]]] = []  # the loop holds tasks weakly
    spawned: ClassVar[asyncio.Event]
    turn_may_end: ClassVar[asyncio.Event]

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        Inventory.built += 1

    async def restock(self, when: str) -> str:
        self.ctx.storage.put("restocked", True)

        async def check() -> None:
            await asyncio.sleep(0.01)
            self.ctx.storage.put("checked", True)
            self.ctx.abort("the books are corrupt")

        Inventory.checks.append(asyncio.ensure_future(check()))
        Inventory.spawned.set()
        if when == "during":
            await Inventory.turn_may_end.wait()
        return "restocked"

    def keys(self) -> list[str]:
        return sorted(self.ctx.storage.list())


async def test_abort_in_a_spawned_task_after_the_turn_resets_the_object(data_dir: str) -> None:
    # The instance kept running, and the check's write was committed by the next turn.
    Inventory.built, Inventory.checks, Inventory.spawned = 0, [], asyncio.Event()
    async with stead.Runtime({"I": Inventory}, data_dir=data_dir) as rt:
        inventory = rt.env.I.get_by_name("i")
        assert await inventory.restock("after") == "restocked"
        with pytest.raises(ObjectAborted, match="the books are corrupt"):
            await asyncio.wait_for(Inventory.checks.pop(), 5)  # the task gets the abort
        assert await inventory.keys() == ["restocked"]  # the check's write is dropped
        assert Inventory.built == 2  # a fresh instance
    async with stead.Runtime({"I": Inventory}, data_dir=data_dir) as rt:
        assert await rt.env.I.get_by_name("i").keys() == ["restocked"]


async def test_abort_in_a_spawned_task_during_the_turn_drops_the_turn(data_dir: str) -> None:
    # The turn went on and committed its own write and the check's.
    Inventory.built, Inventory.checks, Inventory.spawned = 0, [], asyncio.Event()
    Inventory.turn_may_end = asyncio.Event()
    async with stead.Runtime({"I": Inventory}, data_dir=data_dir) as rt:
        inventory = rt.env.I.get_by_name("i")
        restock = asyncio.ensure_future(inventory.restock("during"))
        await asyncio.wait_for(Inventory.spawned.wait(), 5)
        with pytest.raises(ObjectAborted):
            await asyncio.wait_for(Inventory.checks.pop(), 5)
        Inventory.turn_may_end.set()
        with pytest.raises(stead.StorageError, match="reset"):
            await asyncio.wait_for(restock, 5)
        assert await inventory.keys() == []
        assert Inventory.built == 2


class Reader(stead.DurableObject):
    """Reentrant: ``watch`` spawns a task that aborts; ``read`` is a later event."""

    reentrant = True
    built: ClassVar[int] = 0
    kept: ClassVar[list[Any]] = []

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        Reader.built += 1

    def watch(self) -> None:
        self.ctx.storage.put("watched", True)

        async def stop() -> None:
            self.ctx.storage.put("stopped", True)
            self.ctx.abort("stop")

        Reader.kept.append(asyncio.ensure_future(stop()))

    def read(self) -> list[str]:
        return sorted(self.ctx.storage.list())


async def test_abort_in_a_task_a_reentrant_objects_handler_spawned_resets_it(
    data_dir: str,
) -> None:
    Reader.built, Reader.kept = 0, []
    async with stead.Runtime({"R": Reader}, data_dir=data_dir) as rt:
        reader = rt.env.R.get_by_name("r")
        await reader.watch()
        await asyncio.gather(*Reader.kept, return_exceptions=True)
        assert await reader.read() == ["watched"]
        assert Reader.built == 2
