"""The Agent layer: state, on_state_update, schedules (DESIGN §3 Agent layer)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import msgspec
import pytest

import stead
import stead.storage
from tests.test_alarms import eventually

pytestmark = pytest.mark.anyio


class Assistant(stead.Agent):
    initial_state = {"messages": [], "mood": "calm"}
    runs: list[tuple[str, Any, float]] = []
    updates: list[Any] = []

    def say(self, text: str) -> dict[str, Any]:
        state = self.state
        self.set_state({**state, "messages": [*state["messages"], text]})
        return dict(self.state)

    def current(self) -> Any:
        return self.state

    def on_state_update(self, state: Any, source: str) -> None:
        Assistant.updates.append((state["messages"][-1], source))

    def plan(self, specs: list[list[Any]]) -> list[str]:
        ids = []
        for kind, value, payload in specs:
            when: Any = value
            if kind == "date":
                when = datetime.fromtimestamp(time.time() + value, tz=timezone.utc)
            ids.append(self.schedule(when, "tick", payload).id)
        return ids

    async def tick(self, payload: Any) -> None:
        Assistant.runs.append((self.ctx.id.name or "", payload, time.time()))

    def schedules(self) -> list[stead.Schedule]:
        return self.get_schedules()

    def cancel(self, schedule_id: str) -> bool:
        return self.cancel_schedule(schedule_id)

    def one(self, schedule_id: str) -> stead.Schedule | None:
        return self.get_schedule(schedule_id)

    async def on_request(self, request: stead.Request) -> stead.Response:
        return stead.Response.json({"path": request.path, "state": self.state})


@pytest.fixture(autouse=True)
def _clear() -> None:
    Assistant.runs, Assistant.updates = [], []


async def test_state_persists_across_restart_and_eviction(data_dir: str) -> None:
    async with stead.Runtime({"A": Assistant}, data_dir=data_dir, idle_timeout=0.05) as rt:
        agent = rt.env.A.get_by_name("a")
        assert await agent.current() == {"messages": [], "mood": "calm"}
        await agent.say("hello")

        async def updated() -> bool:
            return Assistant.updates == [("hello", "server")]

        await eventually(updated)  # once durable, after the turn

        async def evicted() -> bool:
            return not rt.dispatcher.hosts

        await eventually(evicted)
        assert (await agent.current())["messages"] == ["hello"]
    async with stead.Runtime({"A": Assistant}, data_dir=data_dir) as rt:
        assert await rt.env.A.get_by_name("a").say("again") == {
            "messages": ["hello", "again"],
            "mood": "calm",
        }
        # Another agent starts from its own copy of initial_state.
        assert (await rt.env.A.get_by_name("b").current())["messages"] == []


async def test_delayed_dated_and_cron_schedules_fire_in_time_order(data_dir: str) -> None:
    async with stead.Runtime({"A": Assistant}, data_dir=data_dir) as rt:
        agent = rt.env.A.get_by_name("a")
        ids = await agent.plan(
            [["delay", 0.3, "third"], ["date", 0.1, "first"], ["delay", 0.2, "second"]]
        )
        cron_id = (await agent.plan([["cron", "* * * * * *", "every-second"]]))[0]
        kinds = {s.id: s.kind for s in await agent.schedules()}
        assert kinds == {ids[0]: "delayed", ids[1]: "scheduled", ids[2]: "delayed", cron_id: "cron"}

        async def done() -> bool:
            return [p for _, p, _ in Assistant.runs if p != "every-second"] == [
                "first",
                "second",
                "third",
            ]

        await eventually(done)
        times = [t for _, _, t in Assistant.runs]
        assert times == sorted(times)
        left = await agent.schedules()
        assert [s.id for s in left] == [cron_id]  # one-shot schedules are gone, cron stays

        async def cron_ran() -> bool:
            return any(p == "every-second" for _, p, _ in Assistant.runs)

        await eventually(cron_ran, timeout=3)
        assert (await agent.one(cron_id)).time > time.time()


async def test_cancel_schedule_prevents_a_run(data_dir: str) -> None:
    async with stead.Runtime({"A": Assistant}, data_dir=data_dir) as rt:
        agent = rt.env.A.get_by_name("a")
        cancelled, _kept = await agent.plan([["delay", 0.1, "no"], ["delay", 0.2, "yes"]])
        assert await agent.cancel(cancelled) is True
        assert await agent.cancel(cancelled) is False
        assert await agent.one(cancelled) is None

        async def kept_ran() -> bool:
            return [p for _, p, _ in Assistant.runs] == ["yes"]

        await eventually(kept_ran)
        await asyncio.sleep(0.1)
        assert [p for _, p, _ in Assistant.runs] == ["yes"]


@pytest.mark.slow
async def test_cron_that_missed_runs_during_downtime_fires_once(data_dir: str) -> None:
    async with stead.Runtime({"A": Assistant}, data_dir=data_dir) as rt:
        await rt.env.A.get_by_name("a").plan([["cron", "* * * * * *", "tick"]])
    await asyncio.sleep(3.5)  # down for three scheduled runs
    started = time.time()
    async with stead.Runtime({"A": Assistant}, data_dir=data_dir):

        async def ran() -> bool:
            return len(Assistant.runs) >= 1

        await eventually(ran)
        await asyncio.sleep(1.0 - (time.time() - started))
        # A catch-up storm would run the three missed times back to back, plus
        # the regular one: at least 4. One catch-up plus at most one regular run.
        first_second = [t for _, _, t in Assistant.runs if t < started + 1.0]
        assert 1 <= len(first_second) <= 2
        assert Assistant.runs[0][2] - started < 0.5  # the catch-up ran at startup


async def test_on_request_serves_fetch(data_dir: str) -> None:
    async with stead.Runtime({"A": Assistant}, data_dir=data_dir) as rt:
        response = await rt.env.A.get_by_name("a").fetch("/hello")
        assert response.json() == {"path": "/hello", "state": {"messages": [], "mood": "calm"}}


async def test_bad_schedules_are_refused(data_dir: str) -> None:
    class Bad(stead.Agent):
        def try_schedule(self, when: Any, callback: str) -> None:
            self.schedule(when, callback)

    async with stead.Runtime({"B": Bad}, data_dir=data_dir) as rt:
        agent = rt.env.B.get_by_name("b")
        with pytest.raises(ValueError):
            await agent.try_schedule(1, "no_such_method")
        with pytest.raises(ValueError):
            await agent.try_schedule("not a cron", "try_schedule")
        with pytest.raises(TypeError):
            await agent.try_schedule([1], "try_schedule")
        _ = timedelta


class Planner(stead.Agent):
    """Schedules and cancels at random; records every run in its state."""

    initial_state = {"runs": []}

    def add(self, delay: float, payload: int) -> str:
        return self.schedule(delay, "tick", payload).id

    def cancel(self, schedule_id: str) -> bool:
        return self.cancel_schedule(schedule_id)

    def pending(self) -> list[int]:
        return sorted(schedule.payload for schedule in self.get_schedules())

    async def tick(self, payload: int) -> None:
        self.set_state({"runs": [*self.state["runs"], [payload, time.time()]]})

    def runs(self) -> list[list[float]]:
        return list(self.state["runs"])


async def test_random_schedules_and_cancels_run_exactly_the_survivors(data_dir: str) -> None:
    # 60 delayed schedules (0.05-0.4 s) on 3 agents, a third cancelled at random
    # (a cancel may lose the race only to its schedule having run),
    # with an eviction and a restart in between: every surviving schedule runs
    # once, never before its time; cancelled ones never run.
    rng = random.Random(23)
    due: dict[int, float] = {}
    survivors: dict[str, set[int]] = {f"a{i}": set() for i in range(3)}
    async with stead.Runtime({"A": Planner}, data_dir=data_dir, idle_timeout=0.05) as rt:
        ids: list[tuple[str, int, str]] = []
        for payload in range(60):
            name = rng.choice(list(survivors))
            delay = 0.05 + rng.random() * 0.35
            due[payload] = time.time() + delay
            ids.append((name, payload, await rt.env.A.get_by_name(name).add(delay, payload)))
            survivors[name].add(payload)
        for name, payload, schedule_id in rng.sample(ids, 20):
            agent = rt.env.A.get_by_name(name)
            if await agent.cancel(schedule_id):
                survivors[name].discard(payload)
            else:  # only because it already ran (a slow machine got there late)
                assert payload in [int(ran) for ran, _ in await agent.runs()]
        for name, payloads in survivors.items():
            pending = await rt.env.A.get_by_name(name).pending()
            assert set(pending) <= payloads  # some may have run already
    async with stead.Runtime({"A": Planner}, data_dir=data_dir) as rt:

        async def all_ran() -> bool:
            for name, payloads in survivors.items():
                if len(await rt.env.A.get_by_name(name).runs()) < len(payloads):
                    return False
            return True

        await eventually(all_ran, timeout=10)
        await asyncio.sleep(0.1)
        for name, payloads in survivors.items():
            runs = await rt.env.A.get_by_name(name).runs()
            assert sorted(int(payload) for payload, _ in runs) == sorted(payloads)
            assert all(ran >= due[int(payload)] - 0.002 for payload, ran in runs)
            assert await rt.env.A.get_by_name(name).pending() == []


class Unlucky(stead.Agent):
    """One callback always raises, the other is healthy."""

    runs: list[tuple[str, float]] = []

    def plan(self, bad_in: float, good_in: float) -> None:
        self.schedule(bad_in, "bad")
        self.schedule(good_in, "good")

    def plan_cron(self) -> str:
        return self.schedule("* * * * * *", "bad").id

    async def bad(self, payload: Any) -> None:
        Unlucky.runs.append(("bad", time.time()))
        raise RuntimeError("boom")

    async def good(self, payload: Any) -> None:
        Unlucky.runs.append(("good", time.time()))

    def schedules(self) -> list[stead.Schedule]:
        return self.get_schedules()


async def test_a_failing_schedule_is_retried_on_its_own_and_never_stops_the_others(
    data_dir: str,
) -> None:
    # The failing schedule once took the object's one alarm with it: its
    # backoff held back the healthy schedule, and after the retry limit the
    # alarm was deleted, so the healthy schedule never ran.
    Unlucky.runs = []
    async with stead.Runtime(
        {"A": Unlucky}, data_dir=data_dir, alarm_retry_base=0.5, alarm_retry_limit=2
    ) as rt:
        agent = rt.env.A.get_by_name("a")
        planned = time.time()
        await agent.plan(0.05, 0.15)

        async def good_ran() -> bool:
            return any(name == "good" for name, _ in Unlucky.runs)

        await eventually(good_ran, timeout=3)
        # On time, not after the first retry of "bad" (0.375 s or more later).
        assert [name for name, _ in Unlucky.runs] == ["bad", "good"]
        [retrying] = await agent.schedules()
        assert (retrying.callback, retrying.retry_count) == ("bad", 1)
        assert retrying.time >= planned + 0.05 + 0.5 * 0.75

        async def bad_gave_up() -> bool:
            return not await agent.schedules()

        await eventually(bad_gave_up, timeout=5)
        await asyncio.sleep(0.3)  # nothing more comes
        assert [name for name, _ in Unlucky.runs] == ["bad", "good", "bad", "bad"]
        bad_times = [at for name, at in Unlucky.runs if name == "bad"]
        assert bad_times[2] - bad_times[1] >= 2 * 0.5 * 0.75  # backoff doubles


async def test_a_failing_cron_schedule_moves_to_its_next_time_after_its_retries(
    data_dir: str,
) -> None:
    Unlucky.runs = []
    async with stead.Runtime(
        {"A": Unlucky}, data_dir=data_dir, alarm_retry_base=0.02, alarm_retry_limit=1
    ) as rt:
        agent = rt.env.A.get_by_name("a")
        cron_id = await agent.plan_cron()

        async def three_runs() -> bool:
            return len(Unlucky.runs) >= 3

        await eventually(three_runs, timeout=5)  # a run, its one retry, the next second's run
        times = [at for _, at in Unlucky.runs]
        assert times[1] - times[0] < 0.5 <= times[2] - times[0]
        [cron] = await agent.schedules()
        assert cron.id == cron_id and cron.kind == "cron"


class Aborter(stead.Agent):
    """A callback that aborts the object on its first run."""

    runs: list[tuple[int, Any]] = []

    def plan(self) -> None:
        self.schedule(0, "once")

    async def once(self, payload: Any) -> None:
        Aborter.runs.append((len(Aborter.runs), self.ctx.storage.get("mark")))
        self.ctx.storage.put("mark", len(Aborter.runs))
        if len(Aborter.runs) == 1:
            self.ctx.abort("first run aborts")

    def mark(self) -> Any:
        return self.ctx.storage.get("mark")

    def schedules(self) -> list[stead.Schedule]:
        return self.get_schedules()


async def test_abort_in_a_callback_still_aborts_and_the_schedule_runs_again(
    data_dir: str,
) -> None:
    Aborter.runs = []
    async with stead.Runtime({"A": Aborter}, data_dir=data_dir, alarm_retry_base=0.05) as rt:
        agent = rt.env.A.get_by_name("a")
        await agent.plan()

        async def ran_twice() -> bool:
            return len(Aborter.runs) == 2

        await eventually(ran_twice, timeout=3)
        assert Aborter.runs == [(0, None), (1, None)]  # the aborted run's write was dropped

        async def done() -> bool:
            return not await agent.schedules()

        await eventually(done)
        assert await agent.mark() == 2


class Broadcaster(stead.Agent):
    """Checks, in on_state_update, that the state it is told of is durable."""

    initial_state = {"v": 0}
    seen: list[tuple[int, bool]] = []
    engine: Any = None

    def bump(self, how: str) -> int:
        if how == "roll back":
            with contextlib.suppress(RuntimeError), self.ctx.storage.transaction():
                self.set_state({"v": self.state["v"] + 1})
                raise RuntimeError("rolled back")
            return int(self.state["v"])
        self.set_state({"v": self.state["v"] + 1})
        if how == "fail commit":
            Broadcaster.engine.fail_next_commit()
        elif how == "abort":
            self.ctx.abort("changed my mind")
        elif how == "raise":
            raise RuntimeError("the state write before this is still committed")
        return int(self.state["v"])

    def get(self) -> Any:
        return self.state

    async def on_state_update(self, state: Any, source: str) -> None:
        # Each bump's update is awaited before the next bump: last_seq is its batch.
        durable = Broadcaster.engine.durable_seq() >= self.ctx.storage.last_seq
        Broadcaster.seen.append((state["v"], durable))


async def test_state_updates_are_released_only_once_durable(data_dir: str) -> None:
    # on_state_update is the state broadcast: behind the output gate (DESIGN §2).
    # It once ran inside set_state: before the write was durable, and for turns
    # whose commit failed or that aborted, telling of states never stored.
    Broadcaster.seen = []
    async with stead.Runtime({"B": Broadcaster}, data_dir=data_dir) as rt:
        Broadcaster.engine = rt.engine
        agent = rt.env.B.get_by_name("b")

        def told(n: int) -> Any:
            async def check() -> bool:
                return len(Broadcaster.seen) >= n

            return check

        assert await agent.bump("ok") == 1
        await eventually(told(1))
        with pytest.raises(stead.StorageError):
            await agent.bump("fail commit")
        with pytest.raises(stead.RemoteError):
            await agent.bump("abort")
        assert await agent.bump("roll back") == 1
        with pytest.raises(RuntimeError):
            await agent.bump("raise")  # its state write is committed: v=2 is told
        await eventually(told(2))
        assert await agent.bump("ok") == 3
        await eventually(told(3))
        await asyncio.sleep(0.05)
        assert (await agent.get())["v"] == 3
        assert Broadcaster.seen == [(1, True), (2, True), (3, True)]


class Chrono(stead.Agent):
    runs: list[Any] = []

    def add(self, when: Any, payload: Any = None) -> str:
        return self.schedule(when, "tick", payload).id

    def add_at(self, when: str) -> str:
        return self.schedule(datetime.fromisoformat(when), "tick").id

    def add_many(self, count: int, delay: float) -> None:
        for i in range(count):
            self.schedule(delay + i * 1e-4, "tick", i)

    def add_stored_the_old_way(self, delays: list[float]) -> None:
        # What an agent of a version without the time index stored: records only.
        for i, delay in enumerate(delays):
            entry = stead.Schedule(f"old{i}", "tick", i, "delayed", time.time() + delay)
            self.ctx.storage.put_internal(b"agent-schedule:" + entry.id.encode(), entry)
            self.ctx.storage.set_alarm(time.time() + min(delays))

    def cancel(self, schedule_id: str) -> bool:
        return self.cancel_schedule(schedule_id)

    def schedules(self) -> list[stead.Schedule]:
        return self.get_schedules()

    def alarm_time(self) -> float | None:
        return self.ctx.storage.get_alarm()

    def tick(self, payload: Any) -> None:
        Chrono.runs.append(payload)


@pytest.mark.parametrize(
    "when", [float("inf"), float("nan"), 1e300, -1, -0.5, "9999-12-31T23:59:00-12:00"]
)
async def test_a_schedule_time_out_of_range_is_refused_before_anything_is_stored(
    data_dir: str, when: Any
) -> None:
    # inf was stored (and then broke every re-arm); -1 and NaN raised TypeError.
    Chrono.runs = []
    async with stead.Runtime({"C": Chrono}, data_dir=data_dir) as rt:
        agent = rt.env.C.get_by_name("c")
        good = await agent.add(0.05, "good")
        with pytest.raises(ValueError):
            if isinstance(when, str):
                await agent.add_at(when)
            else:
                await agent.add(when)
        assert [s.id for s in await agent.schedules()] == [good]
        assert await agent.cancel(good) is True
        assert await agent.alarm_time() is None


async def test_a_cron_series_that_ends_runs_its_last_callback_once_and_is_removed(
    data_dir: str,
) -> None:
    # A 7th (year) field gives a series with one time; finding no next time after
    # the run once raised out of alarm(), which reran the callback as a retry.
    Chrono.runs = []
    async with stead.Runtime(
        {"C": Chrono}, data_dir=data_dir, alarm_retry_base=0.05, alarm_retry_limit=3
    ) as rt:
        agent = rt.env.C.get_by_name("c")
        t = datetime.now(timezone.utc) + timedelta(seconds=1.2)
        await agent.add(f"{t.minute} {t.hour} {t.day} {t.month} * {t.second} {t.year}", "once")

        async def ran() -> bool:
            return bool(Chrono.runs)

        await eventually(ran, timeout=5)
        await asyncio.sleep(0.5)  # three retries would have run by now
        assert Chrono.runs == ["once"]
        assert await agent.schedules() == []
        assert await agent.alarm_time() is None


async def test_many_schedules_in_one_turn_are_cheap(data_dir: str) -> None:
    # Every schedule() and every run listed and sorted all schedules: 2000 in one
    # turn took 6 s, running them 12 s, stalling the whole event loop.
    Chrono.runs = []
    count = 3000
    async with stead.Runtime({"C": Chrono}, data_dir=data_dir, durability="none") as rt:
        agent = rt.env.C.get_by_name("c")
        started = time.perf_counter()
        await agent.add_many(count, 0.2)
        assert time.perf_counter() - started < 1.0

        async def all_ran() -> bool:
            return len(Chrono.runs) == count

        await eventually(all_ran, timeout=10)
        assert time.perf_counter() - started < 5.0
        assert Chrono.runs == list(range(count))  # in time order
        assert await agent.alarm_time() is None


async def test_schedules_stored_without_the_time_index_still_run_in_order(
    data_dir: str,
) -> None:
    Chrono.runs = []
    async with stead.Runtime({"C": Chrono}, data_dir=data_dir) as rt:
        agent = rt.env.C.get_by_name("c")
        await agent.add_stored_the_old_way([0.15, 0.05, 0.1])
        new = await agent.add(0.12, "new")
        assert len(await agent.schedules()) == 4
        assert await agent.cancel(new) is True

        async def ran() -> bool:
            return len(Chrono.runs) == 3

        await eventually(ran)
        await asyncio.sleep(0.1)
        assert Chrono.runs == [1, 2, 0]
        assert await agent.schedules() == []


class Overlap(stead.Agent):
    """Reentrant: ``work`` waits for ``release`` (an HTTP call, an LLM request)."""

    reentrant = True
    runs: ClassVar[list[str]] = []
    started: asyncio.Event
    release: asyncio.Event

    def setup(self) -> list[str]:
        at = datetime.fromtimestamp(time.time() + 0.02, timezone.utc)
        return [self.schedule(at, "work", "first").id, self.schedule(at, "work", "second").id]

    def cancel(self, schedule_id: str) -> bool:
        return self.cancel_schedule(schedule_id)

    def left(self) -> int:
        return len(self.get_schedules())

    async def work(self, payload: str) -> None:
        Overlap.runs.append(payload)
        Overlap.started.set()
        await Overlap.release.wait()


async def test_a_reentrant_agent_runs_a_schedule_once_when_another_is_cancelled(
    data_dir: str,
) -> None:
    # cancel_schedule() re-armed the alarm for the earliest schedule: the one whose
    # callback was running. A second alarm() run started beside the first and
    # ran that callback again, concurrently.
    Overlap.runs, Overlap.started, Overlap.release = [], asyncio.Event(), asyncio.Event()
    async with stead.Runtime({"O": Overlap}, data_dir=data_dir) as rt:
        agent = rt.env.O.get_by_name("o")
        ids = await agent.setup()
        await asyncio.wait_for(Overlap.started.wait(), 5)
        waiting = ids[1] if Overlap.runs == ["first"] else ids[0]
        assert await agent.cancel(waiting) is True
        await asyncio.sleep(0.2)  # a second run would have started by now
        assert len(Overlap.runs) == 1
        Overlap.release.set()

        async def done() -> bool:
            return bool(await agent.left() == 0)

        await eventually(done)
        assert len(Overlap.runs) == 1


class Cancelled(stead.Agent):
    """``cb`` awaits, on its first run, a task that something else cancels."""

    runs: ClassVar[list[Any]] = []

    def plan(self) -> None:
        self.schedule(0, "cb", "first")
        self.schedule(0.1, "cb", "second")

    def left(self) -> list[Any]:
        return [entry.payload for entry in self.get_schedules()]

    async def cb(self, payload: Any) -> None:
        Cancelled.runs.append(payload)
        if Cancelled.runs == ["first"]:
            task = asyncio.ensure_future(asyncio.sleep(10))
            asyncio.get_running_loop().call_soon(task.cancel)
            await task  # CancelledError, though the alarm run was not cancelled


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="Python 3.10 cannot tell a stray CancelledError from a cancel",
)
async def test_a_callback_raising_a_stray_cancelled_error_is_retried(data_dir: str) -> None:
    # The alarm was lost until a restart: no schedule of the agent ran again.
    Cancelled.runs = []
    async with stead.Runtime({"C": Cancelled}, data_dir=data_dir, alarm_retry_base=0.02) as rt:
        agent = rt.env.C.get_by_name("c")
        await agent.plan()

        async def all_ran() -> bool:
            return bool(await agent.left() == [])

        await eventually(all_ran, timeout=3)
        assert sorted(Cancelled.runs) == ["first", "first", "second"]


class Many(stead.Agent):
    def add(self, count: int) -> list[float]:
        return [self.schedule(3600 + i, "tick", i).time for i in range(count)]

    def cancel_all_but(self, keep: int) -> float | None:
        for entry in self.get_schedules()[: len(self.get_schedules()) - keep]:
            self.cancel_schedule(entry.id)
        return self.ctx.storage.get_alarm()

    def alarm_time(self) -> float | None:
        return self.ctx.storage.get_alarm()

    def tick(self, payload: Any) -> None:
        pass


@pytest.mark.parametrize("keep", [0, 1])
async def test_cancelling_many_schedules_in_one_turn_reads_the_index_once(
    data_dir: str, monkeypatch: pytest.MonkeyPatch, keep: int
) -> None:
    # Every cancel of the earliest schedule looked for the next one, listing
    # through all the turn's pending deletes: 2000 cancels took 7 s, 4000 30 s.
    listings = 0
    list_internal = stead.storage.Storage.list_internal

    def counted(self: stead.storage.Storage, *args: Any, **kwargs: Any) -> Any:
        nonlocal listings
        listings += 1
        return list_internal(self, *args, **kwargs)

    count = 1000
    async with stead.Runtime({"M": Many}, data_dir=data_dir, durability="none") as rt:
        agent = rt.env.M.get_by_name("m")
        times = await agent.add(count)
        monkeypatch.setattr(stead.storage.Storage, "list_internal", counted)
        await agent.cancel_all_but(keep)
        assert listings <= 4  # get_schedules() twice, one re-arm as the turn commits
        expected = None if keep == 0 else times[-1]
        assert await agent.alarm_time() == (None if expected is None else pytest.approx(expected))


class Stranded(stead.Agent):
    """``flaky`` aborts until ``fix()``: its alarm is dropped after the retry limit."""

    runs: ClassVar[list[str]] = []

    async def flaky(self, payload: str) -> None:
        Stranded.runs.append(payload)
        if self.state is None:
            self.ctx.abort("not yet")

    def fix(self) -> None:
        self.set_state("fixed")

    def plan(self) -> str:
        self.schedule(0, "flaky", "stranded")
        return self.schedule(7200, "flaky", "spare").id

    def plan_later(self) -> str:
        return self.schedule(3600, "flaky", "later").id

    def cancel(self, schedule_id: str) -> bool:
        return self.cancel_schedule(schedule_id)

    def alarm_time(self) -> float | None:
        return self.ctx.storage.get_alarm()


@pytest.mark.parametrize("rearm", ["schedule", "cancel_schedule"])
async def test_schedules_stranded_by_a_dropped_alarm_are_rearmed(data_dir: str, rearm: str) -> None:
    # schedule() only ever lowered the alarm: with none set it armed for the new
    # schedule (an hour away), not for the overdue one left without an alarm;
    # cancel_schedule() of a later schedule left them without any alarm.
    Stranded.runs = []
    async with stead.Runtime(
        {"S": Stranded}, data_dir=data_dir, alarm_retry_base=0.02, alarm_retry_limit=1
    ) as rt:
        agent = rt.env.S.get_by_name("s")
        spare = await agent.plan()

        async def dropped() -> bool:
            return len(Stranded.runs) == 2 and await agent.alarm_time() is None

        await eventually(dropped, timeout=3)
        await agent.fix()
        if rearm == "schedule":
            await agent.plan_later()
        else:
            assert await agent.cancel(spare) is True

        async def ran() -> bool:
            return len(Stranded.runs) == 3

        await eventually(ran, timeout=3)
        assert Stranded.runs == ["stranded"] * 3


class Counter(msgspec.Struct):
    count: int = 0


@dataclasses.dataclass
class Tally:
    count: int = 0


class Item(msgspec.Struct):
    name: str


class TypedStates(stead.Agent):
    told: ClassVar[list[str]] = []

    def bump(self) -> int:
        state = self.state
        self.set_state(type(state)(count=state.count + 1))
        return int(self.state.count)

    def type_name(self) -> str:
        return type(self.state).__name__

    def on_state_update(self, state: Any, source: str) -> None:
        TypedStates.told.append(type(state).__name__)


class StructState(TypedStates):
    initial_state = Counter()


class DataclassState(TypedStates):
    initial_state = Tally()


class ListState(stead.Agent):
    state_model = list[Item]
    initial_state: ClassVar[Any] = []

    def add(self, name: str) -> list[str]:
        self.set_state([*self.state, Item(name)])
        return [item.name for item in self.state]

    def set_raw(self, value: Any) -> None:
        self.set_state(value)


@pytest.mark.parametrize("cls", [StructState, DataclassState])
async def test_a_struct_or_dataclass_state_keeps_its_type(
    data_dir: str, cls: type[TypedStates]
) -> None:
    # It came back as a dict after the first set_state: state.count raised.
    TypedStates.told = []
    expected = type(cls.initial_state).__name__
    async with stead.Runtime({"T": cls}, data_dir=data_dir) as rt:
        agent = rt.env.T.get_by_name("t")
        assert await agent.bump() == 1
        assert await agent.bump() == 2
        assert await agent.type_name() == expected

        async def told() -> bool:
            return TypedStates.told == [expected, expected]

        await eventually(told)
    async with stead.Runtime({"T": cls}, data_dir=data_dir) as rt:
        assert await rt.env.T.get_by_name("t").bump() == 3


async def test_state_model_decodes_the_state_and_refuses_what_does_not_fit(
    data_dir: str,
) -> None:
    async with stead.Runtime({"L": ListState}, data_dir=data_dir) as rt:
        agent = rt.env.L.get_by_name("l")
        assert await agent.add("a") == ["a"]
        assert await agent.add("b") == ["a", "b"]
        with pytest.raises(stead.SerializationError):
            await agent.set_raw({"not": "a list"})
        assert await agent.add("c") == ["a", "b", "c"]


class AnyId(stead.Agent):
    def get(self, schedule_id: Any) -> Any:
        return self.get_schedule(schedule_id)

    def cancel(self, schedule_id: Any) -> bool:
        return self.cancel_schedule(schedule_id)


async def test_a_schedule_id_that_is_not_a_str_is_a_type_error(data_dir: str) -> None:
    # AttributeError ('int' object has no attribute 'encode') before.
    async with stead.Runtime({"A": AnyId}, data_dir=data_dir) as rt:
        agent = rt.env.A.get_by_name("a")
        with pytest.raises(TypeError, match="schedule id"):
            await agent.get(123)
        with pytest.raises(TypeError, match="schedule id"):
            await agent.cancel(None)
        assert await agent.get("no-such-id") is None


class Wiped(stead.Agent):
    def add(self) -> str:
        return self.schedule(3600, "tick").id

    def cancel_and_wipe(self, schedule_id: str) -> None:
        self.cancel_schedule(schedule_id)
        self.ctx.storage.delete_all()

    def tick(self, payload: Any) -> None:
        pass


async def test_cancel_then_delete_all_leaves_nothing_stored(data_dir: str) -> None:
    # cancel_schedule's re-arm runs as the turn commits, after delete_all():
    # it must not store anything (an index marker) in the wiped agent.
    async with stead.Runtime({"W": Wiped}, data_dir=data_dir) as rt:
        agent = rt.env.W.get_by_name("w")
        await agent.cancel_and_wipe(await agent.add())
        key = rt.env.W.id_from_name("w").storage_key
        assert rt.engine.list(key) == []
        assert rt.engine.get_alarm(key) is None


async def test_an_agent_whose_schedules_all_ran_or_were_cancelled_is_gone(data_dir: str) -> None:
    # Nothing left to run and no state: nothing stays stored, not even its name.
    Assistant.runs = []
    async with stead.Runtime({"A": Assistant}, data_dir=data_dir) as rt:
        ran, cancelled = rt.env.A.get_by_name("ran"), rt.env.A.get_by_name("cancelled")
        await ran.plan([["delay", 0.05, "once"]])
        [schedule_id] = await cancelled.plan([["delay", 60, "never"]])
        assert await cancelled.cancel(schedule_id) is True
        stateful = rt.env.A.get_by_name("stateful")
        await stateful.say("hello")
        await stateful.plan([["delay", 0.05, "then"]])

        async def both_ran() -> bool:
            return sorted(p for _, p, _ in Assistant.runs) == ["once", "then"]

        await eventually(both_ran)

        async def only_stateful_left() -> bool:
            return [i.name for i in await rt.env.A.list_ids()] == ["stateful"]

        await eventually(only_stateful_left)
        for name in ["ran", "cancelled"]:
            key = rt.env.A.id_from_name(name).storage_key
            assert rt.engine.list(key) == [] and rt.engine.get_alarm(key) is None
        assert rt.engine.stats()["objects"] == 1
        # A new schedule on a gone agent is stored and runs as on a new one.
        await ran.plan([["delay", 0.05, "again"]])
        assert [i.name for i in await rt.env.A.list_ids()] == sorted(
            ["ran", "stateful"], key=lambda name: str(rt.env.A.id_from_name(name))
        )

        async def again_ran() -> bool:
            return "again" in [p for _, p, _ in Assistant.runs]

        await eventually(again_ran)


def test_a_reused_cron_series_gives_the_times_of_a_fresh_parse() -> None:
    # Each expression's parsed series is reused (moved to each start): no state
    # of an earlier run, an ended series' error included, may leak into the next.
    from croniter import croniter

    from stead.agent import _next_cron_time

    expressions = ["* * * * * */2", "*/5 * * * *", "0 0 L * *", "0 12 * * 5#3", "0 0 1 1 * 0 2030"]
    rng = random.Random(7)
    ended = 0
    for _ in range(2000):
        expression, start = rng.choice(expressions), rng.uniform(0, 2.2e9)
        try:
            expected: float | str = float(croniter(expression, start).get_next(float))
        except ValueError as error:  # CroniterBadDateError: the series has ended
            expected = type(error).__name__
        ended += expected == "CroniterBadDateError"
        try:
            got: float | str = _next_cron_time(expression, start)
        except ValueError as error:
            got = type(error).__name__
        assert got == expected, (expression, start)
    assert ended  # ended series were among them
