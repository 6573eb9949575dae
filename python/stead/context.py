"""``ObjectContext`` (``self.ctx``): an object's id, storage and lifecycle controls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from stead.errors import StorageError
from stead.ids import ObjectId
from stead.storage import Storage

if TYPE_CHECKING:
    from stead.dispatch import ObjectHost

__all__ = ["ObjectAborted", "ObjectContext"]

T = TypeVar("T")


class ObjectAborted(BaseException):
    """Raised inside an object by ``ctx.abort``; callers see ``RemoteError("Aborted", reason)``.

    A ``BaseException`` so that a handler's ``except Exception`` cannot swallow it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ObjectContext:
    """The context of one object instance."""

    __slots__ = ("_hosts", "id", "storage")

    def __init__(
        self, object_id: ObjectId, storage: Storage, hosts: Mapping[bytes, ObjectHost]
    ) -> None:
        self.id = object_id
        self.storage = storage
        # The runtime's resident objects, not this object's host: no reference
        # cycle, so an evicted instance is freed at once, not by the cyclic GC.
        self._hosts = hosts

    def _host(self) -> ObjectHost:
        host = self._hosts.get(self.id.storage_key)
        if host is None or host.ctx is not self:
            raise StorageError("this instance was evicted or reset; it has no running events")
        return host

    async def block_concurrency_while(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` with no other event of this object delivered until it ends.

        In an event of a turn-based object this is a plain await (the turn holds
        the input); outside its events (``wait_until`` work, a timer) it takes
        the object's turn as an event does, and waits for ``on_start``, which
        comes first. For ``reentrant`` objects it closes the input gate, once no
        other event's block holds it (blocks never overlap).
        """
        return await self._host().block_concurrency_while(fn)

    def wait_until(self, awaitable: Awaitable[Any]) -> None:
        """Keep ``awaitable`` running after the current event returns (the runtime
        awaits it before closing). Usable in the constructor too."""
        try:
            host = self._host()
        except StorageError:
            if isinstance(awaitable, Coroutine):
                awaitable.close()  # refused: no "never awaited" warning on top of the error
            raise
        host.wait_until(awaitable)

    def abort(self, reason: str = "aborted") -> NoReturn:
        """Reset the object now: this event's uncommitted writes are dropped, the
        instance is discarded, and the caller gets ``RemoteError("Aborted", reason)``.

        The reset happens here, wherever this is called from (a handler,
        ``wait_until`` work, a task a handler spawned that nobody awaits); the
        code that called it gets ``ObjectAborted``."""
        host = self._hosts.get(self.id.storage_key)
        if host is not None and host.ctx is self:  # not already evicted or reset
            host.reset()
        raise ObjectAborted(reason)
