"""``create_app``: the Starlette application serving one ``Runtime`` (DESIGN §4)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from stead.config import Config
from stead.http.auth import BearerAuthMiddleware
from stead.http.body import BodyLimitMiddleware
from stead.http.errors import http_exception_handler, server_error_handler
from stead.http.metrics import CONTENT_TYPE, HttpMetrics
from stead.http.openapi import build_openapi
from stead.http.routes import ObjectRoutes

if TYPE_CHECKING:
    from stead.plugins import Plugins
    from stead.runtime import Runtime

__all__ = ["create_app"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(
    runtime: Runtime,
    *,
    max_body_bytes: int | None = None,
    token: str | None = None,
    plugins: Plugins | None = None,
) -> Starlette:
    """The HTTP/RPC frontend of ``runtime`` as a Starlette app.

    :param runtime: the runtime to serve. The app's lifespan starts it if it is
        not started yet and then also closes it; when the app is mounted inside
        another app (whose lifespan does not reach mounted apps), start the
        runtime yourself.
    :param max_body_bytes: request body limit (413 above it); default
        ``STEAD_MAX_BODY_BYTES`` or 1 MiB.
    :param token: bearer token every route but ``/healthz`` requires; default
        ``STEAD_TOKEN``; ``""`` turns auth off even if ``STEAD_TOKEN`` is set.
    :param plugins: whose ``stead_routes`` to mount; default: the installed
        plugins when the runtime was made with ``plugins=True``, else none.
    """
    config = Config.from_env()
    limit = config.max_body_bytes if max_body_bytes is None else max_body_bytes
    secret = config.token if token is None else (token or None)
    metrics = HttpMetrics(runtime)
    objects = ObjectRoutes(runtime, metrics, hide_header="authorization" if secret else None)
    routes = _builtin_routes(objects, metrics)
    routes.extend(_plugin_routes(runtime, plugins))
    middleware = [Middleware(BodyLimitMiddleware, max_bytes=limit)]
    if secret:
        middleware.insert(0, Middleware(BearerAuthMiddleware, token=secret))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: http_exception_handler, Exception: server_error_handler},
        lifespan=_lifespan(runtime),
    )
    app.state.runtime = runtime
    app.state.metrics = metrics
    return app


def _builtin_routes(objects: ObjectRoutes, metrics: HttpMetrics) -> list[BaseRoute]:
    openapi: dict[str, Any] = {}

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def openapi_json(request: Request) -> Response:
        # Built on first use: plugin bindings are only known once the runtime started.
        if not openapi:
            openapi.update(build_openapi(objects.signatures()))
        return JSONResponse(openapi)

    return [
        Route("/objects/{binding}/{name}/rpc/{method}", objects.rpc, methods=["POST"]),
        Route("/objects/{binding}/{name}/fetch/{path:path}", objects.fetch, methods=_ANY_METHOD),
        Route("/objects/{binding}/{name}/fetch", objects.fetch, methods=_ANY_METHOD),
        Route("/objects/{binding}", objects.list_ids, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/objects/{rest:path}", objects.not_found, methods=_ANY_METHOD),
    ]


def _plugin_routes(runtime: Runtime, plugins: Plugins | None) -> list[BaseRoute]:
    if plugins is None and runtime.use_plugins:
        from stead.plugins import Plugins

        plugins = Plugins.load()
    return [] if plugins is None else plugins.routes(runtime)


def _lifespan(runtime: Runtime) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if _started(runtime):
            yield
            return
        async with runtime:
            yield

    return lifespan


def _started(runtime: Runtime) -> bool:
    try:
        runtime.engine  # noqa: B018  (raises RuntimeError unless started)
    except RuntimeError:
        return False
    return True
