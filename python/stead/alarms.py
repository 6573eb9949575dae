"""Durable alarms: the Rust timer wheel drives alarm events through the mailbox.

An alarm is a record in the log; the wheel only holds its time and is rebuilt
from the engine at startup. Delivery is at least once and never early. A
raising (or aborting) handler is retried with exponential backoff and
jitter; the retry state is stored with the object, so pending retries survive
restarts. While a handler runs, ``retry_policy()`` is the runtime's policy, for
handlers that retry parts of their work themselves (``Agent`` schedules).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from contextvars import ContextVar
from functools import partial
from typing import TYPE_CHECKING

import msgspec

from stead._core import Engine, TimerWheel
from stead.context import ObjectAborted
from stead.dispatch import context_outside_turns, finish_or_cancel
from stead.errors import OverloadedError, StorageError
from stead.ids import IdFactory
from stead.objects import call_maybe_async

if TYPE_CHECKING:
    from stead.dispatch import Dispatcher, ObjectHost
    from stead.ids import ObjectId
    from stead.storage import Storage

__all__ = ["AlarmInfo", "AlarmScheduler", "RetryPolicy", "retry_policy"]

logger = logging.getLogger(__name__)

RETRY_KEY = b"alarm-retry"
# A delivery that could not start or commit (object overloaded, a refused
# commit) is tried again this soon, doubling per failure in a row up to the max.
_REDELIVERY_DELAY_MS = 100
_MAX_REDELIVERY_DELAY_MS = 60_000
# An object whose constructor or on_start raised is tried again this much later,
# doubling per failure in a row up to the max: an outage behind on_start (a
# database down) then costs a few attempts per object, not one every 5 s.
_FAILED_START_DELAY_MS = 1_000
_MAX_FAILED_START_DELAY_MS = 300_000


class AlarmInfo(msgspec.Struct, frozen=True):
    """What ``alarm(info)`` is told about this run."""

    retry_count: int
    is_retry: bool
    scheduled_time: float


class RetryPolicy(msgspec.Struct, frozen=True):
    """How failed alarm runs are retried: the runtime's ``alarm_retry_limit``
    (``limit``) and ``alarm_retry_base`` (``base``)."""

    limit: int = 6
    base: float = 2.0

    def delay(self, retry_count: int) -> float:
        """Seconds to wait after a failed run that had ``retry_count`` retries before
        it: ``base * 2**retry_count``, ±25% jitter."""
        return self.base * 2.0**retry_count * random.uniform(0.75, 1.25)


_DEFAULT_POLICY = RetryPolicy()
_policy: ContextVar[RetryPolicy | None] = ContextVar("stead_alarm_retry_policy", default=None)


def retry_policy() -> RetryPolicy:
    """The retry policy of the runtime whose ``alarm()`` is running (the defaults
    outside an alarm run)."""
    return _policy.get() or _DEFAULT_POLICY


class _RetryState(msgspec.Struct, array_like=True):
    count: int
    scheduled_time: float
    # The alarm time (ms) the retry was set to: a retry state found with another
    # alarm belongs to an alarm the user has since replaced or deleted. None in
    # states stored before this field existed (trusted, as they were then).
    alarm_ms: int | None = None


class _Run:
    """One delivery of an alarm: set when its handler aborted the object."""

    __slots__ = ("aborted",)

    def __init__(self) -> None:
        # (retry count, scheduled time, alarm time in ms) of the aborted run.
        self.aborted: tuple[int, float, int] | None = None


def _cancel_requested() -> bool:
    """Whether the running task was asked to cancel, so that a ``CancelledError``
    caught now is its own, not one raised by something it awaited that was
    cancelled elsewhere. Python 3.10 cannot tell: always its own there."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or cancelling() > 0


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
        self._policy = RetryPolicy(retry_limit, retry_base)
        self._now_ms = now_ms
        self._wheel = TimerWheel(now_ms())
        self._token_of: dict[bytes, int] = {}
        self._key_of: dict[int, bytes] = {}
        self._next_token = 1
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Keys whose alarm event is being delivered (queued, running, or waiting
        # for its writes to be durable), and those of them whose wheel fired
        # meanwhile: one alarm() run at a time per object, as on Cloudflare.
        self._delivering: set[bytes] = set()
        self._deferred: set[bytes] = set()
        self._closed = False
        # Deliveries of a key that failed in a row (not counting handler errors).
        self._failed_deliveries: dict[bytes, int] = {}
        # The engine has failed: nothing can commit, so nothing is delivered.
        self._stopped = False
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
        # A changed alarm starts afresh (and a deleted one is forgotten).
        self._failed_deliveries.pop(key, None)
        if when_ms is None:
            token = self._token_of.pop(key, None)
            if token is not None:
                del self._key_of[token]
                self._wheel.cancel(token)
        else:
            self._wheel.set(self._token(key), when_ms)
        self._rearm()

    def _rearm(self) -> None:
        if self._closed or self._stopped:
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
        if self._engine_failed():
            return
        # advance() never returns a token before its time, so a timer firing a
        # little early just re-arms.
        for token in self._wheel.advance(self._now_ms()):
            key = self._key_of.get(token)
            if key is None:
                continue
            if key in self._delivering:
                # A reentrant object would run a second alarm() beside the first
                # (and an Agent the same schedule twice): delivered once it ends.
                self._deferred.add(key)
            else:
                self._spawn(key)
        self._rearm()

    def _spawn(self, key: bytes) -> None:
        self._delivering.add(key)
        task = asyncio.create_task(self._deliver_once(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver_once(self, key: bytes) -> None:
        try:
            await self._deliver(key)
        finally:
            self._delivering.discard(key)
            if key in self._deferred:
                self._deferred.discard(key)
                self._deliver_deferred(key)

    def _deliver_deferred(self, key: bytes) -> None:
        """The wheel fired for ``key`` while its alarm event was delivered: deliver
        again (``_run`` re-reads the stored alarm), unless the alarm was deleted
        or the wheel holds a time for it again (a later time, a redelivery)."""
        token = self._token_of.get(key)
        if token is None or self._closed or self._stopped or self._wheel.get(token) is not None:
            return
        self._spawn(key)

    async def _deliver(self, key: bytes) -> None:
        object_id = self._ids.from_storage_key(key, None)
        if object_id is None or object_id.binding not in self._dispatcher.classes:
            logger.warning(
                "alarm of an object of an unknown binding (key %s) left pending", key.hex()
            )
            return
        if self._engine_failed():
            return
        run = _Run()
        try:
            # This task is the alarm event's own: no caller can give up on it.
            await self._dispatcher.deliver(object_id, partial(self._run, run=run), detach=False)
        except asyncio.CancelledError:
            if self._closed or _cancel_requested():
                raise
            # Not this task's cancellation: a stray CancelledError (on_start
            # awaited something cancelled elsewhere). The alarm is off the wheel
            # now, so it must be put back, as for an object that cannot start.
            delay = self._backoff_ms(key, _FAILED_START_DELAY_MS, _MAX_FAILED_START_DELAY_MS)
            logger.exception(
                "alarm of %r could not run (cancelled); trying again in %d ms", object_id, delay
            )
            self._redeliver_soon(key, delay)
        except Exception as error:
            if self._engine_failed():
                return  # the run's writes cannot commit; it runs again after a restart
            if run.aborted is not None:  # a failed run, counted like a raising one
                await self._retry_aborted(object_id, key, run.aborted)
            elif isinstance(error, (OverloadedError, StorageError)):
                delay = self._backoff_ms(key, _REDELIVERY_DELAY_MS, _MAX_REDELIVERY_DELAY_MS)
                logger.warning(
                    "alarm of %r not delivered (%s); trying again in %d ms", object_id, error, delay
                )
                self._redeliver_soon(key, delay)
            else:
                # The handler's own errors are retried inside the turn; this is the
                # object failing to start (constructor or on_start). Keep the alarm:
                # tried again with backoff, not counted as a retry.
                delay = self._backoff_ms(key, _FAILED_START_DELAY_MS, _MAX_FAILED_START_DELAY_MS)
                logger.exception(
                    "alarm of %r could not run; trying again in %d ms", object_id, delay
                )
                self._redeliver_soon(key, delay)
        else:
            self._failed_deliveries.pop(key, None)

    def _backoff_ms(self, key: bytes, base_ms: int, max_ms: int) -> int:
        """The wait before the next delivery of ``key`` after one more failure in
        a row: ``base_ms`` doubled per earlier failure, capped, ±25% jitter (many
        objects failing together, on one outage, do not retry in lockstep)."""
        failures = self._failed_deliveries.get(key, 0)
        self._failed_deliveries[key] = failures + 1
        delay = min(base_ms << min(failures, 20), max_ms)
        return round(delay * random.uniform(0.75, 1.25))

    def _engine_failed(self) -> bool:
        """Whether the engine has failed (a log write or sync failed): then every
        commit fails, so a run would only repeat its side effects. Alarms stop
        until a restart (they stay stored; due ones fire at startup)."""
        if self._stopped:
            return True
        failure = self._engine.failure
        if failure is None:
            return False
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        logger.error("storage engine failed (%s); alarms stop firing until a restart", failure)
        return True

    async def _retry_aborted(
        self, object_id: ObjectId, key: bytes, aborted: tuple[int, float, int]
    ) -> None:
        """The handler aborted: its writes were dropped with the instance, so the
        retry is recorded by an event of its own (on the new instance)."""
        try:
            await self._dispatcher.deliver(
                object_id, partial(self._record_abort, aborted=aborted), detach=False
            )
        except Exception:
            logger.exception(
                "retry of the aborted alarm of %r not recorded; trying again", object_id
            )
            self._redeliver_soon(
                key, self._backoff_ms(key, _FAILED_START_DELAY_MS, _MAX_FAILED_START_DELAY_MS)
            )

    async def _record_abort(self, host: ObjectHost, aborted: tuple[int, float, int]) -> None:
        count, scheduled, alarm_ms = aborted
        current = host.storage.get_alarm()
        if current is not None and round(current * 1000) == alarm_ms:
            self._schedule_retry(host, count, scheduled, "aborted")
        # else: changed by an event since the abort; the wheel has the new time.

    def _redeliver_soon(self, key: bytes, delay_ms: int = _REDELIVERY_DELAY_MS) -> None:
        if key in self._token_of and not self._closed:
            self._wheel.set(self._token_of[key], self._now_ms() + delay_ms)
            self._rearm()

    async def _run(self, host: ObjectHost, run: _Run) -> None:
        """The alarm event, run as a turn of the object."""
        storage = host.storage
        # The wheel hears of an alarm when its batch goes to the engine: run it
        # only once that batch (and all the object's reads stand on) is durable.
        # StorageError if it never will be (the engine failed).
        if storage.last_seq:
            await self._dispatcher.waiter.wait(storage.last_seq)
        current = storage.get_alarm()
        if current is None:
            return  # deleted since the wheel fired
        current_ms = round(current * 1000)
        if current_ms > self._now_ms():
            # Not due: moved later since the wheel fired (its commit put the new
            # time on the wheel already), or the wall clock stepped back since.
            # Never early, never lost: back on the wheel for its time.
            self.changed(host.key, current_ms)
            return
        retry = self._retry_state(storage, current_ms)
        count, scheduled = (retry.count, retry.scheduled_time) if retry else (0, current)
        self.fired += 1
        policy = _policy.set(self._policy)
        try:
            info = AlarmInfo(count, count > 0, scheduled)
            await call_maybe_async(partial(host.instance.alarm, info))
        except ObjectAborted:
            # The object is reset and this turn's writes dropped; _deliver records
            # the retry once the turn has ended.
            run.aborted = (count, scheduled, round(current * 1000))
            raise
        except asyncio.CancelledError:
            if self._closed or _cancel_requested():
                raise  # shutdown: the alarm stays set and runs after a restart
            # The handler awaited something cancelled elsewhere: a failed run.
            self._retry_failed_run(host, current_ms, count, scheduled, retry)
            return
        except Exception:
            self._retry_failed_run(host, current_ms, count, scheduled, retry)
            return
        finally:
            _policy.reset(policy)
        # Cleared unless set or deleted since it fired: by this run or, for a
        # reentrant object, by another event. Judged by the time, not only by
        # the pending change: a commit in the middle of the turn (sync(), an
        # outbound call, another event's end) leaves no change pending.
        after = storage.get_alarm()
        if not storage.alarm_changed and after is not None and round(after * 1000) == current_ms:
            storage.delete_alarm()
        if retry:
            storage.delete_internal(RETRY_KEY)

    def _retry_failed_run(
        self,
        host: ObjectHost,
        current_ms: int,
        count: int,
        scheduled: float,
        retry: _RetryState | None,
    ) -> None:
        """The handler raised: retry, unless the alarm was set or deleted since it
        fired (by the handler, or by another event of a reentrant object): that
        change stands, as after an abort, and a new alarm starts afresh."""
        storage = host.storage
        after = storage.get_alarm()
        if after is not None and round(after * 1000) == current_ms:
            self._schedule_retry(host, count, scheduled, "raised")
            return
        logger.warning(
            "alarm of %r raised; not retried: the alarm was %s since it fired",
            host.id,
            "deleted" if after is None else "set again",
            exc_info=True,
        )
        if retry:
            storage.delete_internal(RETRY_KEY)

    @staticmethod
    def _retry_state(storage: Storage, current_ms: int) -> _RetryState | None:
        """The stored retry state, if it belongs to the alarm at ``current_ms``;
        one left by an alarm the user replaced or deleted is dropped."""
        retry: _RetryState | None = storage.get_internal(RETRY_KEY, type=_RetryState | None)
        if retry is not None and retry.alarm_ms is not None and retry.alarm_ms != current_ms:
            storage.delete_internal(RETRY_KEY)
            return None
        return retry

    def _schedule_retry(self, host: ObjectHost, count: int, scheduled: float, how: str) -> None:
        storage = host.storage
        # The handler's exception, when it raised (an abort is over by now).
        exc_info = how == "raised"
        if count >= self._policy.limit:
            logger.error(
                "alarm of %r failed %d times (last run %s); dropped",
                host.id,
                count + 1,
                how,
                exc_info=exc_info,
            )
            storage.delete_alarm()
            storage.delete_internal(RETRY_KEY)
            return
        delay = self._policy.delay(count)
        logger.warning(
            "alarm of %r %s; retry %d in %.3fs", host.id, how, count + 1, delay, exc_info=exc_info
        )
        storage.set_alarm(self._now_ms() / 1000 + delay)
        retry_at = storage.get_alarm()
        assert retry_at is not None
        retry = _RetryState(count + 1, scheduled, round(retry_at * 1000))
        storage.put_internal(RETRY_KEY, retry, limited=False)

    @property
    def pending(self) -> int:
        """Alarms on the wheel."""
        return len(self._wheel)

    async def close(self, deadline: Callable[[], float]) -> None:
        """Stop firing; wait for alarm events already running (cancelled at
        ``deadline()``, in loop time: the alarm stays set and runs again later)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        await finish_or_cancel(lambda: list(self._tasks), deadline, "alarm events")
