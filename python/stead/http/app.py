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
from starlette.types import ASGIApp

from stead.config import Config
from stead.http.auth import BearerAuthMiddleware, BearerToken
from stead.http.body import BodyLimitMiddleware
from stead.http.cancel import ShutdownAnswerMiddleware
from stead.http.errors import HttpError, http_exception_handler, server_error_handler
from stead.http.fastpath import FastRpc
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
    if limit < 0:  # every body would be a 413
        raise ValueError(f"max_body_bytes must be >= 0, not {limit}")
    secret = config.token if token is None else (token or None)
    metrics = HttpMetrics(runtime)
    objects = ObjectRoutes(
        runtime,
        metrics,
        hide_header="authorization" if secret else None,
        max_body_bytes=limit,
    )
    routes = _builtin_routes(objects, metrics, bearer=secret is not None)
    routes.extend(_plugin_routes(runtime, plugins))
    bearer = BearerToken(secret) if secret else None
    middleware = [Middleware(BodyLimitMiddleware, max_bytes=limit)]
    if bearer is not None:
        middleware.insert(0, Middleware(BearerAuthMiddleware, token=bearer))
    app = SteadApp(
        own_middleware=middleware,
        objects=objects,
        bearer=bearer,
        routes=routes,
        exception_handlers={HTTPException: http_exception_handler, Exception: server_error_handler},
        lifespan=_lifespan(runtime),
    )
    app.state.runtime = runtime
    app.state.metrics = metrics
    return app


class SteadApp(Starlette):
    """A Starlette app whose RPC route skips Starlette's routing (``FastRpc``).

    The fast path sits below the middleware added with ``add_middleware()``
    and above stead's own middleware and the router, so user middleware
    wraps every route, RPC included. A ``ShutdownAnswerMiddleware`` also sits
    above the user's middleware: a ``BaseHTTPMiddleware`` runs the app below
    it in a task of its own, whose answer is lost once the request is cancelled.
    """

    def __init__(
        self,
        *,
        own_middleware: list[Middleware],
        objects: ObjectRoutes,
        bearer: BearerToken | None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._own_middleware = own_middleware
        self._objects = objects
        self._bearer = bearer

    def build_middleware_stack(self) -> ASGIApp:
        # Starlette builds ServerErrorMiddleware(user_middleware(ExceptionMiddleware(router)));
        # the fast path and stead's own middleware go in just after the user's.
        users = self.user_middleware
        # The 503 for a cancelled request: the outermost layer (the one whose
        # ``send`` is the server's) also ends the request quietly (stead.http.cancel).
        outer = Middleware(ShutdownAnswerMiddleware, outermost=True)
        if not users:
            # Nothing to wrap the fast path in: it goes first, which saves the
            # ServerErrorMiddleware call per request (FastRpc answers its own 500s).
            self.user_middleware = [outer, *self._own_middleware]
        else:
            inner = Middleware(ShutdownAnswerMiddleware)  # its answer reaches user middleware
            fast = Middleware(FastRpc, objects=self._objects, bearer=self._bearer)
            self.user_middleware = [outer, *users, fast, inner, *self._own_middleware]
        try:
            stack = super().build_middleware_stack()
        finally:
            self.user_middleware = users
        if users:
            return stack
        return FastRpc(stack, self._objects, self._bearer, outermost=True)


def _builtin_routes(
    objects: ObjectRoutes, metrics: HttpMetrics, *, bearer: bool
) -> list[BaseRoute]:
    openapi: dict[str, Any] = {}

    async def healthz(request: Request) -> Response:
        problem = _health_problem(objects.runtime)
        return JSONResponse({"status": "ok"}) if problem is None else problem.response()

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def openapi_json(request: Request) -> Response:
        # Built on first use: plugin bindings are only known once the runtime started.
        if not openapi:
            if not objects.runtime.started:
                return HttpError(503, "NotStarted", "the runtime is not running").response()
            openapi.update(build_openapi(objects.signatures(), bearer=bearer))
        root = request.scope.get("root_path", "")
        # Mounted under a prefix: the paths are relative to it.
        return JSONResponse({**openapi, "servers": [{"url": root}]} if root else openapi)

    async def no_binding(request: Request) -> Response:
        message = "no such route; GET /objects/{binding} lists a binding's objects"
        return HttpError(404, "NotFound", message).response()

    return [
        Route("/objects/{binding}/{name}/fetch/{path:path}", objects.fetch, methods=_ANY_METHOD),
        Route("/objects/{binding}/{name}/fetch", objects.fetch, methods=_ANY_METHOD),
        Route("/objects/{binding}", objects.list_ids, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/objects/{rest:path}", objects.not_found, methods=_ANY_METHOD),
        Route("/objects", no_binding, methods=_ANY_METHOD),  # not a redirect to a 404
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
