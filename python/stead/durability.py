"""Waiting for commits to become durable, without a thread hop per commit.

The engine's flusher thread makes one eventfd write per group commit; this
module registers that fd with the event loop (``loop.add_reader``) and resolves
every waiter whose sequence number the group covered. The loop is woken once
per group, never once per commit. The waiting futures live in native code
(``stead._core.DurableFutures``), so neither registering one nor releasing a
group runs Python bytecode per commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from stead._core import DurableFutures, Engine
from stead.errors import StorageError

__all__ = ["ITERATION_BUDGET", "CommitWaiter"]

logger = logging.getLogger(__name__)

#: Seconds of resumed callers per event-loop iteration. A group commit can make
#: hundreds of callers durable at once; resuming them all in one iteration
#: would hold timers (alarms) and I/O back for as long as they all run. They
#: are resumed in batches sized, from what the last batch cost, to about this.
ITERATION_BUDGET = 0.001
_FIRST_BATCH = 64
_MIN_BATCH = 8
_MAX_BATCH = 4096
# Seconds a resumed caller is assumed to take before the first batch is timed.
_FIRST_PER_CALLER = 10e-6


class CommitWaiter:
    """Resolves ``await wait(seq)`` once ``seq`` is durable in ``engine``.

    Bound to the running event loop on construction; call :meth:`close` before
    the engine closes.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        # In memory and in "none" mode a commit is durable when it returns.
        immediate = engine.data_dir is None or engine.durability == "none"
        # The durable seq as of the last drained wakeup starts the watermark. A
        # newer durable seq not yet drained is still announced: the eventfd
        # stays readable until drained.
        self._waiting = DurableFutures(asyncio.Future, self._loop, engine.durable_seq(), immediate)
        #: A future resolved once ``seq`` is durable, or ``None`` if it already
        #: is; raises the engine's ``StorageError`` once it has failed. The
        #: native method itself: the hot path calls it without a Python frame.
        self.future_for: Callable[[int], asyncio.Future[None] | None] = self._waiting.future_for
        self._fd = engine.wakeup_fd()
        self._loop.add_reader(self._fd, self._on_wakeup)
        self._more_scheduled = False
        # Whether the engine should hear of callers left waiting to resume (it
        # then lets the next group commit grow, see Engine.consumer_backlog);
        # only fsync groups wait for a sync worth sparing.
        self._reports_backlog = engine.durability == "fsync" and not immediate
        self._backlog_reported = False
        self._per_caller = _FIRST_PER_CALLER
        self._batch = _FIRST_BATCH
        self._batch_released = 0
        self._batch_started = 0.0

    def is_durable(self, seq: int) -> bool:
        """Whether ``seq`` is already durable (no waiting needed)."""
        return seq <= self._waiting.durable or self._engine.durable_seq() >= seq

    async def wait(self, seq: int) -> None:
        """Return once every batch up to ``seq`` is durable (``StorageError`` if never)."""
        future = self.future_for(seq)
        if future is not None:
            await future

    def _on_wakeup(self) -> None:
        try:
            durable = self._engine.drain_wakeup()
        except StorageError as error:
            self._fail_all(error)
            return
        self._release(durable)

    def _release(self, durable: int) -> None:
        released = self._waiting.release(durable, self._batch)
        ready = self._waiting.ready
        if self._reports_backlog and (ready or self._backlog_reported):
            # Durable callers still waiting for their turn on this thread: a
            # group committed in the meantime can grow without delaying them.
            self._engine.consumer_backlog(ready * self._per_caller)
            self._backlog_reported = bool(ready)
        if ready and not self._more_scheduled:
            # The rest resume in the next iterations, after due timers and I/O.
            # This callback runs right after the callers just released.
            self._more_scheduled = True
            self._batch_released = released
            self._batch_started = time.perf_counter()
            self._loop.call_soon(self._release_more)

    def _release_more(self) -> None:
        self._more_scheduled = False
        if self._batch_released:
            per_caller = (time.perf_counter() - self._batch_started) / self._batch_released
            self._per_caller = per_caller
            fitting = int(ITERATION_BUDGET / per_caller) if per_caller > 0 else _MAX_BATCH
            self._batch = min(max(fitting, _MIN_BATCH), _MAX_BATCH)
        self._release(self._waiting.durable)

    def _fail_all(self, error: StorageError) -> None:
        logger.error("storage engine failed; failing %d waiting commits: %s", len(self), error)
        self._waiting.fail(error)

    def __len__(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        """Stop watching the engine; pending waiters fail with ``StorageError``."""
        self._loop.remove_reader(self._fd)
        if self._backlog_reported:
            self._engine.consumer_backlog(0.0)  # nobody is left to fall behind
        if len(self._waiting):
            self._fail_all(StorageError("storage engine closed before the commit was durable"))
