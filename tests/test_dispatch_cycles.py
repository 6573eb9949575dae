"""The waits-for graph after a turn ends: no false call cycles (DESIGN §2)."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest

import stead

pytestmark = pytest.mark.anyio


class Outlived(stead.DurableObject):
    """A's turn ``go`` starts a call to B that outlives it; ``busy`` is unrelated to B."""

    b_started: ClassVar[asyncio.Event]
    busy_started: ClassVar[asyncio.Event]
    busy_release: ClassVar[asyncio.Event]
    kept: ClassVar[list[asyncio.Future[str]]] = []  # the loop holds tasks weakly

    async def go(self, how: str) -> str:
        call = self.env.B.get_by_name("b").slow()
        if how == "task":  # a task the turn spawns counts as part of the turn
            self.kept.append(asyncio.ensure_future(call))
        else:  # a shielded call the turn gives up on goes on
            self.kept.append(asyncio.shield(call))
        await self.b_started.wait()  # the call left while the turn ran
        return "go done"

    async def busy(self) -> str:
        self.busy_started.set()
        await self.busy_release.wait()
        return "busy done"

    def x(self) -> str:
        return "x"


class CallsA(stead.DurableObject):
    release: ClassVar[asyncio.Event]

    async def slow(self) -> str:
        Outlived.b_started.set()
        await self.release.wait()
        call = asyncio.ensure_future(self.env.A.get_by_name("a").x())
        await asyncio.sleep(0)  # its first step: it queues behind `busy`, or fails at once
        Outlived.busy_release.set()
        try:
            return str(await call)
        except stead.DeadlockError as error:
            return repr(error)


@pytest.mark.parametrize("how", ["task", "shield"])
async def test_a_call_that_outlived_its_turn_does_not_make_a_later_turn_a_cycle(
    data_dir: str, how: str
) -> None:
    # The finished turn `go` still waits for B (its call goes on), but A's next
    # turn `busy` does not: B's call to A waits for `busy` and gets its answer.
    Outlived.b_started, Outlived.busy_release = asyncio.Event(), asyncio.Event()
    Outlived.busy_started, CallsA.release = asyncio.Event(), asyncio.Event()
    async with stead.Runtime({"A": Outlived, "B": CallsA}, data_dir=data_dir) as rt:
        a = rt.env.A.get_by_name("a")
        assert await asyncio.wait_for(a.go(how), 5) == "go done"
        busy = asyncio.ensure_future(a.busy())
        await asyncio.wait_for(Outlived.busy_started.wait(), 5)
        CallsA.release.set()  # B calls A while `busy` holds it
        assert await asyncio.wait_for(busy, 5) == "busy done"
        assert await asyncio.wait_for(Outlived.kept.pop(), 5) == "x"
        assert not rt.dispatcher._waits_for  # every edge was removed
