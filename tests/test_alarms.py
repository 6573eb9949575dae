"""Durable alarms: timing, retries with backoff, persistence (DESIGN §2 Alarms)."""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
import time
from datetime import datetime, timezone
from typing import Any, ClassVar

import pytest

import stead
from tests.crashing import kill_after, start_child, wait_for_line

pytestmark = pytest.mark.anyio


async def eventually(check: Any, timeout: float = 10.0) -> None:
    """Poll an async predicate until it holds (alarms are wall-clock events)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


class Clock(stead.DurableObject):
    fired: list[tuple[str, float, stead.AlarmInfo]] = []

    def set(self, when: float) -> None:
        self.ctx.storage.set_alarm(when)

    def get(self) -> float | None:
        return self.ctx.storage.get_alarm()

    def cancel(self) -> None:
        self.ctx.storage.delete_alarm()

    def wipe(self) -> None:
        self.ctx.storage.delete_all()

    async def alarm(self, info: stead.AlarmInfo) -> None:
        Clock.fired.append((self.ctx.id.name or "", time.time(), info))


@pytest.fixture(autouse=True)
def _clear() -> None:
    Clock.fired = []


async def test_alarm_fires_at_or_after_its_time_never_early(data_dir: str) -> None:
    async with stead.Runtime({"C": Clock}, data_dir=data_dir) as rt:
        due = {}
        for i in range(50):
            due[f"c{i}"] = time.time() + 0.05 + i * 0.004
            await rt.env.C.get_by_name(f"c{i}").set(due[f"c{i}"])
        far = time.time() + 3600
        await rt.env.C.get_by_name("far").set(far)
        assert await rt.env.C.get_by_name("far").get() == pytest.approx(far, abs=0.001)

        async def all_fired() -> bool:
            return len(Clock.fired) == 50

        await eventually(all_fired)
        for name, fired_at, info in Clock.fired:
            assert fired_at >= due[name] - 0.001  # ms resolution
            assert info.retry_count == 0 and not info.is_retry
        assert await rt.env.C.get_by_name("c0").get() is None  # cleared after success
        assert await rt.env.C.get_by_name("far").get() is not None


async def test_deleted_and_replaced_alarms(data_dir: str) -> None:
    async with stead.Runtime({"C": Clock}, data_dir=data_dir) as rt:
        a, b, c = (rt.env.C.get_by_name(n) for n in "abc")
        await a.set(time.time() + 0.05)
        await a.cancel()
        await b.set(time.time() + 10)
        await b.set(time.time() + 0.05)  # replaced by an earlier time
        await c.set(time.time() + 0.05)
        await c.wipe()  # delete_all clears the alarm

        async def b_fired() -> bool:
            return "b" in [n for n, _, _ in Clock.fired]

        await eventually(b_fired)
        await asyncio.sleep(0.1)
        # Only b: a's alarm was deleted and c's went with delete_all.
        assert [n for n, _, _ in Clock.fired] == ["b"], Clock.fired


async def test_an_alarm_still_fires_when_the_wall_clock_steps_back_as_it_fires(
    data_dir: str,
) -> None:
    """Alarms run on the wall clock (never early); a VM's clock can step back (an NTP
    correction) between the wheel firing an alarm and its run checking the time. The
    alarm used to be dropped then (the run thought it had been moved later) and never
    fired until a restart."""
    async with stead.Runtime({"C": Clock}, data_dir=data_dir) as rt:
        scheduler = rt._alarms
        assert scheduler is not None
        step_back_ms = 0

        def wall_clock_ms() -> int:
            return time.time_ns() // 1_000_000 - step_back_ms

        fire = scheduler._fire

        def fire_then_step_back() -> None:
            nonlocal step_back_ms
            fire()
            if scheduler._tasks and not step_back_ms:
                # The wheel handed out the due alarm (a delivery task is
                # pending); the clock steps back before it runs.
                step_back_ms = 300

        scheduler._now_ms = wall_clock_ms
        scheduler._fire = fire_then_step_back  # type: ignore[method-assign]
        due = time.time() + 0.05
        await rt.env.C.get_by_name("a").set(due)

        async def fired() -> bool:
            return bool(Clock.fired)

        await eventually(fired, timeout=5)
        (name, fired_at, _info), *_ = Clock.fired
        assert name == "a"
        # Never early by the clock the scheduler goes by.
        assert fired_at - step_back_ms / 1000 >= due - 0.001


class Flaky(stead.DurableObject):
    runs: list[tuple[int, bool, float, float]] = []
    failures = 2

    def arm(self, when: float) -> None:
        self.ctx.storage.set_alarm(when)

    async def alarm(self, info: stead.AlarmInfo) -> None:
        Flaky.runs.append((info.retry_count, info.is_retry, info.scheduled_time, time.time()))
        if len(Flaky.runs) <= Flaky.failures:
            raise RuntimeError("flaky")


async def test_raising_alarm_is_retried_with_backoff(data_dir: str) -> None:
    Flaky.runs, Flaky.failures = [], 2
    base = 0.1
    async with stead.Runtime({"F": Flaky}, data_dir=data_dir, alarm_retry_base=base) as rt:
        scheduled = time.time() + 0.02
        await rt.env.F.get_by_name("f").arm(scheduled)

        async def three_runs() -> bool:
            return len(Flaky.runs) == 3

        await eventually(three_runs)
        assert [(r[0], r[1]) for r in Flaky.runs] == [(0, False), (1, True), (2, True)]
        assert all(r[2] == pytest.approx(scheduled, abs=0.001) for r in Flaky.runs)
        gaps = [Flaky.runs[i + 1][3] - Flaky.runs[i][3] for i in range(2)]
        assert gaps[0] >= base * 0.75 and gaps[1] >= 2 * base * 0.75
        await asyncio.sleep(0.3)
        assert len(Flaky.runs) == 3  # cleared after the success


# A small max_value_bytes limits users' values, never stead's own retry count.
@pytest.mark.parametrize("max_value_bytes", [stead.runtime.MAX_VALUE_BYTES, 16])
async def test_alarm_is_dropped_after_the_retry_limit(data_dir: str, max_value_bytes: int) -> None:
    Flaky.runs, Flaky.failures = [], 100
    async with stead.Runtime(
        {"F": Flaky},
        data_dir=data_dir,
        alarm_retry_base=0.01,
        alarm_retry_limit=3,
        max_value_bytes=max_value_bytes,
    ) as rt:
        await rt.env.F.get_by_name("f").arm(time.time())

        async def four_runs() -> bool:
            return len(Flaky.runs) == 4

        await eventually(four_runs)
        await asyncio.sleep(0.3)
        assert [r[0] for r in Flaky.runs] == [0, 1, 2, 3]
        assert rt.engine.get_alarm(rt.env.F.id_from_name("f").storage_key) is None


async def test_pending_retries_survive_a_restart(data_dir: str) -> None:
    Flaky.runs, Flaky.failures = [], 1
    options: dict[str, Any] = {"data_dir": data_dir, "alarm_retry_base": 0.5}
    async with stead.Runtime({"F": Flaky}, **options) as rt:
        await rt.env.F.get_by_name("f").arm(time.time())

        async def first_run() -> bool:
            return len(Flaky.runs) == 1

        await eventually(first_run)
    # Closed with the retry pending; it must run after the restart.
    async with stead.Runtime({"F": Flaky}, **options):

        async def retried() -> bool:
            return len(Flaky.runs) == 2

        await eventually(retried)
        assert Flaky.runs[1][:2] == (1, True)


async def test_overdue_alarms_fire_once_at_startup(data_dir: str) -> None:
    async with stead.Runtime({"C": Clock}, data_dir=data_dir) as rt:
        await rt.env.C.get_by_name("late").set(time.time() + 3600)
        # Rewrite the stored alarm to long ago, as if the process had been down since.
        rt.engine.commit(rt.env.C.id_from_name("late").storage_key, alarm=1000)
    Clock.fired = []
    async with stead.Runtime({"C": Clock}, data_dir=data_dir):

        async def fired() -> bool:
            return len(Clock.fired) == 1

        await eventually(fired)
        await asyncio.sleep(0.1)
        assert len(Clock.fired) == 1


@pytest.mark.crash
@pytest.mark.slow
async def test_acknowledged_alarms_fire_after_sigkill(data_dir: str) -> None:
    from tests._children.alarm_setter import Reminder

    child = start_child("tests._children.alarm_setter", data_dir)
    wait_for_line(child, "ready")
    lines = kill_after(child, 0.6)
    acknowledged = dict(line.split() for line in lines)
    assert len(acknowledged) > 10
    async with stead.Runtime({"R": Reminder}, data_dir=data_dir) as rt:

        async def all_fired() -> bool:
            for name in acknowledged:
                status = await rt.env.R.get_by_name(name).status()
                if status["fired_at"] is None:
                    return False
            return True

        await eventually(all_fired, timeout=20)
        for name, when in acknowledged.items():
            status = await rt.env.R.get_by_name(name).status()
            assert status["fired_at"] >= float(when) - 0.001


class BrokenStart(stead.DurableObject):
    starts = 0
    fired: list[float] = []

    async def on_start(self) -> None:
        BrokenStart.starts += 1
        if BrokenStart.starts == 2:  # the instance the alarm wakes fails to start once
            raise RuntimeError("not ready yet")

    def arm(self, when: float) -> None:
        self.ctx.storage.set_alarm(when)

    async def alarm(self, info: stead.AlarmInfo) -> None:
        BrokenStart.fired.append(time.time())


async def test_alarm_survives_an_object_that_fails_to_start(
    data_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stead.alarms

    monkeypatch.setattr(stead.alarms, "_FAILED_START_DELAY_MS", 50)
    BrokenStart.starts, BrokenStart.fired = 0, []
    async with stead.Runtime({"B": BrokenStart}, data_dir=data_dir, idle_timeout=0.01) as rt:
        await rt.env.B.get_by_name("b").arm(time.time() + 0.1)

        async def fired() -> bool:
            return len(BrokenStart.fired) == 1

        await eventually(fired)
        assert BrokenStart.starts >= 3  # armed, failed start, successful retry


class NeverStarts(stead.DurableObject):
    """Fails to start whenever an alarm wakes it (a dependency of on_start is down)."""

    down = False
    attempts: list[float] = []

    async def on_start(self) -> None:
        if NeverStarts.down:
            NeverStarts.attempts.append(time.monotonic())
            raise RuntimeError("database unreachable")

    def arm(self, when: float) -> None:
        self.ctx.storage.set_alarm(when)

    async def alarm(self, info: stead.AlarmInfo) -> None:
        pass


async def test_an_object_that_cannot_start_is_retried_with_growing_waits(
    data_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An outage behind on_start must not cost an attempt (and a logged
    # traceback) per object every few seconds for as long as it lasts.
    import stead.alarms

    monkeypatch.setattr(stead.alarms, "_FAILED_START_DELAY_MS", 40)
    NeverStarts.down, NeverStarts.attempts = False, []
    async with stead.Runtime({"N": NeverStarts}, data_dir=data_dir, idle_timeout=0.01) as rt:
        await rt.env.N.get_by_name("n").arm(time.time() + 0.2)
        NeverStarts.down = True  # the instance that armed it is evicted meanwhile

        async def five_attempts() -> bool:
            return len(NeverStarts.attempts) >= 5

        await eventually(five_attempts, timeout=20)
        NeverStarts.down = False
    attempts = NeverStarts.attempts
    waits = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    # 40 ms doubling with +-25% jitter: about 40, 80, 160, 320 ms.
    assert waits[3] > 3 * waits[0], waits
    assert waits[3] > 0.2, waits


class Busy(stead.DurableObject):
    log: list[str] = []

    def arm_soon(self) -> None:
        # Arms the scheduler's timer from inside this turn.
        self.ctx.storage.set_alarm(time.time() + 0.05)

    async def hold(self) -> None:
        Busy.log.append("hold-start")
        await asyncio.sleep(0.3)
        Busy.log.append("hold-end")

    async def alarm(self, info: stead.AlarmInfo) -> None:
        Busy.log.append("alarm")


async def test_an_alarm_waits_for_the_running_turn(data_dir: str) -> None:
    Busy.log = []
    async with stead.Runtime({"B": Busy}, data_dir=data_dir) as rt:
        busy = rt.env.B.get_by_name("b")
        await busy.arm_soon()
        await busy.hold()  # the alarm comes due in the middle of this turn

        async def fired() -> bool:
            return "alarm" in Busy.log

        await eventually(fired)
        assert Busy.log == ["hold-start", "hold-end", "alarm"]


class Planned(stead.DurableObject):
    """Records every alarm run in storage; fails the first ``failures`` runs."""

    def plan(self, op: str, when: float, failures: int) -> None:
        storage = self.ctx.storage
        if op == "set":
            storage.set_alarm(when)
        elif op == "delete":
            storage.delete_alarm()
        else:  # delete_all wipes the alarm with the data
            storage.delete_all()
        storage.put("failures", failures)

    async def alarm(self, info: stead.AlarmInfo) -> None:
        storage = self.ctx.storage
        runs = storage.get("runs", [])
        storage.put("runs", [*runs, (info.scheduled_time, time.time(), info.retry_count)])
        if info.retry_count < storage.get("failures", 0):
            raise RuntimeError("planned failure")

    def runs(self) -> list[tuple[float, float, int]]:
        return [tuple(run) for run in self.ctx.storage.get("runs", [])]


async def test_random_alarm_plans_across_a_restart(data_dir: str) -> None:
    # 40 objects, each given 1-4 random alarm changes (set, delete, delete_all;
    # up to two planned failures), all due 1.5-1.7 s out; the runtime restarts
    # before they are due. Exactly the alarms whose last change was a set run:
    # never early, with their retries, and nothing else runs.
    rng = random.Random(17)
    final: dict[str, tuple[float, int] | None] = {}
    async with stead.Runtime({"P": Planned}, data_dir=data_dir) as rt:
        # Far enough out that a slow, shared CI machine restarts the runtime first
        # (a CI run once took longer than 0.3 s for these ~100 calls).
        base = time.time() + 1.2
        for i in range(40):
            stub = rt.env.P.get_by_name(f"p{i}")
            for _ in range(rng.randint(1, 4)):
                op = rng.choice(["set", "set", "delete", "delete_all"])
                when = round(base + 0.3 + rng.random() * 0.2, 3)
                failures = rng.choice([0, 0, 1, 2])
                await stub.plan(op, when, failures)
                final[f"p{i}"] = (when, failures) if op == "set" else None
    assert time.time() < base + 0.3, "the first runtime outlived the earliest alarm"
    async with stead.Runtime(
        {"P": Planned}, data_dir=data_dir, alarm_retry_base=0.02, alarm_retry_limit=3
    ) as rt:
        expected_runs = {name: 1 + plan[1] if plan else 0 for name, plan in final.items()}

        async def all_ran() -> bool:
            for name, count in expected_runs.items():
                if len(await rt.env.P.get_by_name(name).runs()) < count:
                    return False
            return True

        await eventually(all_ran, timeout=15)
        await asyncio.sleep(0.2)  # nothing more comes
        for name, plan in final.items():
            runs = await rt.env.P.get_by_name(name).runs()
            assert len(runs) == expected_runs[name], name
            if plan is not None:
                when, failures = plan
                assert [retry for _, _, retry in runs] == list(range(failures + 1))
                assert all(scheduled == pytest.approx(when) for scheduled, _, _ in runs)
                assert all(ran >= when - 0.001 for _, ran, _ in runs)  # never early


class Reminder(stead.DurableObject):
    """Stores nothing but its alarm, and needs its name when the alarm runs."""

    seen: ClassVar[list[str | None]] = []

    def remind_in(self, seconds: float) -> None:
        self.ctx.storage.set_alarm(time.time() + seconds)

    async def alarm(self, info: stead.AlarmInfo) -> None:
        Reminder.seen.append(self.ctx.id.name)


async def test_an_object_with_only_an_alarm_keeps_its_name_across_a_restart(
    data_dir: str,
) -> None:
    Reminder.seen = []
    async with stead.Runtime({"R": Reminder}, data_dir=data_dir) as rt:
        await rt.env.R.get_by_name("reminder-42").remind_in(0.2)
    async with stead.Runtime({"R": Reminder}, data_dir=data_dir) as rt:
        assert [object_id.name for object_id in await rt.env.R.list_ids()] == ["reminder-42"]

        async def ran() -> bool:
            return bool(Reminder.seen)

        await eventually(ran)
        assert Reminder.seen == ["reminder-42"]


class Scheduled(stead.DurableObject):
    def remind_at(self, when: float) -> None:
        self.ctx.storage.set_alarm(when)

    def remind_on(self, when: str) -> None:
        self.ctx.storage.set_alarm(datetime.fromisoformat(when))

    def when(self) -> float | None:
        return self.ctx.storage.get_alarm()

    async def alarm(self, info: stead.AlarmInfo) -> None:
        pass


@pytest.mark.parametrize("when", [2**63, 1e300, float("inf"), float("nan"), -1e300])
async def test_an_alarm_time_out_of_range_is_refused_as_it_is_set(
    data_dir: str, when: float
) -> None:
    # Refused by set_alarm, not by the commit at the end of the turn (which left
    # the object failing every later turn, and close() with it).
    async with stead.Runtime({"R": Scheduled}, data_dir=data_dir) as rt:
        reminder = rt.env.R.get_by_name("r")
        with pytest.raises(ValueError, match="before the year 10000"):
            await reminder.remind_at(when)
        far = datetime(9999, 12, 31, tzinfo=timezone.utc).timestamp()
        await reminder.remind_at(far)
        assert await reminder.when() == far
    async with stead.Runtime({"R": Scheduled}, data_dir=data_dir) as rt:
        assert await rt.env.R.get_by_name("r").when() == far


class Aborting(stead.DurableObject):
    """Aborts every alarm run after a write; counts its instances."""

    runs: ClassVar[list[int]] = []
    instances = 0

    def __init__(self, ctx: stead.ObjectContext, env: Any) -> None:
        super().__init__(ctx, env)
        Aborting.instances += 1

    def arm(self) -> None:
        self.ctx.storage.set_alarm(time.time())

    def written(self) -> Any:
        return self.ctx.storage.get("written")

    async def alarm(self, info: stead.AlarmInfo) -> None:
        Aborting.runs.append(info.retry_count)
        self.ctx.storage.put("written", info.retry_count)
        self.ctx.abort("not today")


async def test_an_alarm_that_aborts_is_retried_with_backoff_up_to_the_limit(
    data_dir: str,
) -> None:
    # An abort is a failed run: counted, backed off and dropped after the limit
    # (it once ran again every 5 s forever, always with retry_count 0).
    Aborting.runs, Aborting.instances = [], 0
    async with stead.Runtime(
        {"A": Aborting}, data_dir=data_dir, alarm_retry_base=0.05, alarm_retry_limit=2
    ) as rt:
        aborting = rt.env.A.get_by_name("a")
        await aborting.arm()

        async def three_runs() -> bool:
            return len(Aborting.runs) == 3

        await eventually(three_runs, timeout=3)
        await asyncio.sleep(0.4)  # nothing more comes
        assert Aborting.runs == [0, 1, 2]
        assert rt.engine.get_alarm(rt.env.A.id_from_name("a").storage_key) is None
        assert await aborting.written() is None  # each run's writes were dropped
        assert Aborting.instances >= 4  # the arming instance, then a fresh one per run


def _run_child(data_dir: str, scenario: str) -> list[str]:
    child = start_child("tests._children.alarm_full_disk", data_dir, scenario)
    assert child.stdout is not None
    with child.stdout:
        lines = child.stdout.read().splitlines()
    assert child.wait(timeout=60) == 0, lines
    assert lines[-1] == "done"
    return lines


@pytest.mark.crash
def test_an_alarm_never_runs_for_a_turn_whose_batch_never_became_durable(
    data_dir: str,
) -> None:
    # The log write of the turn that set the alarm fails for real (RLIMIT_FSIZE):
    # the caller gets StorageError, and the alarm must not run (it once ran,
    # since the wheel heard of it as the batch went to the engine).
    lines = _run_child(data_dir, "unacknowledged")
    assert "acknowledged" not in lines
    assert "runs 0" in lines


@pytest.mark.crash
def test_alarms_stop_once_the_engine_has_failed(data_dir: str) -> None:
    # An alarm durably set earlier falls due after a log write failed: its run
    # could never commit. It once re-ran every 100 ms until the process ended.
    lines = _run_child(data_dir, "poisoned")
    assert "runs 0" in lines


class Repeating(stead.DurableObject):
    """Re-arms itself in alarm(), then makes the progress durable mid-turn."""

    runs = 0
    how = "sync"

    def start(self) -> None:
        self.ctx.storage.set_alarm(time.time() + 0.02)

    def get(self) -> float | None:
        return self.ctx.storage.get_alarm()

    def ping(self) -> None:
        pass

    async def alarm(self, info: stead.AlarmInfo) -> None:
        Repeating.runs += 1
        if Repeating.runs < 5:
            self.ctx.storage.set_alarm(time.time() + 0.02)
        self.ctx.storage.put("runs", Repeating.runs)
        if Repeating.how == "sync":
            await self.ctx.storage.sync()
        else:  # an outbound call commits through the output gate first
            await self.env.R.get_by_name("other").ping()


@pytest.mark.parametrize("how", ["sync", "outbound call"])
async def test_an_alarm_set_again_before_a_mid_turn_commit_keeps_repeating(
    data_dir: str, how: str
) -> None:
    Repeating.runs, Repeating.how = 0, how
    async with stead.Runtime({"R": Repeating}, data_dir=data_dir) as rt:
        repeating = rt.env.R.get_by_name("r")
        await repeating.start()

        async def five_runs() -> bool:
            return Repeating.runs == 5

        await eventually(five_runs, timeout=5)
        await asyncio.sleep(0.1)
        assert Repeating.runs == 5
        assert await repeating.get() is None  # the last run did not re-arm: cleared


class Interleaved(stead.DurableObject):
    """Reentrant: an RPC sets a new alarm while alarm() is waiting."""

    reentrant = True
    runs: ClassVar[list[float]] = []
    in_alarm: asyncio.Event
    release: asyncio.Event

    def arm(self, when: float) -> None:
        self.ctx.storage.set_alarm(when)

    def get(self) -> float | None:
        return self.ctx.storage.get_alarm()

    async def alarm(self, info: stead.AlarmInfo) -> None:
        Interleaved.runs.append(info.scheduled_time)
        if len(Interleaved.runs) == 1:
            Interleaved.in_alarm.set()
            await Interleaved.release.wait()


async def test_an_alarm_set_by_another_event_while_alarm_runs_is_kept(data_dir: str) -> None:
    Interleaved.runs = []
    Interleaved.in_alarm, Interleaved.release = asyncio.Event(), asyncio.Event()
    async with stead.Runtime({"I": Interleaved}, data_dir=data_dir) as rt:
        obj = rt.env.I.get_by_name("i")
        await obj.arm(time.time())
        await asyncio.wait_for(Interleaved.in_alarm.wait(), 5)
        later = time.time() + 0.2
        await obj.arm(later)  # acknowledged: durable
        Interleaved.release.set()

        async def second_run() -> bool:
            return len(Interleaved.runs) == 2

        await eventually(second_run, timeout=5)
        assert Interleaved.runs[1] == pytest.approx(later, abs=0.002)


class Replaced(stead.DurableObject):
    """The first run raises; the user then replaces (or deletes and sets) the alarm."""

    runs: ClassVar[list[stead.AlarmInfo]] = []

    def arm(self, when: float) -> None:
        self.ctx.storage.set_alarm(when)

    def cancel(self) -> None:
        self.ctx.storage.delete_alarm()

    async def alarm(self, info: stead.AlarmInfo) -> None:
        Replaced.runs.append(info)
        if len(Replaced.runs) == 1:
            raise RuntimeError("first run fails")


@pytest.mark.parametrize("delete_first", [False, True])
async def test_a_new_alarm_does_not_inherit_the_retry_of_the_one_it_replaced(
    data_dir: str, delete_first: bool
) -> None:
    Replaced.runs = []
    async with stead.Runtime({"R": Replaced}, data_dir=data_dir, alarm_retry_base=10) as rt:
        obj = rt.env.R.get_by_name("r")
        await obj.arm(time.time())

        async def ran(n: int) -> Any:
            async def check() -> bool:
                return len(Replaced.runs) == n

            return check

        await eventually(await ran(1))  # raised: a retry is pending, ~10 s away
        if delete_first:
            await obj.cancel()
        new = time.time() + 0.05
        await obj.arm(new)
        await eventually(await ran(2))
        second = Replaced.runs[1]
        assert (second.retry_count, second.is_retry) == (0, False)
        assert second.scheduled_time == pytest.approx(new, abs=0.002)


async def test_alarm_times_round_up_to_the_ms_and_datetimes_are_range_checked(
    data_dir: str,
) -> None:
    async with stead.Runtime({"R": Scheduled}, data_dir=data_dir) as rt:
        reminder = rt.env.R.get_by_name("r")
        base = float(int(time.time()) + 3600)
        await reminder.remind_at(base + 0.0004)  # rounding to nearest said base: early
        assert await reminder.when() == base + 0.001
        await reminder.remind_at(await reminder.when())  # a time read back keeps its value
        assert await reminder.when() == base + 0.001
        await reminder.remind_on("2030-01-01T00:00:00.000001+00:00")  # 1 us past a ms
        assert (
            await reminder.when() == datetime(2030, 1, 1, tzinfo=timezone.utc).timestamp() + 0.001
        )
        with pytest.raises(ValueError, match="year 10000"):  # 9999-12-31 is 10000-01-01 in UTC
            await reminder.remind_on("9999-12-31T23:59:00-12:00")
        await reminder.remind_on("9999-12-31T11:59:00-12:00")
        assert (
            await reminder.when() == datetime(9999, 12, 31, 23, 59, tzinfo=timezone.utc).timestamp()
        )


class Refused(stead.DurableObject):
    """The first run's commit is refused (a passing fault, the engine stays healthy)."""

    runs = 0
    engine: Any = None

    def arm(self) -> None:
        self.ctx.storage.set_alarm(time.time())

    def ran(self) -> Any:
        return self.ctx.storage.get("ran")

    async def alarm(self, info: stead.AlarmInfo) -> None:
        Refused.runs += 1
        self.ctx.storage.put("ran", Refused.runs)
        if Refused.runs == 1:
            Refused.engine.fail_next_commit()


async def test_an_alarm_whose_commit_is_refused_runs_again(data_dir: str) -> None:
    # At least once: stopping on a failed engine must not stop on a passing fault.
    Refused.runs = 0
    async with stead.Runtime({"R": Refused}, data_dir=data_dir) as rt:
        Refused.engine = rt.engine
        refused = rt.env.R.get_by_name("r")
        await refused.arm()

        async def stored() -> bool:
            return bool(await refused.ran() == 2)

        await eventually(stored, timeout=5)
        assert rt.engine.failure is None
        assert rt.engine.get_alarm(rt.env.R.id_from_name("r").storage_key) is None
        assert Refused.runs == 2


class PlainAlarm(stead.DurableObject):
    runs: ClassVar[list[int]] = []

    def arm(self) -> None:
        self.ctx.storage.set_alarm(time.time())

    def alarm(self, info: stead.AlarmInfo) -> None:  # a plain method, as RPC methods may be
        PlainAlarm.runs.append(info.retry_count)


async def test_an_alarm_handler_may_be_a_plain_method(data_dir: str) -> None:
    PlainAlarm.runs = []
    async with stead.Runtime({"P": PlainAlarm}, data_dir=data_dir, alarm_retry_base=0.02) as rt:
        await rt.env.P.get_by_name("p").arm()

        async def ran() -> bool:
            return bool(PlainAlarm.runs)

        await eventually(ran)
        await asyncio.sleep(0.2)  # a failed run would be retried by now
        assert PlainAlarm.runs == [0]


class Overlapping(stead.DurableObject):
    """Reentrant: alarm() waits for ``release``; counts runs in progress."""

    reentrant = True
    runs: ClassVar[list[float]] = []
    running = 0
    most_running = 0
    in_alarm: asyncio.Event
    release: asyncio.Event

    def arm(self, when: float) -> None:
        self.ctx.storage.set_alarm(when)

    async def alarm(self, info: stead.AlarmInfo) -> None:
        Overlapping.runs.append(info.scheduled_time)
        Overlapping.running += 1
        Overlapping.most_running = max(Overlapping.most_running, Overlapping.running)
        try:
            Overlapping.in_alarm.set()
            await Overlapping.release.wait()
        finally:
            Overlapping.running -= 1


async def test_a_reentrant_objects_alarm_runs_one_at_a_time(data_dir: str) -> None:
    # An alarm set (due) by another event while alarm() awaited started a second
    # alarm() beside the first; it must wait for the first run, then run.
    Overlapping.runs, Overlapping.running, Overlapping.most_running = [], 0, 0
    Overlapping.in_alarm, Overlapping.release = asyncio.Event(), asyncio.Event()
    async with stead.Runtime({"O": Overlapping}, data_dir=data_dir) as rt:
        obj = rt.env.O.get_by_name("o")
        await obj.arm(time.time())
        await asyncio.wait_for(Overlapping.in_alarm.wait(), 5)
        again = time.time()
        await obj.arm(again)  # acknowledged, due at once
        await asyncio.sleep(0.2)  # the wheel fires for it meanwhile
        assert len(Overlapping.runs) == 1
        Overlapping.release.set()

        async def second_run() -> bool:
            return len(Overlapping.runs) == 2

        await eventually(second_run, timeout=5)
        assert Overlapping.most_running == 1
        assert Overlapping.runs[1] == pytest.approx(again, abs=0.002)


class StrayCancel(stead.DurableObject):
    """The first alarm run awaits a task that something else cancels."""

    runs: ClassVar[list[int]] = []

    def arm(self) -> None:
        self.ctx.storage.set_alarm(time.time())

    def get(self) -> float | None:
        return self.ctx.storage.get_alarm()

    async def alarm(self, info: stead.AlarmInfo) -> None:
        StrayCancel.runs.append(info.retry_count)
        if len(StrayCancel.runs) == 1:
            task = asyncio.ensure_future(asyncio.sleep(10))
            asyncio.get_running_loop().call_soon(task.cancel)
            await task  # CancelledError, though this run was not cancelled


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="Python 3.10 cannot tell a stray CancelledError from a cancel",
)
async def test_a_handler_raising_a_stray_cancelled_error_is_retried(data_dir: str) -> None:
    # It left the alarm stored but off the wheel: never retried until a restart.
    StrayCancel.runs = []
    async with stead.Runtime({"S": StrayCancel}, data_dir=data_dir, alarm_retry_base=0.02) as rt:
        obj = rt.env.S.get_by_name("s")
        await obj.arm()

        async def retried() -> bool:
            return StrayCancel.runs == [0, 1] and await obj.get() is None

        await eventually(retried, timeout=3)


class FailsWhileChanged(stead.DurableObject):
    """Reentrant: the first alarm run waits for ``release``, then raises."""

    reentrant = True
    runs: ClassVar[list[stead.AlarmInfo]] = []
    in_alarm: asyncio.Event
    release: asyncio.Event

    def arm(self, when: float) -> None:
        self.ctx.storage.set_alarm(when)

    def cancel(self) -> None:
        self.ctx.storage.delete_alarm()

    def get(self) -> float | None:
        return self.ctx.storage.get_alarm()

    async def alarm(self, info: stead.AlarmInfo) -> None:
        FailsWhileChanged.runs.append(info)
        if len(FailsWhileChanged.runs) == 1:
            FailsWhileChanged.in_alarm.set()
            await FailsWhileChanged.release.wait()
            raise RuntimeError("transient failure")


@pytest.mark.parametrize("change", ["set", "delete"])
async def test_a_failed_run_keeps_an_alarm_changed_while_it_ran(data_dir: str, change: str) -> None:
    # The retry overwrote the alarm another event set or deleted while the run
    # awaited: the acknowledged time never fired, a deleted alarm ran again.
    FailsWhileChanged.runs = []
    FailsWhileChanged.in_alarm, FailsWhileChanged.release = asyncio.Event(), asyncio.Event()
    async with stead.Runtime(
        {"F": FailsWhileChanged}, data_dir=data_dir, alarm_retry_base=0.02
    ) as rt:
        obj = rt.env.F.get_by_name("f")
        await obj.arm(time.time())
        await asyncio.wait_for(FailsWhileChanged.in_alarm.wait(), 5)
        new = time.time() + 0.4
        await (obj.arm(new) if change == "set" else obj.cancel())
        FailsWhileChanged.release.set()
        await asyncio.sleep(0.2)  # a retry would have run by now
        assert len(FailsWhileChanged.runs) == 1
        if change == "delete":
            assert await obj.get() is None
            return
        assert await obj.get() == pytest.approx(new, abs=0.002)

        async def ran_again() -> bool:
            return len(FailsWhileChanged.runs) == 2

        await eventually(ran_again, timeout=5)
        second = FailsWhileChanged.runs[1]
        assert (second.retry_count, second.is_retry) == (0, False)
        assert second.scheduled_time == pytest.approx(new, abs=0.002)
