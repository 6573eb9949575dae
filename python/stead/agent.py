"""``Agent``: a DurableObject with persisted state and schedules.

State is stored with the turn that sets it; ``on_state_update`` (the state
broadcast) is released only once that turn's writes are durable, as every
message is (the output gate). Schedules (a delay, a date, or a cron
expression) are stored records multiplexed onto the object's one alarm: the
alarm is always set to (or before) the earliest schedule, and each due
schedule's callback runs as a turn of its own, in time order. A time-ordered
index key per schedule finds the earliest one without reading them all. A
callback that raises is retried per schedule (its own backoff and retry
count, the runtime's alarm retry policy), so one failing schedule never holds
back or strands the others.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import inspect
import logging
import math
import secrets
import time
from datetime import datetime
from functools import partial
from typing import Any, ClassVar, Literal

import msgspec
from croniter import croniter

from stead import codec
from stead.alarms import AlarmInfo, _cancel_requested, retry_policy
from stead.errors import StorageError
from stead.messages import Request, Response
from stead.objects import DurableObject
from stead.storage import _alarm_ms

__all__ = ["Agent", "Schedule"]

logger = logging.getLogger(__name__)

_STATE_KEY = b"agent-state"
_SCHEDULE_PREFIX = b"agent-schedule:"
# One key per schedule, ``<time in microseconds + offset, 16 hex digits>:<id>``, so the
# earliest schedule is the first key; its value is that key's tail.
_BY_TIME_PREFIX = b"agent-schedule-by-time:"
_TIME_OFFSET_US = 1 << 62  # keeps times before 1970 in order
# Stored once the index covers every schedule: agents stored before the index
# existed are indexed on first use.
_INDEXED_KEY = b"agent-schedule-indexed"
_MISSING: Any = object()


class Schedule(msgspec.Struct, frozen=True):
    """A stored schedule: ``callback`` is awaited with ``payload`` at ``time`` (epoch s).

    ``retry_count`` is how many times in a row the callback has raised (0 until it
    fails); ``time`` is then the time of the next retry.
    """

    id: str
    callback: str
    payload: Any
    kind: Literal["delayed", "scheduled", "cron"]
    time: float
    cron: str | None = None
    retry_count: int = 0


@functools.lru_cache(maxsize=256)
def _parsed_cron(expression: str) -> croniter:
    # Parsing is most of a cron run's cost (~0.4 ms): each expression is parsed
    # once and its series reused, moved to each start before it is asked.
    return croniter(expression)


def _next_cron_time(expression: str, after: float) -> float:
    series = _parsed_cron(expression)
    series.set_current(after, force=True)
    return float(series.get_next(float))


def _index_tail(entry: Schedule) -> str:
    # Order only (the record holds the exact time); ties in id order, as listed.
    return f"{math.floor(entry.time * 1_000_000) + _TIME_OFFSET_US:016x}:{entry.id}"


def _schedule_key(schedule_id: str) -> bytes:
    if not isinstance(schedule_id, str):
        raise TypeError(f"a schedule id is a str, not {type(schedule_id).__name__}")
    return _SCHEDULE_PREFIX + schedule_id.encode()


class Agent(DurableObject):
    """A durable object with ``state``, ``set_state`` and ``schedule``.

    Override ``on_state_update`` to react to state changes and ``on_request``
    to serve ``fetch``. A subclass that overrides ``alarm`` must call
    ``await super().alarm(info)`` for schedules to run.
    """

    #: The state before the first ``set_state`` (deep-copied per object).
    initial_state: ClassVar[Any] = None
    #: The type the stored state is decoded into (any type msgspec decodes, as
    #: ``storage.get(type=...)`` takes). ``None``: that of ``initial_state`` when it
    #: is a ``msgspec.Struct`` or a dataclass, else untyped (builtins).
    state_model: ClassVar[Any] = None

    # Set while a re-arm for the earliest schedule waits for the turn's commit.
    _rearm_pending = False

    # -- state ---------------------------------------------------------------

    @classmethod
    def _state_decode_type(cls) -> Any:
        if cls.state_model is not None:
            return cls.state_model
        initial = cls.initial_state
        if isinstance(initial, msgspec.Struct) or (
            dataclasses.is_dataclass(initial) and not isinstance(initial, type)
        ):
            return type(initial)
        return None

    @property
    def state(self) -> Any:
        """The current state (``initial_state`` until the first ``set_state``)."""
        stored = self.ctx.storage.get_internal(_STATE_KEY, _MISSING, type=self._state_decode_type())
        if stored is _MISSING:
            return copy.deepcopy(self.initial_state)
        return stored

    def set_state(self, state: Any) -> None:
        """Replace the state (persisted with this turn); ``on_state_update`` is
        called once it is durable. ``SerializationError`` if the state does not
        fit ``state_model``."""
        storage = self.ctx.storage
        state_type = self._state_decode_type()
        if state_type is not None:
            # Refused now, not by every later read; the stored form, as read back.
            state = codec.copy(state, state_type)
        storage.put_internal(_STATE_KEY, state)
        if type(self).on_state_update is not Agent.on_state_update:
            # What was stored, not the caller's object (it may change later).
            storage.after_commit(partial(self._state_committed, codec.copy(state, state_type)))

    def on_state_update(self, state: Any, source: str) -> Any:
        """Called for every ``set_state`` once the turn's writes are durable (never
        for a turn whose commit failed or that aborted), outside the turn, as
        ``wait_until`` work; ``source`` is ``"server"`` for the agent itself."""

    def _state_committed(self, state: Any, seq: int) -> None:
        # Called from inside the commit: it must not raise.
        try:
            self.ctx.wait_until(self._release_state(state, seq))
        except Exception:
            logger.exception("state update of %r not released", self.ctx.id)

    async def _release_state(self, state: Any, seq: int) -> None:
        wait_durable = self.env._wait_durable
        if seq and wait_durable is not None:
            try:
                await wait_durable(seq)
            except StorageError as error:
                logger.warning("state of %r never became durable (%s)", self.ctx.id, error)
                return
        result = self.on_state_update(state, "server")
        if inspect.isawaitable(result):
            await result

    # -- fetch ---------------------------------------------------------------

    async def fetch(self, request: Request) -> Response:
        """The Agent's ``fetch`` handler: passes the request to ``on_request``.
        Override ``on_request``, not ``fetch``."""
        return await self.on_request(request)

    async def on_request(self, request: Request) -> Response:
        """Serve ``fetch``. The default answers 404."""
        return Response.json(
            {"error": {"type": "NotFound", "message": f"no route for {request.path}"}},
            status=404,
        )

    # -- schedules -----------------------------------------------------------

    def schedule(
        self, when: float | datetime | str, callback: str, payload: Any = None
    ) -> Schedule:
        """Run ``await self.<callback>(payload)`` after a delay in seconds, at a
        ``datetime``, or on every match of a cron expression."""
        if not callable(getattr(self, callback, None)):
            raise ValueError(f"{type(self).__name__} has no method {callback!r} to schedule")
        schedule_id = secrets.token_hex(8)
        now = time.time()
        if isinstance(when, str):
            if not croniter.is_valid(when):
                raise ValueError(f"invalid cron expression {when!r}")
            entry = Schedule(
                schedule_id, callback, payload, "cron", _next_cron_time(when, now), when
            )
        elif isinstance(when, datetime):
            entry = Schedule(schedule_id, callback, payload, "scheduled", when.timestamp())
        elif isinstance(when, (int, float)) and not isinstance(when, bool):
            if not when >= 0:  # NaN too
                raise ValueError(f"a delay is seconds >= 0, not {when!r}")
            entry = Schedule(schedule_id, callback, payload, "delayed", now + when)
        else:
            raise TypeError("when is a delay in seconds (>= 0), a datetime, or a cron string")
        _alarm_ms(entry.time)  # ValueError (before anything is stored) past the year 9999
        self._put_schedule(entry)
        alarm = self.ctx.storage.get_alarm()
        if alarm is None:
            # Schedules may be stored without an alarm (it was dropped after an
            # aborted run's last retry): arm for the earliest, not just this one.
            self._arm()
        elif entry.time < alarm:
            # Only ever lowers the alarm: O(1), however many schedules exist.
            self.ctx.storage.set_alarm(entry.time)
        return entry

    def get_schedules(self) -> list[Schedule]:
        """Every schedule, earliest first."""
        entries = self.ctx.storage.list_internal(_SCHEDULE_PREFIX, type=Schedule)
        return sorted(entries, key=lambda entry: entry.time)

    def get_schedule(self, schedule_id: str) -> Schedule | None:
        """The schedule with this id, or ``None``."""
        key = _schedule_key(schedule_id)
        result: Schedule | None = self.ctx.storage.get_internal(key, type=Schedule | None)
        return result

    def cancel_schedule(self, schedule_id: str) -> bool:
        """Remove a schedule; whether it existed."""
        entry = self.get_schedule(schedule_id)
        if entry is None:
            return False
        self._delete_schedule(entry)
        alarm = self.ctx.storage.get_alarm()
        if alarm is None or _alarm_ms(entry.time) <= round(alarm * 1000):
            # It may have been the earliest (or schedules were stranded without an
            # alarm). Re-armed once, as the turn commits: finding the earliest
            # schedule per cancel made cancelling N schedules in a turn O(N^2 log N).
            # Until then the alarm is early, never late: it only lost a schedule.
            self._rearm_at_commit()
        return True

    def _rearm_at_commit(self) -> None:
        if not self._rearm_pending:
            self._rearm_pending = True
            self.ctx.storage.settle_alarm_before_commit(self._rearm_now)

    def _rearm_now(self) -> None:
        # Called from inside the commit: it must not raise.
        self._rearm_pending = False
        try:
            self._arm()
        except Exception:  # the alarm stays early: its run re-arms
            logger.exception("alarm of %r not re-armed after cancel_schedule", self.ctx.id)

    def _put_schedule(self, entry: Schedule, replaced: Schedule | None = None) -> None:
        storage = self.ctx.storage
        if replaced is not None:
            storage.delete_internal(_BY_TIME_PREFIX + _index_tail(replaced).encode())
        storage.put_internal(_schedule_key(entry.id), entry)
        tail = _index_tail(entry)
        storage.put_internal(_BY_TIME_PREFIX + tail.encode(), tail)

    def _delete_schedule(self, entry: Schedule) -> None:
        storage = self.ctx.storage
        storage.delete_internal(_schedule_key(entry.id))
        storage.delete_internal(_BY_TIME_PREFIX + _index_tail(entry).encode())

    def _earliest(self) -> Schedule | None:
        """The earliest schedule, from the first index key."""
        storage = self.ctx.storage
        self._ensure_index()
        while True:
            first: list[str] = storage.list_internal(_BY_TIME_PREFIX, type=str, limit=1)
            if not first:
                return None
            entry = self.get_schedule(first[0].partition(":")[2])
            if entry is not None and _index_tail(entry) == first[0]:
                return entry
            # Not the schedule's current key: never written so, but never stuck on it.
            storage.delete_internal(_BY_TIME_PREFIX + first[0].encode())

    def _ensure_index(self) -> None:
        """Index the schedules of an agent stored before the index existed (once)."""
        storage = self.ctx.storage
        if storage.get_internal(_INDEXED_KEY) is not None:
            return
        entries = storage.list_internal(_SCHEDULE_PREFIX, type=Schedule)
        if not entries:
            # Nothing to index: no marker either, which would leave a key stored
            # in an agent just wiped by delete_all() (its re-arm runs at commit).
            return
        for entry in entries:
            try:
                _alarm_ms(entry.time)
            except ValueError:  # stored by a version that did not check the time
                logger.warning(
                    "schedule %s of %r has no valid time; removed", entry.id, self.ctx.id
                )
                storage.delete_internal(_schedule_key(entry.id))
                continue
            tail = _index_tail(entry)
            storage.put_internal(_BY_TIME_PREFIX + tail.encode(), tail)
        storage.put_internal(_INDEXED_KEY, 1)

    def _arm(self) -> None:
        earliest = self._earliest()
        storage = self.ctx.storage
        if earliest is not None:
            storage.set_alarm(earliest.time)
            return
        storage.delete_alarm()
        if storage.get_internal(_INDEXED_KEY) is not None:
            # No schedule left: nor the marker, which alone would keep an agent
            # whose schedules all ran stored for good (the next schedule sets it).
            storage.delete_internal(_INDEXED_KEY)

    async def alarm(self, info: AlarmInfo) -> None:
        """Run the earliest due schedule (one per turn); re-arm for the next."""
        due = self._earliest()
        if due is not None and due.time <= time.time():
            await self._run_schedule(due)
        self._arm()

    async def _run_schedule(self, due: Schedule) -> None:
        # Only the callback's failures: ctx.abort() (ObjectAborted) and this
        # task's cancellation (shutdown) end the whole alarm run, as in any
        # alarm handler.
        failure: BaseException | None = None
        try:
            result = getattr(self, due.callback)(due.payload)
            if inspect.isawaitable(result):
                await result
        except Exception as error:
            failure = error
        except asyncio.CancelledError as error:
            if _cancel_requested():
                raise
            failure = error  # it awaited something cancelled elsewhere
        if self.get_schedule(due.id) is None:
            return  # the callback cancelled its own schedule
        if failure is not None and due.retry_count < retry_policy().limit:
            self._retry_schedule(due, failure)
            return
        if failure is not None:
            logger.error(
                "schedule %s (%s) of %r failed %d times; %s",
                due.id,
                due.callback,
                self.ctx.id,
                due.retry_count + 1,
                "moved to its next time" if due.kind == "cron" else "dropped",
                exc_info=failure,
            )
        self._finish_schedule(due)

    def _retry_schedule(self, due: Schedule, failure: BaseException) -> None:
        """Re-time only ``due``, with the runtime's alarm backoff."""
        delay = retry_policy().delay(due.retry_count)
        logger.warning(
            "schedule %s (%s) of %r raised; retry %d in %.3fs",
            due.id,
            due.callback,
            self.ctx.id,
            due.retry_count + 1,
            delay,
            exc_info=failure,
        )
        retry = msgspec.structs.replace(
            due, time=time.time() + delay, retry_count=due.retry_count + 1
        )
        self._put_schedule(retry, replaced=due)

    def _finish_schedule(self, due: Schedule) -> None:
        """Remove a one-shot schedule; move a cron schedule to its next time."""
        if due.kind == "cron" and due.cron is not None:
            try:
                # From now, not from the missed time: no catch-up storm after downtime.
                next_time = _next_cron_time(due.cron, time.time())
                _alarm_ms(next_time)
            except ValueError:  # CroniterBadDateError: the series has ended
                # Not raised out of alarm(): the callback ran, a retry would rerun it.
                logger.info(
                    "cron schedule %s (%r) of %r has no next time; removed",
                    due.id,
                    due.cron,
                    self.ctx.id,
                )
            else:
                following = msgspec.structs.replace(due, time=next_time, retry_count=0)
                self._put_schedule(following, replaced=due)
                return
        self._delete_schedule(due)
