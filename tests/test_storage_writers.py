"""Code outside an object's events (``ctx.wait_until`` work, a task that outlived
its turn, a timer) writing alongside its events: turns stay atomic, rollbacks
take back only their own writes, evicted instances cannot write."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
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

    def notify(self, caller_key: bytes | None, key: bytes = b"x") -> None:
        # What the engine holds of the caller's `key` as the call arrives.
        if caller_key is not None:
            self.seen.append(self.ctx.storage._engine.get(caller_key, key))


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


async def test_background_call_sends_its_writes_while_the_turn_holds_a_block(
    data_dir: str,
) -> None:
    async with stead.Runtime({"A": Payer, "B": Notified}, data_dir=data_dir) as rt:
        await rt.env.A.get_by_name("a").pay_in_background()
        notified = rt.dispatcher.hosts[rt.env.B.id_from_name("b").storage_key]
        for _ in range(20):
            if notified.instance.seen:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.01)
        # The work's call left once its own write was committed.
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


class Overlap(stead.DurableObject):
    """Blocks of several writers open at once on `k` (wait_until work and events)."""

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self.go = asyncio.Event()
        self.job_open = asyncio.Event()
        self.job_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def setup(self) -> None:
        self.ctx.storage.put("k", "orig")

    def start_job(self, write: str) -> None:
        async def job() -> None:
            storage = self.ctx.storage
            try:
                with storage.transaction():
                    if write == "put":
                        storage.put("k", "job")
                    else:
                        storage.delete("k")
                    self.job_open.set()
                    await self.go.wait()
                    raise ValueError("the job failed")
            except ValueError:
                pass
            self.job_done.set_result(None)

        self.ctx.wait_until(job())

    async def wait_job_open(self) -> None:
        await self.job_open.wait()

    def event_block(self) -> None:
        with self.ctx.storage.transaction():
            self.ctx.storage.put("k", "rolled back by the event")
            raise KeyError("the event failed")

    def wipe(self) -> None:
        self.ctx.storage.delete_all()

    def touch(self) -> None:
        self.ctx.storage.put("t", 1)  # its batch carries the job's open block too

    async def fail_job(self, then_abort: bool) -> None:
        self.go.set()
        await self.job_done
        if then_abort:
            self.ctx.abort("unrelated")

    def read(self) -> dict[str, Any]:
        return dict(self.ctx.storage.list())


async def _reopened(data_dir: str, cls: type[stead.DurableObject]) -> dict[str, Any]:
    async with stead.Runtime({"O": cls}, data_dir=data_dir) as rt:
        return await rt.env.O.get_by_name("o").read()  # type: ignore[no-any-return]


@pytest.mark.parametrize("reentrant", [False, True])
async def test_a_rolled_back_write_never_comes_back_with_another_block(
    data_dir: str, reentrant: bool
) -> None:
    cls = type("OverlapR" if reentrant else "OverlapT", (Overlap,), {"reentrant": reentrant})
    async with stead.Runtime({"O": cls}, data_dir=data_dir) as rt:
        stub = rt.env.O.get_by_name("o")
        await stub.setup()
        await stub.start_job("put")
        await stub.wait_job_open()
        with pytest.raises(KeyError):
            await stub.event_block()
        await stub.fail_job(False)
        assert await stub.read() == {"k": "orig"}
    assert await _reopened(data_dir, cls) == {"k": "orig"}


@pytest.mark.parametrize("write", ["put", "delete"])
async def test_a_rollback_never_undoes_a_later_delete_all_of_another_writer(
    data_dir: str, write: str
) -> None:
    async with stead.Runtime({"O": Overlap}, data_dir=data_dir) as rt:
        stub = rt.env.O.get_by_name("o")
        await stub.setup()
        await stub.start_job(write)
        await stub.wait_job_open()
        await stub.wipe()  # acknowledged
        await stub.fail_job(False)
        assert await stub.read() == {}
    assert await _reopened(data_dir, Overlap) == {}


async def test_a_rollbacks_write_back_is_not_lost_with_an_aborted_event(data_dir: str) -> None:
    async with stead.Runtime({"O": Overlap}, data_dir=data_dir) as rt:
        stub = rt.env.O.get_by_name("o")
        await stub.setup()
        await stub.start_job("put")
        await stub.wait_job_open()
        await stub.touch()  # commits the job's k="job" with its own batch
        with pytest.raises(stead.RemoteError):
            await stub.fail_job(True)  # the job rolls back, then this event aborts
        assert await stub.read() == {"k": "orig", "t": 1}
    assert await _reopened(data_dir, Overlap) == {"k": "orig", "t": 1}


class Reentrant(stead.DurableObject):
    reentrant = True

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self.first_open = asyncio.Event()
        self.second_open = asyncio.Event()
        self.first_done = asyncio.Event()

    def setup(self) -> None:
        self.ctx.storage.put("k", "orig")

    async def first(self) -> None:
        storage = self.ctx.storage
        try:
            with storage.transaction():
                storage.put("k", "first, rolled back")
                self.first_open.set()
                await self.second_open.wait()
                raise ValueError
        except ValueError:
            pass
        self.first_done.set()

    async def second(self) -> None:
        storage = self.ctx.storage
        await self.first_open.wait()
        try:
            with storage.transaction():  # opened while the first block is open
                self.second_open.set()
                await self.first_done.wait()
                storage.put("unrelated", 1)
                raise ValueError
        except ValueError:
            pass

    def read(self) -> dict[str, Any]:
        return dict(self.ctx.storage.list())


async def test_a_block_opened_inside_another_events_block_never_restores_its_writes(
    data_dir: str,
) -> None:
    async with stead.Runtime({"O": Reentrant}, data_dir=data_dir) as rt:
        stub = rt.env.O.get_by_name("o")
        await stub.setup()
        await asyncio.gather(stub.first(), stub.second())
        assert await stub.read() == {"k": "orig"}
    assert await _reopened(data_dir, Reentrant) == {"k": "orig"}


class Loader(stead.DurableObject):
    """A shared loader: the first caller starts it as wait_until work and awaits it."""

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self.loading: asyncio.Future[int] | None = None

    async def _load(self, how: str) -> None:
        assert self.loading is not None
        if how == "call":
            await self.env.B.get_by_name("b").notify(None)
        else:
            self.ctx.storage.put("loaded", True)
            await self.ctx.storage.sync()
        self.loading.set_result(42)

    async def get(self, how: str) -> int:
        self.ctx.storage.put("hits", self.ctx.storage.get("hits", 0) + 1)
        if self.loading is None:
            self.loading = asyncio.get_running_loop().create_future()
            self.ctx.wait_until(self._load(how))
        return await self.loading


@pytest.mark.parametrize("how", ["call", "sync"])
async def test_a_turn_awaiting_its_wait_until_work_does_not_hang(data_dir: str, how: str) -> None:
    async with stead.Runtime({"L": Loader, "B": Notified}, data_dir=data_dir) as rt:
        assert await asyncio.wait_for(rt.env.L.get_by_name("l").get(how), 10) == 42


class Orders(stead.DurableObject):
    """The docs' order() shape, while unrelated wait_until work holds a block open."""

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self.release = asyncio.Event()

    def start_background_block(self) -> None:
        async def job() -> None:
            with self.ctx.storage.transaction():
                self.ctx.storage.put("bg", 1)
                await self.release.wait()

        self.ctx.wait_until(job())

    async def order(self, item: str) -> None:
        storage = self.ctx.storage
        storage.put("last_seen", item)
        with storage.transaction():
            storage.put(f"order:{item}", "placed")
            await self.env.B.get_by_name("b").notify(self.ctx.id.storage_key, b"order:cake")
        self.release.set()


async def test_a_turns_call_inside_its_block_never_sends_the_block(data_dir: str) -> None:
    async with stead.Runtime({"O": Orders, "B": Notified}, data_dir=data_dir) as rt:
        orders = rt.env.O.get_by_name("o")
        await orders.start_background_block()
        await orders.order("cake")
        notified = rt.dispatcher.hosts[rt.env.B.id_from_name("b").storage_key].instance
        assert isinstance(notified, Notified)
        # The block's write stayed in memory while its call was out (a crash then
        # would have left nothing of it), as docs/storage.md promises.
        assert notified.seen == [None]


class Stateful(stead.Agent):
    initial_state = {"v": 0}

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self.go = asyncio.Event()
        self.updates: list[Any] = []

    def on_state_update(self, state: Any, source: Any) -> None:
        self.updates.append(state)

    def start_job(self) -> None:
        async def job() -> None:
            try:
                with self.ctx.storage.transaction():
                    self.ctx.storage.put("job", 1)
                    await self.go.wait()
                    raise ValueError("the job failed")
            except ValueError:
                pass

        self.ctx.wait_until(job())

    async def update(self, value: int) -> None:
        self.set_state({"v": value})
        self.go.set()
        for _ in range(5):
            await asyncio.sleep(0)  # the job rolls back while this turn runs

    async def update_in_a_block_that_rolls_back(self, value: int) -> None:
        committed, go = asyncio.Event(), asyncio.Event()

        async def job() -> None:
            await go.wait()
            await self.env.P.get_by_name("p").ping()  # commits the turn's open block too
            committed.set()

        self.ctx.wait_until(job())
        with contextlib.suppress(ValueError), self.ctx.storage.transaction():
            self.set_state({"v": value})
            go.set()
            await committed.wait()
            raise ValueError("give up")

    def seen(self) -> list[Any]:
        return self.updates


async def test_another_writers_rollback_keeps_a_committed_set_states_update(
    data_dir: str,
) -> None:
    async with stead.Runtime({"A": Stateful}, data_dir=data_dir) as rt:
        agent = rt.env.A.get_by_name("a")
        await agent.start_job()
        await agent.update(7)
        assert await agent.seen() == [{"v": 7}]


# -- a model check of interleaved writers --------------------------------------


class Pinged(stead.DurableObject):
    def ping(self) -> int:
        return 1


class Midway(stead.DurableObject):
    """A turn and its wait_until job, each with a block, around calls out (the
    midway commits of the output gate) and the job's rollback."""

    def setup(self) -> None:
        self.ctx.storage.put("k", "orig")

    async def _ping(self) -> None:
        await self.env.P.get_by_name("p").ping()

    async def _job_that_rolls_back(
        self, write: Callable[[], object]
    ) -> tuple[asyncio.Event, asyncio.Event]:
        """Start wait_until work whose block makes ``write``, then rolls back once
        ``fail`` is set; return (fail, rolled) once the block holds the write."""
        storage = self.ctx.storage
        opened, fail, rolled = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def job() -> None:
            with contextlib.suppress(ValueError), storage.transaction():
                write()
                opened.set()
                await fail.wait()
                raise ValueError
            rolled.set()

        self.ctx.wait_until(job())
        await opened.wait()
        return fail, rolled

    async def synced_job_then_call_in_block(self) -> str:
        storage = self.ctx.storage
        synced = asyncio.Event()
        storage.put("k", "turn")

        async def job() -> None:
            storage.put("k", "job")
            await storage.sync()  # durable, as sync() promises
            synced.set()

        self.ctx.wait_until(job())
        with storage.transaction():
            await synced.wait()
            storage.put("t", 1)
            await self._ping()  # must not send an older k over the job's
        return storage.get("k")  # type: ignore[no-any-return]

    async def rollbacks_in_both(self, abort: bool) -> None:
        storage = self.ctx.storage
        fail, rolled = await self._job_that_rolls_back(lambda: storage.put("k", "job"))
        with contextlib.suppress(KeyError), storage.transaction():
            storage.put("t", 1)
            await self._ping()  # sends the job's k="job" (another writer's block)
            storage.put("k", "turn")
            fail.set()
            await rolled.wait()  # its write-back must not send this block's k
            raise KeyError
        if abort:
            self.ctx.abort("give up")

    async def rollback_with_delete_all_pending(self) -> None:
        storage = self.ctx.storage
        fail, rolled = await self._job_that_rolls_back(lambda: storage.put("k", "job"))
        storage.put("t", 1)
        await self._ping()  # commits the job's k="job" too
        storage.delete_all()
        fail.set()
        await rolled.wait()
        self.ctx.abort("give up")  # drops the delete_all: k must be back on disk

    async def write_back_then_call_in_block(self) -> str:
        storage = self.ctx.storage
        opened, turn_wrote, rolled = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def job() -> None:
            with contextlib.suppress(ValueError), storage.transaction():
                storage.put("j", 1)
                opened.set()
                await turn_wrote.wait()
                storage.put("k", "job")
                raise ValueError
            rolled.set()

        self.ctx.wait_until(job())
        await opened.wait()
        storage.put("t", 1)
        await self._ping()  # commits the job's j too: its rollback writes back
        with storage.transaction():
            storage.put("k", "turn")
            turn_wrote.set()
            await rolled.wait()
            storage.put("t", 2)
            await self._ping()
        return storage.get("k")  # type: ignore[no-any-return]

    async def held_write_then_others_rollback(self) -> None:
        storage = self.ctx.storage
        fail, rolled = await self._job_that_rolls_back(lambda: storage.put("k", "job"))
        with storage.transaction():
            storage.put("k", "turn")
            await self._ping()  # sends the job's k, holds this block's k back
        fail.set()
        await rolled.wait()  # its write-back must not send the turn's k (never committed)
        self.ctx.abort("give up")

    async def synced_delete_then_others_rollback(self) -> None:
        storage = self.ctx.storage
        fail, rolled = await self._job_that_rolls_back(lambda: storage.delete("k"))
        await self._ping()  # commits the job's delete too
        storage.delete("k")
        with storage.transaction():
            await storage.sync()  # the engine holds k deleted already: nothing to send
        fail.set()
        await rolled.wait()  # its write-back must not bring k back over the synced delete
        self.ctx.abort("give up")

    def read(self) -> dict[str, Any]:
        return dict(self.ctx.storage.list())


async def _run_midway(data_dir: str, method: str, *args: Any) -> tuple[Any, dict[str, Any]]:
    """``method``'s result (or error) and what reads show after it, in one runtime."""
    async with stead.Runtime({"O": Midway, "P": Pinged}, data_dir=data_dir) as rt:
        stub = rt.env.O.get_by_name("o")
        await stub.setup()
        try:
            result: Any = await getattr(stub, method)(*args)
        except stead.RemoteError as error:
            result = error
        return result, await stub.read()


async def _midway_reopened(data_dir: str) -> dict[str, Any]:
    async with stead.Runtime({"O": Midway, "P": Pinged}, data_dir=data_dir) as rt:
        return await rt.env.O.get_by_name("o").read()  # type: ignore[no-any-return]


async def test_a_call_in_a_block_never_sends_an_older_value_over_a_synced_one(
    data_dir: str,
) -> None:
    result, shown = await _run_midway(data_dir, "synced_job_then_call_in_block")
    assert result == "job" and shown == {"k": "job", "t": 1}
    assert await _midway_reopened(data_dir) == {"k": "job", "t": 1}


@pytest.mark.parametrize("abort", [False, True])
async def test_a_write_back_never_sends_another_writers_open_block(
    data_dir: str, abort: bool
) -> None:
    _, shown = await _run_midway(data_dir, "rollbacks_in_both", abort)
    assert shown == {"k": "orig"}
    assert await _midway_reopened(data_dir) == {"k": "orig"}


async def test_a_write_back_is_made_with_a_delete_all_pending(data_dir: str) -> None:
    result, shown = await _run_midway(data_dir, "rollback_with_delete_all_pending")
    assert isinstance(result, stead.RemoteError)
    assert shown == {"k": "orig", "t": 1}
    assert await _midway_reopened(data_dir) == {"k": "orig", "t": 1}


async def test_a_blocks_write_survives_a_write_back_and_a_call_in_the_block(
    data_dir: str,
) -> None:
    result, shown = await _run_midway(data_dir, "write_back_then_call_in_block")
    assert result == "turn" and shown == {"k": "turn", "t": 2}  # j rolled back
    assert await _midway_reopened(data_dir) == {"k": "turn", "t": 2}


async def test_a_write_back_never_sends_a_write_a_commit_held_back(data_dir: str) -> None:
    result, shown = await _run_midway(data_dir, "held_write_then_others_rollback")
    assert isinstance(result, stead.RemoteError)
    assert shown == {"k": "orig"}
    assert await _midway_reopened(data_dir) == {"k": "orig"}


async def test_a_write_back_never_undoes_a_synced_delete(data_dir: str) -> None:
    result, shown = await _run_midway(data_dir, "synced_delete_then_others_rollback")
    assert isinstance(result, stead.RemoteError)
    assert shown == {}
    assert await _midway_reopened(data_dir) == {}


class Spawner(stead.DurableObject):
    """Handlers that never suspend (run inline) and spawn tasks: one task holds a
    block open, another event's task writes meanwhile."""

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self.opened, self.fail = asyncio.Event(), asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def _blocker(self) -> None:
        storage = self.ctx.storage
        with contextlib.suppress(ValueError), storage.transaction():
            storage.put("block", 1)
            self.opened.set()
            await self.fail.wait()
            raise ValueError

    async def _writer(self) -> None:
        await self.opened.wait()
        self.ctx.storage.put("other", "kept")
        self.fail.set()

    def spawn_block(self) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(self._blocker()))

    def spawn_put(self) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(self._writer()))

    async def read(self) -> dict[str, Any]:
        await asyncio.gather(*self.tasks)
        return dict(self.ctx.storage.list())


async def test_tasks_of_different_inline_handlers_are_different_writers(data_dir: str) -> None:
    async with stead.Runtime({"O": Spawner}, data_dir=data_dir) as rt:
        stub = rt.env.O.get_by_name("o")
        await stub.spawn_block()
        await stub.spawn_put()  # another event's task: its write is not the block's
        assert await stub.read() == {"other": "kept"}


async def test_no_state_update_for_a_block_that_rolls_back_after_another_commit(
    data_dir: str,
) -> None:
    async with stead.Runtime({"S": Stateful, "P": Pinged}, data_dir=data_dir) as rt:
        agent = rt.env.S.get_by_name("s")
        await agent.update(1)
        await agent.update_in_a_block_that_rolls_back(2)
        await asyncio.sleep(0.05)
        assert await agent.seen() == [{"v": 1}]


_KEYS = ("a", "b", "c")
_OPERATIONS = (
    *("put", "put", "delete", "delete_all", "alarm"),
    *("open", "open", "close", "rollback", "rollback", "commit", "midway", "midway"),
)


def _check_interleaved_writers(seed: int, writers: int, steps: int = 40) -> None:
    """Writers interleave puts, deletes, delete_all(), alarms and (nested)
    transaction() blocks that commit or roll back, with commits in between:
    full ones (a turn's end) and a writer's midway ones (a call or sync() made
    inside its blocks). The model: a rollback takes back its writer's writes
    made in the block; every other write stands. Reads, list() and get_many()
    always agree with it; after a midway commit the engine holds every write
    standing but those of the committer's open blocks; after a full one, every
    write standing; after a rollback, none of the writes it took back. The
    engine holds the object's name exactly while it holds anything else."""
    import random

    from stead._core import Engine
    from stead.storage import NAME_KEY, Storage

    rng = random.Random(seed)
    engine = Engine(None)
    current: list[object] = [None]
    storage = Storage(
        engine, b"obj", name="obj", max_value_bytes=1 << 20, writer=lambda: current[0]
    )
    identities = [object() for _ in range(writers)]
    # The model: every write as [key, value, (writer, its blocks open then), alive].
    history: list[tuple[str, Any, tuple[int, frozenset[int]], list[bool]]] = []
    open_blocks: dict[int, list[tuple[int, Any]]] = {w: [] for w in range(writers)}
    next_block = 0

    def modelled(
        held: Callable[[int, frozenset[int]], bool] = lambda w, b: False,
    ) -> dict[str, Any]:
        state: dict[str, Any] = dict.fromkeys((*_KEYS, "alarm"))
        for key, value, writer_blocks, alive in history:
            if alive[0] and not held(*writer_blocks):
                state[key] = value
        return state

    def reopened() -> Storage:
        """What the engine holds, read as a fresh instance would."""
        return Storage(engine, b"obj", name=None, max_value_bytes=1 << 20)

    def named_while_storing() -> bool:
        others = [key for key, _ in engine.list(b"obj") if key != NAME_KEY]
        stores = bool(others) or engine.get_alarm(b"obj") is not None
        return (engine.get(b"obj", NAME_KEY) is not None) is stores

    def observed(of: Storage) -> dict[str, Any]:
        state = {key: of.get(key) for key in _KEYS}
        alarm = of.get_alarm()
        state["alarm"] = None if alarm is None else round(alarm * 1000)
        return state

    for step in range(steps):
        writer = rng.randrange(writers)
        current[0] = identities[writer]
        blocks = frozenset(block for block, _ in open_blocks[writer])
        mine = (writer, blocks)
        op = rng.choice(_OPERATIONS)
        if op == "put":
            key, value = rng.choice(_KEYS), f"w{writer}s{step}"
            storage.put(key, value)
            history.append((key, value, mine, [True]))
        elif op == "delete":
            key = rng.choice(_KEYS)
            storage.delete(key)
            history.append((key, None, mine, [True]))
        elif op == "delete_all":
            storage.delete_all()
            for key in (*_KEYS, "alarm"):
                history.append((key, None, mine, [True]))
        elif op == "alarm":
            storage.set_alarm((1_000_000 + step) / 1000)
            history.append(("alarm", 1_000_000 + step, mine, [True]))
        elif op == "open":
            block = storage.transaction()
            block.__enter__()
            next_block += 1
            open_blocks[writer].append((next_block, block))
        elif op in ("close", "rollback") and open_blocks[writer]:
            number, block = open_blocks[writer].pop()
            if op == "close":
                block.__exit__(None, None, None)
            else:
                with pytest.raises(ValueError):
                    if not block.__exit__(ValueError, ValueError("x"), None):
                        raise ValueError("x")
                taken_back = set()
                for key, value, (_, in_blocks), alive in history:
                    if number in in_blocks:
                        alive[0] = False
                        if value is not None:  # None may stand for "never written"
                            taken_back.add((key, value))
                standing = {(key, value) for key, value, _, alive in history if alive[0]}
                on_disk = set(observed(reopened()).items())
                assert not (on_disk & taken_back) - standing, f"seed {seed}, step {step}"
        elif op == "commit":
            storage.commit()
            assert observed(reopened()) == modelled(), f"seed {seed}, step {step}: full commit"
        elif op == "midway":
            storage.commit_outside_transactions(lambda opener: opener is not current[0])

            def held(
                by: int, in_blocks: frozenset[int], committer: tuple[int, frozenset[int]] = mine
            ) -> bool:
                return by == committer[0] and bool(in_blocks & committer[1])

            assert observed(reopened()) == modelled(held), f"seed {seed}, step {step}: midway"
        assert observed(storage) == modelled(), f"seed {seed}, step {step}"
        assert named_while_storing(), f"seed {seed}, step {step}: the name"
        everything = {key: storage.get(key) for key in _KEYS}
        present = {key: value for key, value in everything.items() if value is not None}
        assert storage.list() == present, f"seed {seed}, step {step}: list()"
        assert storage.get_many(list(_KEYS)) == present, f"seed {seed}, step {step}"
        assert storage.list(start="b", reverse=True, limit=1) == dict(
            [item for item in sorted(present.items(), reverse=True) if item[0] >= "b"][:1]
        )
    for writer in range(writers):
        current[0] = identities[writer]
        while open_blocks[writer]:
            open_blocks[writer].pop()[1].__exit__(None, None, None)
    storage.commit()
    assert observed(reopened()) == modelled(), f"seed {seed}: the engine"
    assert named_while_storing(), f"seed {seed}: the name"


@pytest.mark.parametrize("writers", [1, 2, 3])
def test_rollbacks_of_interleaved_writers_match_the_model(writers: int) -> None:
    for seed in range(300):
        _check_interleaved_writers(seed, writers)
