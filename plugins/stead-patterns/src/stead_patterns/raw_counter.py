"""``RAW_COUNTER``: layer 0 of the catalog's layer guide, a raw object with ``fetch``.

``/increment`` and ``/get`` answer ``{"count": n}``; anything else is 404.
"""

from __future__ import annotations

import stead
from stead import Request, Response
from stead_patterns._http import not_found

__all__ = ["RawCounter", "stead_bindings"]


class RawCounter(stead.DurableObject):
    """Parses the path by hand and manages storage directly."""

    async def fetch(self, request: Request) -> Response:
        if request.path == "/increment":
            count: int = self.ctx.storage.get("count", 0) + 1
            self.ctx.storage.put("count", count)
            return Response.json({"count": count})
        if request.path == "/get":
            return Response.json({"count": self.ctx.storage.get("count", 0)})
        return not_found()


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"RAW_COUNTER": RawCounter}
