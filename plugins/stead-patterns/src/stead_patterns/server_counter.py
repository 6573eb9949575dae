"""``SERVER_COUNTER``: layer 1 of the layer guide, a router inside the object's ``fetch``.

Starlette routing stands in for the catalog's Hono: ``POST /increment``,
``GET /count``, ``POST /reset``, each answering ``{"count": n}``. An unknown
path is 404; a known path with the wrong method is 405.
"""

from __future__ import annotations

from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse
from starlette.routing import Route, Router

import stead
from stead import Request, Response
from stead_patterns._asgi import asgi_fetch

__all__ = ["ServerCounter", "stead_bindings"]


class ServerCounter(stead.DurableObject):
    """Builds its router in the constructor, as the catalog builds its Hono app."""

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self._app = Router(
            routes=[
                Route("/increment", self._increment, methods=["POST"]),
                Route("/count", self._count, methods=["GET"]),
                Route("/reset", self._reset, methods=["POST"]),
            ]
        )

    async def fetch(self, request: Request) -> Response:
        return await asgi_fetch(self._app, request)

    async def _increment(self, request: StarletteRequest) -> JSONResponse:
        count: int = self.ctx.storage.get("count", 0) + 1
        self.ctx.storage.put("count", count)
        return JSONResponse({"count": count})

    async def _count(self, request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"count": self.ctx.storage.get("count", 0)})

    async def _reset(self, request: StarletteRequest) -> JSONResponse:
        self.ctx.storage.put("count", 0)
        return JSONResponse({"count": 0})


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"SERVER_COUNTER": ServerCounter}
