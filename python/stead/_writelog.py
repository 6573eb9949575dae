"""The write log an object's storage keeps while ``transaction()`` blocks are open.

Several writers may share one object's pending writes: the events of a reentrant
object, a turn and its ``ctx.wait_until`` work. A rollback must take back only its
own writer's writes made in the block, whatever the others wrote before, between
or after them; and a commit made inside a block must leave that block's writes
out, whatever the others wrote. The log records every write made while any block
is open, in order, with its writer. Every value the storage shows, sends or writes
back is a replay of it: each key's last write among the entries a rule keeps (the
live ones; the live ones that are not held back by an open block; ...), else the
value the key had when the log first saw it. Nothing is kept per block but where
it starts, so no copy can go stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Final

__all__ = ["ALARM", "BEFORE_LOG", "NO_WIPE", "Skip", "WriteLog", "either"]

#: The log's key for the object's alarm (its values: epoch ms or None).
ALARM: Final = b""  # no user or internal key is empty
# The key of a delete_all() entry: every key and the alarm become None.
_WIPE: Final = None
#: Positions of delete_all()s beside the entries': one made before the log
#: began (still pending then), and none at all.
BEFORE_LOG: Final = -1
NO_WIPE: Final = -2

#: Which entries a replay leaves out, by index (dead ones are always left out).
Skip = Callable[[int], bool]


def _keep_all(index: int) -> bool:
    return False


def either(first: Skip, second: Skip) -> Skip:
    """Leaves out what either rule leaves out."""
    return lambda index: first(index) or second(index)


class WriteLog:
    """Writes made while blocks are open, in order, and what replays them."""

    __slots__ = (
        "_alive",
        "_base",
        "_by_key",
        "_entries",
        "_wipes",
        "unsent",
        "unsent_wipe_keys",
        "wipe_before_log",
        "wipe_sent",
    )

    def __init__(self, wipe_before_log: bool) -> None:
        self._entries: list[tuple[object, bytes | None, bytes | int | None]] = []
        self._alive: list[bool] = []
        # Each key's value before its first entry (the alarm's under ALARM).
        self._base: dict[bytes, bytes | int | None] = {}
        self._by_key: dict[bytes, list[int]] = {}
        self._wipes: list[int] = []
        #: A delete_all() was pending (not committed) when the log began.
        self.wipe_before_log = wipe_before_log
        #: Entries whose effect the engine does not hold: not sent by any commit
        #: yet, or held back (or taken back out) since.
        self.unsent: set[int] = set()
        #: Sent delete_alls whose effect a write-back took out for some keys only.
        self.unsent_wipe_keys: dict[int, set[bytes]] = {}
        #: The position of the newest delete_all() a batch sent (NO_WIPE: none).
        self.wipe_sent = NO_WIPE

    def __len__(self) -> int:
        return len(self._entries)

    def knows(self, key: bytes) -> bool:
        return key in self._base

    def keys(self) -> Iterator[bytes]:
        """Every key the log has seen (the alarm's ALARM among them)."""
        return iter(self._base)

    def record(self, writer: object, key: bytes, value: bytes | int | None, base: object) -> None:
        """A write of ``key``; ``base`` is its value now (used on its first write)."""
        if key not in self._base:
            self._base[key] = base  # type: ignore[assignment]
        self._by_key.setdefault(key, []).append(len(self._entries))
        self.unsent.add(len(self._entries))
        self._entries.append((writer, key, value))
        self._alive.append(True)

    def record_wipe(
        self, writer: object, visible: Iterable[tuple[bytes, bytes | int | None]]
    ) -> None:
        """A delete_all(); ``visible``: every key's (and the alarm's) value now."""
        for key, value in visible:
            if key not in self._base:
                self._base[key] = value
                self._by_key.setdefault(key, [])
        self._wipes.append(len(self._entries))
        self.unsent.add(len(self._entries))
        self._entries.append((writer, _WIPE, None))
        self._alive.append(True)

    def kill(self, writer: object, start: int) -> tuple[set[bytes], bool, bool, bool]:
        """Mark ``writer``'s entries from ``start`` on dead: the keys to replay,
        whether a delete_all was among them (then every key), whether any of them
        had been sent to the engine, and whether another writer wrote since
        ``start``."""
        keys: set[bytes] = set()
        wiped = foreign = sent = False
        for index in range(start, len(self._entries)):
            if not self._alive[index]:
                continue
            if self._entries[index][0] is not writer:
                foreign = True
                continue
            self._alive[index] = False
            if index not in self.unsent:
                sent = True
            key = self._entries[index][1]
            if key is _WIPE:
                wiped = True
            else:
                keys.add(key)
        if wiped:
            keys.update(self._base)
        return keys, wiped, sent, foreign

    def mark_sent(self, skip: Skip = _keep_all) -> None:
        """A commit made the engine hold the replay of the live entries ``skip``
        keeps: those are sent; the others are not, even if an earlier commit
        (another writer's) had sent them."""
        if skip is _keep_all:
            self.unsent = set()
        else:
            alive = self._alive
            self.unsent = {index for index in range(len(alive)) if alive[index] and skip(index)}
        self.unsent_wipe_keys = {}  # each delete_all: sent whole, or held whole

    def mark_unsent(self, key: bytes, skip: Skip) -> None:
        """The engine got ``key``'s replay without the entries ``skip`` leaves out
        (a rollback's write-back): those are not in the engine any more, as far
        as ``key`` goes (a delete_all's effect on the other keys stays)."""
        alive = self._alive
        for index in self._by_key.get(key, ()):
            if alive[index] and skip(index):
                self.unsent.add(index)
        for index in self._wipes:
            if alive[index] and skip(index) and index not in self.unsent:
                self.unsent_wipe_keys.setdefault(index, set()).add(key)

    def unsent_for(self, key: bytes) -> Skip:
        """Which entries the engine does not hold, as far as ``key`` goes."""
        unsent, partly = self.unsent, self.unsent_wipe_keys
        if not partly:
            return unsent.__contains__
        return lambda index: index in unsent or key in partly.get(index, ())

    def held(self, starts: dict[object, int]) -> Skip:
        """What open blocks hold back: the entries of each writer in ``starts``
        from the start of its outermost open block on."""
        if not starts:
            return _keep_all
        entries = self._entries

        def skip(index: int) -> bool:
            start = starts.get(entries[index][0])
            return start is not None and index >= start

        return skip

    def replay(self, key: bytes, skip: Skip = _keep_all) -> bytes | int | None:
        """``key``'s value from the live entries ``skip`` keeps."""
        alive = self._alive
        last_write = -1
        for index in reversed(self._by_key.get(key, ())):
            if alive[index] and not skip(index):
                last_write = index
                break
        last_wipe = self.last_wipe(skip)
        if last_write < 0 and last_wipe < 0:
            # A delete_all before the log is in the base already (it hid the key).
            return self._base.get(key)
        if last_wipe > last_write:
            return None
        return self._entries[last_write][2]

    def last_wipe(self, skip: Skip = _keep_all) -> int:
        """The position of the newest live delete_all() ``skip`` keeps: an
        entry's index, BEFORE_LOG, or NO_WIPE."""
        alive = self._alive
        for index in reversed(self._wipes):
            if alive[index] and not skip(index):
                return index
        return BEFORE_LOG if self.wipe_before_log else NO_WIPE
