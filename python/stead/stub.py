"""``Stub``: a client-side handle that sends RPC calls and fetches to one object."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from stead.errors import UnknownMethodError
from stead.ids import ObjectId
from stead.messages import Request, Response
from stead.objects import call_maybe_async, rpc_methods

if TYPE_CHECKING:
    from stead.dispatch import Dispatcher, ObjectHost


__all__ = ["Stub", "invoke"]

_json_encoder = msgspec.json.Encoder()


class Stub:
    """Calls to one object: ``await stub.method(*args, **kwargs)`` and ``await stub.fetch(...)``.

    Arguments and results are copied through the codec, as they would be
    between processes.
    """

    def __init__(self, dispatcher: Dispatcher, object_id: ObjectId) -> None:
        self._dispatcher = dispatcher
        self._rpc = rpc_methods(dispatcher.classes[object_id.binding])
        self.id = object_id

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        # Only reached on the first use of a name: the bound call is then kept
        # in the instance dict, so later lookups are plain attribute reads. It
        # is a C-level partial: calling it creates the dispatcher's coroutine
        # with no Python frame in between.
        if name.startswith("_"):
            raise AttributeError(name)
        method = self._rpc.get(name)
        if method is None:
            raise UnknownMethodError(f"{self.id.binding} has no RPC method {name!r}")
        call = partial(self._dispatcher.call, self.id, method)
        self.__dict__[name] = call
        return call

    def __repr__(self) -> str:
        return f"Stub({self.id!r})"

    async def fetch(
        self,
        request_or_path: Request | str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: bytes | str | None = None,
        json: Any = None,
    ) -> Response:
        """Send an HTTP-like request to the object's ``fetch`` handler.

        Either a path (``"/items?x=1"``, or a full URL) with ``method``,
        ``headers`` (``str`` names and values, as over HTTP) and a body given
        as ``body`` or as ``json`` (encoded, with a JSON content type), not
        both; or a :class:`Request`, which carries all of these itself (the
        keywords are then refused, not ignored). ``TypeError`` otherwise.
        """
        request = _build_request(request_or_path, method, headers, body, json)

        async def run(host: ObjectHost) -> Response:
            response = await call_maybe_async(partial(host.instance.fetch, request))
            if not isinstance(response, Response):
                kind = type(response).__name__
                raise TypeError(f"fetch must return a stead.Response, not {kind}")
            return Response(response.body, response.status, response.headers)

        return await self._dispatcher.deliver(self.id, run)


def _build_request(
    request_or_path: Request | str,
    method: str,
    headers: Mapping[str, str] | None,
    body: bytes | str | None,
    json: Any,
) -> Request:
    if isinstance(request_or_path, Request):
        if method != "GET" or headers is not None or body is not None or json is not None:
            # They would be ignored: the Request already has its method, headers and body.
            raise TypeError(
                "fetch(Request(...)) takes no method=, headers=, body= or json=: "
                "set them on the Request, or pass a path instead"
            )
        # A copy, so the caller and the object never share a mutable request.
        original = request_or_path
        _check_headers(original.headers)
        return Request(original.method, original.url, original.headers, original.body)
    if body is not None and json is not None:
        raise TypeError("fetch() takes body= or json=, not both")
    merged = dict(headers or {})
    _check_headers(merged)
    payload = b"" if body is None else (body.encode() if isinstance(body, str) else body)
    if json is not None:
        payload = _json_encoder.encode(json)
        merged.setdefault("content-type", "application/json")
    return Request(method, request_or_path, merged, payload)


def _check_headers(headers: Mapping[str, str]) -> None:
    """Header names and values are ``str``, as an object always gets them over HTTP
    (an int or bytes value would reach the object only when called in process)."""
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            bad = name if not isinstance(name, str) else value
            what = "name" if bad is name else f"value of {name!r}"
            raise TypeError(f"header {what} must be str, not {type(bad).__name__}")


def invoke(
    stub: Stub, method: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Awaitable[Any]:
    """Call the RPC method named ``method`` (``UnknownMethodError`` if there is none)."""
    rpc = stub._rpc.get(method)
    if rpc is None:
        raise UnknownMethodError(f"{stub.id.binding} has no RPC method {method!r}")
    return stub._dispatcher.call(stub.id, rpc, *args, **kwargs)
