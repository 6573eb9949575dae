"""``Storage``: an object's synchronous, transactional key-value store.

Reads are served from memory (a per-object cache in front of the engine).
Writes land in the cache at once and are collected as *pending*; the runtime
commits all pending writes of a turn as one atomic batch when the turn ends
(write coalescing). ``transaction()`` rolls its own writes back on exception.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Final, NamedTuple, cast

from stead import codec
from stead._core import Engine
from stead._writelog import ALARM, WriteLog, either
from stead.codec import fast_decode, fast_encode
from stead.errors import LimitError, StorageError

__all__ = ["INTERNAL_PREFIX", "MAX_KEY_BYTES", "AlarmChange", "RollbackWatch", "Storage"]

MAX_KEY_BYTES = 2048
# UTF-8 never contains 0xFF, so internal keys can never collide with user keys
# and sort after all of them: user listings stop at this byte.
INTERNAL_PREFIX = b"\xff"
NAME_KEY = b"\xffname"
# The per-object cache is dropped when it grows past this many bytes: values,
# keys and each entry's own cost, so a busy object reading keys that do not
# exist (an idempotency check) cannot grow it without bound on misses.
_CACHE_BUDGET = 1 << 20
# What one entry costs beside its key and value (a dict slot, two bytes headers).
_CACHE_ENTRY_BYTES = 100
# Compared by identity: no cached value is this object.
_MISSING: Final = cast(bytes, object())


def _cache_cost(cache: dict[bytes, bytes | None]) -> int:
    return sum(
        len(key) + _CACHE_ENTRY_BYTES + (0 if raw is None else len(raw))
        for key, raw in cache.items()
    )


class AlarmChange(NamedTuple):
    """A committed change to the object's alarm: a time in epoch ms, or ``None`` (deleted)."""

    when_ms: int | None


class RollbackWatch:
    """Whether a rollback concerned one writer while it was watched: a block
    another writer opened rolled back (it may have dropped the watched writer's
    writes, or values it read), or one of its own blocks rolled back writes of
    another writer (``Storage.watch_rollbacks``)."""

    __slots__ = ("hit", "writer")

    def __init__(self, writer: object) -> None:
        self.writer = writer
        self.hit = False


class _Savepoint:
    """An open ``transaction()`` block: who opened it and where it starts in the
    write log (``stead._writelog``). A rollback takes back the opener's writes
    from there on, and only those: other writers' writes may have been
    acknowledged. Nothing else is kept: every value a rollback restores or a
    commit sends is replayed from the log, so no copy can go stale."""

    __slots__ = ("opener", "own_callbacks", "start")

    def __init__(self, opener: object, start: int) -> None:
        self.opener = opener
        self.start = start
        # after_commit callbacks the opener added in the block: a rollback drops them.
        self.own_callbacks: tuple[Callable[[int], None], ...] = ()


# Encoded forms of recently used short keys: most objects use a handful of
# fixed key names, and the hot path (get/put) then skips a call and an encode.
_encoded_keys: dict[str, bytes] = {}
_ENCODED_KEYS_MAX = 4096
_ENCODED_KEY_MAX_BYTES = 64


def _check_key(key: str) -> bytes:
    if key.__class__ is not str and not isinstance(key, str):
        raise TypeError(f"storage keys are str, not {type(key).__name__}")
    encoded = _utf8(key, "storage keys")
    if 0 < len(encoded) <= MAX_KEY_BYTES:
        if len(encoded) <= _ENCODED_KEY_MAX_BYTES and key.__class__ is str:
            if len(_encoded_keys) >= _ENCODED_KEYS_MAX:
                _encoded_keys.clear()
            _encoded_keys[key] = encoded
        return encoded
    raise LimitError(f"storage keys are 1 to {MAX_KEY_BYTES} UTF-8 bytes, got {len(encoded)}")


def _utf8(text: str, what: str) -> bytes:
    """``text`` in UTF-8; ``LimitError`` for what UTF-8 cannot hold (lone surrogates)."""
    try:
        return text.encode()
    except UnicodeEncodeError as error:
        raise LimitError(f"{what} must be valid UTF-8: {error.reason} at {error.start}") from None


def _bound(value: str | None, name: str) -> bytes | None:
    """A ``list()`` bound in engine terms."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"list({name}=...) takes a str, not {type(value).__name__}")
    return _utf8(value, f"list({name}=...)")


# Alarm times are kept in epoch ms; anything past the end of year 9999 (what a
# datetime can say) is refused as it is set, not when the turn commits.
_MAX_ALARM_MS = 253_402_300_800_000


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
# Float epoch seconds times 1000 carry up to ~0.0004 ms of rounding error (a
# time read back from get_alarm() is k/1000 for an integer k): a time that close
# above a whole ms is that ms, so set_alarm(get_alarm()) keeps the time.
_MS_SLACK = 1e-3


def _alarm_ms(when: float | datetime) -> int:
    """``when`` in epoch ms, rounded up (an alarm never runs early); ``ValueError``
    past the end of year 9999."""
    if isinstance(when, datetime):
        if when.tzinfo is None:  # local time, as datetime.timestamp() reads it
            ms = math.ceil(when.timestamp() * 1000 - _MS_SLACK)
        else:  # exact: whole microseconds, no float on the way
            ms = -(-((when - _EPOCH) // _MICROSECOND) // 1000)
    elif isinstance(when, bool) or not isinstance(when, (int, float)):
        raise TypeError(f"alarm times are epoch seconds or datetime, not {type(when).__name__}")
    elif not -_MAX_ALARM_MS <= when * 1000 < _MAX_ALARM_MS:  # NaN fails too
        raise ValueError(f"alarm time {when!r} is not epoch seconds before the year 10000")
    else:
        ms = math.ceil(when * 1000 - _MS_SLACK)
    if not -_MAX_ALARM_MS <= ms < _MAX_ALARM_MS:
        raise ValueError(f"alarm time {when!r} is not before the year 10000")
    return ms


class Storage:
    """The storage of one object (``ctx.storage``). Synchronous unless marked async."""

    # One per resident object: slots keep it small and out of the GC's dict scans.
    __slots__ = (
        "_alarm",
        "_alarm_settlers",
        "_cache",
        "_cache_bytes",
        "_cleared",
        "_committed_callbacks",
        "_delete_all",
        "_detached",
        "_engine",
        "_log",
        "_max_value_bytes",
        "_name",
        "_name_recorded",
        "_object_key",
        "_on_alarm_committed",
        "_pending",
        "_pending_deletes",
        "_savepoints",
        "_syncer",
        "_watches",
        "_writer",
        "last_seq",
    )

    def __init__(
        self,
        engine: Engine,
        object_key: bytes,
        *,
        name: str | None,
        max_value_bytes: int,
        syncer: Callable[[bytes, Storage], Awaitable[None]] | None = None,
        on_alarm_committed: Callable[[bytes, int | None], None] | None = None,
        writer: Callable[[], object] | None = None,
    ) -> None:
        self._engine = engine
        self._object_key = object_key
        self._name = name
        self._max_value_bytes = max_value_bytes
        self._syncer = syncer
        # Told (object key, epoch ms or None) after a batch that set or deleted the alarm.
        self._on_alarm_committed = on_alarm_committed
        # key bytes -> encoded value, None = known absent.
        self._cache: dict[bytes, bytes | None] = {}
        self._cache_bytes = 0
        # key bytes -> encoded value or None (delete), in write order.
        self._pending: dict[bytes, bytes | None] = {}
        # Whether _pending may hold a delete (a batch that deletes may leave
        # only the name, which must then go too); a flag, not a scan of the
        # values, so the common turn's commit stays a single engine call.
        self._pending_deletes = False
        self._delete_all = False
        # After delete_all nothing in the engine counts until it is committed.
        self._cleared = False
        # Open transaction() blocks, outermost first (a tuple: no list per object).
        self._savepoints: tuple[_Savepoint, ...] = ()
        self._alarm: AlarmChange | None = None
        # Called before the next full commit to set the alarm (settle_alarm_before_commit).
        self._alarm_settlers: tuple[Callable[[], None], ...] = ()
        # Told the seq of the batch that commits the writes made before they
        # were added (see after_commit); a tuple: no list per object.
        self._committed_callbacks: tuple[Callable[[int], None], ...] = ()
        self._name_recorded: bool | None = None
        #: The sequence number of the newest batch this object's reads may stand
        #: on (0: none): its newest committed batch, or, until it commits one,
        #: the engine's newest when the instance was built; read-only. A turn
        #: that writes nothing still waits for it to be durable before its result
        #: leaves (it may have read those writes).
        self.last_seq = 0
        # Who is writing now (the runtime's running event or work; None: one
        # writer), asked only while a transaction() block is open; and the
        # writers whose rollbacks are watched.
        self._writer = writer
        self._watches: tuple[RollbackWatch, ...] = ()
        # What the instance was (see ``detach``); None while it is live.
        self._detached: str | None = None
        # While transaction() blocks are open: every write, for rollbacks that must
        # take back one writer's writes only and commits that must hold back the
        # committer's open blocks.
        self._log: WriteLog | None = None

    # -- reads ---------------------------------------------------------------

    def _raw(self, key: bytes) -> bytes | None:
        cache = self._cache
        if key in cache:
            return cache[key]
        pending = self._pending
        if key in pending:  # written, and dropped from the cache over budget
            value = pending[key]
        else:
            value = None if self._cleared else self._engine.get(self._object_key, key)
        self._remember(key, value)
        return value

    def _remember(self, key: bytes, value: bytes | None) -> None:
        cache = self._cache
        if self._cache_bytes > _CACHE_BUDGET:
            # Over budget: start afresh (pending writes are read from _pending).
            cache = self._cache = {}
            self._cache_bytes = 0
        old = cache.get(key, _MISSING)
        cache[key] = value
        # Counted by what is held: an overwritten value no longer counts.
        if old is _MISSING:
            self._cache_bytes += len(key) + _CACHE_ENTRY_BYTES
        elif old is not None:
            self._cache_bytes -= len(old)
        if value is not None:
            self._cache_bytes += len(value)

    def get(self, key: str, default: Any = None, *, type: Any = None) -> Any:
        """The value of ``key`` (decoded into ``type`` if given), or ``default``."""
        try:
            encoded = _encoded_keys[key]
        except (KeyError, TypeError):  # not seen lately, or not a str at all
            encoded = _check_key(key)
        cache = self._cache
        raw = cache[encoded] if encoded in cache else self._raw(encoded)
        if raw is None:
            return default
        if type is not None:
            return codec.decode(raw, type)
        try:
            return fast_decode(raw)
        except Exception:  # only a msgspec.Raw put can store what does not decode
            return codec.decode(raw)  # raises SerializationError

    def get_many(self, keys: Iterable[str], *, type: Any = None) -> dict[str, Any]:
        """``{key: value}`` for the keys that exist, in the order given."""
        wanted = [(key, _check_key(key)) for key in keys]
        cache = self._cache
        # Values are taken as found, not re-read from the cache afterwards:
        # remembering one fetched value may drop another when over budget.
        pending = self._pending
        found = {encoded: cache[encoded] for _, encoded in wanted if encoded in cache}
        found.update((encoded, pending[encoded]) for _, encoded in wanted if encoded in pending)
        missing = [encoded for _, encoded in wanted if encoded not in found]
        if missing:
            fetched: Iterable[bytes | None] = (
                [None] * len(missing)
                if self._cleared
                else self._engine.get_many(self._object_key, missing)
            )
            for encoded, value in zip(missing, fetched, strict=True):
                found[encoded] = value
                self._remember(encoded, value)
        result: dict[str, Any] = {}
        for key, encoded in wanted:
            raw = found[encoded]
            if raw is not None:
                result[key] = codec.decode(raw, type)
        return result

    def list(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        start_after: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
        type: Any = None,
    ) -> dict[str, Any]:
        """Entries ordered by UTF-8 key bytes; ``start`` inclusive, ``end`` exclusive."""
        if limit is not None:
            if not isinstance(limit, int) or isinstance(limit, bool):
                raise TypeError(
                    f"limit must be an int or None, not {builtins.type(limit).__name__}"
                )
            if limit < 0:
                raise ValueError("limit must be >= 0")
        bounds = _Bounds(prefix, start, start_after, end)
        entries = self._merged_entries(bounds, reverse, limit)
        return {key.decode(): codec.decode(raw, type) for key, raw in entries}

    def _merged_entries(
        self, bounds: _Bounds, reverse: bool, limit: int | None
    ) -> builtins.list[tuple[bytes, bytes]]:
        overlay = {k: v for k, v in self._pending.items() if bounds.contains(k)}
        stored: builtins.list[tuple[bytes, bytes]] = []
        if not self._cleared:
            # Deleted keys may hide stored ones: ask for enough to fill the limit.
            fetch = None if limit is None else limit + len(overlay)
            stored = self._engine.list(
                self._object_key,
                prefix=bounds.prefix,
                start=bounds.start,
                start_after=bounds.start_after,
                end=bounds.end,
                reverse=reverse,
                limit=fetch,
            )
        if not overlay:
            return stored if limit is None else stored[:limit]
        merged = dict(stored)
        for key, value in overlay.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        ordered = sorted(merged.items(), reverse=reverse)
        return ordered if limit is None else ordered[:limit]

    # -- writes --------------------------------------------------------------

    def _encode_value(self, value: Any) -> bytes:
        raw = codec.encode(value)
        if len(raw) > self._max_value_bytes:
            raise LimitError(
                f"value of {len(raw)} bytes is over the {self._max_value_bytes}-byte limit"
            )
        return raw

    def _write(self, key: bytes, raw: bytes | None) -> None:
        if self._detached is not None:
            raise self._refused()
        if self._savepoints:
            self._note_write(key, raw)
        if raw is None:
            self._pending_deletes = True
        self._pending[key] = raw
        self._remember(key, raw)

    def _note_write(self, key: bytes, value: bytes | int | None) -> None:
        """A write about to happen with blocks open (``key`` ALARM: the alarm)."""
        log = self._log
        assert log is not None
        writer = self.current_writer()
        base: bytes | int | None = None
        if not log.knows(key):
            base = self._visible_alarm_ms() if key == ALARM else self._raw(key)
        log.record(writer, key, value, base)

    def _note_delete_all(self) -> None:
        """delete_all() with blocks open: a write of every key and the alarm."""
        log = self._log
        assert log is not None
        writer = self.current_writer()
        visible: builtins.list[tuple[bytes, bytes | int | None]] = []
        # Not the name: _commit_batch keeps it in step with what is stored (a
        # rollback's replay must neither delete it under stored keys nor write
        # it back alone).
        visible.extend(
            entry
            for entry in self._merged_entries(_Bounds.raw(b""), False, None)
            if entry[0] != NAME_KEY
        )
        # Pending deletes too: taken back, the wipe must not bring back their keys.
        visible.extend((key, None) for key, raw in self._pending.items() if raw is None)
        visible.append((ALARM, self._visible_alarm_ms()))
        log.record_wipe(writer, visible)

    def current_writer(self) -> object:
        """Who writes now (see ``writer``); None if the storage has one writer."""
        return None if self._writer is None else self._writer()

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` (committed when the turn ends)."""
        try:
            encoded = _encoded_keys[key]
        except (KeyError, TypeError):
            encoded = _check_key(key)
        try:
            raw = fast_encode(value)
        except Exception:
            raw = codec.encode(value)  # raises SerializationError with the reason
        if len(raw) > self._max_value_bytes:
            self._encode_value(value)  # raises LimitError with the message
        if self._detached is not None:
            raise self._refused()
        if self._savepoints:
            self._note_write(encoded, raw)
        self._pending[encoded] = raw
        if self._cache_bytes > _CACHE_BUDGET:
            self._remember(encoded, raw)
        else:  # _remember, inlined: put is the hot path of most handlers
            cache = self._cache
            old = cache.get(encoded, _MISSING)
            cache[encoded] = raw
            if old is _MISSING:
                self._cache_bytes += len(encoded) + _CACHE_ENTRY_BYTES + len(raw)
            else:
                self._cache_bytes += len(raw) if old is None else len(raw) - len(old)

    def put_many(self, entries: Mapping[str, Any]) -> None:
        """Store every entry, or none if any key or value is invalid."""
        checked = [(_check_key(key), self._encode_value(value)) for key, value in entries.items()]
        for encoded, raw in checked:
            self._write(encoded, raw)

    def delete(self, key: str) -> bool:
        """Delete ``key``; whether it existed."""
        encoded = _check_key(key)
        existed = self._raw(encoded) is not None
        self._write(encoded, None)
        return existed

    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete ``keys``; how many existed."""
        encoded = [_check_key(key) for key in keys]
        existing = self._existing(encoded)
        for key in encoded:
            self._write(key, None)
        return existing

    def _existing(self, keys: builtins.list[bytes]) -> int:
        return sum(1 for key in dict.fromkeys(keys) if self._raw(key) is not None)

    def delete_all(self) -> None:
        """Delete every key of the object and its alarm."""
        if self._detached is not None:
            raise self._refused()
        if self._savepoints:
            self._note_delete_all()
        self._pending.clear()
        self._cache.clear()
        self._cache_bytes = 0
        self._delete_all = True
        self._cleared = True
        self._alarm = AlarmChange(None)

    @contextmanager
    def transaction(self) -> Iterator[Storage]:
        """Writes inside the block are rolled back if it raises.

        They join the turn's batch when the block ends: a commit in the middle
        of the turn (an outbound call's output gate, ``sync()``) sends only the
        writes made outside every open block, so a rollback never meets a write
        that is already on its way to disk.
        """
        if not self._savepoints:
            self._log = WriteLog(wipe_before_log=self._delete_all)
        log = self._log
        assert log is not None
        savepoint = _Savepoint(self.current_writer(), len(log))
        self._savepoints = (*self._savepoints, savepoint)
        try:
            yield self
        except BaseException:
            # Detached: nothing will be committed, and later writes are refused.
            foreign = self._detached is None and self._roll_back(savepoint, log)
            for watch in self._watches:
                if savepoint.opener is not watch.writer or foreign:
                    watch.hit = True
            raise
        finally:
            # By identity: blocks of a reentrant object's events may end out of order.
            self._savepoints = tuple(s for s in self._savepoints if s is not savepoint)
            if not self._savepoints:
                self._log = None

    def _roll_back(self, savepoint: _Savepoint, log: WriteLog) -> bool:
        """Take back the writes the block's opener made since it opened, and only
        those: each key they touched is replayed from the writes still standing.
        If any of them may have been committed (by another writer's commit), the
        engine gets the keys' committed values back at once, as a batch of its
        own: it restores committed state, so no turn need carry it, nor can an
        abort of one drop it. Whether another writer wrote in the block."""
        keys, wiped, sent, foreign = log.kill(savepoint.opener, savepoint.start)
        own = savepoint.own_callbacks
        if own:
            self._committed_callbacks = tuple(c for c in self._committed_callbacks if c not in own)
        if wiped:
            # What reads found with the delete_all pending may be wrong now.
            self._cache = {key: raw for key, raw in self._cache.items() if log.knows(key)}
            self._cache_bytes = _cache_cost(self._cache)
        for key in keys:
            self._show(key, log.replay(key))
        if wiped:
            self._delete_all = self._cleared = log.last_wipe() > log.wipe_sent
        if sent:
            self._write_back(keys, log)
        if not self._delete_all:
            # Nothing left to send for a key back at the value the engine holds.
            for key in keys:
                if key == ALARM:
                    if self._alarm is not None and self._alarm.when_ms == self._stored(ALARM):
                        self._alarm = None
                elif key in self._pending and self._pending[key] == self._stored(key):
                    del self._pending[key]
        return foreign

    def _show(self, key: bytes, value: bytes | int | None) -> None:
        """Make reads show ``value`` for ``key`` (ALARM: the alarm), pending."""
        if key == ALARM:
            assert value is None or isinstance(value, int)
            self._alarm = AlarmChange(value)
        else:
            assert value is None or isinstance(value, bytes)
            if value is None:
                self._pending_deletes = True
            self._pending[key] = value
            self._remember(key, value)

    def _write_back(self, keys: set[bytes], log: WriteLog) -> None:
        """After a rollback: give ``keys`` in the engine the values of the writes
        that were committed and still stand (none of an open block's, of any
        writer: those are not the engine's to keep)."""
        held = log.held(self._open_block_starts(lambda opener: True))
        batch: dict[bytes, bytes | int | None] = {}
        for key in keys:
            value = log.replay(key, either(log.unsent_for(key), held))
            if value != self._stored(key):
                batch[key] = value
        if batch:
            for key in batch:
                log.mark_unsent(key, held)  # open blocks' writes of it: out of the engine
            self._send(batch, None, log)

    def _open_block_starts(self, counts: Callable[[object], bool]) -> dict[object, int]:
        """Where the outermost open block of each opener ``counts`` keeps starts."""
        starts: dict[object, int] = {}
        for savepoint in self._savepoints:
            if counts(savepoint.opener):
                start = starts.get(savepoint.opener)
                if start is None or savepoint.start < start:
                    starts[savepoint.opener] = savepoint.start
        return starts

    def _stored(self, key: bytes) -> bytes | int | None:
        """What the engine holds for ``key`` (ALARM: the alarm, epoch ms)."""
        if key == ALARM:
            return self._engine.get_alarm(self._object_key)
        return self._engine.get(self._object_key, key)

    def _send(self, batch: dict[bytes, bytes | int | None], wipe: int | None, log: WriteLog) -> int:
        """Commit ``batch`` (ALARM: the alarm) with blocks open, after a delete_all
        if ``wipe`` (the log position of the one sent); its seq. What stays pending
        is then what reads show and the engine does not hold."""
        keys = {*log.keys(), *self._pending}
        shown_alarm = log.replay(ALARM) if log.knows(ALARM) else self._visible_alarm_ms()
        assert shown_alarm is None or isinstance(shown_alarm, int)
        alarm: AlarmChange | None = None
        if ALARM in batch:
            when = batch.pop(ALARM)
            assert when is None or isinstance(when, int)
            alarm = AlarmChange(when)
        writes: dict[bytes, bytes | None] = batch  # type: ignore[assignment]
        seq = self._commit_batch(writes, alarm, wipe is not None)
        if wipe is not None:
            log.wipe_sent = wipe
        wipe_pending = self._delete_all = self._cleared = log.last_wipe() > log.wipe_sent
        pending: dict[bytes, bytes | None] = {}
        for key in keys:
            if key == ALARM:
                continue
            shown = log.replay(key) if log.knows(key) else self._pending[key]
            assert shown is None or isinstance(shown, bytes)
            # A delete_all still pending goes first: every key shown must follow it.
            if (shown is not None) if wipe_pending else shown != self._stored(key):
                pending[key] = shown
        self._pending = pending
        self._pending_deletes = None in pending.values()
        stored_alarm = self._engine.get_alarm(self._object_key)
        self._alarm = (
            AlarmChange(shown_alarm) if wipe_pending or shown_alarm != stored_alarm else None
        )
        if alarm is not None:
            self._announce(alarm)
        return seq

    # -- alarms --------------------------------------------------------------

    def get_alarm(self) -> float | None:
        """The alarm time in epoch seconds, or ``None``."""
        when = self._visible_alarm_ms()
        return None if when is None else when / 1000

    def _visible_alarm_ms(self) -> int | None:
        if self._alarm is not None:
            return self._alarm.when_ms
        return self._engine.get_alarm(self._object_key)

    def set_alarm(self, when: float | datetime) -> None:
        """Run ``alarm()`` at (or after) ``when``: epoch seconds or a ``datetime``."""
        when_ms = _alarm_ms(when)
        if self._detached is not None:
            raise self._refused()
        if self._savepoints:
            self._note_write(ALARM, when_ms)
        self._alarm = AlarmChange(when_ms)

    def delete_alarm(self) -> None:
        """Cancel the alarm, if any."""
        if self._detached is not None:
            raise self._refused()
        if self._savepoints:
            self._note_write(ALARM, None)
        self._alarm = AlarmChange(None)

    def settle_alarm_before_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once, just before the next commit of all pending
        writes with no ``transaction()`` block open (the end of the turn, or a
        mid-turn one): it sets the alarm from what the
        turn wrote, once per turn rather than once per write (an ``Agent``
        re-arms for its earliest schedule so). It may write; it must not raise.
        Meant for changes that can only leave the alarm early, never late: a
        commit before it runs stores the alarm as it was."""
        self._alarm_settlers = (*self._alarm_settlers, callback)

    def _settle_alarm(self) -> None:
        settlers, self._alarm_settlers = self._alarm_settlers, ()
        for settle in settlers:
            settle()

    @property
    def alarm_changed(self) -> bool:
        """Whether this turn set or deleted the alarm (not yet committed)."""
        return self._alarm is not None

    # -- internal keys (used by stead itself, never listed) ------------------

    def get_internal(self, key: bytes, default: Any = None, *, type: Any = None) -> Any:
        """stead's own key ``key`` (for the Agent and other built-in layers): like
        ``get``, in a key space user keys never reach (``list()`` and ``stead
        inspect``'s values leave it out). Not for application code."""
        raw = self._raw(INTERNAL_PREFIX + key)
        return default if raw is None else codec.decode(raw, type)

    def put_internal(self, key: bytes, value: Any, *, limited: bool = True) -> None:
        """Write one of stead's own records. ``limited``: the user's
        ``max_value_bytes`` applies (records holding user values: Agent state,
        schedule payloads); stead's fixed-size bookkeeping passes ``False``, so
        a small limit cannot break it (the engine's own limit still applies)."""
        raw = self._encode_value(value) if limited else codec.encode(value)
        self._write(INTERNAL_PREFIX + key, raw)

    def delete_internal(self, key: bytes) -> None:
        """Delete stead's own key ``key`` (see ``get_internal``)."""
        self._write(INTERNAL_PREFIX + key, None)

    def list_internal(
        self, prefix: bytes, *, type: Any = None, limit: int | None = None
    ) -> builtins.list[Any]:
        """Values of stead's own keys starting with ``prefix``, in key order."""
        bounds = _Bounds.raw(INTERNAL_PREFIX + prefix)
        return [codec.decode(raw, type) for _, raw in self._merged_entries(bounds, False, limit)]

    def after_commit(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(seq)`` when the writes made so far are committed, with
        the seq of their batch (wait for it to be durable before acting on them).

        Never called if they are not: the commit is refused, the object is reset
        or aborted first, or a ``transaction()`` block open now rolls back. With
        a block open, a commit in the middle of the turn does not count (the
        block's writes are not in it), nor does another writer's commit that
        sends them while the block is open; the first commit after it ends does.
        """
        self._committed_callbacks = (*self._committed_callbacks, callback)
        if self._savepoints:
            writer = self.current_writer()
            for savepoint in self._savepoints:
                if savepoint.opener is writer:
                    savepoint.own_callbacks = (*savepoint.own_callbacks, callback)

    def watch_rollbacks(self, writer: object) -> RollbackWatch:
        """Record, until ``unwatch_rollbacks``, whether a rollback concerns ``writer``
        (a nested call back, whose writes its caller's turn shares)."""
        watch = RollbackWatch(writer)
        self._watches = (*self._watches, watch)
        return watch

    def unwatch_rollbacks(self, watch: RollbackWatch) -> None:
        """Stop the recording ``watch_rollbacks`` started."""
        self._watches = tuple(w for w in self._watches if w is not watch)

    # -- commit --------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        """Whether a ``transaction()`` block is open."""
        return bool(self._savepoints)

    def detach(self, why: str) -> None:
        """Refuse every later write with ``StorageError``: the instance was ``why``
        (evicted, reset), and nothing would ever commit what it wrote."""
        self._detached = why
        self._writer = None  # the runtime's, which may refer back to this storage

    def _refused(self) -> StorageError:
        # Worded here, when a write is refused, not at every eviction.
        name = "" if self._name is None else f" of {self._name!r}"
        return StorageError(
            f"this instance{name} was {self._detached}: its writes are not kept "
            "(code that outlives its event should run as ctx.wait_until work)"
        )

    @property
    def has_pending(self) -> bool:
        """Whether there are writes not yet handed to the engine."""
        return bool(self._pending) or self._delete_all or self._alarm is not None

    def commit(self) -> int:
        """Hand the pending writes to the engine as one atomic batch; the sequence
        number a caller must see durable: this batch's, or with nothing to write
        the object's newest earlier batch (``last_seq``; 0: none yet), since this
        turn may have read its writes.

        A batch that changes the alarm is announced to ``on_alarm_committed``.
        If the engine refuses the batch, the pending writes stay and the error
        propagates (the runtime then resets the object).
        """
        if self._alarm_settlers and not self._savepoints:
            self._settle_alarm()
        pending, alarm, delete_all = self._pending, self._alarm, self._delete_all
        log = self._log
        if log is not None:
            # Open blocks' writes go too (see commit_outside_transactions): their
            # rollbacks must now write back what they take back.
            log.mark_sent()
            if delete_all:
                log.wipe_sent = log.last_wipe()
        if alarm is None and not delete_all and not self._committed_callbacks:
            if not pending:
                return self.last_seq
            if self._name is None or (self._name_recorded is True and not self._pending_deletes):
                # The common turn: plain writes, nothing else to record (a
                # delete may leave only the name, which must then go too).
                seq = self.last_seq = self._engine.commit_writes(self._object_key, pending)
                self._pending = {}
                self._pending_deletes = False
                return seq
        if pending or alarm is not None or delete_all:
            seq = self._commit_batch(pending, alarm, delete_all)
        else:
            seq = self.last_seq
        self._pending = {}
        self._pending_deletes = False
        self._delete_all = self._cleared = False
        self._alarm = None
        self._announce(alarm)
        self._tell_committed(seq)
        return seq

    def _tell_committed(self, seq: int) -> None:
        callbacks, self._committed_callbacks = self._committed_callbacks, ()
        if self._savepoints:
            # Added in a block still open (another writer's commit sent its
            # writes): told at a later commit once it ends, never if it rolls back.
            in_blocks = {c for savepoint in self._savepoints for c in savepoint.own_callbacks}
            if in_blocks:
                self._committed_callbacks = tuple(c for c in callbacks if c in in_blocks)
                callbacks = tuple(c for c in callbacks if c not in in_blocks)
        for callback in callbacks:
            callback(seq)

    def commit_outside_transactions(
        self, opened_by_other: Callable[[object], bool] = lambda opener: False
    ) -> int:
        """:meth:`commit` in the middle of a turn: only the writes made outside
        every open ``transaction()`` block (all of them when none is open); the
        blocks' writes stay pending, to commit when the turn ends or to roll back.

        Blocks whose opener ``opened_by_other`` says is other work (not the
        committer's, nor its turn's) hold nothing back: the committer's own
        writes made since they opened must go. Their writes go too, and their
        rollbacks write back what they take back.
        """
        starts = self._open_block_starts(lambda opener: not opened_by_other(opener))
        if not starts:
            return self.commit()
        log = self._log
        assert log is not None
        # What the engine gets: every write standing but those of the held blocks,
        # as a replay of the log (other writers may have committed newer values
        # meanwhile, or rolled back theirs).
        held = log.held(starts)
        wipe = log.last_wipe(held)
        send_wipe = wipe > log.wipe_sent
        batch: dict[bytes, bytes | int | None] = {}
        for key in {*log.keys(), *self._pending}:
            if key == ALARM:
                continue
            value = log.replay(key, held) if log.knows(key) else self._pending[key]
            if (value is not None) if send_wipe else value != self._stored(key):
                batch[key] = value
        alarm = log.replay(ALARM, held) if log.knows(ALARM) else self._visible_alarm_ms()
        if send_wipe or alarm != self._stored(ALARM):
            batch[ALARM] = alarm
        # What the engine holds now (after the batch, if any) is the replay of
        # every live entry but the held ones: those are sent.
        if not batch and not send_wipe:
            log.mark_sent(held)
            return self.last_seq
        seq = self._send(batch, wipe if send_wipe else None, log)
        log.mark_sent(held)
        return seq

    def _commit_batch(
        self, pending: dict[bytes, bytes | None], alarm: AlarmChange | None, delete_all: bool
    ) -> int:
        """Send one batch to the engine (recording the name with the first one that
        stores something, deleting it with one that leaves nothing else); its
        seq. Leaves the pending state to the caller."""
        puts: builtins.list[tuple[bytes, bytes]] = []
        deletes: builtins.list[bytes] = []
        for key, raw in pending.items():
            if raw is None:
                deletes.append(key)
            else:
                puts.append((key, raw))
        # The name goes with the first batch that leaves something stored, an
        # alarm too: an alarm delivered after a restart must know whose it is.
        stores = bool(puts) or (alarm is not None and alarm.when_ms is not None)
        drops_name = False
        if (
            stores
            and self._name is not None
            # A batch that deletes everything deletes the name too.
            and (delete_all or (self._name_recorded is not True and not self._name_is_recorded()))
        ):
            puts.append((NAME_KEY, codec.encode(self._name)))
        elif (
            not stores
            and not delete_all
            and (deletes or alarm is not None)  # it deletes keys or the alarm
            and self._name is not None
            and self._name_recorded is not False
            and self._leaves_only_name(deletes, alarm)
        ):
            # Nothing else stays: the name alone would keep the object in the
            # engine (its index, every compaction, every reopen) for good.
            deletes.append(NAME_KEY)
            drops_name = True
        if alarm is None and not delete_all:
            seq = self._engine.commit(self._object_key, puts, deletes)
        else:
            seq = self._engine.commit(
                self._object_key,
                puts,
                deletes,
                delete_all=delete_all,
                alarm=None if alarm is None else alarm.when_ms,
                delete_alarm=alarm is not None and alarm.when_ms is None,
            )
        if stores and self._name is not None:
            self._name_recorded = True
        elif delete_all or drops_name:
            self._name_recorded = False
        self.last_seq = seq
        return seq

    def _leaves_only_name(self, deletes: builtins.list[bytes], alarm: AlarmChange | None) -> bool:
        """Whether the engine holds the name and, once ``deletes`` and ``alarm``
        (a deletion, or None) are applied, nothing else: no key, no alarm."""
        engine, object_key = self._engine, self._object_key
        if alarm is None and engine.get_alarm(object_key) is not None:
            return False
        # A key survives if it lies between the keys that go: probe each gap for
        # one (at most len(deletes) + 2 lookups; never reading a value that goes).
        lower: bytes | None = None
        for bound in sorted({*deletes, NAME_KEY}):
            if engine.list(object_key, start_after=lower, end=bound, limit=1):
                return False
            lower = bound
        if engine.list(object_key, start_after=lower, limit=1):
            return False
        return self._name_is_recorded()

    def _announce(self, alarm: AlarmChange | None) -> None:
        if alarm is not None and self._on_alarm_committed is not None:
            self._on_alarm_committed(self._object_key, alarm.when_ms)

    def _name_is_recorded(self) -> bool:
        if self._name_recorded is None:
            self._name_recorded = self._engine.get(self._object_key, NAME_KEY) is not None
        return self._name_recorded

    def learn_name(self, name: str | None) -> None:
        """Record ``name`` with the next write (the object was first reached by hex id)."""
        self._name = name

    async def sync(self) -> None:
        """Wait until every write made so far (this turn's too) is durable."""
        if self._syncer is not None:
            await self._syncer(self._object_key, self)


class _Bounds:
    """A key range in engine terms (bytes), user keys only unless built with ``raw``."""

    __slots__ = ("end", "prefix", "start", "start_after")

    def __init__(
        self, prefix: str | None, start: str | None, start_after: str | None, end: str | None
    ) -> None:
        self.prefix = _bound(prefix, "prefix")
        self.start = _bound(start, "start")
        self.start_after = _bound(start_after, "start_after")
        # User listings never reach the internal keys.
        end_bound = _bound(end, "end")
        self.end = INTERNAL_PREFIX if end_bound is None else min(end_bound, INTERNAL_PREFIX)

    @classmethod
    def raw(cls, prefix: bytes) -> _Bounds:
        bounds = cls(None, None, None, None)
        bounds.prefix = prefix
        bounds.end = None
        return bounds

    end: bytes | None

    def contains(self, key: bytes) -> bool:
        if self.prefix is not None and not key.startswith(self.prefix):
            return False
        if self.start is not None and key < self.start:
            return False
        if self.start_after is not None and key <= self.start_after:
            return False
        return self.end is None or key < self.end
