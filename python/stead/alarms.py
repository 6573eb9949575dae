"""Durable alarms: the Rust timer wheel drives alarm events through the mailbox.

An alarm is a record in the log; the wheel only holds its time and is rebuilt
from the engine at startup. Delivery is at least once and never early. A
raising handler is retried with exponential backoff and jitter; the retry
state is stored with the object, so pending retries survive restarts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from stead._core import Engine, TimerWheel
from stead.context import ObjectAborted
from stead.dispatch import context_outside_turns, finish_or_cancel
from stead.errors import OverloadedError, StorageError
from stead.ids import IdFactory

if TYPE_CHECKING:
    from stead.dispatch import Dispatcher, ObjectHost

__all__ = ["AlarmInfo", "AlarmScheduler"]

logger = logging.getLogger(__name__)

RETRY_KEY = b"alarm-retry"
# A delivery that could not start (object overloaded, engine hiccup) is tried again this soon.
_REDELIVERY_DELAY_MS = 100
# An object whose constructor or on_start raised is tried again this much later.
_FAILED_START_DELAY_MS = 5_000


class AlarmInfo(msgspec.Struct, frozen=True):
    """What ``alarm(info)`` is told about this run."""

    retry_count: int
    is_retry: bool
    scheduled_time: float


class _RetryState(msgspec.Struct, array_like=True):
    count: int
    scheduled_time: float


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class AlarmScheduler:
    """Keeps the wheel in step with committed alarms and fires due ones."""

    def __init__(
        self,
        *,
        engine: Engine,
        ids: IdFactory,
        dispatcher: Dispatcher,
        retry_limit: int,
        retry_base: float,
        now_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._engine = engine
        self._ids = ids
        self._dispatcher = dispatcher
        self._retry_limit = retry_limit
        self._retry_base = retry_base
        self._now_ms = now_ms
        self._wheel = TimerWheel(now_ms())
        self._token_of: dict[bytes, int] = {}
        self._key_of: dict[int, bytes] = {}
        self._next_token = 1
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.fired = 0

    def load(self) -> int:
        """Put every stored alarm on the wheel (overdue ones fire at once); how many."""
        alarms = self._engine.alarms()
        self._wheel.set_many([(self._token(key), when) for key, when in alarms])
        self._rearm()
        return len(alarms)

    def _token(self, key: bytes) -> int:
        token = self._token_of.get(key)
        if token is None:
            token = self._token_of[key] = self._next_token
            self._key_of[token] = key
            self._next_token += 1
        return token

    def changed(self, key: bytes, when_ms: int | None) -> None:
        """A committed batch set (``when_ms``) or deleted (``None``) the alarm of ``key``."""
        if when_ms is None:
            token = self._token_of.pop(key, None)
            if token is not None:
                del self._key_of[token]
                self._wheel.cancel(token)
        else:
            self._wheel.set(self._token(key), when_ms)
        self._rearm()

    def _rearm(self) -> None:
        if self._closed:
            return
        deadline = self._wheel.next_deadline()
        if deadline is None or (self._timer_at is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, (deadline - self._now_ms()) / 1000)
        self._timer_at = deadline
        # The timer is often armed from inside a turn (a commit set the alarm);
        # alarm events must not inherit that turn's call chain.
        self._timer = asyncio.get_running_loop().call_later(
            delay, self._fire, context=context_outside_turns()
        )

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        # advance() never returns a token before its time, so a timer firing a
        # little early just re-arms.
        for token in self._wheel.advance(self._now_ms()):
            key = self._key_of.get(token)
            if key is not None:
                task = asyncio.create_task(self._deliver(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self._rearm()

    async def _deliver(self, key: bytes) -> None:
        object_id = self._ids.from_storage_key(key, None)
        if object_id is None or object_id.binding not in self._dispatcher.classes:
            logger.warning(
                "alarm of an object of an unknown binding (key %s) left pending", key.hex()
            )
            return
        try:
            # This task is the alarm event's own: no caller can give up on it.
            await self._dispatcher.deliver(object_id, self._run, detach=False)
        except (OverloadedError, StorageError) as error:
            logger.warning("alarm of %r not delivered (%s); trying again", object_id, error)
            self._redeliver_soon(key)
        except Exception:
            # The handler's own errors are retried inside the turn; this is the
            # object failing to start (constructor or on_start). Keep the alarm.
            logger.exception("alarm of %r could not run; trying again", object_id)
            self._redeliver_soon(key, _FAILED_START_DELAY_MS)

    def _redeliver_soon(self, key: bytes, delay_ms: int = _REDELIVERY_DELAY_MS) -> None:
        if key in self._token_of and not self._closed:
            self._wheel.set(self._token_of[key], self._now_ms() + delay_ms)
            self._rearm()

    async def _run(self, host: ObjectHost) -> None:
        """The alarm event, run as a turn of the object."""
        storage = host.storage
        current = storage.get_alarm()
        now_ms = self._now_ms()
        if current is None or round(current * 1000) > now_ms:
            return  # deleted or moved later since the wheel fired; the wheel has the new time
        retry = storage.get_internal(RETRY_KEY, type=_RetryState | None)
        count, scheduled = (retry.count, retry.scheduled_time) if retry else (0, current)
        self.fired += 1
        try:
            await host.instance.alarm(AlarmInfo(count, count > 0, scheduled))
        except (ObjectAborted, asyncio.CancelledError):
            raise
        except Exception:
            self._schedule_retry(host, count, scheduled)
            return
        if not storage.alarm_changed:
            storage.delete_alarm()
        if retry:
            storage.delete_internal(RETRY_KEY)

    def _schedule_retry(self, host: ObjectHost, count: int, scheduled: float) -> None:
        storage = host.storage
        if count >= self._retry_limit:
            logger.error("alarm of %r failed %d times; dropped", host.id, count + 1, exc_info=True)
            storage.delete_alarm()
            storage.delete_internal(RETRY_KEY)
            return
        delay = self._retry_base * 2**count * random.uniform(0.75, 1.25)
        logger.warning(
            "alarm of %r raised; retry %d in %.3fs", host.id, count + 1, delay, exc_info=True
        )
        storage.set_alarm(self._now_ms() / 1000 + delay)
        storage.put_internal(RETRY_KEY, _RetryState(count + 1, scheduled))

    @property
    def pending(self) -> int:
        """Alarms on the wheel."""
        return len(self._wheel)

    async def close(self, deadline: float) -> None:
        """Stop firing; wait for alarm events already running (cancelled at
        ``deadline``, in loop time: the alarm stays set and runs again later)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        await finish_or_cancel(lambda: list(self._tasks), deadline, "alarm events")
