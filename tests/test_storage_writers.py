"""Code outside an object's events (``ctx.wait_until`` work, a task that outlived
its turn, a timer) writing alongside its events: turns stay atomic, rollbacks
take back only their own writes, evicted instances cannot write."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import stead

pytestmark = pytest.mark.anyio


class Jobs(stead.DurableObject):
    """A counter whose background job holds a transaction() block open across an await."""

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self.fail_job = asyncio.Event()

    def start_job(self, how: str) -> None:
        async def job() -> None:
            storage = self.ctx.storage
            try:
                with storage.transaction():
                    storage.put("job", "half")
                    storage.delete("keep")
                    await self.fail_job.wait()
                    raise ValueError("the job failed")
            except ValueError:
                pass

        if how == "wait_until":
            self.ctx.wait_until(job())
        else:  # a task the (inline) turn spawned, which outlives it
            self.task = asyncio.get_running_loop().create_task(job())

    def fail(self) -> None:
        self.fail_job.set()

    def incr(self) -> int:
        count: int = self.ctx.storage.get("n", 0) + 1
        self.ctx.storage.put("n", count)
        return count

    async def incr_async(self) -> int:
        count: int = self.ctx.storage.get("n", 0) + 1
        await asyncio.sleep(0)
        self.ctx.storage.put("n", count)
        return count

    def state(self) -> dict[str, Any]:
        return dict(self.ctx.storage.list())


@pytest.mark.parametrize("how", ["wait_until", "task"])
@pytest.mark.parametrize("method", ["incr", "incr_async"])
async def test_background_rollback_keeps_events_acknowledged_writes(
    data_dir: str, how: str, method: str
) -> None:
    async with stead.Runtime({"J": Jobs}, data_dir=data_dir) as rt:
        jobs = rt.env.J.get_by_name("j")
        await jobs.incr()
        await rt.env.J.get_by_name("j").state()
        host = rt.dispatcher.hosts[jobs.id.storage_key]
        host.storage.put("keep", "me")  # committed by the next event
        await jobs.start_job(how)
        acknowledged = [await getattr(jobs, method)() for _ in range(3)]
        assert acknowledged == [2, 3, 4]
        await jobs.fail()
        for _ in range(5):
            await asyncio.sleep(0)  # the job rolls back
        # The rollback took back the job's own writes only.
        assert await jobs.state() == {"n": 4, "keep": "me"}
        assert await jobs.incr() == 5
    async with stead.Runtime({"J": Jobs}, data_dir=data_dir) as rt:
        assert await rt.env.J.get_by_name("j").state() == {"n": 5, "keep": "me"}


class Shared(stead.DurableObject):
    """A reentrant object whose block is committed (sync, another event) before it rolls back."""

    reentrant = True

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self.release = asyncio.Event()

    def setup(self) -> None:
        self.ctx.storage.put("y", "keep")

    async def block(self, sync_inside: bool) -> None:
        storage = self.ctx.storage
        try:
            with storage.transaction():
                storage.put("x", "in block")
                storage.delete("y")
                storage.set_alarm(4_000_000_000)
                if sync_inside:
                    await storage.sync()
                await self.release.wait()
                raise ValueError("roll back")
        except ValueError:
            pass

    def other(self) -> None:
        self.ctx.storage.put("z", "other event")
        self.release.set()

    def state(self) -> tuple[dict[str, Any], float | None]:
        return dict(self.ctx.storage.list()), self.ctx.storage.get_alarm()


@pytest.mark.parametrize("sync_inside", [True, False])
async def test_rollback_after_its_writes_were_committed_restores_disk_too(
    data_dir: str, sync_inside: bool
) -> None:
    expected = ({"y": "keep", "z": "other event"}, None)
    async with stead.Runtime({"S": Shared}, data_dir=data_dir) as rt:
        shared = rt.env.S.get_by_name("s")
        await shared.setup()
        block = asyncio.ensure_future(shared.block(sync_inside))
        await asyncio.sleep(0.05)
        await shared.other()  # its commit carries the open block's writes
        await block
        assert await shared.state() == expected
    async with stead.Runtime({"S": Shared}, data_dir=data_dir) as rt:
        assert await rt.env.S.get_by_name("s").state() == expected


class Notified(stead.DurableObject):
    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self.seen: list[Any] = []

    def notify(self, caller_key: bytes | None) -> None:
        # What the engine holds of the caller's `x` as the call arrives.
        if caller_key is not None:
            self.seen.append(self.ctx.storage._engine.get(caller_key, b"x"))


class Payer(stead.DurableObject):
    """Writes `x` and tells `B` while other code has a transaction() block open."""

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self.unblock = asyncio.Event()

    def start_block(self) -> None:
        async def job() -> None:
            with self.ctx.storage.transaction():
                self.ctx.storage.put("job", 1)
                await self.unblock.wait()

        self.ctx.wait_until(job())

    async def pay(self) -> None:
        self.ctx.storage.put("x", "paid")
        await self.env.B.get_by_name("b").notify(self.ctx.id.storage_key)
        self.unblock.set()

    async def pay_in_background(self) -> None:
        async def job() -> None:
            self.ctx.storage.put("x", "paid")
            await self.env.B.get_by_name("b").notify(self.ctx.id.storage_key)

        with self.ctx.storage.transaction():
            self.ctx.storage.put("turn", 1)
            self.ctx.wait_until(job())
            await asyncio.sleep(0.05)

    def seen(self) -> list[Any]:
        return []


async def test_turn_call_leaves_after_its_writes_while_background_block_is_open(
    data_dir: str,
) -> None:
    async with stead.Runtime({"A": Payer, "B": Notified}, data_dir=data_dir) as rt:
        payer = rt.env.A.get_by_name("a")
        await payer.start_block()
        await payer.pay()
        notified = rt.dispatcher.hosts[rt.env.B.id_from_name("b").storage_key].instance
        assert isinstance(notified, Notified)
        assert notified.seen == [stead.codec.encode("paid")]


async def test_background_call_waits_for_the_running_turn(data_dir: str) -> None:
    async with stead.Runtime({"A": Payer, "B": Notified}, data_dir=data_dir) as rt:
        await rt.env.A.get_by_name("a").pay_in_background()
        notified = rt.dispatcher.hosts[rt.env.B.id_from_name("b").storage_key]
        for _ in range(20):
            if notified.instance.seen:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.01)
        # The work's call left once its write was committed with the turn's batch.
        assert notified.instance.seen == [stead.codec.encode("paid")]  # type: ignore[attr-defined]


class Refresher(stead.DurableObject):
    """A handler that leaves a task (or a timer) behind, writing later."""

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self.go = asyncio.Event()
        self.outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def leave_task(self, call_out: bool) -> None:
        async def refresh() -> None:
            count = self.ctx.storage.get("n", 0)
            await self.go.wait()
            try:
                self.ctx.storage.put("n", count + 100)
                if call_out:
                    await self.env.B.get_by_name("b").notify(None)
            except stead.StorageError as error:
                self.outcome.set_result(str(error))
            else:
                self.outcome.set_result("written")

        self.task = asyncio.get_running_loop().create_task(refresh())

    def incr(self) -> int:
        count: int = self.ctx.storage.get("n", 0) + 1
        self.ctx.storage.put("n", count)
        return count


@pytest.mark.parametrize("call_out", [False, True])
async def test_evicted_instance_cannot_write_over_its_successor(
    data_dir: str, call_out: bool
) -> None:
    classes = {"R": Refresher, "B": Notified}
    async with stead.Runtime(classes, data_dir=data_dir, max_resident=1) as rt:
        stub = rt.env.R.get_by_name("r")
        await stub.leave_task(call_out)
        old = rt.dispatcher.hosts[stub.id.storage_key].instance
        assert isinstance(old, Refresher)
        await rt.env.B.get_by_name("b").notify(None)  # evicts "r" (max_resident=1)
        assert [await stub.incr() for _ in range(3)] == [1, 2, 3]  # a new instance
        old.go.set()
        message = await old.outcome
        assert "was evicted" in message and "ctx.wait_until" in message
        assert await stub.incr() == 4
    async with stead.Runtime(classes, data_dir=data_dir) as rt:
        assert await rt.env.R.get_by_name("r").incr() == 5


@pytest.mark.crash
def test_background_call_never_splits_a_running_turn(data_dir: str) -> None:
    from tests._children.background_caller import Account, Ledger
    from tests.crashing import kill_after, start_child

    child = start_child("tests._children.background_caller", data_dir)
    lines = kill_after(child, 3.0)
    # The work's call waits for the turn, which never ends before the kill.
    assert "reported\n" not in lines

    async def books() -> dict[str, int]:
        async with stead.Runtime({"A": Account, "LEDGER": Ledger}, data_dir=data_dir) as rt:
            return await rt.env.A.get_by_name("acct").books()

    assert asyncio.run(books()) == {}
