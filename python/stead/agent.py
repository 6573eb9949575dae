"""``Agent``: a DurableObject with persisted state and schedules.

State is stored with the turn that sets it. Schedules (a delay, a date, or a
cron expression) are stored records multiplexed onto the object's one alarm:
the alarm is always set to the earliest schedule, and each due schedule's
callback runs as a turn of its own, in time order. A callback that raises is
retried per schedule (its own backoff and retry count, the runtime's alarm
retry policy), so one failing schedule never holds back or strands the others.
"""

from __future__ import annotations

import copy
import inspect
import logging
import secrets
import time
from datetime import datetime
from typing import Any, ClassVar, Literal

import msgspec
from croniter import croniter

from stead.alarms import AlarmInfo, retry_policy
from stead.messages import Request, Response
from stead.objects import DurableObject

__all__ = ["Agent", "Schedule"]

logger = logging.getLogger(__name__)

_STATE_KEY = b"agent-state"
_SCHEDULE_PREFIX = b"agent-schedule:"
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


def _next_cron_time(expression: str, after: float) -> float:
    return float(croniter(expression, after).get_next(float))


class Agent(DurableObject):
    """A durable object with ``state``, ``set_state`` and ``schedule``.

    Override ``on_state_update`` to react to state changes and ``on_request``
    to serve ``fetch``. A subclass that overrides ``alarm`` must call
    ``await super().alarm(info)`` for schedules to run.
    """

    #: The state before the first ``set_state`` (deep-copied per object).
    initial_state: ClassVar[Any] = None

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> Any:
        """The current state (``initial_state`` until the first ``set_state``)."""
        stored = self.ctx.storage.get_internal(_STATE_KEY, _MISSING)
        if stored is _MISSING:
            return copy.deepcopy(self.initial_state)
        return stored

    def set_state(self, state: Any) -> None:
        """Replace the state (persisted with this turn) and call ``on_state_update``."""
        self.ctx.storage.put_internal(_STATE_KEY, state)
        result = self.on_state_update(state, "server")
        if inspect.isawaitable(result):
            self.ctx.wait_until(result)

    def on_state_update(self, state: Any, source: str) -> Any:
        """Called after every ``set_state``; ``source`` is ``"server"`` for the agent itself."""

    # -- fetch ---------------------------------------------------------------

    async def fetch(self, request: Request) -> Response:
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
        elif isinstance(when, (int, float)) and not isinstance(when, bool) and when >= 0:
            entry = Schedule(schedule_id, callback, payload, "delayed", now + when)
        else:
            raise TypeError("when is a delay in seconds (>= 0), a datetime, or a cron string")
        self.ctx.storage.put_internal(_SCHEDULE_PREFIX + schedule_id.encode(), entry)
        self._arm()
        return entry

    def get_schedules(self) -> list[Schedule]:
        """Every schedule, earliest first."""
        entries = self.ctx.storage.list_internal(_SCHEDULE_PREFIX, type=Schedule)
        return sorted(entries, key=lambda entry: entry.time)

    def get_schedule(self, schedule_id: str) -> Schedule | None:
        """The schedule with this id, or ``None``."""
        key = _SCHEDULE_PREFIX + schedule_id.encode()
        result: Schedule | None = self.ctx.storage.get_internal(key, type=Schedule | None)
        return result

    def cancel_schedule(self, schedule_id: str) -> bool:
        """Remove a schedule; whether it existed."""
        if self.get_schedule(schedule_id) is None:
            return False
        self.ctx.storage.delete_internal(_SCHEDULE_PREFIX + schedule_id.encode())
        self._arm()
        return True

    def _arm(self) -> None:
        schedules = self.get_schedules()
        if schedules:
            self.ctx.storage.set_alarm(schedules[0].time)
        else:
            self.ctx.storage.delete_alarm()

    async def alarm(self, info: AlarmInfo) -> None:
        """Run the earliest due schedule (one per turn); re-arm for the next."""
        schedules = self.get_schedules()
        if schedules and schedules[0].time <= time.time():
            await self._run_schedule(schedules[0])
        self._arm()

    async def _run_schedule(self, due: Schedule) -> None:
        # Only the callback's Exceptions: ctx.abort() (ObjectAborted) and
        # cancellation end the whole alarm run, as in any alarm handler.
        failure: Exception | None = None
        try:
            result = getattr(self, due.callback)(due.payload)
            if inspect.isawaitable(result):
                await result
        except Exception as error:
            failure = error
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

    def _retry_schedule(self, due: Schedule, failure: Exception) -> None:
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
        self.ctx.storage.put_internal(_SCHEDULE_PREFIX + due.id.encode(), retry)

    def _finish_schedule(self, due: Schedule) -> None:
        """Remove a one-shot schedule; move a cron schedule to its next time."""
        key = _SCHEDULE_PREFIX + due.id.encode()
        if due.kind == "cron" and due.cron is not None:
            # From now, not from the missed time: no catch-up storm after downtime.
            next_time = _next_cron_time(due.cron, time.time())
            following = msgspec.structs.replace(due, time=next_time, retry_count=0)
            self.ctx.storage.put_internal(key, following)
        else:
            self.ctx.storage.delete_internal(key)
