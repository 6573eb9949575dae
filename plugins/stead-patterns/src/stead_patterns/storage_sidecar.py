"""``STORAGE_SIDECAR``: per-entity storage for a multi-step process (the catalog's pattern 2).

HTTP, by method, with ``?key=``: ``GET`` one value (``{"key", "value"}``, 404
if absent) or, without a key, every entry; ``PUT`` stores the JSON body
(``{"key", "written": true}``); ``POST`` appends the JSON body to the array at
the key (``{"key", "length"}``); ``DELETE`` one key (``{"key", "deleted":
true}``) or, without a key, everything (``{"cleared": true}``). The catalog's
typed RPC variant is on the same class: ``get``, ``set``, ``append``, ``clear``.
"""

from __future__ import annotations

from typing import Any

import stead
from stead import Request, Response
from stead_patterns._http import REFUSED, BadRequest, KeyName, decode_body, error

__all__ = ["StorageSidecar", "stead_bindings"]


class StorageSidecar(stead.DurableObject):
    """Schemaless key-value state for one entity, cleared when its process ends."""

    async def fetch(self, request: Request) -> Response:
        key = request.query.get("key") or None  # "" means no key, as in the catalog
        handler = {
            "GET": self._get,
            "PUT": self._put,
            "POST": self._post,
            "DELETE": self._delete,
        }.get(request.method)
        if handler is None:
            return Response("Method not allowed", status=405)
        try:
            return handler(request, key)
        except REFUSED as exc:  # e.g. an over-long key or an over-large value
            return error(str(exc), 400)

    def _get(self, request: Request, key: str | None) -> Response:
        if key is None:
            return Response.json(self.ctx.storage.list())
        missing = object()
        value = self.ctx.storage.get(key, missing)
        if value is missing:
            return Response(b"", status=404)
        return Response.json({"key": key, "value": value})

    def _put(self, request: Request, key: str | None) -> Response:
        if key is None:
            return Response("Missing key parameter", status=400)
        self.set(key, decode_body(request, Any))
        return Response.json({"key": key, "written": True})

    def _post(self, request: Request, key: str | None) -> Response:
        if key is None:
            return Response("Missing key parameter", status=400)
        try:
            length = self.append(key, decode_body(request, Any))
        except TypeError as exc:
            raise BadRequest(str(exc)) from None
        return Response.json({"key": key, "length": length})

    def _delete(self, request: Request, key: str | None) -> Response:
        if key is None:
            self.clear()
            return Response.json({"cleared": True})
        self.ctx.storage.delete(key)
        return Response.json({"key": key, "deleted": True})

    # -- the RPC variant -----------------------------------------------------

    def get(self, key: KeyName) -> Any:
        """The value at ``key``, or ``None``."""
        return self.ctx.storage.get(key)

    def set(self, key: KeyName, value: Any) -> None:
        """Store ``value`` at ``key``."""
        self.ctx.storage.put(key, value)

    def append(self, key: KeyName, item: Any) -> int:
        """Append ``item`` to the array at ``key`` (created if absent); the new length."""
        existing = self.ctx.storage.get(key, [])
        if not isinstance(existing, list):
            raise TypeError(f"the value at {key!r} is not an array")
        existing.append(item)
        self.ctx.storage.put(key, existing)
        return len(existing)

    def clear(self) -> None:
        """Delete every key (and the alarm)."""
        self.ctx.storage.delete_all()


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"STORAGE_SIDECAR": StorageSidecar}
