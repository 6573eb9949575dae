"""Waiting for commits to become durable, without a thread hop per commit.

The engine's flusher thread makes one eventfd write per group commit; this
module registers that fd with the event loop (``loop.add_reader``) and resolves
every waiter whose sequence number the group covered. The loop is woken once
per group, never once per commit.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import deque

from stead._core import Engine
from stead.errors import StorageError

__all__ = ["CommitWaiter"]

logger = logging.getLogger(__name__)


class CommitWaiter:
    """Resolves ``await wait(seq)`` once ``seq`` is durable in ``engine``.

    Bound to the running event loop on construction; call :meth:`close` before
    the engine closes.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        # Waiting seqs in ascending order, and their futures at the same
        # positions: commits are issued in order, so appends are almost always
        # at the right end. Two deques rather than one of (seq, future) pairs:
        # no tuple per commit for the garbage collector to count and traverse.
        self._seqs: deque[int] = deque()
        self._futures: deque[asyncio.Future[None]] = deque()
        self._failure: StorageError | None = None
        # In memory and in "none" mode a commit is durable when it returns.
        self._immediate = engine.data_dir is None or engine.durability == "none"
        # The durable seq as of the last drained wakeup. A newer durable seq not
        # yet drained is still announced: the eventfd stays readable until drained.
        self._durable = engine.durable_seq()
        self._fd = engine.wakeup_fd()
        self._loop.add_reader(self._fd, self._on_wakeup)

    def is_durable(self, seq: int) -> bool:
        """Whether ``seq`` is already durable (no waiting needed)."""
        return seq <= self._durable or self._engine.durable_seq() >= seq

    async def wait(self, seq: int) -> None:
        """Return once every batch up to ``seq`` is durable (``StorageError`` if never)."""
        future = self.future_for(seq)
        if future is not None:
            await future

    def future_for(self, seq: int) -> asyncio.Future[None] | None:
        """A future resolved once ``seq`` is durable, or ``None`` if it already is.

        The hot path awaits this directly (one coroutine frame fewer than ``wait``).
        """
        if self._failure is not None:
            raise self._failure
        if seq <= self._durable or self._immediate:
            return None
        # Future(loop=...) is loop.create_future() without its Python-level frame.
        future: asyncio.Future[None] = asyncio.Future(loop=self._loop)
        seqs = self._seqs
        if not seqs or seqs[-1] <= seq:
            seqs.append(seq)
            self._futures.append(future)
        else:  # an older seq (a sync() after later commits): keep the order
            at = bisect.bisect_right(seqs, seq)
            seqs.insert(at, seq)
            self._futures.insert(at, future)
        return future

    def _on_wakeup(self) -> None:
        try:
            durable = self._engine.drain_wakeup()
        except StorageError as error:
            self._fail_all(error)
            return
        self._durable = durable
        seqs, futures = self._seqs, self._futures
        while seqs and seqs[0] <= durable:
            seqs.popleft()
            future = futures.popleft()
            if not future.done():
                future.set_result(None)

    def _fail_all(self, error: StorageError) -> None:
        logger.error("storage engine failed; failing %d waiting commits: %s", len(self), error)
        self._failure = error
        self._seqs.clear()
        while self._futures:
            future = self._futures.popleft()
            if not future.done():
                future.set_exception(error)

    def __len__(self) -> int:
        return len(self._futures)

    def close(self) -> None:
        """Stop watching the engine; pending waiters fail with ``StorageError``."""
        self._loop.remove_reader(self._fd)
        if self._futures:
            self._fail_all(StorageError("storage engine closed before the commit was durable"))
