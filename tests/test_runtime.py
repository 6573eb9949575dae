"""Runtime lifecycle: start/close, env, eviction, residency bounds, the data dir lock."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import pytest

import stead
from tests.test_alarms import eventually

pytestmark = pytest.mark.anyio


class Tracked(stead.DurableObject):
    constructed = 0
    started = 0

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        Tracked.constructed += 1

    async def on_start(self) -> None:
        Tracked.started += 1
        self.greeting = self.ctx.storage.get("greeting", "hello")

    def set_greeting(self, greeting: str) -> None:
        self.ctx.storage.put("greeting", greeting)
        self.greeting = greeting

    def greet(self) -> str:
        return self.greeting

    def var(self, name: str) -> Any:
        return getattr(self.env, name)


@pytest.fixture(autouse=True)
def _reset_counts() -> None:
    Tracked.constructed = Tracked.started = 0


async def test_idle_objects_are_evicted_and_come_back_with_their_state(data_dir: str) -> None:
    async with stead.Runtime({"T": Tracked}, data_dir=data_dir, idle_timeout=0.05) as rt:
        stub = rt.env.T.get_by_name("t")
        await stub.set_greeting("bonjour")
        assert (Tracked.constructed, Tracked.started) == (1, 1)
        for _ in range(200):
            if not rt.dispatcher.hosts:
                break
            await asyncio.sleep(0.01)
        assert not rt.dispatcher.hosts  # evicted
        assert await stub.greet() == "bonjour"  # state intact
        # The constructor and on_start ran again.
        assert (Tracked.constructed, Tracked.started) == (2, 2)


async def test_max_resident_bounds_live_instances(data_dir: str) -> None:
    async with stead.Runtime({"T": Tracked}, data_dir=data_dir, max_resident=10) as rt:
        for i in range(50):
            await rt.env.T.get_by_name(f"o{i}").set_greeting(f"g{i}")
            assert len(rt.dispatcher.hosts) <= 10
        assert await rt.env.T.get_by_name("o0").greet() == "g0"
        gc.collect()
        live = sum(isinstance(o, Tracked) for o in gc.get_objects())
        assert live <= 10


async def test_evicted_instances_are_freed_at_once_not_by_the_cyclic_gc(data_dir: str) -> None:
    # Eviction bounds memory only if an evicted instance is really released:
    # nothing in the runtime may keep it in a reference cycle.
    gc.collect()
    gc.disable()
    try:
        async with stead.Runtime({"T": Tracked}, data_dir=data_dir, max_resident=10) as rt:
            instances = []
            for i in range(50):
                stub = rt.env.T.get_by_name(f"o{i}")
                await stub.set_greeting(f"g{i}")
                host = rt.dispatcher.hosts[stub.id.storage_key]
                instances.append(weakref.ref(host.instance))
                del host
            assert sum(ref() is not None for ref in instances) <= 10
    finally:
        gc.enable()


async def test_an_evicted_instance_refuses_lifecycle_calls(data_dir: str) -> None:
    async with stead.Runtime({"T": Tracked}, data_dir=data_dir, max_resident=1) as rt:
        await rt.env.T.get_by_name("first").set_greeting("hi")
        first = next(iter(rt.dispatcher.hosts.values())).instance
        await rt.env.T.get_by_name("second").set_greeting("hi")  # evicts "first"
        work = asyncio.sleep(0)
        with pytest.raises(stead.StorageError, match="evicted or reset"):
            first.ctx.wait_until(work)
        assert work.cr_frame is None  # closed: no "never awaited" warning either
        assert first.ctx.storage.get("greeting") == "hi"  # its storage still reads
        await first.ctx.storage.sync()  # and its last batch can still be waited for
        assert rt.engine.durable_seq() >= first.ctx.storage.last_seq > 0


async def test_second_runtime_on_a_locked_data_dir_fails_at_once(data_dir: str) -> None:
    async with stead.Runtime({"T": Tracked}, data_dir=data_dir):
        with pytest.raises(stead.DataDirLockedError):
            await asyncio.wait_for(stead.Runtime({"T": Tracked}, data_dir=data_dir).start(), 5)
    async with stead.Runtime({"T": Tracked}, data_dir=data_dir):
        pass  # released on close


async def test_env_exposes_bindings_and_vars(data_dir: str) -> None:
    async with stead.Runtime({"T": Tracked}, data_dir=data_dir, vars={"REGION": "eu"}) as rt:
        assert isinstance(rt.env.T, stead.Namespace)
        assert rt.env.REGION == "eu"
        assert rt.namespace("T") is rt.env.T
        assert await rt.env.T.get_by_name("x").var("REGION") == "eu"
        with pytest.raises(stead.UnknownBindingError):
            rt.namespace("NOPE")
        with pytest.raises(stead.UnknownBindingError):
            _ = rt.env.NOPE
        # Optional vars: the usual attribute idioms work.
        assert getattr(rt.env, "NOPE", "fallback") == "fallback"
        assert hasattr(rt.env, "REGION") and not hasattr(rt.env, "NOPE")


async def test_in_memory_runtime_needs_no_data_dir() -> None:
    runtime = stead.Runtime({"T": Tracked})
    assert not runtime.started and runtime.plugins is None
    async with runtime as rt:
        assert rt.started
        await rt.env.T.get_by_name("m").set_greeting("hi")
        assert await rt.env.T.get_by_name("m").greet() == "hi"


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError):
        stead.Runtime({"T": Tracked}, durability="sometimes")
    with pytest.raises(TypeError):
        stead.Runtime({"T": object})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        stead.Runtime({"T": Tracked}, max_pending=0)


class Lifecycle(stead.DurableObject):
    reentrant = True
    log: list[str] = []

    async def on_start(self) -> None:
        await self.ctx.block_concurrency_while(self._load)

    async def _load(self) -> None:
        Lifecycle.log.append("start-begin")
        await asyncio.sleep(0.02)
        Lifecycle.log.append("start-end")

    async def hello(self) -> str:
        Lifecycle.log.append("hello")
        return "hi"

    def later(self) -> None:
        async def note() -> None:
            await asyncio.sleep(0.01)
            Lifecycle.log.append("background")

        self.ctx.wait_until(note())

    def explode(self) -> None:
        self.ctx.storage.put("dropped", True)
        self.ctx.abort("bad state")

    def dropped(self) -> Any:
        return self.ctx.storage.get("dropped")


async def test_on_start_runs_first_with_input_closed(data_dir: str) -> None:
    Lifecycle.log = []
    async with stead.Runtime({"L": Lifecycle}, data_dir=data_dir) as rt:
        stub = rt.env.L.get_by_name("l")
        assert await asyncio.gather(stub.hello(), stub.hello()) == ["hi", "hi"]
        assert Lifecycle.log == ["start-begin", "start-end", "hello", "hello"]


async def test_wait_until_work_finishes_before_close(data_dir: str) -> None:
    Lifecycle.log = []
    async with stead.Runtime({"L": Lifecycle}, data_dir=data_dir) as rt:
        await rt.env.L.get_by_name("l").later()
    assert Lifecycle.log[-1] == "background"


class Background(stead.DurableObject):
    """Writes from wait_until work: once when it ends, or in a loop while it runs."""

    constructed = 0
    stop: ClassVar[asyncio.Event | None] = None

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        Background.constructed += 1

    def note_later(self) -> None:
        async def note() -> None:
            await asyncio.sleep(0.02)
            self.ctx.storage.put("noted", True)

        self.ctx.wait_until(note())

    def tick_until_stopped(self) -> None:
        async def ticks() -> None:
            assert Background.stop is not None
            for tick in itertools.count():
                self.ctx.storage.put("tick", tick)
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(Background.stop.wait(), 0.01)
                    return

        self.ctx.wait_until(ticks())

    def read(self, key: str) -> Any:
        return self.ctx.storage.get(key)


async def test_writes_of_wait_until_work_are_committed_when_it_ends(data_dir: str) -> None:
    # Not left pending until the object's next event or shutdown (lost in a
    # crash, and the object could never be evicted).
    Background.constructed = 0
    async with stead.Runtime({"B": Background}, data_dir=data_dir, idle_timeout=0.1) as rt:
        stub = rt.env.B.get_by_name("b")
        await stub.note_later()
        key = stub.id.storage_key

        async def committed() -> bool:
            return rt.engine.get(key, b"noted") is not None

        await eventually(committed, timeout=5)
        assert rt.engine.stats()["commits"] == 1  # a batch of its own

        async def evicted() -> bool:
            return not rt.dispatcher.hosts

        await eventually(evicted, timeout=5)
        assert await stub.read("noted") is True
        assert Background.constructed == 2


async def test_writes_of_long_running_background_work_are_committed_as_it_runs(
    data_dir: str,
) -> None:
    Background.stop = asyncio.Event()
    async with stead.Runtime({"B": Background}, data_dir=data_dir, idle_timeout=0.04) as rt:
        stub = rt.env.B.get_by_name("b")
        await stub.tick_until_stopped()
        key = stub.id.storage_key

        async def ticked_twice() -> bool:  # committed by the idle sweep (every 10 ms here)
            return (raw := rt.engine.get(key, b"tick")) is not None and raw != b"\x00"

        await eventually(ticked_twice, timeout=5)
        assert rt.dispatcher.hosts  # still resident: its work still runs
        Background.stop.set()


async def test_abort_resets_the_object_and_drops_its_writes(data_dir: str) -> None:
    async with stead.Runtime({"L": Lifecycle}, data_dir=data_dir) as rt:
        stub = rt.env.L.get_by_name("l")
        with pytest.raises(stead.RemoteError, match="bad state"):
            await stub.explode()
        assert await stub.dropped() is None


class Counter(stead.DurableObject):
    def increment(self) -> int:
        count: int = self.ctx.storage.get("count", 0) + 1
        self.ctx.storage.put("count", count)
        return count


async def test_calls_after_close_raise_runtime_error(data_dir: str) -> None:
    async with stead.Runtime({"C": Counter}, data_dir=data_dir) as rt:
        counter = rt.env.C.get_by_name("a")
        assert await counter.increment() == 1
    with pytest.raises(RuntimeError, match="closed"):
        await counter.increment()  # the instance is gone too, not only the engine


async def test_calls_from_another_event_loop_raise_a_clear_error(data_dir: str) -> None:
    async with stead.Runtime({"C": Counter}, data_dir=data_dir) as rt:
        counter = rt.env.C.get_by_name("a")

        def from_another_thread() -> str:
            try:
                asyncio.run(counter.increment())
            except RuntimeError as error:
                return str(error)
            return "no error"

        assert "run_coroutine_threadsafe" in await asyncio.to_thread(from_another_thread)
        # What the message recommends works.
        loop = asyncio.get_running_loop()

        def the_documented_way() -> int:
            return asyncio.run_coroutine_threadsafe(counter.increment(), loop).result(timeout=10)

        assert await asyncio.to_thread(the_documented_way) == 1


class Tally(stead.DurableObject):
    """Counts its turns in storage and in memory: the two must agree whatever callers do."""

    executed: ClassVar[dict[str, int]] = {}

    def _count(self) -> int:
        count: int = self.ctx.storage.get("count", 0) + 1
        self.ctx.storage.put("count", count)
        name = str(self.ctx.id.name)
        Tally.executed[name] = Tally.executed.get(name, 0) + 1
        return count

    def plain(self) -> int:
        return self._count()

    async def quick(self) -> int:
        return self._count()

    async def suspending(self) -> int:
        await asyncio.sleep(random.random() * 0.001)
        return self._count()

    def count(self) -> int:
        return int(self.ctx.storage.get("count", 0))


async def _every_turn_stored_once(
    cls: type[Tally],
    data_dir: str,
    names: list[str],
    call: Callable[[stead.Stub], Awaitable[None]],
    rng: random.Random,
    calls_per_round: int,
    max_resident: int,
) -> None:
    """Three rounds of random ``call``s (evicting in between), then: every turn that
    ran is stored exactly once, before and after a restart, and nothing is stuck."""
    async with stead.Runtime(
        {"T": cls}, data_dir=data_dir, idle_timeout=0.005, max_resident=max_resident
    ) as rt:
        stubs = [rt.env.T.get_by_name(name) for name in names]
        for _ in range(3):
            await asyncio.gather(*(call(rng.choice(stubs)) for _ in range(calls_per_round)))
            await asyncio.sleep(0.02)  # let the sweeper evict
        counts = [await stub.count() for stub in stubs]
        assert counts == [Tally.executed.get(name, 0) for name in names]
        assert rt.stats()["mailbox_depth"] == 0 and rt.stats()["running_events"] == 0
    async with stead.Runtime({"T": cls}, data_dir=data_dir) as rt:
        assert [await rt.env.T.get_by_name(name).count() for name in names] == counts


class ReentrantTally(Tally):
    reentrant = True  # its turns interleave at awaits; each count is still atomic


@pytest.mark.parametrize("cls", [Tally, ReentrantTally])
async def test_random_calls_timeouts_and_evictions_lose_and_duplicate_no_turn(
    data_dir: str, cls: type[Tally]
) -> None:
    # 1,500 calls of three handler kinds over 20 objects, a third of them with a
    # timeout short enough to give up mid-turn or while queued, while instances are
    # evicted all the time (idle_timeout 5 ms, at most 5 resident): every turn that
    # ran is stored exactly once, before and after a restart, and nothing is stuck.
    Tally.executed = {}
    rng = random.Random(11)
    names = [f"t{i}" for i in range(20)]

    async def call(stub: stead.Stub) -> None:
        method = getattr(stub, rng.choice(["plain", "quick", "suspending"]))
        if rng.random() < 0.33:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(method(), rng.random() * 0.003)
        else:
            await method()

    await _every_turn_stored_once(
        cls, data_dir, names, call, rng, calls_per_round=500, max_resident=5
    )


async def test_a_new_instance_is_not_evicted_by_its_own_arrival(data_dir: str) -> None:
    # max_resident 1 with the resident object busy: the bound is exceeded for a
    # while rather than evicting the instance just built for the incoming call.
    async with stead.Runtime({"T": Tally}, data_dir=data_dir, max_resident=1) as rt:
        busy = asyncio.ensure_future(rt.env.T.get_by_name("busy").suspending())
        await asyncio.sleep(0)  # its turn is running
        assert await rt.env.T.get_by_name("new").plain() == 1
        assert await busy == 1


class Relay(Tally):
    """Starts slowly, calls other objects mid-turn, and sometimes aborts."""

    async def on_start(self) -> None:
        await asyncio.sleep(0)

    async def relay(self, other: str) -> int:
        await self.env.T.get_by_name(other).quick()
        return self._count()

    async def abort_after_writing(self) -> None:
        self.ctx.storage.put("count", -1000)  # dropped with the instance
        await asyncio.sleep(0)
        self.ctx.abort("on purpose")


async def test_random_chains_aborts_and_restarts_lose_and_duplicate_no_turn(
    data_dir: str,
) -> None:
    Tally.executed = {}
    rng = random.Random(5)
    names = [f"r{i}" for i in range(8)]

    async def call(stub: stead.Stub) -> None:
        kind = rng.choice(["plain", "suspending", "relay", "abort"])
        if kind == "relay":
            coroutine = stub.relay(rng.choice(names))
        elif kind == "abort":
            coroutine = stub.abort_after_writing()
        else:
            coroutine = getattr(stub, kind)()
        timeout = rng.choice([None, rng.random() * 0.003])
        with contextlib.suppress(asyncio.TimeoutError, stead.DeadlockError, stead.RemoteError):
            await asyncio.wait_for(coroutine, timeout)

    await _every_turn_stored_once(
        Relay, data_dir, names, call, rng, calls_per_round=300, max_resident=4
    )


class Stuck(stead.DurableObject):
    """Handlers that never finish on their own."""

    never: ClassVar[asyncio.Event]
    alarm_ran: ClassVar[asyncio.Event]

    async def hang(self) -> None:
        self.ctx.storage.put("started", True)
        await Stuck.never.wait()

    def linger(self) -> None:
        self.ctx.wait_until(Stuck.never.wait())

    def arm(self) -> None:
        self.ctx.storage.set_alarm(time.time())

    async def alarm(self, info: stead.AlarmInfo) -> None:
        Stuck.alarm_ran.set()
        await Stuck.never.wait()

    def started(self) -> bool:
        return bool(self.ctx.storage.get("started", False))


async def test_close_cancels_what_still_runs_after_its_grace(
    data_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    Stuck.never, Stuck.alarm_ran = asyncio.Event(), asyncio.Event()
    rt = await stead.Runtime({"S": Stuck}, data_dir=data_dir).start()
    stuck = rt.env.S.get_by_name("s")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(stuck.hang(), timeout=0.01)
    await rt.env.S.get_by_name("w").linger()
    await rt.env.S.get_by_name("a").arm()
    await asyncio.wait_for(Stuck.alarm_ran.wait(), timeout=10)
    started = time.monotonic()
    await asyncio.wait_for(rt.close(grace=0.2), timeout=10)
    assert 0.2 <= time.monotonic() - started < 5
    assert "cancelling" in caplog.text
    Stuck.alarm_ran = asyncio.Event()
    async with stead.Runtime({"S": Stuck}, data_dir=data_dir) as rt:
        assert await rt.env.S.get_by_name("s").started()  # written before the await
        # Not acknowledged, so the alarm runs again.
        await asyncio.wait_for(Stuck.alarm_ran.wait(), timeout=10)
        Stuck.never.set()


class Shutdown(stead.DurableObject):
    async def slow(self) -> str:
        await asyncio.sleep(0.05)
        self.ctx.storage.put("slow", True)
        return "slow"

    def put(self, key: str) -> str:  # cannot suspend: runs in its caller's task
        self.ctx.storage.put(key, True)
        return key

    async def stuck(self) -> None:
        await asyncio.Event().wait()

    def keys(self) -> list[str]:
        return sorted(self.ctx.storage.list())


async def test_a_graceful_close_gives_callers_in_flight_their_results(data_dir: str) -> None:
    # Their writes are durable when close() returns: none of them may hear StorageError.
    rt = await stead.Runtime({"S": Shutdown}, data_dir=data_dir).start()
    stub = rt.env.S.get_by_name("s")
    slow = asyncio.ensure_future(stub.slow())
    await asyncio.sleep(0.01)
    queued = [asyncio.ensure_future(stub.put(f"k{i}")) for i in range(3)]
    await asyncio.sleep(0.01)  # slow() running, the puts queued behind it
    await asyncio.wait_for(rt.close(), timeout=10)
    outcomes = await asyncio.gather(slow, *queued, return_exceptions=True)
    async with stead.Runtime({"S": Shutdown}, data_dir=data_dir) as rt:
        stored = await rt.env.S.get_by_name("s").keys()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, RuntimeError), outcome  # closed before its turn ran
        else:
            assert outcome in stored, (outcome, stored)
    assert outcomes[0] == "slow"


async def test_close_at_once_answers_a_call_whose_event_has_not_started(data_dir: str) -> None:
    rt = await stead.Runtime({"S": Shutdown}, data_dir=data_dir).start()
    stub = rt.env.S.get_by_name("s")

    async def late_caller() -> str:
        await asyncio.sleep(0)  # arrives as the shutdown begins
        return await stub.slow()

    closing = asyncio.ensure_future(rt.close(grace=0))
    caller = asyncio.ensure_future(late_caller())
    await asyncio.wait_for(closing, timeout=5)
    outcome = (await asyncio.wait_for(asyncio.gather(caller, return_exceptions=True), 5))[0]
    assert outcome == "slow" or isinstance(outcome, RuntimeError), outcome


async def test_a_caller_of_an_event_cancelled_at_close_gets_runtime_error(data_dir: str) -> None:
    # The caller cancelled nothing: it must not end up cancelled itself.
    rt = await stead.Runtime({"S": Shutdown}, data_dir=data_dir).start()
    call = asyncio.ensure_future(rt.env.S.get_by_name("s").stuck())
    await asyncio.sleep(0.01)
    await asyncio.wait_for(rt.close(grace=0.05), timeout=5)
    with pytest.raises(RuntimeError, match="closed before the event finished"):
        await call


async def test_concurrent_closes_share_one_shutdown(data_dir: str) -> None:
    rt = await stead.Runtime({"S": Shutdown}, data_dir=data_dir).start()
    await rt.env.S.get_by_name("s").put("k")
    assert await asyncio.gather(rt.close(), rt.close()) == [None, None]
    assert not rt.started
    async with stead.Runtime({"S": Shutdown}, data_dir=data_dir) as rt:  # the lock is released
        assert await rt.env.S.get_by_name("s").keys() == ["k"]


class AbortsInBackground(stead.DurableObject):
    constructed = 0

    def __init__(self, ctx: stead.ObjectContext, env: Any) -> None:
        super().__init__(ctx, env)
        AbortsInBackground.constructed += 1

    def start(self) -> None:
        self.ctx.wait_until(self._work())

    async def _work(self) -> None:
        self.ctx.storage.put("half_done", True)
        await asyncio.sleep(0)
        self.ctx.abort("changed my mind")

    def half_done(self) -> Any:
        return self.ctx.storage.get("half_done")


async def test_abort_from_wait_until_work_resets_the_object(data_dir: str) -> None:
    AbortsInBackground.constructed = 0
    async with stead.Runtime({"A": AbortsInBackground}, data_dir=data_dir) as rt:
        stub = rt.env.A.get_by_name("a")
        await stub.start()

        async def reset() -> bool:
            return stub.id.storage_key not in rt.dispatcher.hosts

        await eventually(reset)
        assert await stub.half_done() is None  # the work's writes were dropped
        assert AbortsInBackground.constructed == 2  # a fresh instance


async def test_close_refuses_a_negative_grace(data_dir: str) -> None:
    async with stead.Runtime({"S": Stuck}, data_dir=data_dir) as rt:
        with pytest.raises(ValueError, match="grace"):
            await rt.close(grace=-1)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"durability": "sometimes"}, ValueError),
        ({"idle_timeout": 0}, ValueError),
        ({"idle_timeout": float("nan")}, ValueError),
        ({"max_resident": 0}, ValueError),
        ({"max_pending": 0}, ValueError),
        ({"alarm_retry_limit": -1}, ValueError),
        ({"alarm_retry_base": -1.0}, ValueError),
        ({"alarm_retry_base": float("inf")}, ValueError),
        ({"max_value_bytes": 0}, ValueError),
        ({"max_value_bytes": 3 << 30}, ValueError),
        ({"max_value_bytes": 1.5}, TypeError),
        ({"idle_timeout": "10"}, TypeError),
        ({"max_pending": "x"}, TypeError),
        ({"alarm_retry_limit": 1.5}, TypeError),
        ({"max_resident": 2.0}, TypeError),
        ({"vars": {"REGION": 1}}, TypeError),
    ],
)
def test_bad_options_are_refused_by_name_when_the_runtime_is_built(
    options: dict[str, Any], error: type[Exception]
) -> None:
    (name,) = options
    with pytest.raises(error, match=name):
        stead.Runtime({"C": Counter}, **options)


class Blocking(stead.DurableObject):
    """Reentrant, with nested block_concurrency_while blocks, and blocks of two events."""

    reentrant = True
    log: ClassVar[list[str]] = []

    async def nested(self) -> None:
        async def inner() -> None:
            await asyncio.sleep(0.01)

        async def outer() -> None:
            await self.ctx.block_concurrency_while(inner)
            Blocking.log.append("inner-done")
            await asyncio.sleep(0.1)  # still inside the outer block
            Blocking.log.append("outer-end")

        await self.ctx.block_concurrency_while(outer)

    async def block(self, tag: str, seconds: float) -> None:
        async def hold() -> None:
            Blocking.log.append(f"{tag}-in")
            await asyncio.sleep(seconds)
            Blocking.log.append(f"{tag}-out")

        await asyncio.sleep(0.01)
        await self.ctx.block_concurrency_while(hold)

    def ping(self) -> None:
        Blocking.log.append("ping")


async def test_the_input_stays_closed_until_the_last_open_block_ends(data_dir: str) -> None:
    async with stead.Runtime({"R": Blocking}, data_dir=data_dir) as rt:
        r = rt.env.R.get_by_name("r")
        Blocking.log = []
        nested = asyncio.ensure_future(r.nested())
        await asyncio.sleep(0.05)  # the inner block has ended, the outer has not
        await r.ping()
        await nested
        assert Blocking.log == ["inner-done", "outer-end", "ping"]
        Blocking.log = []
        # Two events, both running, each open a block: B's waits for A's to end
        # (blocks never overlap), and the ping, which came later, for B's.
        long, short = (
            asyncio.ensure_future(r.block("A", 0.3)),
            asyncio.ensure_future(r.block("B", 0.05)),
        )
        await asyncio.sleep(0.15)
        await r.ping()
        await asyncio.gather(long, short)
        assert Blocking.log == ["A-in", "A-out", "B-in", "B-out", "ping"]


class PlainHooks(stead.DurableObject):
    """fetch and on_start written as plain methods, as RPC methods may be."""

    def on_start(self) -> None:
        self.loaded = self.ctx.storage.get("orders", 0)

    def fetch(self, request: stead.Request) -> stead.Response:
        self.ctx.storage.put("orders", self.ctx.storage.get("orders", 0) + 1)
        return stead.Response(f"order placed after {self.loaded} loaded")

    def orders(self) -> int:
        orders: int = self.ctx.storage.get("orders", 0)
        return orders


async def test_fetch_and_on_start_may_be_plain_methods(data_dir: str) -> None:
    async with stead.Runtime({"P": PlainHooks}, data_dir=data_dir) as rt:
        shop = rt.env.P.get_by_name("shop")
        response = await shop.fetch("/order", method="POST")
        assert (response.status, response.text()) == (200, "order placed after 0 loaded")
        assert await shop.orders() == 1


@pytest.mark.parametrize(
    ("objects", "options", "message"),
    [
        (Counter, {}, r"objects must be a mapping such as \{'COUNTER': Counter\}, not the class"),
        ([Counter], {}, "objects must be a mapping of binding names .*, not list"),
        ({"C": Counter}, {"vars": ["REGION"]}, "vars must be a mapping .*, not list"),
    ],
)
def test_objects_and_vars_that_are_not_mappings_are_a_type_error(
    objects: Any, options: dict[str, Any], message: str
) -> None:
    # Runtime(Counter) used to fail with "type object 'Counter' has no attribute 'items'".
    with pytest.raises(TypeError, match=message):
        stead.Runtime(objects, **options)


@pytest.mark.parametrize("name", ["_namespaces", "_bind", ""])
def test_a_var_name_that_is_empty_or_starts_with_an_underscore_is_refused(name: str) -> None:
    # env keeps its own state under "_" names: vars={"_bind": "x"} broke the start.
    with pytest.raises(ValueError, match="is reserved"):
        stead.Runtime({"C": Counter}, vars={name: "x"})


async def test_vars_added_before_start_are_checked_at_start() -> None:
    rt = stead.Runtime({"C": Counter})
    rt.vars["_namespaces"] = "x"  # as `stead serve --var` adds them
    with pytest.raises(ValueError, match="is reserved"):
        await rt.start()


async def test_a_data_dir_that_lost_its_secret_is_refused(data_dir: str) -> None:
    async with stead.Runtime({"C": Counter}, data_dir=data_dir) as rt:
        await rt.env.C.get_by_name("alice").increment()
    os.remove(f"{data_dir}/secret")
    # A new secret would give "alice" a new id: a new, empty object.
    with pytest.raises(stead.CorruptionError, match="secret is missing, but the data dir holds"):
        await stead.Runtime({"C": Counter}, data_dir=data_dir).start()
    assert "secret" not in os.listdir(data_dir)


def test_a_var_with_a_binding_s_name_is_refused() -> None:
    # env.C used to be the binding, the var "C" silently unreachable.
    with pytest.raises(ValueError, match="'C' is both a binding and a var"):
        stead.Runtime({"C": Counter}, vars={"C": "x"})


async def test_close_during_start_closes_what_start_opens(data_dir: str) -> None:
    rt = stead.Runtime({"S": Shutdown}, data_dir=data_dir)
    starting = asyncio.ensure_future(rt.start())
    await asyncio.sleep(0)  # start() is opening the engine in a thread
    await asyncio.wait_for(rt.close(), 5)
    await starting
    assert not rt.started
    async with stead.Runtime({"S": Shutdown}, data_dir=data_dir) as reopened:  # lock released
        assert await reopened.env.S.get_by_name("s").keys() == []


async def test_a_second_close_with_a_shorter_grace_brings_the_deadline_forward(
    data_dir: str,
) -> None:
    rt = await stead.Runtime({"S": Shutdown}, data_dir=data_dir).start()
    stuck = asyncio.ensure_future(rt.env.S.get_by_name("s").stuck())
    await asyncio.sleep(0.01)
    started = time.monotonic()
    patient = asyncio.ensure_future(rt.close(grace=5))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(rt.close(grace=0), timeout=2)  # not the first close's 5 s
    await patient
    assert time.monotonic() - started < 2
    with pytest.raises(RuntimeError, match="closed before the event finished"):
        await stuck


async def test_close_from_another_event_loop_is_refused_and_leaves_the_runtime_as_it_was(
    data_dir: str,
) -> None:
    rt = await stead.Runtime({"C": Counter}, data_dir=data_dir).start()
    assert await rt.env.C.get_by_name("a").increment() == 1

    def teardown_in_a_thread() -> str:  # a sync test teardown, say
        try:
            asyncio.run(rt.close())
        except RuntimeError as error:
            return str(error)
        return "no error"

    assert "run_coroutine_threadsafe" in await asyncio.to_thread(teardown_in_a_thread)
    assert rt.started and not rt.closing
    assert await rt.env.C.get_by_name("a").increment() == 2  # still serving
    await asyncio.wait_for(rt.close(), 5)  # closes on its own loop
    assert not rt.started
    async with stead.Runtime({"C": Counter}, data_dir=data_dir) as reopened:  # lock released
        assert await reopened.env.C.get_by_name("a").increment() == 3


class Admin(stead.DurableObject):
    """Shuts its own runtime down from an RPC method, or from its wait_until work."""

    runtime: ClassVar[stead.Runtime]

    async def shutdown(self) -> str:
        await self.runtime.close(grace=30)
        self.ctx.storage.put("said", "bye")  # the event goes on, and is drained
        return "closing"

    def shutdown_in_background(self) -> None:
        self.ctx.wait_until(self.runtime.close(grace=30))

    def said(self) -> Any:
        return self.ctx.storage.get("said")


async def test_close_from_inside_an_event_starts_the_shutdown_and_returns(data_dir: str) -> None:
    # The shutdown waits for the event that asked for it: close() cannot wait for
    # the shutdown there (it waited out its whole grace, then cancelled its caller).
    rt = Admin.runtime = await stead.Runtime({"A": Admin}, data_dir=data_dir).start()
    assert await asyncio.wait_for(rt.env.A.get_by_name("a").shutdown(), 5) == "closing"
    assert rt.closing
    await asyncio.wait_for(rt.close(), 5)  # the same shutdown, not 30 s
    assert not rt.started
    async with stead.Runtime({"A": Admin}, data_dir=data_dir) as reopened:
        assert await reopened.env.A.get_by_name("a").said() == "bye"


async def test_close_from_wait_until_work_starts_the_shutdown_and_returns(data_dir: str) -> None:
    rt = Admin.runtime = await stead.Runtime({"A": Admin}, data_dir=data_dir).start()
    await rt.env.A.get_by_name("a").shutdown_in_background()
    await asyncio.wait_for(rt.close(), 5)  # not the 30 s grace
    assert not rt.started
