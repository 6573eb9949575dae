"""``Namespace``: the objects of one binding (``rt.env.COUNTER``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stead import codec
from stead._core import Engine
from stead.errors import InvalidIdError
from stead.ids import IdFactory, ObjectId
from stead.storage import NAME_KEY
from stead.stub import Stub

if TYPE_CHECKING:
    from stead.dispatch import Dispatcher

__all__ = ["Namespace"]

# Name -> id derivation is an HMAC; keep recent ones (bounded, cleared when full).
_ID_CACHE_SIZE = 4096


class Namespace:
    """Makes ids and stubs for one binding, and lists its stored objects."""

    def __init__(
        self, binding: str, ids: IdFactory, dispatcher: Dispatcher, engine: Engine
    ) -> None:
        self.binding = binding
        self._ids = ids
        self._dispatcher = dispatcher
        self._engine = engine
        self._prefix = ids.register(binding)
        self._by_name: dict[str, ObjectId] = {}

    def __repr__(self) -> str:
        return f"Namespace({self.binding!r})"

    def id_from_name(self, name: str) -> ObjectId:
        """The id of the object called ``name`` (the same name always gives the same id)."""
        object_id = self._by_name.get(name)
        if object_id is None:
            object_id = self._ids.from_name(self.binding, name)
            if len(self._by_name) >= _ID_CACHE_SIZE:
                self._by_name.clear()
            self._by_name[name] = object_id
        return object_id

    def new_unique_id(self) -> ObjectId:
        """A new random id."""
        return self._ids.unique(self.binding)

    def id_from_string(self, text: str) -> ObjectId:
        """Parse ``str(id)`` back; ``InvalidIdError`` if malformed, forged or of another binding."""
        return self._ids.from_string(self.binding, text)

    def get(self, object_id: ObjectId) -> Stub:
        """A stub for ``object_id``."""
        if not isinstance(object_id, ObjectId) or object_id.binding != self.binding:
            raise InvalidIdError(f"{object_id!r} is not an id of binding {self.binding!r}")
        return Stub(self._dispatcher, object_id)

    def get_by_name(self, name: str) -> Stub:
        """A stub for the object called ``name``."""
        return Stub(self._dispatcher, self.id_from_name(name))

    async def list_ids(
        self, limit: int | None = None, after: ObjectId | str | None = None
    ) -> list[ObjectId]:
        """Ids of this binding's objects that have storage, in id order."""
        if self._dispatcher.closed:
            raise RuntimeError("the runtime is closed")
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        cursor = None
        if after is not None:
            after_id = after if isinstance(after, ObjectId) else self.id_from_string(after)
            cursor = after_id.storage_key
        found: list[ObjectId] = []
        while limit is None or len(found) < limit:
            wanted = None if limit is None else limit - len(found)
            keys = self._engine.objects(prefix=self._prefix, after=cursor, limit=wanted)
            found.extend(self._id_for_key(key) for key in keys if self._has_storage(key))
            if limit is None or len(keys) < (wanted or 0) or not keys:
                break
            cursor = keys[-1]
        return found

    def _has_storage(self, key: bytes) -> bool:
        # The recorded name alone is not storage. The batch that deletes an
        # object's last key or alarm deletes the name too, but data dirs written
        # before it did may still hold objects with nothing else.
        if self._engine.get_alarm(key) is not None:
            return True
        return any(stored != NAME_KEY for stored, _ in self._engine.list(key, limit=2))

    def _id_for_key(self, key: bytes) -> ObjectId:
        raw_name = self._engine.get(key, NAME_KEY)
        name = None if raw_name is None else codec.decode(raw_name)
        return ObjectId(key[len(self._prefix) :], self.binding, name, key)
