"""The write log an object's storage keeps while ``transaction()`` blocks are open.

Several writers may share one object's pending writes: the events of a reentrant
object, a turn and its ``ctx.wait_until`` work. A rollback must take back only its
own writer's writes made in the block, whatever the others wrote before, between
or after them. The log records every write made while any block is open, in
order, with its writer; a rollback marks its writer's entries since the block
opened dead and replays each affected key from the entries still alive (or the
value the key had when the log first saw it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = ["ALARM", "WriteLog"]

#: The log's key for the object's alarm (its values: epoch ms or None).
ALARM: Final = b""  # no user or internal key is empty
# The key of a delete_all() entry: every key and the alarm become None.
_WIPE: Final = None


class WriteLog:
    """Writes made while blocks are open, in order, and what replays them."""

    __slots__ = ("_alive", "_base", "_by_key", "_entries", "_wipes", "committed")

    def __init__(self) -> None:
        self._entries: list[tuple[object, bytes | None, bytes | int | None]] = []
        self._alive: list[bool] = []
        # Each key's value before its first entry (the alarm's under ALARM).
        self._base: dict[bytes, bytes | int | None] = {}
        self._by_key: dict[bytes, list[int]] = {}
        self._wipes: list[int] = []
        #: Entries below this index were sent to the engine by a commit.
        self.committed = 0

    def __len__(self) -> int:
        return len(self._entries)

    def knows(self, key: bytes) -> bool:
        return key in self._base

    def record(self, writer: object, key: bytes, value: bytes | int | None, base: object) -> None:
        """A write of ``key``; ``base`` is its value now (used on its first write)."""
        if key not in self._base:
            self._base[key] = base  # type: ignore[assignment]
        self._by_key.setdefault(key, []).append(len(self._entries))
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
        self._entries.append((writer, _WIPE, None))
        self._alive.append(True)

    def kill(self, writer: object, start: int) -> tuple[set[bytes], bool, int]:
        """Mark ``writer``'s entries from ``start`` on dead: the keys to replay,
        whether a delete_all was among them (then every key), and the lowest
        index killed (``len(self)`` if none)."""
        keys: set[bytes] = set()
        wiped = False
        lowest = len(self._entries)
        for index in range(start, len(self._entries)):
            if not self._alive[index] or self._entries[index][0] is not writer:
                continue
            self._alive[index] = False
            lowest = min(lowest, index)
            key = self._entries[index][1]
            if key is _WIPE:
                wiped = True
            else:
                keys.add(key)
        if wiped:
            keys.update(self._base)
        return keys, wiped, lowest

    def replay(self, key: bytes, upto: int | None = None) -> bytes | int | None:
        """``key``'s value from the live entries (those below ``upto`` only)."""
        end = len(self._entries) if upto is None else upto
        last_write = -1
        for index in reversed(self._by_key.get(key, ())):
            if index < end and self._alive[index]:
                last_write = index
                break
        last_wipe = -1
        for index in reversed(self._wipes):
            if index < end and self._alive[index]:
                last_wipe = index
                break
        if last_write < 0 and last_wipe < 0:
            return self._base.get(key)
        if last_wipe > last_write:
            return None
        return self._entries[last_write][2]

    def live_wipe_since(self, index: int) -> bool:
        """Whether a delete_all entry at or after ``index`` is alive."""
        return any(self._alive[wipe] for wipe in self._wipes if wipe >= index)
