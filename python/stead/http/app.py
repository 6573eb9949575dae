"""``create_app``: the Starlette application serving one ``Runtime`` (DESIGN §4)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from stead.config import Config
from stead.http.auth import BearerAuthMiddleware, BearerToken, route_path
from stead.http.body import BodyLimitMiddleware
from stead.http.errors import (
    HttpError,
    error_response,
    http_exception_handler,
    server_error_handler,
)
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
    objects = ObjectRoutes(
        runtime,
        metrics,
        hide_header="authorization" if secret else None,
        max_body_bytes=limit,
    )
    routes = _builtin_routes(objects, metrics)
    routes.extend(_plugin_routes(runtime, plugins))
    bearer = BearerToken(secret) if secret else None
    middleware = [Middleware(BodyLimitMiddleware, max_bytes=limit)]
    if bearer is not None:
        middleware.insert(0, Middleware(BearerAuthMiddleware, token=bearer))
    app = SteadApp(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: http_exception_handler, Exception: server_error_handler},
        lifespan=_lifespan(runtime),
    )
    app.fast_rpc(objects, bearer)
    app.state.runtime = runtime
    app.state.metrics = metrics
    return app


class SteadApp(Starlette):
    """A Starlette app whose RPC route skips the generic middleware and routing.

    ``POST /objects/{binding}/{name}/rpc/{method}`` is the hot path; it is
    recognised by splitting the path and served as raw ASGI, with the same
    token check, body limit and error shape as every other route. Everything
    else goes through Starlette as usual.
    """

    _objects: ObjectRoutes | None = None
    _bearer: BearerToken | None = None

    def fast_rpc(self, objects: ObjectRoutes, bearer: BearerToken | None) -> None:
        """Serve RPC calls with ``objects``, checking ``bearer`` first if given."""
        self._objects, self._bearer = objects, bearer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "\ufffd" in scope["path"] and not _utf8_path(scope):
            # Servers decode the path with errors="replace": %FF and %FE would both
            # become U+FFFD and address one object under two names.
            message = "the path is not valid UTF-8 once percent-decoded"
            await HttpError(400, "InvalidName", message).response()(scope, receive, send)
            return
        objects = self._objects
        if objects is not None and scope["type"] == "http" and scope["method"] == "POST":
            parts = route_path(scope).split("/")
            # ["", "objects", binding, name, "rpc", method], with a non-empty name
            if len(parts) == 6 and parts[1] == "objects" and parts[4] == "rpc" and parts[3]:
                await self._rpc(objects, scope, receive, send, parts)
                return
        await super().__call__(scope, receive, send)

    async def _rpc(
        self, objects: ObjectRoutes, scope: Scope, receive: Receive, send: Send, parts: list[str]
    ) -> None:
        refusal = None if self._bearer is None else self._bearer.refusal(scope)
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        try:
            await objects.rpc(scope, receive, send, parts[2], parts[3], parts[5])
        except Exception as exc:  # a bug of ours: still no traceback for the client
            logger.error("RPC %s failed", route_path(scope), exc_info=exc)
            await error_response(500, "InternalServerError", "internal server error")(
                scope, receive, send
            )


def _utf8_path(scope: Scope) -> bool:
    """Whether the request path, as sent, percent-decodes to valid UTF-8."""
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        return True  # the server gave no raw path: nothing else to go by
    try:
        unquote_to_bytes(raw.partition(b"?")[0]).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _builtin_routes(objects: ObjectRoutes, metrics: HttpMetrics) -> list[BaseRoute]:
    openapi: dict[str, Any] = {}

    async def healthz(request: Request) -> Response:
        problem = _health_problem(objects.runtime)
        return JSONResponse({"status": "ok"}) if problem is None else problem.response()

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def openapi_json(request: Request) -> Response:
        # Built on first use: plugin bindings are only known once the runtime started.
        if not openapi:
            openapi.update(build_openapi(objects.signatures()))
        return JSONResponse(openapi)

    return [
        Route("/objects/{binding}/{name}/fetch/{path:path}", objects.fetch, methods=_ANY_METHOD),
        Route("/objects/{binding}/{name}/fetch", objects.fetch, methods=_ANY_METHOD),
        Route("/objects/{binding}", objects.list_ids, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/objects/{rest:path}", objects.not_found, methods=_ANY_METHOD),
    ]


def _health_problem(runtime: Runtime) -> HttpError | None:
    """Why the runtime cannot serve requests (503), or ``None`` if it can."""
    try:
        engine = runtime.engine
    except RuntimeError:
        return HttpError(503, "NotStarted", "the runtime is not running")
    if engine.failure is not None:
        # The reason (a path, an OS error) is in the server's log, not on this open route.
        message = "the storage engine failed: writes are refused until the server restarts"
        return HttpError(503, "StorageError", message)
    return None


def _plugin_routes(runtime: Runtime, plugins: Plugins | None) -> list[BaseRoute]:
    if plugins is None:
        plugins = runtime.plugins  # already loaded when the runtime was started first
    if plugins is None and runtime.use_plugins:
        from stead.plugins import Plugins

        plugins = Plugins.load()
    return [] if plugins is None else plugins.routes(runtime)


def _lifespan(runtime: Runtime) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if runtime.started:
            yield
            return
        async with runtime:
            yield

    return lifespan
