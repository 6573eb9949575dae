"""The Agent layer: state, on_state_update, schedules (DESIGN §3 Agent layer)."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import stead
from tests.test_alarms import eventually

pytestmark = pytest.mark.anyio


class Assistant(stead.Agent):
    initial_state: Any = {"messages": [], "mood": "calm"}
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
        assert Assistant.updates == [("hello", "server")]

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
        assert (await agent.one(cron_id)).time > time.time()  # type: ignore[union-attr]


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
            await agent.try_schedule(-1, "try_schedule")
        _ = timedelta


class Planner(stead.Agent):
    """Schedules and cancels at random; records every run in its state."""

    initial_state: Any = {"runs": []}

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
