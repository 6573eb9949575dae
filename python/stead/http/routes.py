"""The object routes: RPC, fetch and listing, on top of a started ``Runtime``."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from stead import codec
from stead.errors import InvalidIdError, SerializationError, UnknownBindingError
from stead.http.body import read_body
from stead.http.cancel import request_cancelled, settle_cancelled, shutting_down
from stead.http.errors import HttpError, handler_error
from stead.http.responses import InvalidResponseError, http_response
from stead.http.signatures import ArgumentError, Signature
from stead.messages import Request as ObjectRequest
from stead.objects import rpc_methods
from stead.stub import Stub, invoke

if TYPE_CHECKING:
    from stead.http.metrics import HttpMetrics
    from stead.namespace import Namespace
    from stead.runtime import Runtime

__all__ = ["MAX_LIST_LIMIT", "MAX_NAME_BYTES", "ObjectRoutes"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: Object names are 1 to this many UTF-8 bytes (the key limit of DESIGN §2).
MAX_NAME_BYTES = 2048
#: ``GET /objects/{binding}`` returns at most this many ids per page.
MAX_LIST_LIMIT = 1000

_JSON = b"application/json"
_DISCONNECTED = "the client went away before sending the body"
# Characters kept as they are when a decoded fetch path is re-encoded for the object
# (only if the server gave no raw path, see _raw_tail).
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class RpcBody(msgspec.Struct, forbid_unknown_fields=True):
    """``{"args": [...], "kwargs": {...}}``; both optional."""

    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)


_body_decoder = msgspec.json.Decoder(RpcBody)
_INTERNAL_ERROR_BODY = HttpError(500, "InternalServerError", "internal server error").body()
_result_encoder = msgspec.json.Encoder()


class ObjectRoutes:
    """Endpoints for ``/objects/...``; one instance per app."""

    def __init__(
        self,
        runtime: Runtime,
        metrics: HttpMetrics,
        *,
        hide_header: str | None,
        max_body_bytes: int,
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self._hide_header = hide_header  # the bearer token header, not forwarded to objects
        self._signatures: dict[tuple[str, str], Signature] = {}

    # -- RPC -----------------------------------------------------------------

    async def rpc(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        binding: str,
        name: str,
        method: str,
        *,
        outermost: bool = False,
    ) -> None:
        """``POST /objects/{binding}/{name}/rpc/{method}``, as raw ASGI.

        The hot path of the frontend: it skips Starlette's request and
        response objects (see ``SteadApp``), so it checks the body limit itself.
        ``outermost``: ``send`` is the server's own (see ``stead.http.cancel``).
        """
        started = time.perf_counter()
        extra: list[tuple[bytes, bytes]] = []
        try:
            body = await self._rpc(scope, receive, binding, name, method)
            status = 200
        except HttpError as error:
            status, body, extra = error.status, error.body(), error.raw_headers()
        except Exception as exc:  # a bug of ours: still no traceback for the client
            logger.error("RPC %s.%s failed", binding, method, exc_info=exc)
            status, body = 500, _INTERNAL_ERROR_BODY
        except asyncio.CancelledError:  # the server cancelled the request (_rpc tells)
            cut = shutting_down(f"{binding}.{method}", scope)
            await _send(send, cut.status, cut.body(), cut.raw_headers())
            self._observe_rpc(binding, method, cut.status, started)
            if outermost and settle_cancelled():
                return
            raise
        await _send(send, status, body, extra)
        self._observe_rpc(binding, method, status, started)

    def _observe_rpc(self, binding: str, method: str, status: int, started: float) -> None:
        if (binding, method) not in self._signatures:
            binding = method = ""  # unknown names would give metrics unbounded cardinality
        self.metrics.observe("rpc", binding, method, status, time.perf_counter() - started)

    async def _rpc(
        self, scope: Scope, receive: Receive, binding: str, name: str, method: str
    ) -> bytes:
        stub = self._stub(binding, name)
        signature = self._signature(stub, method)
        body = _decode_body(await read_body(scope, receive, self.max_body_bytes))
        args, kwargs = _bind(signature, body)
        try:
            result = await invoke(stub, method, args, kwargs)
        except Exception as exc:
            raise self._call_failed(binding, method, exc) from None
        except asyncio.CancelledError:
            if request_cancelled():
                raise
            raise _handler_cancelled(binding, method) from None
        return _encode_result(result)

    def _signature(self, stub: Stub, method: str) -> Signature:
        key = (stub.id.binding, method)
        signature = self._signatures.get(key)
        if signature is None:
            rpc = rpc_methods(self.runtime.bindings[stub.id.binding]).get(method)
            if rpc is None:
                message = f"{stub.id.binding} has no RPC method {method!r}"
                raise HttpError(404, "UnknownMethodError", message)
            signature = self._signatures[key] = Signature(rpc)
        return signature

    def signatures(self) -> dict[str, dict[str, Signature]]:
        """Every binding's RPC signatures (for the OpenAPI document)."""
        table: dict[str, dict[str, Signature]] = {}
        for binding, cls in self.runtime.bindings.items():
            table[binding] = {name: Signature(rpc) for name, rpc in rpc_methods(cls).items()}
        return table

    # -- fetch ---------------------------------------------------------------

    async def fetch(self, request: Request) -> Response:
        """``{any} /objects/{binding}/{name}/fetch/{path}``: the object's own response."""
        started = time.perf_counter()
        params = request.path_params
        binding = params["binding"]
        try:
            response = await self._fetch(request, binding, params["name"], params.get("path", ""))
        except HttpError as error:
            response = error.response()
        label = binding if binding in self.runtime.bindings else ""
        self.metrics.observe(
            "fetch", label, "", response.status_code, time.perf_counter() - started
        )
        return response

    async def _fetch(self, request: Request, binding: str, name: str, path: str) -> Response:
        stub = self._stub(binding, name)
        url = "/" + _raw_tail(request.scope, path)
        # As sent, from the scope: request.url is rebuilt from the decoded path by
        # some Starlette versions, where an encoded '?' in it would move the split.
        query = request.scope.get("query_string", b"").decode("latin-1")
        if query:
            url = f"{url}?{query}"
        headers = _joined_headers(request.headers.raw, self._hide_header)
        try:
            body = await request.body()
        except ClientDisconnect:  # ordinary client behaviour, not an error of the server
            raise HttpError(400, "Disconnected", _DISCONNECTED) from None
        forwarded = ObjectRequest(request.method, url, headers, body)
        try:
            answer = await stub.fetch(forwarded)
        except Exception as exc:
            raise self._call_failed(binding, "fetch", exc) from None
        except asyncio.CancelledError:
            if request_cancelled():
                raise
            raise _handler_cancelled(binding, "fetch") from None
        try:
            return http_response(answer, head=request.method == "HEAD")
        except InvalidResponseError as exc:
            logger.error("%s.fetch returned an invalid response: %s", binding, exc)
            message = f"the fetch handler returned an invalid response: {exc}"
            raise HttpError(500, "InvalidResponse", message) from None

    # -- listing -------------------------------------------------------------

    async def list_ids(self, request: Request) -> Response:
        """``GET /objects/{binding}?limit=&after=``."""
        started = time.perf_counter()
        binding = request.path_params["binding"]
        try:
            response = await self._list_ids(request, self._namespace(binding))
        except HttpError as error:
            response = error.response()
        label = binding if binding in self.runtime.bindings else ""
        self.metrics.observe("list", label, "", response.status_code, time.perf_counter() - started)
        return response

    async def _list_ids(self, request: Request, namespace: Namespace) -> Response:
        limit = _limit(request.query_params.get("limit"))
        after = request.query_params.get("after") or None
        try:
            ids = await namespace.list_ids(limit=limit, after=after)
        except InvalidIdError as exc:
            raise HttpError(400, "InvalidIdError", f"after: {exc}") from None
        entries = [{"id": str(object_id), "name": object_id.name} for object_id in ids]
        cursor = entries[-1]["id"] if entries and len(entries) == limit else None
        body = _result_encoder.encode({"ids": entries, "next": cursor})
        return Response(body, media_type="application/json")

    # -- everything else under /objects ---------------------------------------

    async def not_found(self, request: Request) -> Response:
        """Paths under ``/objects/`` no route matched: an empty name, a wrong method, ..."""
        return self._misrouted(request.method, request.path_params["rest"]).response()

    def _misrouted(self, http_method: str, rest: str) -> HttpError:
        parts = rest.split("/")
        if len(parts) == 1 and parts[0]:  # /objects/{binding} is GET only
            try:
                self._namespace(parts[0])
            except HttpError as error:
                return error
            return _not_allowed(http_method, "GET, HEAD")
        kind = parts[2] if len(parts) >= 3 else ""
        if kind not in ("rpc", "fetch") or (kind == "rpc" and len(parts) != 4):
            return HttpError(404, "NotFound", "no such route")
        try:
            self._namespace(parts[0])
            if not parts[1]:
                self._stub(parts[0], parts[1])
        except HttpError as error:
            return error
        if kind == "rpc" and not parts[3]:
            return HttpError(404, "UnknownMethodError", "no method named ''")
        return _not_allowed(http_method, "POST")

    # -- shared --------------------------------------------------------------

    def _namespace(self, binding: str) -> Namespace:
        # Closed counts as not running: the namespaces outlive close(), but their
        # engine is closed and the data dir may already belong to another process.
        if not _running(self.runtime):
            raise _not_started()
        try:
            return self.runtime.namespace(binding)
        except UnknownBindingError:
            raise HttpError(404, "UnknownBindingError", f"no binding named {binding!r}") from None
        except RuntimeError:
            raise _not_started() from None

    def _call_failed(self, binding: str, method: str, exc: Exception) -> HttpError:
        """The answer for an RPC or fetch call that raised ``exc``."""
        if isinstance(exc, RuntimeError):
            if self.runtime.closing:  # close() cancelled the event (a second signal, say)
                return _cut_at_close()
            if not _running(self.runtime):
                return _not_started()  # the runtime closed while the request was on its way
        _log_handler_error(binding, method, exc)
        return handler_error(exc)

    def _stub(self, binding: str, name: str) -> Stub:
        namespace = self._namespace(binding)
        if not name or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise HttpError(400, "InvalidName", f"names are 1 to {MAX_NAME_BYTES} UTF-8 bytes")
        return namespace.get_by_name(name)


async def _send(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", _JSON), (b"content-length", b"%d" % len(body)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _joined_headers(raw: list[tuple[bytes, bytes]], hidden: str | None) -> dict[str, str]:
    """The request's headers, one value per name: repeated field lines joined with
    ``", "`` (RFC 9110 §5.3), ``Cookie`` lines with ``"; "`` (RFC 6265 §5.4)."""
    headers: dict[str, str] = {}
    for key, value in raw:
        name = key.decode("latin-1").lower()
        if name == hidden:
            continue
        text = value.decode("latin-1")
        if name in headers:
            text = headers[name] + ("; " if name == "cookie" else ", ") + text
        headers[name] = text
    return headers


def _running(runtime: Runtime) -> bool:
    """Whether the runtime is started and not (being) closed."""
    return runtime.started and not runtime.dispatcher.closed


def _not_started() -> HttpError:
    return HttpError(503, "NotStarted", "the runtime is not running")


def _cut_at_close() -> HttpError:
    message = "the server is shutting down and cancelled this call; what it wrote before is kept"
    return HttpError(503, "ShuttingDown", message, {"Connection": "close"})


def _not_allowed(http_method: str, allowed: str) -> HttpError:
    message = f"{http_method} is not allowed here; use {allowed.split(',')[0]}"
    return HttpError(405, "MethodNotAllowed", message, {"Allow": allowed})


def _decode_body(raw: bytes) -> RpcBody:
    if not raw.strip():
        return RpcBody()
    try:
        return _body_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise HttpError(400, "InvalidArguments", f"body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HttpError(400, "MalformedJSON", str(exc)) from None
    except RecursionError:
        raise HttpError(400, "MalformedJSON", "the JSON is nested too deeply") from None


def _bind(signature: Signature, body: RpcBody) -> tuple[list[Any], dict[str, Any]]:
    try:
        args, kwargs = signature.bind(body.args, body.kwargs)
        if args or kwargs:
            codec.encode((args, kwargs))  # values the codec cannot carry (huge ints) are a 400
    except (ArgumentError, SerializationError) as exc:
        raise HttpError(400, "InvalidArguments", str(exc)) from None
    except RecursionError:
        raise HttpError(400, "InvalidArguments", "the arguments are nested too deeply") from None
    return args, kwargs


def _encode_result(result: Any) -> bytes:
    try:
        return _result_encoder.encode({"result": result})
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
        raise HttpError(500, "SerializationError", f"the result is not JSON: {exc}") from None


def _limit(text: str | None) -> int:
    if text is None or text == "":
        return MAX_LIST_LIMIT
    try:
        limit = int(text)
    except ValueError:
        limit = -1
    if not 0 <= limit <= MAX_LIST_LIMIT:
        message = f"limit must be an integer from 0 to {MAX_LIST_LIMIT}"
        raise HttpError(400, "InvalidQuery", message)
    return limit


def _log_handler_error(binding: str, method: str, exc: Exception) -> None:
    # The traceback stays here (and in the object's log); the client gets type and message.
    logger.debug("%s.%s raised %s", binding, method, type(exc).__name__, exc_info=exc)


def _handler_cancelled(binding: str, method: str) -> HttpError:
    # A handler's bug (nothing cancelled the request): a 500 like any other raise.
    logger.error("%s.%s raised CancelledError", binding, method, exc_info=True)
    return HttpError(500, "CancelledError", "the handler was cancelled")


def _raw_tail(scope: Scope, path: str) -> str:
    """The fetch path ``path`` (decoded by the router) as the client sent it: the
    tail of the raw request path that decodes to it, so ``a%2Fb`` reaches the
    object as ``a%2Fb``, not as ``a/b``, the same as ``stub.fetch("/a%2Fb")``."""
    raw: bytes | None = scope.get("raw_path")
    if raw is not None:
        sent = raw.partition(b"?")[0].decode("latin-1")  # ASCII, as HTTP sends it
        # Tails decode to ever longer strings leftwards: at most one matches.
        start = len(sent)
        while (start := sent.rfind("/", 0, start)) >= 0:
            tail = sent[start + 1 :]
            decoded = unquote(tail)
            if decoded == path:
                return tail
            if len(decoded) > len(path):
                break
    return quote(path, safe=_PATH_SAFE)  # no raw path (or not this one): re-encode
