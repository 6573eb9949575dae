"""Turns, the mailbox, call cycles, overload and the output gate (DESIGN §2)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from typing import Any, ClassVar

import pytest

import stead

pytestmark = pytest.mark.anyio


class SlowCounter(stead.DurableObject):
    """Awaits between its read and its write: only single-writer turns keep it exact."""

    async def increment(self) -> int:
        count = self.ctx.storage.get("count", 0)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        self.ctx.storage.put("count", count + 1)
        return count + 1

    def count(self) -> int:
        return int(self.ctx.storage.get("count", 0))


class ReentrantSlowCounter(SlowCounter):
    reentrant = True


async def test_single_writer_gives_exact_count_under_1000_concurrent_calls(data_dir: str) -> None:
    async with stead.Runtime({"C": SlowCounter}, data_dir=data_dir) as rt:
        counter = rt.env.C.get_by_name("one")
        results = await asyncio.gather(*(counter.increment() for _ in range(1000)))
        assert sorted(results) == list(range(1, 1001))
        assert await counter.count() == 1000


async def test_reentrant_objects_interleave_at_awaits(data_dir: str) -> None:
    # The documented trade-off: with reentrant = True the read-await-write race is observable.
    async with stead.Runtime({"C": ReentrantSlowCounter}, data_dir=data_dir) as rt:
        counter = rt.env.C.get_by_name("one")
        await asyncio.gather(*(counter.increment() for _ in range(100)))
        assert await counter.count() < 100


async def test_events_run_in_fifo_order(data_dir: str) -> None:
    class Log(stead.DurableObject):
        async def append(self, item: int) -> None:
            items = self.ctx.storage.get("items", [])
            await asyncio.sleep(0)
            self.ctx.storage.put("items", [*items, item])

        def items(self) -> list[int]:
            return list(self.ctx.storage.get("items", []))

    async with stead.Runtime({"L": Log}, durability="none", data_dir=data_dir) as rt:
        log = rt.env.L.get_by_name("x")
        await asyncio.gather(*(log.append(i) for i in range(50)))
        assert await log.items() == list(range(50))


async def test_sync_calls_wait_for_a_running_async_turn(data_dir: str) -> None:
    # Sync handlers on an idle object skip the mailbox; behind a running turn they queue.
    class Half(stead.DurableObject):
        async def write_in_two_steps(self) -> None:
            self.ctx.storage.put("step", 1)
            await asyncio.sleep(0.01)
            self.ctx.storage.put("step", 2)

        def step(self) -> int:
            return int(self.ctx.storage.get("step", 0))

    async with stead.Runtime({"H": Half}, data_dir=data_dir) as rt:
        half = rt.env.H.get_by_name("h")
        assert await half.step() == 0
        writing = asyncio.ensure_future(half.write_in_two_steps())
        await asyncio.sleep(0.001)  # the async turn is now inside its sleep
        assert not rt.dispatcher.mailbox.is_idle(half.id.storage_key)
        assert await asyncio.gather(half.step(), half.step()) == [2, 2]
        await writing
        assert rt.dispatcher.mailbox.is_idle(half.id.storage_key)


class Account(stead.DurableObject):
    """A transfer whose two writes straddle an await: half of it would break the books."""

    async def transfer(self) -> str:
        storage = self.ctx.storage
        storage.put("debited", storage.get("debited", 0) + 1)
        await asyncio.sleep(0.05)
        storage.put("credited", storage.get("credited", 0) + 1)
        return "done"

    async def fetch(self, request: stead.Request) -> stead.Response:
        await self.transfer()
        return stead.Response(b"done")

    def books(self) -> tuple[int, int]:
        return self.ctx.storage.get("debited", 0), self.ctx.storage.get("credited", 0)


async def test_a_caller_that_times_out_does_not_interrupt_the_turn(data_dir: str) -> None:
    async with stead.Runtime({"A": Account}, data_dir=data_dir) as rt:
        account = rt.env.A.get_by_name("a")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(account.transfer(), timeout=0.01)
        assert rt.stats()["running_events"] == 1  # the transfer, on its own
        # The next call queues behind the transfer, which runs to its end.
        assert await account.books() == (1, 1)
        assert rt.stats()["running_events"] == 0
    async with stead.Runtime({"A": Account}, data_dir=data_dir) as rt:
        assert await rt.env.A.get_by_name("a").books() == (1, 1)


async def test_a_cancelled_fetch_does_not_interrupt_the_turn(data_dir: str) -> None:
    async with stead.Runtime({"A": Account}, data_dir=data_dir) as rt:
        account = rt.env.A.get_by_name("a")
        fetching = asyncio.ensure_future(account.fetch("/transfer"))
        await asyncio.sleep(0.01)
        fetching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fetching
        assert await account.books() == (1, 1)


async def test_close_waits_for_a_turn_whose_caller_gave_up(data_dir: str) -> None:
    async with stead.Runtime({"A": Account}, data_dir=data_dir) as rt:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(rt.env.A.get_by_name("a").transfer(), timeout=0.01)
    async with stead.Runtime({"A": Account}, data_dir=data_dir) as rt:
        assert await rt.env.A.get_by_name("a").books() == (1, 1)


async def test_a_turn_ending_cancelled_commits_what_it_wrote(data_dir: str) -> None:
    class Cancelled(stead.DurableObject):
        async def write_then_get_cancelled(self) -> None:
            self.ctx.storage.put("k", "written")
            await asyncio.sleep(0)
            raise asyncio.CancelledError

    async with stead.Runtime({"C": Cancelled}, data_dir=data_dir) as rt:
        stub = rt.env.C.get_by_name("c")
        with pytest.raises(asyncio.CancelledError):
            await stub.write_then_get_cancelled()
        # In the engine (not just the object's cache) without waiting for a next turn.
        assert rt.engine.get(stub.id.storage_key, b"k") is not None


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
async def test_a_handler_can_use_its_own_timeouts_and_context_across_awaits(
    data_dir: str,
) -> None:
    # A suspending handler runs as one task from its start to its end: task-bound
    # constructs (timeouts, cancel scopes, context variable tokens) work in it.
    import contextvars

    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

    class Careful(stead.DurableObject):
        async def work(self) -> str:
            token = request_id.set("inside")
            try:
                async with asyncio.timeout(0.01):
                    await asyncio.sleep(1)
            except TimeoutError:
                outcome = "gave up"
            seen = request_id.get()
            request_id.reset(token)
            return f"{outcome} {seen}"

    async with stead.Runtime({"C": Careful}, data_dir=data_dir) as rt:
        assert await rt.env.C.get_by_name("c").work() == "gave up inside"
        assert request_id.get() == "-"  # the handler's context stays its own


class Gate(stead.DurableObject):
    """Blocks its turn until released, to fill its mailbox."""

    release: asyncio.Event | None = None

    async def hold(self) -> str:
        assert Gate.release is not None
        await Gate.release.wait()
        return "done"


async def test_overloaded_beyond_max_pending(data_dir: str) -> None:
    Gate.release = asyncio.Event()
    async with stead.Runtime({"G": Gate}, data_dir=data_dir, max_pending=5) as rt:
        gate = rt.env.G.get_by_name("g")
        running = [asyncio.ensure_future(gate.hold()) for _ in range(6)]  # 1 running + 5 queued
        for _ in range(5):
            await asyncio.sleep(0)
        with pytest.raises(stead.OverloadedError):
            await gate.hold()
        Gate.release.set()
        assert await asyncio.gather(*running) == ["done"] * 6


class Ping(stead.DurableObject):
    async def ping(self, depth: int) -> list[str]:
        trail = [f"A{depth}"]
        if depth > 0:
            trail += await self.env.PONG.get_by_name("b").pong(depth)
        return trail


class Pong(stead.DurableObject):
    async def pong(self, depth: int) -> list[str]:
        return [f"B{depth}", *await self.env.PING.get_by_name("a").ping(depth - 1)]


async def test_call_cycle_on_one_chain_reenters_instead_of_hanging(data_dir: str) -> None:
    async with stead.Runtime({"PING": Ping, "PONG": Pong}, data_dir=data_dir) as rt:
        result = await asyncio.wait_for(rt.env.PING.get_by_name("a").ping(2), timeout=5)
        assert result == ["A2", "B2", "A1", "B1", "A0"]


class Waiter(stead.DurableObject):
    """Two objects that each hold their turn and call the other: a cross-chain cycle."""

    running: ClassVar[list[str]] = []
    both: asyncio.Event | None = None  # (asyncio.Barrier needs 3.11)

    async def call_other(self, other: str) -> str:
        assert Waiter.both is not None
        Waiter.running.append(other)
        if len(Waiter.running) == 2:
            Waiter.both.set()
        await Waiter.both.wait()  # both turns are running now
        return str(await self.env.W.get_by_name(other).hello())

    def hello(self) -> str:
        return "hello"


async def test_cross_chain_cycle_raises_deadlock_error_at_once(data_dir: str) -> None:
    Waiter.running.clear()
    Waiter.both = asyncio.Event()
    async with stead.Runtime({"W": Waiter}, data_dir=data_dir) as rt:
        a, b = rt.env.W.get_by_name("a"), rt.env.W.get_by_name("b")
        results = await asyncio.wait_for(
            asyncio.gather(a.call_other("b"), b.call_other("a"), return_exceptions=True),
            timeout=5,
        )
        # One of the two calls closes the cycle and is refused; the other then completes.
        assert sum(isinstance(r, stead.DeadlockError) for r in results) == 1
        assert "hello" in results


class Sender(stead.DurableObject):
    notified: ClassVar[list[tuple[int, int]]] = []

    async def write_then_call(self, value: int) -> int:
        self.ctx.storage.put("value", value)
        # The output gate: B sees A's write already durable when the call arrives.
        return int(await self.env.PROBE.get_by_name("p").durable_seq_seen())

    def write(self, value: int) -> None:
        self.ctx.storage.put("value", value)

    async def call_without_writing(self) -> list[int]:
        assert Probe.runtime is not None
        committed = Probe.runtime.engine.last_seq()  # an earlier turn's batch, maybe not durable
        seen = await self.env.PROBE.get_by_name("p").durable_seq_seen()
        return [committed, seen]

    def write_then_notify_in_background(self, value: int) -> None:
        self.ctx.storage.put("value", value)
        self.ctx.wait_until(self._notify())

    async def _notify(self) -> None:
        committed = self.ctx.storage.last_seq  # this object's newest batch
        seen = await self.env.PROBE.get_by_name("p").durable_seq_seen()
        Sender.notified.append((committed, seen))

    def read_with_committed_seq(self) -> list[int]:
        assert Probe.runtime is not None
        return [self.ctx.storage.get("value", -1), Probe.runtime.engine.last_seq()]


class Probe(stead.DurableObject):
    runtime: stead.Runtime | None = None

    def durable_seq_seen(self) -> int:
        assert Probe.runtime is not None
        return Probe.runtime.engine.durable_seq()


async def test_outbound_calls_wait_for_the_writes_made_before_them(data_dir: str) -> None:
    async with stead.Runtime({"A": Sender, "PROBE": Probe}, data_dir=data_dir) as rt:
        Probe.runtime = rt
        before = rt.engine.last_seq()
        seen = await rt.env.A.get_by_name("a").write_then_call(7)
        assert seen >= before + 1  # A's batch was durable before B ran


class Bouncer(stead.DurableObject):
    """A calls B, B calls back into A (re-entry), and the re-entered A writes and calls out."""

    async def start(self) -> list[int]:
        return list(await self.env.BOUNCE.get_by_name("b").call_back())

    async def call_back(self) -> list[int]:
        return list(await self.env.BOUNCE.get_by_name("a").write_then_call())

    async def write_then_call(self) -> list[int]:
        self.ctx.storage.put("re-entered", 1)
        seen = await self.env.PROBE.get_by_name("p").durable_seq_seen()
        return [self.ctx.storage.last_seq, seen]  # the batch the write went out in


async def test_a_reentered_objects_calls_wait_for_its_own_writes(data_dir: str) -> None:
    # The re-entered event runs in A's turn: its call to PROBE must leave through
    # A's output gate (A's write durable first), not through B's, whose turn it
    # happens to be nested in.
    async with stead.Runtime({"BOUNCE": Bouncer, "PROBE": Probe}, data_dir=data_dir) as rt:
        Probe.runtime = rt
        written, seen = await asyncio.wait_for(rt.env.BOUNCE.get_by_name("a").start(), timeout=5)
        assert written > 0  # committed before the call left
        assert seen >= written  # and durable when PROBE ran


class Transferor(stead.DurableObject):
    """Writes before and inside a transaction that makes calls (and syncs) midway."""

    async def transfer(self, fail: bool) -> list[int]:
        storage = self.ctx.storage
        storage.put("before", 1)
        with storage.transaction():
            storage.put("inside", 2)
            storage.delete("before")  # rolled back with the rest
            first = await self.env.PROBE.get_by_name("p").durable_seq_seen()
            await storage.sync()
            second = await self.env.PROBE.get_by_name("p").durable_seq_seen()
            if fail:
                raise ValueError("roll back")
        return [first, second]

    def state(self) -> dict[str, Any]:
        return self.ctx.storage.list()


async def test_a_transaction_that_calls_out_still_rolls_back(data_dir: str) -> None:
    # An outbound call (and sync()) inside a transaction() waits for the writes
    # made before the block; the block's own writes wait for the block to end,
    # so a rollback after the call leaves nothing of them, before or after a
    # restart. A block that returns commits them with the turn.
    async with stead.Runtime({"T": Transferor, "PROBE": Probe}, data_dir=data_dir) as rt:
        Probe.runtime = rt
        before = rt.engine.last_seq()
        with pytest.raises(ValueError, match="roll back"):
            await rt.env.T.get_by_name("failing").transfer(True)
        assert rt.engine.durable_seq() >= before + 1  # the write before the block
        assert await rt.env.T.get_by_name("failing").state() == {"before": 1}
        first, second = await rt.env.T.get_by_name("kept").transfer(False)
        assert second >= first > before
        assert await rt.env.T.get_by_name("kept").state() == {"inside": 2}
    async with stead.Runtime({"T": Transferor, "PROBE": Probe}, data_dir=data_dir) as rt:
        assert await rt.env.T.get_by_name("failing").state() == {"before": 1}
        assert await rt.env.T.get_by_name("kept").state() == {"inside": 2}


class SharedLedger(stead.DurableObject):
    """Reentrant: one event holds a transaction open while another calls out."""

    reentrant = True
    release: ClassVar[asyncio.Event | None] = None

    async def hold_transaction(self) -> None:
        assert SharedLedger.release is not None
        with self.ctx.storage.transaction():
            self.ctx.storage.put("held", 1)
            await SharedLedger.release.wait()

    async def write_then_call(self) -> bool:
        self.ctx.storage.put("mine", 2)
        await self.env.PROBE.get_by_name("p").durable_seq_seen()
        assert Probe.runtime is not None
        # This event's own write went out with the call, despite the other's block.
        return Probe.runtime.engine.get(self.ctx.id.storage_key, b"mine") is not None


async def test_a_reentrant_objects_call_sends_its_writes_past_anothers_open_block(
    data_dir: str,
) -> None:
    async with stead.Runtime({"R": SharedLedger, "PROBE": Probe}, data_dir=data_dir) as rt:
        Probe.runtime = rt
        SharedLedger.release = asyncio.Event()
        ledger = rt.env.R.get_by_name("r")
        holder = asyncio.ensure_future(ledger.hold_transaction())
        await asyncio.sleep(0.01)
        assert await ledger.write_then_call()
        SharedLedger.release.set()
        await holder


class Bulk(stead.DurableObject):
    def store(self, size: int) -> None:
        self.ctx.storage.put("small", 1)
        self.ctx.storage.put("blob", bytes(size))

    def store_later(self, size: int) -> None:
        async def later() -> None:
            self.ctx.storage.put("blob", bytes(size))

        self.ctx.wait_until(later())

    def store_from_a_timer(self, size: int) -> None:
        put = self.ctx.storage.put
        asyncio.get_running_loop().call_soon(put, "blob", bytes(size))

    def keys(self) -> list[str]:
        return list(self.ctx.storage.list())


async def test_a_batch_the_engine_refuses_resets_the_object_instead_of_wedging_it(
    data_dir: str,
) -> None:
    # The engine refuses a whole batch it cannot hold (a turn's writes over 2 GiB
    # together). Too big to write in a test, so the object's own per-value check
    # is loosened here to let the engine's refuse a 3 MiB value at commit.
    async with stead.Runtime({"B": Bulk}, data_dir=data_dir) as rt:
        bulk = rt.env.B.get_by_name("b")
        assert await bulk.keys() == []
        rt.dispatcher.hosts[bulk.id.storage_key].storage._max_value_bytes = 8 << 20
        with pytest.raises(stead.LimitError):
            await bulk.store(3 << 20)
        # Reset, not wedged: the refused turn left nothing, the next turns commit.
        assert await bulk.keys() == []
        await bulk.store(10)
        assert await bulk.keys() == ["blob", "small"]
        for refused in (bulk.store_later, bulk.store_from_a_timer):
            # Committed when the work ends / at close: refused, logged, reset.
            assert await bulk.keys() == ["blob", "small"]
            rt.dispatcher.hosts[bulk.id.storage_key].storage._max_value_bytes = 8 << 20
            await refused(3 << 20)
            await asyncio.sleep(0.01)
    async with stead.Runtime({"B": Bulk}, data_dir=data_dir) as rt:
        assert await rt.env.B.get_by_name("b").keys() == ["blob", "small"]


async def test_outbound_calls_wait_for_earlier_turns_writes(data_dir: str) -> None:
    # A turn that writes nothing may have read what an earlier turn wrote: its
    # calls leave only once those writes are durable too.
    async with stead.Runtime({"A": Sender, "PROBE": Probe}, data_dir=data_dir) as rt:
        Probe.runtime = rt
        a = rt.env.A.get_by_name("a")
        calls = [a.write(i) if i % 2 == 0 else a.call_without_writing() for i in range(60)]
        results = await asyncio.gather(*calls)
    assert all(seen >= committed for committed, seen in results[1::2])


async def test_calls_from_wait_until_work_pass_the_objects_output_gate(data_dir: str) -> None:
    Sender.notified.clear()
    async with stead.Runtime({"A": Sender, "PROBE": Probe}, data_dir=data_dir) as rt:
        Probe.runtime = rt
        senders = [rt.env.A.get_by_name(f"a{i}") for i in range(20)]
        await asyncio.gather(*(a.write_then_notify_in_background(i) for i, a in enumerate(senders)))
    assert len(Sender.notified) == 20
    assert all(seen >= committed > 0 for committed, seen in Sender.notified)


async def test_a_result_showing_an_earlier_turns_write_waits_until_it_is_durable(
    data_dir: str,
) -> None:
    # The object is handed to the next caller before its batch is durable; a
    # read-only turn must not let the caller see a value a crash could still lose.
    async with stead.Runtime({"A": Sender, "PROBE": Probe}, data_dir=data_dir) as rt:
        Probe.runtime = rt
        a = rt.env.A.get_by_name("a")

        async def read() -> bool:
            _, committed = await a.read_with_committed_seq()
            return rt.engine.durable_seq() >= committed

        results = await asyncio.gather(*(a.write(i) if i % 2 == 0 else read() for i in range(60)))
    assert all(results[1::2])


class Failing(stead.DurableObject):
    instances = 0

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        Failing.instances += 1
        self.memory: list[int] = []

    def put(self, key: str, value: int) -> int:
        self.memory.append(value)
        self.ctx.storage.put(key, value)
        return value

    async def put_and_call(self, value: int) -> str:
        self.ctx.storage.put("before-call", value)
        return str(await self.env.F.get_by_name("other").put("x", value))

    def get(self, key: str) -> Any:
        return self.ctx.storage.get(key)

    def remembered(self) -> list[int]:
        return self.memory


async def test_failed_commit_gives_storage_error_and_resets_the_object(data_dir: str) -> None:
    Failing.instances = 0
    async with stead.Runtime({"F": Failing}, data_dir=data_dir) as rt:
        stub = rt.env.F.get_by_name("f")
        assert await stub.put("a", 1) == 1  # acknowledged
        rt.engine.fail_next_commit()
        with pytest.raises(stead.StorageError):
            await stub.put("b", 2)  # the reply is dropped
        assert Failing.instances == 1
        assert await stub.get("a") == 1  # earlier acknowledged write kept
        assert await stub.get("b") is None  # the failed turn's write is gone
        assert Failing.instances == 2  # the instance was reset
        assert await stub.remembered() == []  # ... with its memory


async def test_failed_commit_drops_the_turns_outbound_call(data_dir: str) -> None:
    async with stead.Runtime({"F": Failing}, data_dir=data_dir) as rt:
        rt.engine.fail_next_commit()
        with pytest.raises(stead.StorageError):
            await rt.env.F.get_by_name("f").put_and_call(5)
        assert await rt.env.F.get_by_name("other").get("x") is None
        assert await rt.env.F.get_by_name("f").get("before-call") is None


@pytest.mark.crash
async def test_no_read_acknowledges_a_write_the_disk_refused(data_dir: str) -> None:
    # A log write fails for real (a file size limit in the child): the failed
    # deposit's caller gets StorageError; a read-only call that follows must
    # not hand out the balance that includes it (the engine already indexed
    # it), since it is gone after a restart.
    from tests._children.account_full_disk import Account
    from tests.crashing import start_child

    child = start_child("tests._children.account_full_disk", data_dir)
    assert child.stdout is not None
    lines = child.stdout.read().splitlines()
    child.stdout.close()
    assert child.wait(timeout=60) == 0
    assert "failed" in lines, lines
    acknowledged = [int(line.split()[1]) for line in lines if line.startswith("ack ")]
    assert len(acknowledged) >= 2
    read = lines[-1]
    assert read == "read refused" or read == f"read {acknowledged[-1]}", lines
    async with stead.Runtime({"A": Account}, data_dir=data_dir) as rt:
        assert await rt.env.A.get_by_name("account").balance() == acknowledged[-1]


@pytest.mark.crash
@pytest.mark.slow
async def test_output_gate_survives_sigkill(data_dir: str) -> None:
    """Every value a killed server printed (acknowledged) is <= the count stored for it."""
    import random

    from tests._children.counter_server import Counter
    from tests.crashing import kill_after, start_child, wait_for_line

    rng = random.Random(1234)
    printed_max: dict[str, int] = {}
    for _ in range(10):
        child = start_child("tests._children.counter_server", data_dir)
        wait_for_line(child, "ready")
        lines = kill_after(child, rng.uniform(0.2, 0.8))
        assert child.returncode == -9
        for line in lines:
            name, value = line.split()
            printed_max[name] = max(printed_max.get(name, 0), int(value))
        async with stead.Runtime({"C": Counter}, data_dir=data_dir) as rt:
            for name, value in printed_max.items():
                stored = await rt.env.C.get_by_name(name).increment() - 1
                printed_max[name] = stored + 1  # our probe increment is acknowledged too
                assert value <= stored, f"{name}: printed {value} but only {stored} stored"
    assert len(printed_max) > 50  # the children really did work


class Fragile(stead.DurableObject):
    """Its second construction fails (a constructor that reads a flaky resource)."""

    constructions = 0

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        Fragile.constructions += 1
        if Fragile.constructions == 2:
            raise ConnectionError("flaky constructor")

    async def reset_soon(self) -> None:
        await asyncio.sleep(0.01)
        self.ctx.abort("reset")

    def ping(self) -> str:
        return "pong"

    async def slow_ping(self) -> str:
        await asyncio.sleep(0)
        return "pong"


async def test_a_constructor_failing_for_a_queued_caller_does_not_wedge_the_object(
    data_dir: str,
) -> None:
    # Both callers queue behind a turn that resets the object; the first one handed
    # the object builds a new instance, whose constructor fails. The turn must pass on.
    Fragile.constructions = 0
    async with stead.Runtime({"F": Fragile}, data_dir=data_dir) as rt:
        fragile = rt.env.F.get_by_name("f")
        results = await asyncio.wait_for(
            asyncio.gather(
                fragile.reset_soon(), fragile.ping(), fragile.slow_ping(), return_exceptions=True
            ),
            timeout=5,
        )
        assert isinstance(results[1], ConnectionError)
        assert results[2] == "pong"
        assert await asyncio.wait_for(fragile.ping(), timeout=5) == "pong"


async def test_callers_giving_up_at_random_moments_never_leave_half_a_turn(data_dir: str) -> None:
    # 200 transfers over 5 accounts, each caller with a random timeout (none, zero,
    # or up to 20 ms): every transfer that started ran both its writes, and after
    # a restart the books balance.
    rng = random.Random(3)

    class Ledger(stead.DurableObject):
        async def transfer(self) -> None:
            storage = self.ctx.storage
            storage.put("out", storage.get("out", 0) + 1)
            await asyncio.sleep(rng.random() * 0.002)
            storage.put("in", storage.get("in", 0) + 1)

        def books(self) -> tuple[int, int]:
            return self.ctx.storage.get("out", 0), self.ctx.storage.get("in", 0)

    async def transfer(stub: stead.Stub, timeout: float | None) -> bool:
        try:
            await asyncio.wait_for(stub.transfer(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async with stead.Runtime({"L": Ledger}, data_dir=data_dir) as rt:
        accounts = [rt.env.L.get_by_name(f"a{i}") for i in range(5)]
        completed = await asyncio.gather(
            *(
                transfer(rng.choice(accounts), rng.choice([None, 0, rng.random() * 0.02]))
                for _ in range(200)
            )
        )
        assert 0 < sum(completed) < 200  # both outcomes happened
        books = [await account.books() for account in accounts]
        assert all(out == in_ for out, in_ in books)
        assert sum(out for out, _ in books) >= sum(completed)
        # Nothing is left behind by the callers that gave up.
        assert rt.stats()["mailbox_depth"] == 0 and rt.stats()["running_events"] == 0
        assert all(rt.dispatcher.is_idle(host) for host in rt.dispatcher.hosts.values())
    async with stead.Runtime({"L": Ledger}, data_dir=data_dir) as rt:
        assert [await rt.env.L.get_by_name(f"a{i}").books() for i in range(5)] == books


class Starter(stead.DurableObject):
    """on_start asks another object, which calls back into this one."""

    async def on_start(self) -> None:
        self.greeting = await self.env.HELPER.get_by_name("h").call_back(self.ctx.id.name)

    def plain(self) -> str:
        return "plain"

    def greet(self) -> str:
        return self.greeting


class Helper(stead.DurableObject):
    async def call_back(self, name: str) -> str:
        return str(await self.env.S.get_by_name(name).plain())

    def ok(self) -> str:
        return "ok"


async def test_a_call_back_into_an_object_whose_on_start_runs_is_a_deadlock_error(
    data_dir: str,
) -> None:
    # on_start waits on the call that waits on on_start: refused at once, not a hang.
    async with stead.Runtime({"S": Starter, "HELPER": Helper}, data_dir=data_dir) as rt:
        with pytest.raises(stead.DeadlockError, match="on_start"):
            await asyncio.wait_for(rt.env.S.get_by_name("s").greet(), 5)
        assert await asyncio.wait_for(rt.env.HELPER.get_by_name("h").ok(), 5) == "ok"


class Front(stead.DurableObject):
    async def via_relay(self) -> str:
        return str(await self.env.RELAY.get_by_name("r").relay())

    async def via_nap(self) -> str:
        return str(await self.env.RELAY.get_by_name("r").nap())

    def ping(self) -> str:
        return "pong"


class Relay(stead.DurableObject):
    reentrant = True

    async def relay(self) -> str:
        await asyncio.sleep(0.05)
        return str(await self.env.BACK.get_by_name("b").work())

    async def nap(self) -> str:
        await asyncio.sleep(0.1)
        return "rested"


class Back(stead.DurableObject):
    async def start(self) -> str:
        await asyncio.sleep(0.02)
        return str(await self.env.FRONT.get_by_name("a").ping())

    def work(self) -> str:
        return "worked"


async def test_a_cycle_across_chains_through_a_reentrant_object_is_a_deadlock_error(
    data_dir: str,
) -> None:
    # Chain 1: A -> R (reentrant) -> B; chain 2: B -> A. Each waits on the other:
    # one is refused at once (it hung), the other then completes.
    bindings = {"FRONT": Front, "RELAY": Relay, "BACK": Back}
    async with stead.Runtime(bindings, data_dir=data_dir) as rt:
        results = await asyncio.wait_for(
            asyncio.gather(
                rt.env.FRONT.get_by_name("a").via_relay(),
                rt.env.BACK.get_by_name("b").start(),
                return_exceptions=True,
            ),
            5,
        )
        assert sum(isinstance(result, stead.DeadlockError) for result in results) == 1
        assert "worked" in results or "pong" in results
        # No false alarm: R's other event waiting on B does not make A wait on B.
        # A -> R.nap (calls no one); B -> A; another caller -> R.relay -> B.
        results = await asyncio.wait_for(
            asyncio.gather(
                rt.env.FRONT.get_by_name("a").via_nap(),
                rt.env.BACK.get_by_name("b").start(),
                rt.env.FRONT.get_by_name("c").via_relay(),
                return_exceptions=True,
            ),
            5,
        )
        assert results == ["rested", "pong", "worked"]


class Bank(stead.DurableObject):
    def credit(self, who: str, amount: int) -> None:
        self.ctx.storage.put(who, self.ctx.storage.get(who, 0) + amount)

    def balance(self, who: str) -> int:
        return int(self.ctx.storage.get(who, 0))


class Till(stead.DurableObject):
    """Reentrant: one event debits, waits, then pays out; another aborts meanwhile."""

    reentrant = True

    async def debit_then_pay(self) -> str:
        self.ctx.storage.put("debited", True)
        await asyncio.sleep(0.1)  # the object is aborted meanwhile: the debit is gone
        await self.env.BANK.get_by_name("b").credit("bob", 100)
        return "paid"

    def pay_later(self) -> None:
        async def pay() -> None:
            await asyncio.sleep(0.1)
            await self.env.BANK.get_by_name("b").credit("carol", 100)

        self.ctx.storage.put("debited", True)
        self.ctx.wait_until(pay())

    def reset(self) -> None:
        self.ctx.abort("reset by an operator")

    def debited(self) -> bool | None:
        return self.ctx.storage.get("debited")  # type: ignore[no-any-return]


async def test_no_call_leaves_an_object_reset_while_its_event_ran(data_dir: str) -> None:
    # The output gate: the write behind the call was dropped by the reset, so the
    # call must be dropped too (it left regardless, and bob was paid twice over).
    async with stead.Runtime({"T": Till, "BANK": Bank}, data_dir=data_dir) as rt:
        till, bank = rt.env.T.get_by_name("t"), rt.env.BANK.get_by_name("b")
        paying = asyncio.ensure_future(till.debit_then_pay())
        await asyncio.sleep(0.02)
        with pytest.raises(stead.RemoteError, match="reset by an operator"):
            await till.reset()
        with pytest.raises(stead.StorageError, match="reset"):
            await paying
        assert await till.debited() is None
        assert await bank.balance("bob") == 0
        # wait_until work of a reset instance: its call is dropped as well.
        await till.pay_later()
        with pytest.raises(stead.RemoteError, match="reset by an operator"):
            await till.reset()
        await asyncio.sleep(0.2)
        assert await bank.balance("carol") == 0


class Guarded(stead.DurableObject):
    """Reentrant: a block that aborts, and an on_start that fails once."""

    reentrant = True
    starts = 0

    async def on_start(self) -> None:
        Guarded.starts += 1
        await asyncio.sleep(0.05)  # later events arrive while it runs
        if Guarded.starts == 1:
            raise KeyError("the first start fails")

    async def critical(self) -> None:
        async def check() -> None:
            await asyncio.sleep(0.1)
            self.ctx.abort("bad state")

        await self.ctx.block_concurrency_while(check)

    async def put(self, value: int) -> int:
        await asyncio.sleep(0)
        self.ctx.storage.put("value", value)
        return value

    def get(self) -> int | None:
        return self.ctx.storage.get("value")  # type: ignore[no-any-return]


async def test_events_waiting_on_a_reset_reentrant_instance_run_on_a_fresh_one(
    data_dir: str,
) -> None:
    # As a turn-based object's queued events do (they failed with StorageError,
    # although no commit had failed, and their writes were lost).
    Guarded.starts = 0
    async with stead.Runtime({"G": Guarded}, data_dir=data_dir) as rt:
        guarded = rt.env.G.get_by_name("g")
        first, *waiting = await asyncio.gather(
            guarded.put(0), guarded.put(1), guarded.put(2), return_exceptions=True
        )
        assert isinstance(first, KeyError)  # the event that ran the failing on_start
        assert waiting == [1, 2]
        critical = asyncio.ensure_future(guarded.critical())
        await asyncio.sleep(0.02)  # the block is open: these wait at the input
        assert await asyncio.gather(guarded.put(3), guarded.put(4)) == [3, 4]
        with pytest.raises(stead.RemoteError, match="bad state"):
            await critical
        assert await guarded.get() == 4


class Impatient(stead.DurableObject):
    """A gives up on a call to B; B's turn goes on and later calls back into A."""

    async def give_up_on_b(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.env.LATE.get_by_name("b").call_a_later(), 0.01)

    async def increment(self) -> int:  # read-await-write: safe only one event at a time
        count: int = self.ctx.storage.get("n", 0)
        await asyncio.sleep(0.05)
        self.ctx.storage.put("n", count + 1)
        return count + 1


class Late(stead.DurableObject):
    async def call_a_later(self) -> int:
        await asyncio.sleep(0.03)
        return int(await self.env.IMPATIENT.get_by_name("a").increment())


async def test_a_call_back_after_the_caller_gave_up_queues_instead_of_reentering(
    data_dir: str,
) -> None:
    # B's context still lists A's turn, which is over: B's call must wait for A's
    # current event like any other call, not run nested in it.
    async with stead.Runtime({"IMPATIENT": Impatient, "LATE": Late}, data_dir=data_dir) as rt:
        a = rt.env.IMPATIENT.get_by_name("a")
        await a.give_up_on_b()
        await a.increment()  # runs while B's call to A arrives
        await asyncio.sleep(0.1)
        assert await a.increment() == 3  # no update lost


async def test_a_call_back_after_the_caller_gave_up_reaches_an_evicted_object(
    data_dir: str,
) -> None:
    async with stead.Runtime(
        {"IMPATIENT": Impatient, "LATE": Late}, data_dir=data_dir, idle_timeout=0.005
    ) as rt:
        a = rt.env.IMPATIENT.get_by_name("a")
        await a.give_up_on_b()
        await asyncio.sleep(0.2)  # A is evicted; then B's call reaches it
        assert await a.increment() == 2


class GateHolder(stead.DurableObject):
    reentrant = True

    async def close_input_and_call_b(self) -> str:
        async def inner() -> str:
            await asyncio.sleep(0.02)
            return str(await self.env.GATED.get_by_name("b").ping())

        return await self.ctx.block_concurrency_while(inner)

    def anything(self) -> str:
        return "R"


class StartsByCallingB(stead.DurableObject):
    reentrant = True

    async def on_start(self) -> None:
        await asyncio.sleep(0.02)
        await self.env.GATED.get_by_name("b").ping()

    def anything(self) -> str:
        return "R"


class GatedB(stead.DurableObject):
    def ping(self) -> str:
        return "B"

    async def hold_then_call(self, binding: str) -> str:
        await asyncio.sleep(0.01)
        return str(await getattr(self.env, binding).get_by_name("r").anything())


@pytest.mark.parametrize(
    ("holder", "first"),
    [(GateHolder, "close_input_and_call_b"), (StartsByCallingB, "anything")],
)
async def test_a_cycle_through_a_closed_input_gate_raises_deadlock_error(
    data_dir: str, holder: type[stead.DurableObject], first: str
) -> None:
    # R closes its input (block_concurrency_while, or on_start) and calls B,
    # whose turn is waiting at R's closed gate: a cycle, not a hang.
    async with stead.Runtime({"R": holder, "GATED": GatedB}, data_dir=data_dir) as rt:
        results = await asyncio.wait_for(
            asyncio.gather(
                getattr(rt.env.R.get_by_name("r"), first)(),
                rt.env.GATED.get_by_name("b").hold_then_call("R"),
                return_exceptions=True,
            ),
            timeout=5,
        )
        assert sum(isinstance(r, stead.DeadlockError) for r in results) == 1, results


class Transferrer(stead.DurableObject):
    async def transfer_with_a_call_back(self) -> None:
        with self.ctx.storage.transaction():
            self.ctx.storage.put("debited", True)
            await self.env.ECHO.get_by_name("e").call_back()  # A -> ECHO -> A
            raise ValueError("roll back")

    def noop(self) -> None:
        pass

    def debited(self) -> Any:
        return self.ctx.storage.get("debited")


class Echo(stead.DurableObject):
    async def call_back(self) -> None:
        await self.env.TRANSFER.get_by_name("a").noop()


async def test_a_call_back_into_an_open_transaction_block_is_refused(data_dir: str) -> None:
    # Its writes would join the block, which may still roll back after the call
    # back was answered: a cycle that cannot complete (DeadlockError), and the
    # block, left by that error, rolls back.
    async with stead.Runtime({"TRANSFER": Transferrer, "ECHO": Echo}, data_dir=data_dir) as rt:
        a = rt.env.TRANSFER.get_by_name("a")
        with pytest.raises(stead.DeadlockError, match="transaction"):
            await a.transfer_with_a_call_back()
        assert await a.debited() is None
    async with stead.Runtime({"TRANSFER": Transferrer, "ECHO": Echo}, data_dir=data_dir) as rt:
        assert await rt.env.TRANSFER.get_by_name("a").debited() is None


class Writer(stead.DurableObject):
    other: ClassVar[Any] = None
    seen: ClassVar[list[tuple[int, int]]] = []

    def bump(self) -> None:
        self.ctx.storage.put("n", self.ctx.storage.get("n", 0) + 1)

    async def write_then_call_other_runtime(self) -> None:
        self.ctx.storage.put("x", 1)
        await Writer.other.observe()

    def observe(self) -> None:
        assert Probe.runtime is not None
        Writer.seen.append((Probe.runtime.engine.last_seq(), Probe.runtime.engine.durable_seq()))


@pytest.mark.parametrize("ahead", ["caller", "callee"])
async def test_a_call_into_another_runtime_passes_the_callers_output_gate(
    tmp_path: Any, ahead: str
) -> None:
    # The two engines number their batches independently: the gate must wait in
    # the caller's own runtime, whichever is further ahead.
    Writer.seen = []
    async with (
        stead.Runtime({"W": Writer}, data_dir=str(tmp_path / "one")) as caller_rt,
        stead.Runtime({"W": Writer}, data_dir=str(tmp_path / "two")) as callee_rt,
    ):
        Probe.runtime = caller_rt
        Writer.other = callee_rt.env.W.get_by_name("b")
        busy = caller_rt if ahead == "caller" else callee_rt
        for _ in range(50):
            await busy.env.W.get_by_name("busy").bump()
        await asyncio.wait_for(caller_rt.env.W.get_by_name("a").write_then_call_other_runtime(), 5)
        [(committed, durable)] = Writer.seen
        assert durable >= committed  # the caller's write was durable when the call arrived


class OwnError(stead.SteadError):
    def __init__(self, message: str, usage: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.usage = usage if usage is not None else {}


class Metered(stead.DurableObject):
    def __init__(self, ctx: stead.ObjectContext, env: Any) -> None:
        super().__init__(ctx, env)
        self.usage = {"calls": 1}

    def fail(self) -> None:
        raise OwnError("over budget", self.usage)

    def calls(self) -> int:
        return self.usage["calls"]


async def test_a_handlers_own_stead_error_subclass_is_copied(data_dir: str) -> None:
    async with stead.Runtime({"M": Metered}, data_dir=data_dir) as rt:
        metered = rt.env.M.get_by_name("m")
        with pytest.raises(OwnError) as raised:
            await metered.fail()
        raised.value.usage["calls"] = -1  # the caller's copy, not the object's state
        assert await metered.calls() == 1


class Fatal(BaseException):
    pass


class RaisesBaseException(stead.DurableObject):
    def plain(self) -> None:
        raise Fatal("plain")

    async def suspending(self) -> None:
        await asyncio.sleep(0)
        raise Fatal("suspending")


@pytest.mark.parametrize("method", ["plain", "suspending"])
async def test_a_base_exception_reaches_the_caller_as_itself(data_dir: str, method: str) -> None:
    async with stead.Runtime({"F": RaisesBaseException}, data_dir=data_dir) as rt:
        with pytest.raises(Fatal, match=method):
            await getattr(rt.env.F.get_by_name("f"), method)()


class Sleeper(stead.DurableObject):
    reentrant = False

    async def sleep(self) -> str:
        await asyncio.sleep(0.2)
        return "done"


class ReentrantSleeper(Sleeper):
    reentrant = True


@pytest.mark.parametrize("cls", [Sleeper, ReentrantSleeper])
async def test_max_pending_bounds_events_beyond_the_running_one_alike(
    data_dir: str, cls: type[stead.DurableObject]
) -> None:
    # One running event plus max_pending more, for turn-based and reentrant objects.
    async with stead.Runtime({"S": cls}, data_dir=data_dir, max_pending=3) as rt:
        sleeper = rt.env.S.get_by_name("s")
        results = await asyncio.gather(*(sleeper.sleep() for _ in range(6)), return_exceptions=True)
        assert results.count("done") == 4
        assert sum(isinstance(r, stead.OverloadedError) for r in results) == 2


class GivesUpAndGoesOn(stead.DurableObject):
    """A's turn gives up on a call to B and goes on with a read-await-write."""

    async def start(self) -> int:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.env.CALLS_BACK.get_by_name("b").slow(), 0.01)
        count: int = self.ctx.storage.get("n", 0)
        await asyncio.sleep(0.05)  # B's call back arrives meanwhile
        self.ctx.storage.put("n", count + 1)
        return count + 1

    def increment(self) -> int:
        count: int = self.ctx.storage.get("n", 0) + 1
        self.ctx.storage.put("n", count)
        return count

    def count(self) -> int:
        count: int = self.ctx.storage.get("n", 0)
        return count


class CallsBack(stead.DurableObject):
    async def slow(self) -> int:
        await asyncio.sleep(0.02)
        return int(await self.env.GIVES_UP.get_by_name("a").increment())


async def test_a_call_back_waits_for_a_turn_that_no_longer_waits_on_the_call(
    data_dir: str,
) -> None:
    # A's turn still runs, but no longer awaits the call that led to B: B's call
    # back must wait for the turn to end, not run in the middle of it.
    bindings = {"GIVES_UP": GivesUpAndGoesOn, "CALLS_BACK": CallsBack}
    async with stead.Runtime(bindings, data_dir=data_dir) as rt:
        a = rt.env.GIVES_UP.get_by_name("a")
        await a.start()
        await asyncio.sleep(0.1)
        assert await a.count() == 2


class LeavesTheGateThenCalls(stead.DurableObject):
    reentrant = True

    async def load_then_call(self) -> str:
        await self.ctx.block_concurrency_while(lambda: asyncio.sleep(0.05))
        return str(await self.env.WAITS_AT_GATE.get_by_name("t").y())  # the gate is open

    def ping(self) -> str:
        return "pong"


class WaitsAtGate(stead.DurableObject):
    async def x(self) -> str:  # its turn waits at R's closed gate
        return str(await self.env.GATE.get_by_name("r").ping())

    def y(self) -> str:
        return "y"


async def test_leaving_the_gate_and_calling_a_turn_that_waited_at_it_is_no_cycle(
    data_dir: str,
) -> None:
    bindings = {"GATE": LeavesTheGateThenCalls, "WAITS_AT_GATE": WaitsAtGate}
    async with stead.Runtime(bindings, data_dir=data_dir) as rt:
        holder = asyncio.ensure_future(rt.env.GATE.get_by_name("r").load_then_call())
        await asyncio.sleep(0.01)
        waiter = asyncio.ensure_future(rt.env.WAITS_AT_GATE.get_by_name("t").x())
        assert await asyncio.wait_for(asyncio.gather(holder, waiter), 5) == ["y", "pong"]


class OverlappingBlocks(stead.DurableObject):
    reentrant = True
    outcome: ClassVar[list[str]] = []
    answered: ClassVar[asyncio.Event]

    async def first(self) -> str:  # holds the gate from 0 to 20 ms
        async def inside() -> None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.env.RELAY2.get_by_name("b").back(), 0.02)

        await self.ctx.block_concurrency_while(inside)
        return "first"

    async def second(self) -> str:  # B's call back, nested in first: holds it from 5 to 55 ms
        await asyncio.sleep(0.005)

        async def inside() -> str:
            await asyncio.sleep(0.05)
            return str(await self.env.WAITS_AT_GATE2.get_by_name("t").y())

        return await self.ctx.block_concurrency_while(inside)

    def ping(self) -> str:
        return "pong"


class Relay2(stead.DurableObject):
    async def back(self) -> None:
        try:
            OverlappingBlocks.outcome.append(await self.env.GATE2.get_by_name("r").second())
        except stead.DeadlockError as error:
            OverlappingBlocks.outcome.append(type(error).__name__)
        OverlappingBlocks.answered.set()


class WaitsAtGate2(WaitsAtGate):
    async def x(self) -> str:
        return str(await self.env.GATE2.get_by_name("r").ping())


async def test_a_cycle_through_a_gate_held_by_a_later_block_raises_deadlock_error(
    data_dir: str,
) -> None:
    # T's turn starts waiting at the gate while the first block holds it; the
    # second block (nested in the first's event, so it passes) holds it alone
    # once the first ends, and calls T: a cycle.
    OverlappingBlocks.outcome = []
    OverlappingBlocks.answered = asyncio.Event()
    bindings = {"GATE2": OverlappingBlocks, "WAITS_AT_GATE2": WaitsAtGate2, "RELAY2": Relay2}
    async with stead.Runtime(bindings, data_dir=data_dir) as rt:
        r = rt.env.GATE2.get_by_name("r")
        first = asyncio.ensure_future(r.first())
        await asyncio.sleep(0.01)
        waiter = asyncio.ensure_future(rt.env.WAITS_AT_GATE2.get_by_name("t").x())
        assert list(await asyncio.wait_for(asyncio.gather(first, waiter), 5)) == ["first", "pong"]
        await asyncio.wait_for(OverlappingBlocks.answered.wait(), 5)
        assert OverlappingBlocks.outcome == ["DeadlockError"]


class AbortsRacingATurn(stead.DurableObject):
    release: ClassVar[dict[str, asyncio.Future[None]]] = {}

    def start_work(self) -> None:
        async def work() -> None:
            await AbortsRacingATurn.release["work"]
            self.ctx.storage.put("background", True)
            self.ctx.abort("the work gave up")

        self.ctx.wait_until(work())

    async def turn(self) -> str:
        self.ctx.storage.put("turn", True)
        await AbortsRacingATurn.release["turn"]
        return "done"

    def keys(self) -> list[str]:
        return sorted(self.ctx.storage.list())


async def test_abort_in_wait_until_work_drops_its_writes_before_a_racing_turn_ends(
    data_dir: str,
) -> None:
    loop = asyncio.get_running_loop()
    AbortsRacingATurn.release = {"work": loop.create_future(), "turn": loop.create_future()}
    async with stead.Runtime({"A": AbortsRacingATurn}, data_dir=data_dir) as rt:
        a = rt.env.A.get_by_name("a")
        await a.start_work()
        turn = asyncio.ensure_future(a.turn())
        await asyncio.sleep(0.01)
        AbortsRacingATurn.release["work"].set_result(None)  # both wake in one iteration:
        AbortsRacingATurn.release["turn"].set_result(None)  # the work aborts, the turn ends
        with pytest.raises(stead.StorageError, match="reset"):
            await turn  # the turn ran on the instance the abort discarded
    async with stead.Runtime({"A": AbortsRacingATurn}, data_dir=data_dir) as rt:
        assert "background" not in await rt.env.A.get_by_name("a").keys()


class FansOut(stead.DurableObject):
    async def fan_out(self) -> list[int]:
        # Both call backs nest in this turn; they must still run one at a time.
        calls = [self.env.FAN_B.get_by_name(name).back() for name in ("b1", "b2")]
        return sorted(await asyncio.gather(*calls))

    async def increment(self) -> int:  # read-await-write
        count: int = self.ctx.storage.get("n", 0)
        await asyncio.sleep(0.02)
        self.ctx.storage.put("n", count + 1)
        return count + 1

    async def deeper(self) -> int:  # a call back that calls out, and back again
        return int(await self.env.FAN_B.get_by_name("c").back()) + 100


class FanB(stead.DurableObject):
    async def back(self) -> int:
        return int(await self.env.FAN_A.get_by_name("a").increment())

    async def via_deeper(self) -> int:
        return int(await self.env.FAN_A.get_by_name("a").deeper())


class FansOutDeeper(FansOut):
    async def fan_out(self) -> list[int]:
        return [int(await self.env.FAN_B.get_by_name("b").via_deeper())]


async def test_call_backs_from_a_fan_out_run_one_at_a_time(data_dir: str) -> None:
    async with stead.Runtime({"FAN_A": FansOut, "FAN_B": FanB}, data_dir=data_dir) as rt:
        results = await asyncio.wait_for(rt.env.FAN_A.get_by_name("a").fan_out(), 5)
        assert results == [1, 2]  # no lost update


async def test_a_call_back_nests_in_a_call_back(data_dir: str) -> None:
    # A -> B -> A (nested) -> C -> A: the second call back nests in the first.
    async with stead.Runtime({"FAN_A": FansOutDeeper, "FAN_B": FanB}, data_dir=data_dir) as rt:
        assert await asyncio.wait_for(rt.env.FAN_A.get_by_name("a").fan_out(), 5) == [101]


class SameCallerFanOut(stead.DurableObject):
    async def go(self) -> list[int]:
        return list(await self.env.FANNER.get_by_name("b").fan_back())

    async def increment(self) -> int:  # read-await-write
        count: int = self.ctx.storage.get("n", 0)
        await asyncio.sleep(0.01)
        self.ctx.storage.put("n", count + 1)
        return count + 1


class Fanner(stead.DurableObject):
    async def fan_back(self) -> list[int]:
        # One caller fans out two call backs into the turn that called it.
        a = self.env.SAME_CALLER.get_by_name("a")
        return sorted(await asyncio.gather(a.increment(), a.increment()))


async def test_one_caller_fanning_out_call_backs_gets_them_one_after_the_other(
    data_dir: str,
) -> None:
    async with stead.Runtime(
        {"SAME_CALLER": SameCallerFanOut, "FANNER": Fanner}, data_dir=data_dir
    ) as rt:
        assert await asyncio.wait_for(rt.env.SAME_CALLER.get_by_name("a").go(), 5) == [1, 2]


class GivesUpOnAFanOut(stead.DurableObject):
    log: ClassVar[list[str]] = []

    async def fan(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(self.env.BACK.get_by_name(n).back() for n in ("b1", "b2"))), 0.02
            )

    async def increment(self, who: str) -> int:  # read-await-write
        count: int = self.ctx.storage.get("n", 0)
        GivesUpOnAFanOut.log.append(f"start {who}")
        await asyncio.sleep(0.05)
        GivesUpOnAFanOut.log.append(f"end {who}")
        self.ctx.storage.put("n", count + 1)
        return count + 1

    def count(self) -> int:
        count: int = self.ctx.storage.get("n", 0)
        return count


class CallsBackNamed(stead.DurableObject):
    async def back(self) -> int:
        name = self.ctx.id.name
        assert name is not None
        return int(await self.env.GIVES_UP_FAN.get_by_name("a").increment(name))


async def test_call_backs_a_turn_gave_up_on_never_overlap_its_later_events(
    data_dir: str,
) -> None:
    # The running call back finishes before the object is handed on; the one
    # still waiting to nest queues like any other call.
    GivesUpOnAFanOut.log = []
    async with stead.Runtime(
        {"GIVES_UP_FAN": GivesUpOnAFanOut, "BACK": CallsBackNamed}, data_dir=data_dir
    ) as rt:
        a = rt.env.GIVES_UP_FAN.get_by_name("a")
        fan = asyncio.ensure_future(a.fan())
        await asyncio.sleep(0.005)
        later = asyncio.ensure_future(a.increment("next"))
        await fan
        await later
        await asyncio.sleep(0.3)
        assert await a.count() == 3
    log = GivesUpOnAFanOut.log
    assert all(
        log[i].startswith("start") != log[i + 1].startswith("start") for i in range(len(log) - 1)
    ), log


class Books(stead.DurableObject):
    async def go(self) -> str:
        return str(await self.env.IMPATIENT_B.get_by_name("b").back())

    async def transfer(self, amount: int) -> None:
        storage = self.ctx.storage
        storage.put("out", storage.get("out", 0) + amount)
        await asyncio.sleep(0.05)
        storage.put("in", storage.get("in", 0) + amount)

    def books(self) -> list[int]:
        return [self.ctx.storage.get("out", 0), self.ctx.storage.get("in", 0)]


class ImpatientB(stead.DurableObject):
    async def back(self) -> str:
        try:
            await asyncio.wait_for(self.env.BOOKS.get_by_name("a").transfer(10), 0.01)
        except asyncio.TimeoutError:
            return "timed out"
        return "done"


async def test_a_caller_giving_up_never_interrupts_a_call_back_midway(data_dir: str) -> None:
    async with stead.Runtime({"BOOKS": Books, "IMPATIENT_B": ImpatientB}, data_dir=data_dir) as rt:
        assert await rt.env.BOOKS.get_by_name("a").go() == "timed out"
    async with stead.Runtime({"BOOKS": Books, "IMPATIENT_B": ImpatientB}, data_dir=data_dir) as rt:
        assert await rt.env.BOOKS.get_by_name("a").books() == [10, 10]


class GuardedCounter(stead.DurableObject):
    reentrant = True

    async def guarded(self) -> int:
        async def inside() -> int:
            count: int = self.ctx.storage.get("n", 0)
            await asyncio.sleep(0.05)
            self.ctx.storage.put("n", count + 1)
            return count + 1

        return await self.ctx.block_concurrency_while(inside)

    async def start_chain(self) -> int:
        await asyncio.sleep(0.01)  # the guarded block is running by now
        return int(await self.env.BUMPER.get_by_name("b").bump_back())

    def bump(self) -> int:
        count: int = self.ctx.storage.get("n", 0) + 1
        self.ctx.storage.put("n", count)
        return count

    def count(self) -> int:
        count: int = self.ctx.storage.get("n", 0)
        return count


class Bumper(stead.DurableObject):
    async def bump_back(self) -> int:
        return int(await self.env.GUARDED.get_by_name("r").bump())


async def test_a_call_back_into_a_reentrant_object_waits_at_its_closed_gate(
    data_dir: str,
) -> None:
    # The call back comes along another event's chain: the block holding the
    # gate runs to its end first (no write of the block is overwritten).
    async with stead.Runtime(
        {"GUARDED": GuardedCounter, "BUMPER": Bumper}, data_dir=data_dir
    ) as rt:
        r = rt.env.GUARDED.get_by_name("r")
        chain = asyncio.ensure_future(r.start_chain())  # running before the gate closes
        await asyncio.sleep(0.001)
        results = await asyncio.wait_for(asyncio.gather(r.guarded(), chain), 5)
        assert sorted(results) == [1, 2]
        assert await r.count() == 2


class SlowCallBack(stead.DurableObject):
    reentrant = True
    built = 0

    def __init__(self, ctx: stead.ObjectContext, env: Any) -> None:
        super().__init__(ctx, env)
        SlowCallBack.built += 1

    async def go(self) -> str:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.env.SLOW_B.get_by_name("b").back(), 0.01)
        return "gave up"

    async def slow(self) -> int:
        await asyncio.sleep(0.2)
        return 1


class SlowB(stead.DurableObject):
    async def back(self) -> int:
        return int(await self.env.SLOW_R.get_by_name("r").slow())


async def test_a_reentrant_object_is_not_evicted_while_a_call_back_runs_in_it(
    data_dir: str,
) -> None:
    SlowCallBack.built = 0
    bindings = {"SLOW_R": SlowCallBack, "SLOW_B": SlowB}
    async with stead.Runtime(bindings, data_dir=data_dir, idle_timeout=0.02) as rt:
        r = rt.env.SLOW_R.get_by_name("r")
        assert await r.go() == "gave up"
        await asyncio.sleep(0.1)  # the call back still runs: the instance stays
        assert r.id.storage_key in rt.dispatcher.hosts
        assert SlowCallBack.built == 1


class GateDeep(stead.DurableObject):
    reentrant = True

    async def go(self) -> str:
        async def inside() -> str:
            return "go/" + str(await self.env.DEEP_B.get_by_name("b").back())

        return await self.ctx.block_concurrency_while(inside)

    async def mid(self) -> str:  # nested in go, which holds the gate
        return "mid/" + str(await self.env.DEEP_R.get_by_name("r").leaf())

    def leaf(self) -> str:  # nested in mid, deeper in go's chain
        return "leaf"


class DeepB(stead.DurableObject):
    async def back(self) -> str:
        return str(await self.env.DEEP_R.get_by_name("r").mid())


async def test_a_call_back_nested_deep_in_the_gate_holder_passes_the_gate(
    data_dir: str,
) -> None:
    async with stead.Runtime({"DEEP_R": GateDeep, "DEEP_B": DeepB}, data_dir=data_dir) as rt:
        result = await asyncio.wait_for(rt.env.DEEP_R.get_by_name("r").go(), 5)
        assert result == "go/mid/leaf"


class Migrating(stead.DurableObject):
    """Turn-based; migrates its counter in a block started as background work."""

    entered: ClassVar[asyncio.Event]

    def start_migration(self) -> None:
        async def migrate() -> None:
            count: int = self.ctx.storage.get("n", 0)
            Migrating.entered.set()
            await asyncio.sleep(0.05)  # e.g. fetch the new schema
            await self.ctx.block_concurrency_while(lambda: asyncio.sleep(0))  # nested: passes
            self.ctx.storage.put("n", count + 100)

        self.ctx.wait_until(self.ctx.block_concurrency_while(migrate))

    def incr(self) -> int:
        count: int = self.ctx.storage.get("n", 0) + 1
        self.ctx.storage.put("n", count)
        return count

    def count(self) -> int:
        count: int = self.ctx.storage.get("n", 0)
        return count


async def test_a_block_outside_a_turn_holds_back_the_events_of_a_turn_based_object(
    data_dir: str,
) -> None:
    Migrating.entered = asyncio.Event()
    async with stead.Runtime({"M": Migrating}, data_dir=data_dir) as rt:
        m = rt.env.M.get_by_name("m")
        await m.start_migration()
        await asyncio.wait_for(Migrating.entered.wait(), 5)  # the block runs
        assert await asyncio.gather(m.incr(), m.incr()) == [101, 102]
        assert await m.count() == 102


class BlockCallsOut(stead.DurableObject):
    outcome: ClassVar[list[str]] = []
    done: ClassVar[asyncio.Event]

    def start(self) -> None:
        async def inside() -> str:
            return str(await self.env.CALLS_BACK_IN.get_by_name("b").back())

        async def work() -> None:
            try:
                BlockCallsOut.outcome.append(await self.ctx.block_concurrency_while(inside))
            except stead.DeadlockError as error:
                BlockCallsOut.outcome.append(type(error).__name__)
            BlockCallsOut.done.set()

        self.ctx.wait_until(work())

    def ping(self) -> str:
        return "pong"


class CallsBackIn(stead.DurableObject):
    async def back(self) -> str:
        return str(await self.env.BLOCK_OUT.get_by_name("a").ping())


async def test_a_call_back_into_a_block_run_outside_a_turn_is_a_deadlock_error(
    data_dir: str,
) -> None:
    # The block holds A's input and waits for B, whose call to A waits for the block.
    BlockCallsOut.outcome = []
    BlockCallsOut.done = asyncio.Event()
    bindings = {"BLOCK_OUT": BlockCallsOut, "CALLS_BACK_IN": CallsBackIn}
    async with stead.Runtime(bindings, data_dir=data_dir) as rt:
        await rt.env.BLOCK_OUT.get_by_name("a").start()
        await asyncio.wait_for(BlockCallsOut.done.wait(), 5)
        assert BlockCallsOut.outcome == ["DeadlockError"]
        assert await rt.env.BLOCK_OUT.get_by_name("a").ping() == "pong"


class SpawnsACall(stead.DurableObject):
    seen: ClassVar[list[tuple[int, int]]] = []
    tasks: ClassVar[list[asyncio.Future[None]]] = []

    def plain(self) -> None:
        self.ctx.storage.put("paid", True)
        SpawnsACall.tasks.append(asyncio.ensure_future(self._notify()))

    async def without_await(self) -> None:
        self.ctx.storage.put("paid", True)
        SpawnsACall.tasks.append(asyncio.ensure_future(self._notify()))

    async def _notify(self) -> None:  # e.g. the payment is announced to another object
        committed = self.ctx.storage.last_seq
        seen = await self.env.PROBE.get_by_name("p").durable_seq_seen()
        SpawnsACall.seen.append((committed, seen))


@pytest.mark.parametrize("method", ["plain", "without_await"])
async def test_a_call_a_non_suspending_handler_spawns_passes_its_output_gate(
    data_dir: str, method: str
) -> None:
    SpawnsACall.seen, SpawnsACall.tasks = [], []
    async with stead.Runtime({"A": SpawnsACall, "PROBE": Probe}, data_dir=data_dir) as rt:
        Probe.runtime = rt
        a = rt.env.A.get_by_name("a")
        for _ in range(5):
            await getattr(a, method)()
            await asyncio.gather(*SpawnsACall.tasks)
    assert len(SpawnsACall.seen) == 5
    assert all(seen >= committed > 0 for committed, seen in SpawnsACall.seen)


class HandedOn(stead.DurableObject):
    built: ClassVar[int] = 0
    called_back: ClassVar[asyncio.Event]

    def __init__(self, ctx: stead.ObjectContext, env: Any) -> None:
        super().__init__(ctx, env)
        HandedOn.built += 1

    async def go(self) -> str:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.env.HANDS_B.get_by_name("b").back(), 0.05)
        await asyncio.sleep(0.05)
        return "gave up"

    async def cb(self) -> str:  # B's call back, nested in go
        await asyncio.sleep(0.06)
        # X's turn waits for A's: a cycle, so A's turn is handed on without
        # waiting for this call back, which runs on.
        await self.env.HANDS_X.get_by_name("x").ping()
        await asyncio.sleep(0.2)
        self.incr()
        HandedOn.called_back.set()
        return "cb"

    def incr(self) -> int:
        count: int = self.ctx.storage.get("n", 0) + 1
        self.ctx.storage.put("n", count)
        return count

    def count(self) -> int:
        count: int = self.ctx.storage.get("n", 0)
        return count


class HandsB(stead.DurableObject):
    async def back(self) -> str:
        return str(await self.env.HANDS_A.get_by_name("a").cb())


class HandsX(stead.DurableObject):
    async def go(self) -> int:
        return int(await self.env.HANDS_A.get_by_name("a").incr())

    def ping(self) -> str:
        return "pong"


async def test_a_turn_based_object_is_not_evicted_while_a_call_back_runs_in_it(
    data_dir: str,
) -> None:
    HandedOn.built = 0
    HandedOn.called_back = asyncio.Event()
    bindings = {"HANDS_A": HandedOn, "HANDS_B": HandsB, "HANDS_X": HandsX}
    async with stead.Runtime(bindings, data_dir=data_dir, idle_timeout=0.02) as rt:
        a = rt.env.HANDS_A.get_by_name("a")

        async def x_go() -> int:
            await asyncio.sleep(0.01)  # queues behind A's turn
            return int(await rt.env.HANDS_X.get_by_name("x").go())

        assert list(await asyncio.gather(a.go(), x_go())) == ["gave up", 1]
        await asyncio.sleep(0.1)  # idle sweeps run; the call back still runs
        assert a.id.storage_key in rt.dispatcher.hosts
        assert await a.incr() == 2
        await asyncio.wait_for(HandedOn.called_back.wait(), 5)
        assert await a.count() == 3
        assert HandedOn.built == 1


class Shop(stead.DurableObject):
    async def reserve(self, item: str) -> str:
        storage = self.ctx.storage
        try:
            with storage.transaction():
                storage.put(f"order:{item}", "reserved")
                raise ValueError("out of stock")
        except ValueError:
            pass
        storage.put("last_attempt", item)
        return "sold out"

    async def checkout(self, item: str) -> str:  # SHOP -> BROKER -> SHOP.reserve
        return str(await self.env.BROKER.get_by_name("b").ask(item))

    def stored(self) -> dict[str, Any]:
        return dict(self.ctx.storage.list())


class Broker(stead.DurableObject):
    async def ask(self, item: str) -> str:
        return str(await self.env.SHOP.get_by_name("s").reserve(item))


async def test_a_call_back_whose_own_block_rolls_back_succeeds(data_dir: str) -> None:
    async with stead.Runtime({"SHOP": Shop, "BROKER": Broker}, data_dir=data_dir) as rt:
        shop = rt.env.SHOP.get_by_name("s")
        assert await shop.reserve("x") == "sold out"
        assert await shop.checkout("y") == "sold out"  # the same, as a call back
        assert await shop.stored() == {"last_attempt": "y"}


class MeetsABlock(stead.DurableObject):
    wrote: ClassVar[asyncio.Event]

    async def go(self) -> list[str]:
        async def roll_back() -> str:
            await MeetsABlock.wrote.wait()  # the call back has written
            with contextlib.suppress(ValueError), self.ctx.storage.transaction():
                self.ctx.storage.put("turn", 1)
                await asyncio.sleep(0.02)  # the call back writes inside the block
                raise ValueError("roll back")
            return "rolled back"

        calls = (self.env.MEETS_B.get_by_name("b").back(), roll_back())
        results = await asyncio.gather(*calls, return_exceptions=True)
        return [type(r).__name__ if isinstance(r, BaseException) else r for r in results]

    async def bump(self) -> str:  # B's call back, nested in go
        self.ctx.storage.put("before", True)
        MeetsABlock.wrote.set()
        await asyncio.sleep(0.01)
        self.ctx.storage.put("inside", True)  # joins the turn's block
        await asyncio.sleep(0.03)  # which rolls back meanwhile
        return "bumped"

    def keys(self) -> list[str]:
        return sorted(self.ctx.storage.list())


class MeetsB(stead.DurableObject):
    async def back(self) -> str:
        return str(await self.env.MEETS_A.get_by_name("a").bump())


async def test_a_call_back_failed_by_its_turns_rollback_commits_none_of_its_writes(
    data_dir: str,
) -> None:
    MeetsABlock.wrote = asyncio.Event()
    bindings = {"MEETS_A": MeetsABlock, "MEETS_B": MeetsB}
    async with stead.Runtime(bindings, data_dir=data_dir) as rt:
        # The call back fails (its write inside the block is gone), and the
        # object is reset: its turn, sharing its writes, is not acknowledged.
        with pytest.raises(stead.StorageError):
            await rt.env.MEETS_A.get_by_name("a").go()
    async with stead.Runtime(bindings, data_dir=data_dir) as rt:
        assert await rt.env.MEETS_A.get_by_name("a").keys() == []


class Account2(stead.DurableObject):
    seqs: ClassVar[list[int]] = []

    def deposit(self, amount: int) -> int:
        balance: int = self.ctx.storage.get("balance", 0) + amount
        self.ctx.storage.put("balance", balance)
        return balance

    def withdraw(self, amount: int) -> int:
        balance: int = self.ctx.storage.get("balance", 0)
        Account2.seqs.append(self.ctx.storage.last_seq)  # the deposit's batch
        self.ctx.abort(f"insufficient funds: balance is {balance}")


async def test_an_abort_reason_read_from_storage_waits_until_it_is_durable(
    data_dir: str,
) -> None:
    Account2.seqs = []
    async with stead.Runtime({"A": Account2}, data_dir=data_dir) as rt:
        for i in range(5):
            account = rt.env.A.get_by_name(f"a{i}")
            deposit = asyncio.ensure_future(account.deposit(100))
            withdraw = asyncio.ensure_future(account.withdraw(500))
            with pytest.raises(stead.RemoteError, match="balance is 100"):
                await withdraw
            assert rt.engine.durable_seq() >= Account2.seqs[-1] > 0
            await deposit


class Cache(stead.DurableObject):
    reentrant = True

    async def refresh(self) -> int:
        await asyncio.sleep(0)  # e.g. parse the request first

        async def reload() -> int:
            version: int = self.ctx.storage.get("version", 0)
            await asyncio.sleep(0.02)  # e.g. fetch the new data
            self.ctx.storage.put("version", version + 1)
            return version + 1

        return await self.ctx.block_concurrency_while(reload)


async def test_blocks_of_a_reentrant_objects_events_never_overlap(data_dir: str) -> None:
    async with stead.Runtime({"C": Cache}, data_dir=data_dir) as rt:
        c = rt.env.C.get_by_name("c")
        assert sorted(await asyncio.gather(c.refresh(), c.refresh(), c.refresh())) == [1, 2, 3]


class BlocksThenCalls(stead.DurableObject):
    reentrant = True
    second_started: ClassVar[asyncio.Event]

    async def first(self) -> str:  # holds the gate, then calls T
        async def inside() -> str:
            await asyncio.sleep(0.02)
            return str(await self.env.WAITS_FOR_BLOCK.get_by_name("t").y())

        return await self.ctx.block_concurrency_while(inside)

    async def second(self) -> str:  # running before first's block; its own waits for it
        BlocksThenCalls.second_started.set()
        await asyncio.sleep(0.01)
        return await self.ctx.block_concurrency_while(lambda: asyncio.sleep(0, "second"))


class WaitsForBlock(stead.DurableObject):
    async def x(self) -> str:  # T's turn waits for second's block
        return str(await self.env.BLOCKS_THEN_CALLS.get_by_name("r").second())

    def y(self) -> str:
        return "y"


async def test_a_block_waiting_for_another_events_block_is_in_the_waits_for_graph(
    data_dir: str,
) -> None:
    # first's block calls T, whose turn waits for second, whose block waits for
    # first's: a cycle, DeadlockError instead of a hang.
    BlocksThenCalls.second_started = asyncio.Event()
    bindings = {"BLOCKS_THEN_CALLS": BlocksThenCalls, "WAITS_FOR_BLOCK": WaitsForBlock}
    async with stead.Runtime(bindings, data_dir=data_dir) as rt:
        r = rt.env.BLOCKS_THEN_CALLS.get_by_name("r")
        x = asyncio.ensure_future(rt.env.WAITS_FOR_BLOCK.get_by_name("t").x())
        await asyncio.wait_for(BlocksThenCalls.second_started.wait(), 5)
        first = asyncio.ensure_future(r.first())
        results = await asyncio.wait_for(asyncio.gather(first, x, return_exceptions=True), 5)
        assert isinstance(results[0], stead.DeadlockError)
        assert results[1] == "second"


class WarmsUp(stead.DurableObject):
    def __init__(self, ctx: stead.ObjectContext, env: Any) -> None:
        super().__init__(ctx, env)
        ctx.wait_until(self._warm_up())

    async def _warm_up(self) -> None:
        await asyncio.sleep(0.01)
        self.ctx.storage.put("warmed", self.ctx.storage.get("warmed", 0) + 1)

    def hello(self) -> str:
        return "hello"

    def warmed(self) -> int:
        warmed: int = self.ctx.storage.get("warmed", 0)
        return warmed


async def test_wait_until_works_in_the_constructor(data_dir: str) -> None:
    async with stead.Runtime({"W": WarmsUp}, data_dir=data_dir) as rt:
        assert await rt.env.W.get_by_name("w").hello() == "hello"
    async with stead.Runtime({"W": WarmsUp}, data_dir=data_dir) as rt:
        assert await rt.env.W.get_by_name("w").warmed() == 1


# -- sixth probe: call backs and the output gate, blocks run outside events ----------


class Shipper(stead.DurableObject):
    """C: records, when it runs, whether B's write behind the chain was durable."""

    seen: ClassVar[list[bool]] = []

    def ship(self, item: str) -> None:
        rt = Shipper.runtime
        b_key = rt.env.B.get_by_name("b").id.storage_key
        storage = rt.dispatcher.hosts[b_key].storage
        Shipper.seen.append(not storage.has_pending and storage.last_seq <= rt.engine.durable_seq())

    runtime: ClassVar[Any] = None


class Orders(stead.DurableObject):
    """A: orders through B, which calls back A.confirm, which ships through C."""

    async def order(self) -> str:
        return str(await self.env.B.get_by_name("b").reserve())

    async def confirm(self, item: str) -> str:
        await self.env.C.get_by_name("c").ship(item)
        return "confirmed"


class Stock(stead.DurableObject):
    async def reserve(self) -> str:
        self.ctx.storage.put("reserved", "book")  # the write behind the call back
        return str(await self.env.A.get_by_name("a").confirm("book"))


async def test_a_call_back_passes_its_caller_s_output_gate(data_dir: str) -> None:
    # A -> B -> A (call back) -> C: what A learns from B it may pass on at once,
    # so B's write must be durable before its call back leaves (it was not even
    # committed).
    Shipper.seen = []
    async with stead.Runtime(
        {"A": Orders, "B": Stock, "C": Shipper}, data_dir=data_dir, durability="fsync"
    ) as rt:
        Shipper.runtime = rt
        assert await rt.env.A.get_by_name("a").order() == "confirmed"
    assert Shipper.seen == [True]


class SchemaStore(stead.DurableObject):
    """Work outside events (wait_until) that holds the object in a block."""

    def migrate(self, abort: bool = False) -> None:
        async def migration() -> None:
            self.ctx.storage.put("schema", 2)
            await asyncio.sleep(0.03)
            if abort:
                self.ctx.abort("the migration source is corrupt")

        self.ctx.wait_until(self.ctx.block_concurrency_while(migration))

    def bad_request(self) -> None:
        self.ctx.storage.put("junk", 1)
        self.ctx.abort("invalid request")

    def schema(self) -> Any:
        return self.ctx.storage.get("schema")


class ReentrantSchemaStore(SchemaStore):
    reentrant = True


@pytest.mark.parametrize("binding", ["T", "R"])
async def test_abort_in_a_block_outside_events_drops_its_writes(
    data_dir: str, binding: str
) -> None:
    classes = {"T": SchemaStore, "R": ReentrantSchemaStore}
    async with stead.Runtime(classes, data_dir=data_dir) as rt:
        await rt.namespace(binding).get_by_name("x").migrate(abort=True)
    # The turn-based object's block committed them as the runtime closed.
    async with stead.Runtime(classes, data_dir=data_dir) as rt:
        assert await rt.namespace(binding).get_by_name("x").schema() is None


async def test_a_finished_block_s_writes_survive_the_next_event_s_abort(data_dir: str) -> None:
    # They rode with the next event's batch, which its abort dropped.
    async with stead.Runtime({"T": SchemaStore}, data_dir=data_dir) as rt:
        store = rt.env.T.get_by_name("x")
        await store.migrate()
        await asyncio.sleep(0.01)  # the block holds the object now
        with pytest.raises(stead.RemoteError, match="invalid request"):
            await store.bad_request()  # queued behind the block
        assert await store.schema() == 2


class TimedMigration(stead.DurableObject):
    built: ClassVar[int] = 0

    def __init__(self, ctx: stead.ObjectContext, env: Any) -> None:
        super().__init__(ctx, env)
        TimedMigration.built += 1

    def start(self) -> None:
        async def migrate() -> None:
            n = self.ctx.storage.get("n", 0)
            await asyncio.sleep(0.2)
            self.ctx.storage.put("n", n + 100)

        # A timer: work outside any event and outside wait_until.
        asyncio.get_running_loop().call_later(
            0.01, lambda: asyncio.ensure_future(self.ctx.block_concurrency_while(migrate))
        )

    def incr(self) -> int:
        n: int = self.ctx.storage.get("n", 0) + 1
        self.ctx.storage.put("n", n)
        return n


class ReentrantTimedMigration(TimedMigration):
    reentrant = True


@pytest.mark.parametrize("binding", ["T", "R"])
async def test_an_object_is_not_evicted_while_a_block_outside_events_runs(
    data_dir: str, binding: str
) -> None:
    TimedMigration.built = 0
    classes = {"T": TimedMigration, "R": ReentrantTimedMigration}
    async with stead.Runtime(classes, data_dir=data_dir, idle_timeout=0.03) as rt:
        counter = rt.namespace(binding).get_by_name("x")
        await counter.start()
        await asyncio.sleep(0.1)  # the block runs; the object would be idle by the clock
        assert await counter.incr() == 101  # waited for the block, on the same instance
        assert TimedMigration.built == 1


class TimerMigration(stead.DurableObject):
    """A block started from a plain task (a timer), not from wait_until."""

    def start(self) -> None:
        async def migrate() -> None:
            self.ctx.storage.put("m1", 1)
            await asyncio.sleep(0.2)
            self.ctx.storage.put("m2", 1)

        asyncio.get_running_loop().call_soon(
            lambda: asyncio.ensure_future(self.ctx.block_concurrency_while(migrate))
        )

    def incr(self) -> int:
        n: int = self.ctx.storage.get("n", 0) + 1
        self.ctx.storage.put("n", n)
        return n

    def dump(self) -> dict[str, Any]:
        return dict(self.ctx.storage.list())


class ReentrantTimerMigration(TimerMigration):
    reentrant = True


@pytest.mark.parametrize("binding", ["T", "R"])
async def test_close_waits_for_a_block_run_from_a_plain_task(data_dir: str, binding: str) -> None:
    # close() returned at once: the block's last write was lost, and the calls
    # queued behind it failed after close returned ("the engine is closed").
    classes = {"T": TimerMigration, "R": ReentrantTimerMigration}
    rt = stead.Runtime(classes, data_dir=data_dir)
    await rt.start()
    store = rt.namespace(binding).get_by_name("x")
    await store.start()
    await asyncio.sleep(0.02)  # the block runs
    queued = [asyncio.ensure_future(store.incr()) for _ in range(2)]
    await asyncio.sleep(0.01)
    await asyncio.wait_for(rt.close(grace=2), 5)
    assert sorted(await asyncio.gather(*queued)) == [1, 2]
    async with stead.Runtime(classes, data_dir=data_dir) as reopened:
        stored = await reopened.namespace(binding).get_by_name("x").dump()
    assert stored == {"m1": 1, "m2": 1, "n": 2}
