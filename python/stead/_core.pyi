"""Type stubs for the Rust extension ``stead._core`` (checked by ``mypy.stubtest`` in CI).

The extension is private: Python modules of ``stead`` wrap it. Errors raised
here are the classes of :mod:`stead.errors`.
"""

import asyncio
import builtins
from collections.abc import Callable, Sequence
from typing import Any, final

__all__ = ["DurableFutures", "Engine", "Mailbox", "TimerWheel", "__version__"]

__version__: str

# --------------------------------------------------------------------------
# Storage engine (rust/core/src/engine, rust/bindings/src/engine.rs)
# --------------------------------------------------------------------------

@final
class Engine:
    """The log-structured storage engine of one data dir, or fully in memory.

    Object ids and keys are opaque bytes ordered bytewise. All writes go
    through :meth:`commit`, one atomic batch (one log record) per call.
    """

    def __new__(
        cls,
        data_dir: str | None,
        durability: str = "fsync",
        *,
        max_key_bytes: int = 2048,
        max_value_bytes: int = 2097152,
        cache_bytes: int = 67108864,
        segment_bytes: int = 67108864,
        compaction: bool = True,
        read_only: bool = False,
    ) -> Engine:
        """Open (creating if needed) and recover ``data_dir``; ``None`` is in memory.

        ``durability`` is ``"fsync"``, ``"os"`` or ``"none"``. Raises
        ``DataDirLockedError`` if another process holds the dir,
        ``CorruptionError`` for a damaged record before valid ones.
        ``read_only`` opens an existing dir without changing any file (a torn
        tail is read past, not truncated); commits then raise ``StorageError``.
        """

    @property
    def data_dir(self) -> str | None:
        """The data dir, or ``None`` in memory."""

    @property
    def durability(self) -> str:
        """The durability mode the engine was opened with."""

    def commit(
        self,
        object_id: bytes,
        puts: Sequence[tuple[bytes, bytes]] = (),
        deletes: Sequence[bytes] = (),
        *,
        delete_all: bool = False,
        alarm: int | None = None,
        delete_alarm: bool = False,
    ) -> int:
        """Append one atomic batch for ``object_id`` and return its sequence number.

        Applied in this order: ``delete_all`` (data and alarm), ``deletes``,
        ``puts``, then ``alarm`` (epoch ms) or ``delete_alarm``. Reads see the
        batch at once; it is durable once ``durable_seq() >= seq``. Raises
        ``LimitError`` (nothing written) for an empty or oversized key or an
        oversized value, ``ValueError`` for an empty ``object_id`` or both
        ``alarm`` and ``delete_alarm``, ``StorageError`` if the engine is
        closed or poisoned (or once after :meth:`fail_next_commit`).
        """

    def commit_writes(self, object_id: bytes, writes: dict[bytes, bytes | None]) -> int:
        """Like ``commit`` with ``{key: value}`` puts and ``{key: None}`` deletes in one dict."""

    def durable_seq(self) -> int:
        """The highest sequence number known durable under the durability mode."""

    @property
    def failure(self) -> str | None:
        """Why every write is refused (a log write or sync failed; restart the
        process), or ``None`` while the engine is healthy."""

    def last_seq(self) -> int:
        """The highest sequence number handed out so far."""

    def wakeup_fd(self) -> int:
        """A file descriptor that becomes readable when ``durable_seq`` advances."""

    def consumer_backlog(self, seconds: float) -> None:
        """Report that the consumer (the thread draining ``wakeup_fd``) has about
        ``seconds`` of already-durable work still to start; ``0`` when caught up.
        While it is behind by more than a sync takes, the fsync flusher may
        hold the next group back, up to ``STEAD_ENGINE_GROUP_DELAY_US``."""

    def drain_wakeup(self) -> int:
        """Clear ``wakeup_fd``'s readiness and return ``durable_seq()``.

        Raises ``StorageError`` if a flush failed (the engine is then poisoned).
        """

    def wait_durable(self, seq: int, timeout: float | None = None) -> bool:
        """Block (GIL released) until ``seq`` is durable; ``False`` on timeout."""

    def get(self, object_id: bytes, key: bytes) -> bytes | None:
        """The value stored under ``key``, or ``None``."""

    def get_many(self, object_id: bytes, keys: Sequence[bytes]) -> builtins.list[bytes | None]:
        """Values for ``keys``, in order, ``None`` where absent."""

    def list(
        self,
        object_id: bytes,
        *,
        prefix: bytes | None = None,
        start: bytes | None = None,
        start_after: bytes | None = None,
        end: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> builtins.list[tuple[bytes, bytes]]:
        """Entries ordered by key bytes: ``start`` inclusive, ``start_after`` and
        ``end`` exclusive, ``prefix`` filtering, descending if ``reverse``, at
        most ``limit`` (taken from the top when reversed)."""

    def objects(
        self,
        *,
        prefix: bytes | None = None,
        after: bytes | None = None,
        limit: int | None = None,
    ) -> builtins.list[bytes]:
        """Ids of objects that have at least one key or an alarm, ascending."""

    def get_alarm(self, object_id: bytes) -> int | None:
        """The object's alarm time in epoch ms, or ``None``."""

    def alarms(self) -> builtins.list[tuple[bytes, int]]:
        """Every object with an alarm, and its time in epoch ms."""

    def compact(self) -> None:
        """Compact sealed segments now (blocking, GIL released)."""

    def stats(self) -> dict[str, int]:
        """Counters: objects, keys, segments, live_bytes, index_bytes, key_bytes,
        cache_bytes, commits, syncs, held_groups, compactions, last_seq, durable_seq.

        ``held_groups`` counts group commits the flusher held back (up to the
        group delay) while the consumer reported a backlog.

        ``index_bytes`` estimates the index's heap use (keys as malloc rounds
        them, B-tree nodes, object and alarm maps); ``key_bytes`` is the raw
        key bytes it holds."""

    def take_sync_latencies(self) -> builtins.list[int]:
        """Nanosecond durations of the group-commit fdatasyncs since the last call
        (``fsync`` mode only; at most 65536 kept between calls)."""

    def fail_next_commit(self) -> None:
        """Test-only fault switch: the next ``commit`` raises ``StorageError``
        and writes nothing."""

    def close(self) -> None:
        """Flush, sync, stop background threads and release the lock. Idempotent."""

# --------------------------------------------------------------------------
# Durable waiters (rust/core/src/seq_queue.rs, rust/bindings/src/durable.rs)
# --------------------------------------------------------------------------

@final
class DurableFutures:
    """Futures waiting for commit sequence numbers to become durable.

    Futures are created as ``future_type(loop=loop)`` and resolved (with
    ``None``) in ascending sequence order by :meth:`release`.
    """

    def __new__(
        cls,
        future_type: Callable[..., asyncio.Future[Any]],
        loop: asyncio.AbstractEventLoop,
        durable: int,
        immediate: bool = False,
    ) -> DurableFutures: ...
    @property
    def durable(self) -> int:
        """The highest sequence number released so far."""

    def future_for(self, seq: int) -> asyncio.Future[None] | None:
        """A future resolved once ``seq`` is durable, or ``None`` if it already
        is (or ``immediate`` was set); raises the error given to :meth:`fail`."""

    def release(self, durable: int, limit: int | None = None) -> int:
        """Resolve the futures waiting for a number ``<= durable``, the oldest
        ``limit`` of them if given (cancelled ones are skipped); how many were
        resolved."""

    @property
    def ready(self) -> int:
        """Futures whose number is durable but not yet resolved (left by a ``limit``)."""

    def fail(self, error: BaseException) -> int:
        """Fail every waiting future with ``error``, and every later
        :meth:`future_for`; how many were failed."""

    def __len__(self) -> int: ...

# --------------------------------------------------------------------------
# Mailbox (rust/core/src/mailbox.rs, rust/bindings/src/mailbox.rs)
# --------------------------------------------------------------------------

@final
class Mailbox:
    """Per-object FIFO of event tokens enforcing one running event per object.

    Sharded by object id hash; safe to share between threads.
    """

    def __new__(cls, max_pending: int = 1000, shards: int = 64) -> Mailbox: ...
    def push(self, object_id: bytes, token: int) -> bool:
        """Offer an event. ``True``: the object was idle and is now running this
        event. ``False``: queued behind the running one. Raises
        ``OverloadedError`` if ``max_pending`` events are already queued."""

    def finish(self, object_id: bytes) -> int | None:
        """End the running event: the next queued token (the object stays
        running it) or ``None`` (the object is now idle)."""

    def cancel(self, object_id: bytes, token: int) -> bool:
        """Remove a still-queued token; ``False`` if it was not queued."""

    def depth(self, object_id: bytes) -> int:
        """Events queued behind the running one."""

    def is_idle(self, object_id: bytes) -> bool:
        """Whether no event runs for ``object_id`` (``state(...) == "idle"``, cheaper)."""

    def state(self, object_id: bytes) -> str:
        """``"idle"`` (no event runs), ``"running"`` (one event runs, none
        waits) or ``"queued"`` (one event runs and others wait behind it)."""

    def total_depth(self) -> int:
        """Queued events over all objects."""

    def __len__(self) -> int:
        """Objects not idle: running an event, with or without queued ones."""

# --------------------------------------------------------------------------
# Timer wheel (rust/core/src/wheel/, rust/bindings/src/wheel.rs)
# --------------------------------------------------------------------------

@final
class TimerWheel:
    """Hierarchical hashed timer wheel of 1 ms resolution holding deadlines
    (epoch ms) for integer tokens; one deadline per token."""

    def __new__(cls, now_ms: int) -> TimerWheel: ...
    def set(self, token: int, when_ms: int) -> None:
        """Set or replace the deadline of ``token`` (O(1))."""

    def set_many(self, entries: Sequence[tuple[int, int]]) -> None:
        """``set`` for many ``(token, when_ms)`` pairs in one call."""

    def cancel(self, token: int) -> bool:
        """Remove ``token``'s deadline; ``False`` if it had none (O(1))."""

    def get(self, token: int) -> int | None:
        """The deadline of ``token``, or ``None``."""

    def next_deadline(self) -> int | None:
        """When to call :meth:`advance` next (epoch ms), ``None`` if empty; never
        after the earliest deadline. Exact for overdue deadlines (a time in the
        past: call now) and within 64 ms of the wheel's time, else a lower bound
        (the start of the earliest occupied slot), so a caller re-arms after each
        ``advance`` and converges on the exact time in at most six steps."""

    def advance(self, now_ms: int) -> list[int]:
        """Remove and return every token due at or before ``now_ms``, earliest first."""

    def memory_bytes(self) -> int:
        """Heap bytes the wheel uses."""

    def __len__(self) -> int: ...
