"""``Agent``: a DurableObject with persisted state and schedules.

State is stored with the turn that sets it. Schedules (a delay, a date, or a
cron expression) are stored records multiplexed onto the object's one alarm:
the alarm is always set to the earliest schedule, and each due schedule's
callback runs as a turn of its own, in time order.
"""

from __future__ import annotations

import copy
import inspect
import secrets
import time
from datetime import datetime
from typing import Any, ClassVar, Literal

import msgspec
from croniter import croniter

from stead.alarms import AlarmInfo
from stead.messages import Request, Response
from stead.objects import DurableObject

__all__ = ["Agent", "Schedule"]

_STATE_KEY = b"agent-state"
_SCHEDULE_PREFIX = b"agent-schedule:"
_MISSING: Any = object()


class Schedule(msgspec.Struct, frozen=True):
    """A stored schedule: ``callback`` is awaited with ``payload`` at ``time`` (epoch s)."""

    id: str
    callback: str
    payload: Any
    kind: Literal["delayed", "scheduled", "cron"]
    time: float
    cron: str | None = None


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
        now = time.time()
        schedules = self.get_schedules()
        if schedules and schedules[0].time <= now:
            due = schedules[0]
            result = getattr(self, due.callback)(due.payload)
            if inspect.isawaitable(result):
                await result
            key = _SCHEDULE_PREFIX + due.id.encode()
            if self.get_schedule(due.id) is None:
                pass  # the callback cancelled its own schedule
            elif due.kind == "cron" and due.cron is not None:
                # From now, not from the missed time: no catch-up storm after downtime.
                next_time = _next_cron_time(due.cron, time.time())
                self.ctx.storage.put_internal(key, msgspec.structs.replace(due, time=next_time))
            else:
                self.ctx.storage.delete_internal(key)
        self._arm()
